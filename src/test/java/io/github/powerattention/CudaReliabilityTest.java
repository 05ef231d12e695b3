package io.github.powerattention;

import static io.github.powerattention.Fixtures.assertClose;
import static io.github.powerattention.Fixtures.assertFinite;
import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.cuda_is_available;
import static org.bytedeco.pytorch.global.torch.manual_seed;
import static org.bytedeco.pytorch.global.torch.randn;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;

import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.Device;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorOptions;
import org.bytedeco.pytorch.global.torch;
import org.bytedeco.pytorch.global.torch_cuda;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The CUDA half of {@link ReliabilityTest}: hostile but legal inputs on CUDA tensors (log gates of either sign and
 * any size, mixed in one sequence; tiny and huge |q|, |k|; a long sequence), each against the log-space fp64 oracle
 * of SPEC §2 on the CPU, forward and every gradient, at the SPEC §7 tolerances widened only by the problem's own
 * conditioning; and the CUDA caching allocator's statistics flat over many small calls. Tagged {@code gpu}.
 */
@Tag("gpu")
class CudaReliabilityTest {
    private static final Device CUDA = new Device("cuda:0");

    @BeforeAll
    static void needsCuda() {
        PowerAttention.loadNatives();
        assertTrue(cuda_is_available(), "no CUDA device is visible to LibTorch: the gpu suite needs one");
    }

    /** q is N(0, 1) times {@code magnitude * skew}, k N(0, 1) times {@code magnitude / skew}. */
    record Case(long t, long chunk, ReliabilityTest.Gates gates, double magnitude, double skew, ScalarType dtype) {
        Case(long t, long chunk, ReliabilityTest.Gates gates, double magnitude, ScalarType dtype) {
            this(t, chunk, gates, magnitude, 1, dtype);
        }

        @Override
        public String toString() {
            return String.format("t%d-%s-%s-x%.0e%s-%s", t, chunk == 0 ? "quadratic" : "c" + chunk,
                    gates.name().toLowerCase(), magnitude, skew == 1 ? "" : String.format("-skew%.0e", skew),
                    Fixtures.dtypeName(dtype));
        }
    }

    static Stream<Case> hostile() {
        List<Case> cases = new ArrayList<>();
        ReliabilityTest.Gates[] gates = {ReliabilityTest.Gates.POSITIVE_HALF, ReliabilityTest.Gates.POSITIVE_5,
            ReliabilityTest.Gates.MIXED_3, ReliabilityTest.Gates.MIXED_20, ReliabilityTest.Gates.NEGATIVE_20,
            ReliabilityTest.Gates.TINY};
        for (ScalarType dt : new ScalarType[] {ScalarType.Float, ScalarType.BFloat16, ScalarType.Half}) {
            for (long chunk : new long[] {0, 16, 64, 256}) {
                for (ReliabilityTest.Gates g : gates) {
                    cases.add(new Case(300, chunk, g, 1, dt));
                }
            }
            double tiny = dt == ScalarType.Half ? 1e-3 : 1e-18, huge = dt == ScalarType.Half ? 1e2 : 1e16;
            for (long chunk : new long[] {0, 64}) {
                cases.add(new Case(300, chunk, ReliabilityTest.Gates.STANDARD, tiny, dt));
                cases.add(new Case(300, chunk, ReliabilityTest.Gates.MIXED_3, huge, dt));
                if (dt != ScalarType.Half) {
                    // tiny q against huge k (brought into range), and magnitudes the kernels take as they are
                    cases.add(new Case(300, chunk, ReliabilityTest.Gates.STANDARD, 1, 1e-19, dt));
                    cases.add(new Case(300, chunk, ReliabilityTest.Gates.STANDARD, 30, dt));
                    cases.add(new Case(300, chunk, ReliabilityTest.Gates.MIXED_3, 0.1, dt));
                }
            }
        }
        return cases.stream();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("hostile")
    void finiteAndRight(Case c) {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(c.toString().hashCode());
            long d = 64;
            ScalarType gateType = ScalarType.Float;
            ReliabilityTest.Inputs in = ReliabilityTest.Inputs.draw(c.t(), 4, 2, d, c.magnitude() * c.skew(),
                    c.magnitude() / c.skew(), c.gates(), c.dtype(), gateType);
            Tensor q = in.q(), k = in.k(), v = in.v(), logG = in.logG(), dy = in.dy();
            double scale = 1 / Math.sqrt(d);
            Tensor[] ref = Oracle.logSpaceWithGradients(q, k, v, logG, dy, 2, scale, 0);
            Tensor[] moved = Oracle.logSpaceWithGradients(q, k, v, logG, dy, 2, scale, 0x1p-24);

            Tensor xq = cudaLeaf(q, c.dtype()), xk = cudaLeaf(k, c.dtype()), xv = cudaLeaf(v, c.dtype());
            Tensor xg = logG != null ? cudaLeaf(logG, gateType) : null;
            PowerAttentionOptions.Builder o = PowerAttentionOptions.builder();
            if (c.chunk() > 0) {
                o.chunkSize(c.chunk());
            }
            Tensor y = PowerAttention.powerFull(xq, xk, xv, xg, o.build());
            y.to(ScalarType.Double).mul(dy.to(CUDA, ScalarType.Double)).sum().backward();
            Tensor[] got = {y, xq.grad(), xk.grad(), xv.grad(), xg != null ? xg.grad() : null};
            String[] names = {"Y", "dQ", "dK", "dV", "dlogG"};
            for (int i = 0; i < got.length; ++i) {
                if (ref[i] == null) {
                    continue;
                }
                Tensor x = got[i].cpu();
                if ((i == 1 || i == 2) && c.gates() == ReliabilityTest.Gates.NEGATIVE_20) {
                    // README, limitations (strong decay): each row's weight sits on its own key, and dQ, dK go like
                    // 1 / score through a difference of nearly equal terms: on CUDA fp32 6.6e-4, bf16 1.4e-2 seen
                    // (H200); an fp16 gradient beyond 65504 is inf. Checked finite outside fp16.
                    if (c.dtype() != ScalarType.Half) {
                        assertFinite(x, c + " " + names[i]);
                    }
                    continue;
                }
                ReliabilityTest.assertWithinConditioning(x, ref[i], moved[i], c.dtype(), i > 0, c + " " + names[i]);
            }
        }
    }

