package io.github.powerattention;

import static io.github.powerattention.Fixtures.assertClose;
import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.cat;
import static org.bytedeco.pytorch.global.torch.cuda_is_available;
import static org.bytedeco.pytorch.global.torch.manual_seed;
import static org.bytedeco.pytorch.global.torch.randn;
import static org.bytedeco.pytorch.global.torch.zeros;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.stream.Stream;

import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.Device;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorOptions;
import org.bytedeco.pytorch.TensorVector;
import org.bytedeco.pytorch.cuda.CUDAStream;
import org.bytedeco.pytorch.cuda.CUDAStreamGuard;
import org.bytedeco.pytorch.global.torch_cuda;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The op on CUDA tensors against the same inputs in fp64 on the CPU (the CPU path in fp64 is the oracle here; it is
 * itself checked against SPEC §2 by {@link PowerFullAccuracyTest}), at the SPEC §7 tolerances. Needs a GPU and the
 * linux-x86_64-gpu natives: tagged {@code gpu}, left out of the default run (README, "GPU suite").
 */
@Tag("gpu")
class CudaOpTest {
    private static final Device CUDA = new Device("cuda:0");

    @BeforeAll
    static void needsCuda() {
        PowerAttention.loadNatives();
        assertTrue(cuda_is_available(), "no CUDA device is visible to LibTorch: the gpu suite needs one");
    }

    /** One configuration; {@code chunk == 0} is the quadratic form. */
    record Case(long b, long t, long hq, long h, long d, long e, int p, long chunk, boolean gated, ScalarType dtype) {
        @Override
        public String toString() {
            return String.format("b%d-t%d-hq%d-h%d-d%d-e%d-p%d-%s-%s-%s", b, t, hq, h, d, e, p,
                    chunk == 0 ? "quadratic" : "c" + chunk, gated ? "gated" : "ungated", Fixtures.dtypeName(dtype));
        }
    }

    static Stream<Case> cases() {
        List<Case> cases = new ArrayList<>();
        for (ScalarType dt : new ScalarType[] {ScalarType.Float, ScalarType.BFloat16, ScalarType.Half}) {
            cases.add(new Case(2, 97, 4, 2, 32, 32, 2, 16, true, dt));
            cases.add(new Case(2, 97, 4, 2, 32, 32, 2, 0, true, dt));
            cases.add(new Case(1, 256, 2, 1, 64, 32, 2, 64, true, dt));
            cases.add(new Case(1, 300, 8, 2, 64, 64, 2, 128, true, dt));
            cases.add(new Case(1, 1025, 2, 1, 64, 64, 2, 128, true, dt));
            cases.add(new Case(1, 1025, 2, 2, 32, 16, 2, 0, false, dt));
            cases.add(new Case(1, 17, 8, 1, 16, 64, 2, 16, false, dt));
            cases.add(new Case(1, 97, 2, 2, 16, 16, 1, 16, true, dt));
            cases.add(new Case(1, 97, 2, 1, 16, 32, 3, 16, true, dt));
            cases.add(new Case(1, 97, 4, 2, 16, 16, 4, 16, true, dt));
            cases.add(new Case(1, 64, 2, 1, 32, 16, 4, 0, false, dt));
            cases.add(new Case(1, 1, 2, 1, 16, 16, 2, 16, true, dt));
        }
        return cases.stream();
    }

    /** Inputs of a case on the CPU in fp64, rounded through the case's dtype; dy in the case's dtype too. */
    record Inputs(Tensor q, Tensor k, Tensor v, Tensor logG, Tensor dy) {
        static Inputs of(Case c) {
            manual_seed(c.toString().hashCode());
            return new Inputs(Fixtures.normal(c.dtype(), c.b(), c.t(), c.hq(), c.d()),
                    Fixtures.normal(c.dtype(), c.b(), c.t(), c.h(), c.d()),
                    Fixtures.normal(c.dtype(), c.b(), c.t(), c.h(), c.e()),
                    c.gated() ? Fixtures.gates(c.b(), c.t(), c.h()) : null,
                    Fixtures.normal(c.dtype(), c.b(), c.t(), c.hq(), c.e()));
        }
    }

