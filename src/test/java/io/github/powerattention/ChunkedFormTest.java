package io.github.powerattention;

import static io.github.powerattention.Fixtures.assertClose;
import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.manual_seed;

import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;

import io.github.powerattention.internal.power_attention;
import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The chunked form against the quadratic form (the op's own, and the plain-ATen references), for chunk sizes
 * {1, 16, 64, t, > t} and t in {1, 17, 97, 256, 1025}, and a case long enough that the CPU backward checkpoints
 * its states: values and gradients, fp64, so differences are the algorithm's, not rounding's.
 */
class ChunkedFormTest {

    record Case(long t, long chunk, int p, long hq, long h, long d, long e, boolean gated) {
        @Override
        public String toString() {
            return String.format("b2-t%d-c%d-p%d-hq%d-h%d-d%d-e%d-%s-f64", t, chunk, p, hq, h, d, e,
                    gated ? "gated" : "ungated");
        }
    }

    static Stream<Case> cases() {
        List<Case> cases = new ArrayList<>();
        for (long t : new long[] {1, 17, 97, 256, 1025}) {
            for (long c : new long[] {1, 16, 64, t, t + 5}) {
                if (t == 1025 && c == 1) {
                    continue;  // 1025 chunks of one token: covered at shorter t, slow here
                }
                cases.add(new Case(t, c, 2, 2, 1, 16, 16, c % 2 == 0 || t == 1));
            }
        }
        cases.add(new Case(97, 16, 1, 4, 2, 16, 8, true));
        cases.add(new Case(97, 16, 3, 2, 2, 16, 16, true));
        cases.add(new Case(97, 16, 4, 2, 1, 16, 16, true));
        cases.add(new Case(97, 7, 4, 1, 1, 16, 32, false));
        cases.add(new Case(200, 64, 2, 8, 1, 64, 64, true));
        // 128 chunks of D = 2080: more states than the CPU backward keeps (cpu/power_full_cpu.h, state_interval), so it
        // recomputes every second one from a checkpoint
        cases.add(new Case(2048, 16, 2, 1, 1, 64, 64, true));
        return cases.stream();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void chunkedEqualsQuadratic(Case c) {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(c.toString().hashCode());
            long b = 2;
            Tensor q = Fixtures.normal(ScalarType.Double, b, c.t(), c.hq(), c.d());
            Tensor k = Fixtures.normal(ScalarType.Double, b, c.t(), c.h(), c.d());
            Tensor v = Fixtures.normal(ScalarType.Double, b, c.t(), c.h(), c.e());
            Tensor logG = c.gated() ? Fixtures.gates(b, c.t(), c.h()) : null;
            Tensor dy = Fixtures.normal(ScalarType.Double, b, c.t(), c.hq(), c.e());

            Tensor[] quad = run(q, k, v, logG, dy, c.p(), 0);
            Tensor[] chunked = run(q, k, v, logG, dy, c.p(), c.chunk());
            String[] names = {"Y", "dQ", "dK", "dV", "dlogG"};
            for (int i = 0; i < names.length; i++) {
                if (quad[i] != null) {
                    assertClose(chunked[i], quad[i], 1e-9, c + " chunked vs quadratic " + names[i]);
                }
            }
            if (c.t() <= 256) {
                // the plain-ATen reference of the chunked form agrees with the op as well
                double scale = 1.0 / Math.sqrt(c.d());
                Tensor ref = power_attention.power_full_chunked(q, k, v, logG == null ? new Tensor() : logG, c.p(),
                        scale, c.chunk());
                assertClose(chunked[0], ref, 1e-10, c + " op vs chunked reference");
            }
        }
    }

    /** Y and the gradients of (Y * dy).sum(), gradients null where they do not apply. */
    static Tensor[] run(Tensor q, Tensor k, Tensor v, Tensor logG, Tensor dy, int p, long chunk) {
        Tensor xq = Fixtures.leaf(q, ScalarType.Double), xk = Fixtures.leaf(k, ScalarType.Double);
        Tensor xv = Fixtures.leaf(v, ScalarType.Double);
        Tensor xg = logG == null ? null : Fixtures.leaf(logG, ScalarType.Double);
        PowerAttentionOptions.Builder o = PowerAttentionOptions.builder().degree(p);
        if (chunk > 0) {
            o.chunkSize(chunk);
        }
        Tensor y = PowerAttention.powerFull(xq, xk, xv, xg, o.build());
        y.mul(dy).sum().backward();
        return new Tensor[] {y, xq.grad(), xk.grad(), xv.grad(), xg == null ? null : xg.grad()};
    }
}