    /** t = 65536 with log gates N(0, 0.3) a token, chunked: sampled rows of Y against the oracle on those rows. */
    @Test
    void longMixedGates() {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(65536);
            long t = 65536, h = 2, hq = 4, d = 64;
            for (ScalarType dt : new ScalarType[] {ScalarType.BFloat16, ScalarType.Float}) {
                Tensor q = Fixtures.normal(dt, 1, t, hq, d), k = Fixtures.normal(dt, 1, t, h, d);
                Tensor v = Fixtures.normal(dt, 1, t, h, d);
                Tensor logG = randn(new long[] {1, t, h}, Fixtures.f64()).mul(new Scalar(0.3))
                        .to(ScalarType.Float).to(ScalarType.Double);
                Tensor y;
                try (org.bytedeco.pytorch.NoGradGuard ng = new org.bytedeco.pytorch.NoGradGuard()) {
                    y = PowerAttention.powerFull(q.to(CUDA, dt), k.to(CUDA, dt), v.to(CUDA, dt),
                            logG.to(CUDA, ScalarType.Float), PowerAttentionOptions.builder().chunkSize(256).build())
                            .cpu().to(ScalarType.Double);
                }
                assertFinite(y, "t 65536 " + dt + " Y");
                for (long row : new long[] {0, 255, 256, 4097, 33333, 65535}) {
                    Tensor want = oracleRow(q, k, v, logG, row, 1 / Math.sqrt(d));
                    assertClose(y.select(1, row), want, Fixtures.forwardTolerance(dt) * 2,
                            "t 65536 " + Fixtures.dtypeName(dt) + " row " + row);
                }
            }
        }
    }

    /** The CUDA caching allocator holds no more after 2000 small fwd+bwd calls than before them. */
    @Test
    void allocatorStaysFlat() {
        for (int round = 0; round < 2; ++round) {
            runSmall(500);
        }
        torch_cuda.getAllocator().emptyCache();
        long before = allocated();
        runSmall(2000);
        long after = allocated();
        assertTrue(after <= before + (1 << 20), "CUDA memory allocated grew from " + before + " to " + after
                + " bytes over 2000 calls");
    }

    private static long allocated() {
        torch.cuda_synchronize();
        return torch_cuda.getAllocator().getDeviceStats((byte) 0).allocated_bytes().current();
    }

    private static void runSmall(int calls) {
        for (int i = 0; i < calls; ++i) {
            try (PointerScope scope = new PointerScope()) {
                TensorOptions o = new TensorOptions(CUDA)
                        .dtype(new org.bytedeco.pytorch.ScalarTypeOptional(ScalarType.BFloat16));
                Tensor q = randn(new long[] {1, 64, 2, 32}, o).requires_grad_(true);
                Tensor k = randn(new long[] {1, 64, 1, 32}, o).requires_grad_(true);
                Tensor v = randn(new long[] {1, 64, 1, 32}, o).requires_grad_(true);
                PowerAttentionOptions.Builder b = PowerAttentionOptions.builder();
                Tensor y = PowerAttention.powerFull(q, k, v, i % 2 == 0 ? b.chunkSize(16).build() : b.build());
                y.sum().backward();
            }
        }
    }

    private static Tensor cudaLeaf(Tensor x, ScalarType dtype) {
        return x.to(CUDA, dtype).detach().requires_grad_(true);
    }

    /** SPEC §2 for one query row i, in log space, fp64: [1, hq, e]. */
    private static Tensor oracleRow(Tensor q, Tensor k, Tensor v, Tensor logG, long i, double scale) {
        long hq = q.size(2), h = k.size(2), g = hq / h;
        Tensor qi = q.select(1, i);                                              // [1, hq, d]
        Tensor kk = k.narrow(1, 0, i + 1).repeat_interleave(g, new org.bytedeco.pytorch.LongOptional(2),
                new org.bytedeco.pytorch.LongOptional());                        // [1, i+1, hq, d]
        Tensor vv = v.narrow(1, 0, i + 1).repeat_interleave(g, new org.bytedeco.pytorch.LongOptional(2),
                new org.bytedeco.pytorch.LongOptional());
        Tensor s = kk.mul(qi.unsqueeze(1)).sum(new long[] {3}, false, new org.bytedeco.pytorch.ScalarTypeOptional())
                .mul(new Scalar(scale));                                         // [1, i+1, hq]
        Tensor logw = s.abs().log().mul(new Scalar(2.0));
        Tensor G = logG.cumsum(1).repeat_interleave(g, new org.bytedeco.pytorch.LongOptional(2),
                new org.bytedeco.pytorch.LongOptional());                        // [1, t, hq]
        logw = logw.add(G.select(1, i).unsqueeze(1).sub(G.narrow(1, 0, i + 1)));
        Tensor w = logw.sub(logw.amax(new long[] {1}, true)).exp();               // [1, i+1, hq]
        Tensor num = w.unsqueeze(3).mul(vv).sum(new long[] {1}, false, new org.bytedeco.pytorch.ScalarTypeOptional());
        return num.div(w.sum(new long[] {1}, false, new org.bytedeco.pytorch.ScalarTypeOptional()).unsqueeze(2));
    }
}