    /** Output and the gradients of {@code sum(Y * dy)} for the inputs marked in {@code want} (q, k, v, logG). */
    record Run(Tensor y, Tensor dq, Tensor dk, Tensor dv, Tensor dlogG) {}

    static PowerAttentionOptions options(Case c) {
        PowerAttentionOptions.Builder o = PowerAttentionOptions.builder().degree(c.p());
        if (c.chunk() > 0) {
            o.chunkSize(c.chunk());
        }
        return o.build();
    }

    /** Runs the op on {@code device} in {@code dtype} (gates in fp32, fp64 for fp64) and returns CPU fp64 results. */
    static Run run(Case c, Inputs in, Device device, ScalarType dtype, boolean[] want) {
        ScalarType gateType = dtype == ScalarType.Double ? ScalarType.Double : ScalarType.Float;
        Tensor q = on(in.q(), device, dtype).requires_grad_(want[0]);
        Tensor k = on(in.k(), device, dtype).requires_grad_(want[1]);
        Tensor v = on(in.v(), device, dtype).requires_grad_(want[2]);
        Tensor g = in.logG() == null ? null : on(in.logG(), device, gateType).requires_grad_(want[3]);
        Tensor y = PowerAttention.powerFull(q, k, v, g, options(c));
        assertEquals(dtype, y.scalar_type().intern(), "output dtype");
        assertEquals(device.is_cuda(), y.is_cuda(), "output device");
        if (want[0] || want[1] || want[2] || want[3]) {
            y.to(ScalarType.Double).mul(on(in.dy(), device, ScalarType.Double)).sum().backward();
        }
        return new Run(cpu(y), want[0] ? cpu(q.grad()) : null, want[1] ? cpu(k.grad()) : null,
                want[2] ? cpu(v.grad()) : null, g != null && want[3] ? cpu(g.grad()) : null);
    }

    static Tensor on(Tensor x, Device device, ScalarType dtype) {
        return x.to(device, dtype).detach();
    }

    static Tensor cpu(Tensor x) {
        return x.to(new Device("cpu"), ScalarType.Double);
    }

    private static final boolean[] ALL = {true, true, true, true};

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void matchesTheCpuOpInFp64(Case c) {
        try (PointerScope scope = new PointerScope()) {
            Inputs in = Inputs.of(c);
            Run ref = run(c, in, new Device("cpu"), ScalarType.Double, ALL);
            Run gpu = run(c, in, CUDA, c.dtype(), ALL);
            double fy = Fixtures.forwardTolerance(c.dtype());
            double fg = Fixtures.gradientTolerance(c.dtype());
            assertClose(gpu.y(), ref.y(), fy, c + " Y");
            assertClose(gpu.dv(), ref.dv(), fg, c + " dV");
            if (c.t() == 1) {     // Y_0 = V_0: the other gradients are zero
                Fixtures.assertZero(gpu.dq(), fg, c + " dQ");
                Fixtures.assertZero(gpu.dk(), fg, c + " dK");
                return;
            }
            assertClose(gpu.dq(), ref.dq(), fg, c + " dQ");
            assertClose(gpu.dk(), ref.dk(), fg, c + " dK");
            if (c.gated()) {
                assertClose(gpu.dlogG(), ref.dlogG(), fg, c + " dlogG");
            }
        }
    }

