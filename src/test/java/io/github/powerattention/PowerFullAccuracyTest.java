package io.github.powerattention;

import static io.github.powerattention.Fixtures.assertClose;
import static io.github.powerattention.Fixtures.assertFinite;
import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.manual_seed;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;

import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Forward and all four gradients against the fp64 oracle of SPEC §2, at the SPEC §7 tolerances, over dtypes, both
 * forms, degrees 1-4, gating, grouped-query heads, e != d and odd lengths, and the edges of the CPU's fp32 state
 * product kernels.
 */
class PowerFullAccuracyTest {

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
        for (ScalarType dt : new ScalarType[] {ScalarType.Double, ScalarType.Float, ScalarType.BFloat16, ScalarType.Half}) {
            // the workhorse: deg 2, both forms, gating, GQA, odd length
            cases.add(new Case(2, 97, 4, 2, 32, 32, 2, 16, true, dt));
            cases.add(new Case(2, 97, 4, 2, 32, 32, 2, 0, true, dt));
            cases.add(new Case(1, 256, 2, 1, 64, 32, 2, 64, true, dt));
            cases.add(new Case(1, 17, 8, 1, 16, 64, 2, 16, false, dt));
            // other degrees, at small d in the chunked form
            cases.add(new Case(1, 97, 2, 2, 16, 16, 1, 16, true, dt));
            cases.add(new Case(1, 97, 2, 1, 16, 32, 3, 16, true, dt));
            cases.add(new Case(1, 97, 4, 2, 16, 16, 4, 16, true, dt));
            cases.add(new Case(1, 64, 2, 1, 32, 16, 4, 0, false, dt));
            cases.add(new Case(1, 1, 2, 1, 16, 16, 2, 16, true, dt));
        }
        // long sequences, one per form and dtype class
        cases.add(new Case(1, 1025, 2, 1, 16, 16, 2, 64, true, ScalarType.Double));
        cases.add(new Case(1, 1025, 2, 1, 16, 16, 2, 64, true, ScalarType.Float));
        cases.add(new Case(1, 1025, 2, 2, 32, 16, 2, 0, true, ScalarType.BFloat16));
        cases.add(new Case(1, 1025, 4, 1, 64, 64, 2, 128, true, ScalarType.Float));
        cases.add(new Case(1, 300, 2, 1, 16, 16, 4, 32, false, ScalarType.Float));
        // the CPU's degree-2 fp32 state products (cpu/phi_products_cpu.h) at their edges: D not a multiple of the
        // 48-feature tile (d = 13, 7), e not a multiple of 16 and over 64 columns, more than 128 rows in a chunk
        // (chunk 150; 3 x 64 grouped query rows), t not a multiple of the chunk, e != d, with and without gates
        cases.add(new Case(1, 331, 3, 1, 13, 40, 2, 64, true, ScalarType.Float));
        cases.add(new Case(1, 200, 2, 2, 7, 70, 2, 48, true, ScalarType.Float));
        cases.add(new Case(1, 301, 1, 1, 20, 17, 2, 150, true, ScalarType.Float));
        cases.add(new Case(2, 190, 2, 1, 16, 130, 2, 32, false, ScalarType.Float));
        cases.add(new Case(1, 160, 4, 1, 24, 24, 2, 50, true, ScalarType.BFloat16));
        return cases.stream();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void matchesOracle(Case c) {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(c.toString().hashCode());
            Tensor q = Fixtures.normal(c.dtype(), c.b(), c.t(), c.hq(), c.d());
            Tensor k = Fixtures.normal(c.dtype(), c.b(), c.t(), c.h(), c.d());
            Tensor v = Fixtures.normal(c.dtype(), c.b(), c.t(), c.h(), c.e());
            Tensor logG = c.gated() ? Fixtures.gates(c.b(), c.t(), c.h()) : null;
            // the output gradient as it reaches the op: in the op's dtype
            Tensor dy = Fixtures.normal(c.dtype(), c.b(), c.t(), c.hq(), c.e());
            double scale = 1.0 / Math.sqrt(c.d());

            Tensor rq = Fixtures.leaf(q, ScalarType.Double), rk = Fixtures.leaf(k, ScalarType.Double);
            Tensor rv = Fixtures.leaf(v, ScalarType.Double);
            Tensor rg = c.gated() ? Fixtures.leaf(logG, ScalarType.Double) : null;
            Oracle.powerFull(rq, rk, rv, rg, c.p(), scale).mul(dy).sum().backward();

            ScalarType gateType = c.dtype() == ScalarType.Double ? ScalarType.Double : ScalarType.Float;
            Tensor xq = Fixtures.leaf(q, c.dtype()), xk = Fixtures.leaf(k, c.dtype()), xv = Fixtures.leaf(v, c.dtype());
            Tensor xg = c.gated() ? Fixtures.leaf(logG, gateType) : null;
            PowerAttentionOptions.Builder o = PowerAttentionOptions.builder().degree(c.p());
            if (c.chunk() > 0) {
                o.chunkSize(c.chunk());
            }
            Tensor y = PowerAttention.powerFull(xq, xk, xv, xg, o.build());
            assertEquals(c.dtype(), y.scalar_type().intern(), "output dtype");
            assertEquals(4, y.dim());
            assertEquals(c.e(), y.size(3));
            y.to(ScalarType.Double).mul(dy).sum().backward();

            double fy = Fixtures.forwardTolerance(c.dtype()), fg = Fixtures.gradientTolerance(c.dtype());
            assertClose(y, Oracle.powerFull(q, k, v, logG, c.p(), scale), fy, c + " Y");
            assertClose(xv.grad(), rv.grad(), fg, c + " dV");
            if (c.t() == 1) {
                // Y_0 = V_0 whatever Q, K and the gates: their gradients are zero
                Fixtures.assertZero(xq.grad(), fg, c + " dQ");
                Fixtures.assertZero(xk.grad(), fg, c + " dK");
                if (c.gated()) {
                    Fixtures.assertZero(xg.grad(), fg, c + " dlogG");
                }
                return;
            }
            assertClose(xq.grad(), rq.grad(), fg, c + " dQ");
            assertClose(xk.grad(), rk.grad(), fg, c + " dK");
            if (c.gated()) {
                assertEquals(gateType, xg.grad().scalar_type().intern(), "log_G gradient dtype");
                assertClose(xg.grad(), rg.grad(), fg, c + " dlogG");
            }
            assertFinite(y, c + " Y");
        }
    }
}