    /** Backward passes that want one gradient only (the others' inputs do not require grad), both forms. */
    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"q-c64", "k-c64", "v-c64", "logG-c64", "q-quadratic", "k-quadratic", "v-quadratic",
        "logG-quadratic"})
    void oneGradientAlone(String which) {
        String input = which.substring(0, which.indexOf('-'));
        long chunk = which.endsWith("c64") ? 64 : 0;
        for (ScalarType dt : new ScalarType[] {ScalarType.Float, ScalarType.BFloat16}) {
            try (PointerScope scope = new PointerScope()) {
                Case c = new Case(2, 200, 4, 2, 64, 32, 2, chunk, true, dt);
                Inputs in = Inputs.of(c);
                int i = List.of("q", "k", "v", "logG").indexOf(input);
                boolean[] want = new boolean[4];
                want[i] = true;
                Run ref = run(c, in, new Device("cpu"), ScalarType.Double, ALL);
                Run gpu = run(c, in, CUDA, dt, want);
                Tensor[] got = {gpu.dq(), gpu.dk(), gpu.dv(), gpu.dlogG()};
                Tensor[] expected = {ref.dq(), ref.dk(), ref.dv(), ref.dlogG()};
                assertClose(got[i], expected[i], Fixtures.gradientTolerance(dt), c + " d" + input + " alone");
            }
        }
    }

    /** Pieces carrying the state equal the whole sequence on CUDA, and a decode step equals the forward there. */
    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"f32", "bf16"})
    void statesOnCuda(String dtypeName) {
        ScalarType dt = dtypeName.equals("f32") ? ScalarType.Float : ScalarType.BFloat16;
        try (PointerScope scope = new PointerScope()) {
            Case c = new Case(2, 201, 4, 2, 32, 32, 2, 64, true, dt);
            Inputs in = Inputs.of(c);
            Tensor q = on(in.q(), CUDA, dt), k = on(in.k(), CUDA, dt), v = on(in.v(), CUDA, dt);
            Tensor g = on(in.logG(), CUDA, ScalarType.Float);
            Tensor whole = cpu(PowerAttention.powerFull(q, k, v, g, options(c)));
            Run ref = run(c, in, new Device("cpu"), ScalarType.Double, new boolean[4]);
            assertClose(whole, ref.y(), Fixtures.forwardTolerance(dt), c + " whole");

            long split = 77;     // inside the second chunk
            Tensor y;
            try (PowerAttentionResult first = PowerAttention.prefill(q.narrow(1, 0, split), k.narrow(1, 0, split),
                    v.narrow(1, 0, split), g.narrow(1, 0, split), options(c))) {
                assertTrue(first.state().S().is_cuda(), "the state stays on the GPU");
                long rest = c.t() - split;
                try (PowerAttentionResult second = PowerAttention.continueFrom(first.state(), q.narrow(1, split, rest),
                        k.narrow(1, split, rest), v.narrow(1, split, rest), g.narrow(1, split, rest), options(c))) {
                    y = cat(new TensorVector(cpu(first.output()), cpu(second.output())), 1);
                }
            }
            assertClose(y, ref.y(), Fixtures.forwardTolerance(dt), c + " pieces");

            long n = c.t() - 1;
            try (PowerAttentionResult prompt = PowerAttention.prefill(q.narrow(1, 0, n), k.narrow(1, 0, n),
                    v.narrow(1, 0, n), g.narrow(1, 0, n), options(c));
                 PowerAttentionResult step = PowerAttention.decodeStep(prompt.state(), q.select(1, n), k.select(1, n),
                    v.select(1, n), g.select(1, n), options(c))) {
                assertClose(cpu(step.output()), ref.y().select(1, n), Fixtures.forwardTolerance(dt),
                        c + " decode step");
            }
        }
    }

    @Test
    void aCpuTensorAmongCudaOnesIsRejected() {
        try (PointerScope scope = new PointerScope()) {
            Tensor q = randn(new long[] {1, 8, 2, 16}, new TensorOptions(ScalarType.Float)).to(CUDA, ScalarType.Float);
            Tensor kCpu = randn(new long[] {1, 8, 2, 16}, new TensorOptions(ScalarType.Float));
            Tensor v = randn(new long[] {1, 8, 2, 16}, new TensorOptions(ScalarType.Float)).to(CUDA, ScalarType.Float);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> PowerAttention.powerFull(q, kCpu, v));
            assertEquals("power_full: Q, K and V must be on one device, got Q on cuda:0, K on cpu, V on cuda:0",
                    e.getMessage());
            Tensor gCpu = zeros(new long[] {1, 8, 2}, new TensorOptions(ScalarType.Float));
            IllegalArgumentException eg = assertThrows(IllegalArgumentException.class, () -> PowerAttention.powerFull(
                    q, v, v, gCpu, PowerAttentionOptions.defaults()));
            assertEquals("power_full: log_G must be on Q's device cuda:0, got cpu", eg.getMessage());
        }
    }

    @Test
    void aStateOnTheWrongDeviceIsRejected() {
        try (PointerScope scope = new PointerScope();
             PowerAttentionState cpuState = PowerAttentionState.zeros(1, 2, 16, 16, 2)) {
            Tensor q = randn(new long[] {1, 8, 2, 16}, new TensorOptions(ScalarType.Float)).to(CUDA, ScalarType.Float);
            PowerAttentionOptions o = PowerAttentionOptions.builder().chunkSize(4).build();
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> PowerAttention.continueFrom(cpuState, q, q, q, null, o));
            assertEquals("power_full: the state must be on Q's device cuda:0, got S on cpu, s on cpu", e.getMessage());
            IllegalArgumentException d = assertThrows(IllegalArgumentException.class,
                    () -> PowerAttention.decodeStep(cpuState, q.select(1, 0), q.select(1, 0), q.select(1, 0), null, o));
            assertTrue(d.getMessage().startsWith("power_full: "), d.getMessage());
            assertTrue(d.getMessage().contains("cuda:0") && d.getMessage().contains("cpu"), d.getMessage());
        }
    }

    /** Several Java threads calling the op on the GPU at once get what one thread gets. */
    @Test
    void threadsAtOnceAgreeWithOneThread() throws Exception {
        int threads = 4;
        int rounds = 3;
        Case c = new Case(2, 300, 4, 2, 64, 64, 2, 64, true, ScalarType.Float);
        List<Inputs> inputs = new ArrayList<>();
        List<Run> alone = new ArrayList<>();
        for (int i = 0; i < threads; i++) {
            Case ci = new Case(c.b(), c.t() + i, c.hq(), c.h(), c.d(), c.e(), c.p(), c.chunk(), true, c.dtype());
            Inputs in = Inputs.of(ci);
            inputs.add(in);
            alone.add(run(ci, in, CUDA, c.dtype(), ALL));
        }
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        try {
            List<Future<List<Run>>> futures = new ArrayList<>();
            for (int i = 0; i < threads; i++) {
                int index = i;
                Case ci = new Case(c.b(), c.t() + i, c.hq(), c.h(), c.d(), c.e(), c.p(), c.chunk(), true, c.dtype());
                Callable<List<Run>> work = () -> {
                    List<Run> out = new ArrayList<>();
                    for (int r = 0; r < rounds; r++) {
                        out.add(run(ci, inputs.get(index), CUDA, c.dtype(), ALL));
                    }
                    return out;
                };
                futures.add(pool.submit(work));
            }
            for (int i = 0; i < threads; i++) {
                for (Run r : futures.get(i).get()) {
                    Run a = alone.get(i);
                    String what = "thread " + i;
                    assertClose(r.y(), a.y(), 1e-6, what + " Y");
                    assertClose(r.dq(), a.dq(), 1e-5, what + " dQ");
                    assertClose(r.dk(), a.dk(), 1e-5, what + " dK");
                    assertClose(r.dv(), a.dv(), 1e-5, what + " dV");
                    assertClose(r.dlogG(), a.dlogG(), 1e-5, what + " dlogG");
                }
            }
        } finally {
            pool.shutdownNow();
        }
    }

    /**
     * On a non-default stream (from LibTorch's pool, made current with a CUDAStreamGuard) the op's kernels run on that
     * stream, after the work queued there before them and before the work queued after: the inputs are written on
     * the stream only after ~100 ms of other work on it, and pool streams do not wait for the default stream, so an
     * op on another stream would read the inputs' old contents (zeros).
     */
    @Test
    void honoursTheCurrentCudaStream() {
        Case c = new Case(2, 300, 4, 2, 64, 64, 2, 64, true, ScalarType.BFloat16);
        try (PointerScope scope = new PointerScope()) {
            Inputs in = Inputs.of(c);
            Run ref = run(c, in, new Device("cpu"), ScalarType.Double, ALL);
            Tensor qSrc = on(in.q(), CUDA, c.dtype()), kSrc = on(in.k(), CUDA, c.dtype());
            Tensor vSrc = on(in.v(), CUDA, c.dtype()), gSrc = on(in.logG(), CUDA, ScalarType.Float);
            Tensor dySrc = on(in.dy(), CUDA, ScalarType.Double);
            torch_cuda.device_synchronize();
            CUDAStream defaultStream = torch_cuda.getCurrentCUDAStream();
            CUDAStream side = torch_cuda.getStreamFromPool();
            assertTrue(side.id() != defaultStream.id(), "the pool gives a stream other than the default one");
            Tensor y2;
            Tensor[] grads;
            try (CUDAStreamGuard guard = new CUDAStreamGuard(side.unwrap())) {
                assertEquals(side.id(), torch_cuda.getCurrentCUDAStream().id(), "the guard made the side stream current");
                Tensor q = zeros(qSrc.sizes().vec().get(), new TensorOptions(c.dtype()).device(new org.bytedeco.pytorch.DeviceOptional(CUDA)));
                Tensor k = zeros(kSrc.sizes().vec().get(), new TensorOptions(c.dtype()).device(new org.bytedeco.pytorch.DeviceOptional(CUDA)));
                Tensor v = zeros(vSrc.sizes().vec().get(), new TensorOptions(c.dtype()).device(new org.bytedeco.pytorch.DeviceOptional(CUDA)));
                Tensor g = zeros(gSrc.sizes().vec().get(), new TensorOptions(ScalarType.Float).device(new org.bytedeco.pytorch.DeviceOptional(CUDA)));
                Tensor busy = randn(new long[] {4096, 4096}, new TensorOptions(ScalarType.Float).device(new org.bytedeco.pytorch.DeviceOptional(CUDA)));
                for (int i = 0; i < 40; i++) {        // ~100 ms of work on the side stream
                    busy = busy.matmul(busy).div(new Scalar(64.0));
                    busy = busy.div(busy.abs().max().add(new Scalar(1.0)));
                }
                q.copy_(qSrc.add(busy.mean().mul(new Scalar(0.0)).to(c.dtype())));
                k.copy_(kSrc);
                v.copy_(vSrc);
                g.copy_(gSrc);
                q.requires_grad_(true);
                k.requires_grad_(true);
                v.requires_grad_(true);
                g.requires_grad_(true);
                Tensor y = PowerAttention.powerFull(q, k, v, g, options(c));
                y2 = y.mul(new Scalar(2.0));                      // queued after the op on the same stream
                y.to(ScalarType.Double).mul(dySrc).sum().backward();
                grads = new Tensor[] {q.grad(), k.grad(), v.grad(), g.grad()};
                assertEquals(side.id(), torch_cuda.getCurrentCUDAStream().id(), "the op left the stream current");
            }
            side.synchronize();
            assertEquals(defaultStream.id(), torch_cuda.getCurrentCUDAStream().id(), "the guard restored the stream");
            double fy = Fixtures.forwardTolerance(c.dtype()), fg = Fixtures.gradientTolerance(c.dtype());
            assertClose(cpu(y2).div(new Scalar(2.0)), ref.y(), fy, "Y on the side stream");
            assertClose(cpu(grads[0]), ref.dq(), fg, "dQ on the side stream");
            assertClose(cpu(grads[1]), ref.dk(), fg, "dK on the side stream");
            assertClose(cpu(grads[2]), ref.dv(), fg, "dV on the side stream");
            assertClose(cpu(grads[3]), ref.dlogG(), fg, "dlogG on the side stream");
        }
    }
}
