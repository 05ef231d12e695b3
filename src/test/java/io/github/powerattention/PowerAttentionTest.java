package io.github.powerattention;

import static io.github.powerattention.Fixtures.assertClose;
import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.cat;
import static org.bytedeco.pytorch.global.torch.manual_seed;
import static org.bytedeco.pytorch.global.torch.zeros;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorVector;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The calls of {@link PowerAttention} and how they share {@link PowerAttentionOptions}: one options object reused
 * across calls, shapes and layers gives what fresh options give (and the oracle); the ungated overload, a null
 * {@code logG} and zero gates are one thing; each stateful call uses the options it is given. The math itself is
 * tested elsewhere (PowerFullAccuracyTest, ChunkedFormTest, StateTest).
 */
class PowerAttentionTest {

    private static PowerAttentionOptions fresh(int p, long chunk) {
        PowerAttentionOptions.Builder b = PowerAttentionOptions.builder().degree(p);
        return chunk > 0 ? b.chunkSize(chunk).build() : b.build();
    }

    /**
     * One options object (default scale) serves layers of different head dimensions, gated and ungated, one call
     * after another: each call resolves the default scale {@code 1 / sqrt(d)} of its own d, keeps nothing of the
     * previous call, and gives bit for bit what freshly built options give.
     */
    @ParameterizedTest(name = "chunk{0}")
    @ValueSource(longs = {0, 16})
    void optionsReusedAcrossCallsGiveWhatFreshOptionsGive(long chunk) {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(31 + chunk);
            PowerAttentionOptions shared = fresh(2, chunk);
            long[] headDims = {8, 16, 8, 4};
            boolean[] gated = {true, false, true, true};
            for (int layer = 0; layer < headDims.length; layer++) {
                long d = headDims[layer];
                Tensor q = Fixtures.normal(ScalarType.Double, 2, 37, 4, d);
                Tensor k = Fixtures.normal(ScalarType.Double, 2, 37, 2, d);
                Tensor v = Fixtures.normal(ScalarType.Double, 2, 37, 2, 5);
                Tensor logG = gated[layer] ? Fixtures.gates(2, 37, 2) : null;
                Tensor y = PowerAttention.powerFull(q, k, v, logG, shared);
                String what = "layer " + layer + " (d " + d + ", gated " + gated[layer] + ")";
                assertClose(y, PowerAttention.powerFull(q, k, v, logG, fresh(2, chunk)), 0, what + " vs fresh options");
                assertClose(y, Oracle.powerFull(q, k, v, logG, 2, 1 / Math.sqrt(d)), 1e-10, what + " vs oracle");
            }
            assertEquals(fresh(2, chunk), shared, "the shared options are unchanged");
        }
    }

    /** The stateful calls leave the options, and the state passed in, as they were: reused, they give the same. */
    @Test
    void optionsAndStateReusedByStatefulCalls() {
        try (PointerScope scope = new PointerScope(); NoGradGuard guard = new NoGradGuard()) {
            manual_seed(32);
            PowerAttentionOptions options = fresh(2, 8);
            Tensor q = Fixtures.normal(ScalarType.Double, 1, 30, 2, 4), k = Fixtures.normal(ScalarType.Double, 1, 30, 1, 4);
            Tensor v = Fixtures.normal(ScalarType.Double, 1, 30, 1, 3);
            Tensor logG = Fixtures.gates(1, 30, 1);
            PowerAttentionResult prompt = PowerAttention.prefill(q.narrow(1, 0, 20), k.narrow(1, 0, 20),
                    v.narrow(1, 0, 20), logG.narrow(1, 0, 20), options);
            Tensor S = prompt.state().S().clone(), s = prompt.state().s().clone();
            PowerAttentionResult a = PowerAttention.continueFrom(prompt.state(), q.narrow(1, 20, 10),
                    k.narrow(1, 20, 10), v.narrow(1, 20, 10), logG.narrow(1, 20, 10), options);
            PowerAttentionResult step = PowerAttention.decodeStep(prompt.state(), q.select(1, 20), k.select(1, 20),
                    v.select(1, 20), logG.select(1, 20), options);
            PowerAttentionResult b = PowerAttention.continueFrom(prompt.state(), q.narrow(1, 20, 10),
                    k.narrow(1, 20, 10), v.narrow(1, 20, 10), logG.narrow(1, 20, 10), options);
            assertClose(prompt.state().S(), S, 0, "S of the state passed in");
            assertClose(prompt.state().s(), s, 0, "s of the state passed in");
            assertClose(b.output(), a.output(), 0, "the same call again");
            assertClose(step.output(), a.output().select(1, 0), 1e-10, "a decode step from the same state");
            Tensor whole = PowerAttention.powerFull(q, k, v, logG, options);
            assertClose(cat(new TensorVector(prompt.output(), a.output()), 1), whole, 1e-10, "prefill + continueFrom");
        }
    }

    /**
     * {@code powerFull(q, k, v, options)}, {@code powerFull(q, k, v, null, options)} and zero log gates are the same
     * function: values, and the gradients of q, k and v (zero gates are a real input: they get a gradient too).
     */
    @ParameterizedTest(name = "chunk{0}")
    @ValueSource(longs = {0, 8})
    void ungatedEqualsNullEqualsZeroGates(long chunk) {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(33 + chunk);
            Tensor q = Fixtures.normal(ScalarType.Double, 2, 29, 4, 8), k = Fixtures.normal(ScalarType.Double, 2, 29, 2, 8);
            Tensor v = Fixtures.normal(ScalarType.Double, 2, 29, 2, 6);
            Tensor dy = Fixtures.normal(ScalarType.Double, 2, 29, 4, 6);
            PowerAttentionOptions options = fresh(2, chunk);
            Tensor[] ungated = gradients(q, k, v, dy, null, x -> PowerAttention.powerFull(x[0], x[1], x[2], options));
            Tensor[] nullGates = gradients(q, k, v, dy, null,
                    x -> PowerAttention.powerFull(x[0], x[1], x[2], null, options));
            Tensor zeroGates = zeros(new long[] {2, 29, 2}, Fixtures.f64());
            Tensor[] zero = gradients(q, k, v, dy, zeroGates,
                    x -> PowerAttention.powerFull(x[0], x[1], x[2], x[3], options));
            Tensor oracle = Oracle.powerFull(q, k, v, null, 2, 1 / Math.sqrt(8));
            String[] names = {"Y", "dQ", "dK", "dV"};
            for (int i = 0; i < names.length; i++) {
                assertClose(nullGates[i], ungated[i], 0, names[i] + ": null logG vs the ungated overload");
                assertClose(zero[i], ungated[i], 1e-12, names[i] + ": zero logG vs the ungated overload");
            }
            assertClose(ungated[0], oracle, 1e-10, "Y vs oracle");
            assertTrue(zero[4].defined(), "zero gates get a gradient");
            // the three-argument overload: the defaults (quadratic form, degree 2)
            assertClose(PowerAttention.powerFull(q, k, v), oracle, 1e-10, "powerFull(q, k, v)");
        }
    }

    /** {y, dq, dk, dv, dlogG} of sum(y * dy) for leaves made from q, k, v (and logG when given). */
    private static Tensor[] gradients(Tensor q, Tensor k, Tensor v, Tensor dy, Tensor logG,
            java.util.function.Function<Tensor[], Tensor> op) {
        Tensor[] x = {Fixtures.leaf(q, ScalarType.Double), Fixtures.leaf(k, ScalarType.Double),
            Fixtures.leaf(v, ScalarType.Double), logG == null ? null : Fixtures.leaf(logG, ScalarType.Double)};
        Tensor y = op.apply(x);
        y.mul(dy).sum().backward();
        return new Tensor[] {y.detach(), x[0].grad(), x[1].grad(), x[2].grad(), x[3] == null ? null : x[3].grad()};
    }

    /** A null logG in the stateful calls is no gating, as zero gates are, through prefill, continueFrom and decode. */
    @Test
    void nullGatesInStatefulCalls() {
        try (PointerScope scope = new PointerScope(); NoGradGuard guard = new NoGradGuard()) {
            manual_seed(34);
            PowerAttentionOptions options = fresh(2, 4);
            Tensor q = Fixtures.normal(ScalarType.Double, 1, 13, 2, 4), k = Fixtures.normal(ScalarType.Double, 1, 13, 1, 4);
            Tensor v = Fixtures.normal(ScalarType.Double, 1, 13, 1, 3);
            Tensor zeroGates = zeros(new long[] {1, 13, 1}, Fixtures.f64());
            Tensor oracle = Oracle.powerFull(q, k, v, null, 2, 0.5);
            try (PowerAttentionResult a = PowerAttention.prefill(q.narrow(1, 0, 7), k.narrow(1, 0, 7),
                         v.narrow(1, 0, 7), null, options);
                 PowerAttentionResult z = PowerAttention.prefill(q.narrow(1, 0, 7), k.narrow(1, 0, 7),
                         v.narrow(1, 0, 7), zeroGates.narrow(1, 0, 7), options);
                 PowerAttentionResult b = PowerAttention.continueFrom(a.state(), q.narrow(1, 7, 5), k.narrow(1, 7, 5),
                         v.narrow(1, 7, 5), null, options);
                 PowerAttentionResult c = PowerAttention.decodeStep(b.state(), q.select(1, 12), k.select(1, 12),
                         v.select(1, 12), null, options)) {
                assertClose(a.state().S(), z.state().S(), 1e-12, "prefill S: null vs zero gates");
                assertClose(a.state().s(), z.state().s(), 1e-12, "prefill s: null vs zero gates");
                assertClose(a.output(), oracle.narrow(1, 0, 7), 1e-10, "prefill");
                assertClose(b.output(), oracle.narrow(1, 7, 5), 1e-10, "continueFrom");
                assertClose(c.output(), oracle.select(1, 12), 1e-10, "decodeStep");
            }
        }
    }

    /**
     * A decode step with the options of the sequence equals the full forward at that position, for each degree
     * (the step uses the options' degree) and whatever the scale (which cancels) or chunk size (which a single
     * token does not have).
     */
    @ParameterizedTest(name = "p{0}")
    @ValueSource(ints = {1, 2, 3, 4})
    void decodeStepWithOptionsEqualsFullForward(int p) {
        try (PointerScope scope = new PointerScope(); NoGradGuard guard = new NoGradGuard()) {
            manual_seed(35 + p);
            long t = 23, d = p >= 3 ? 3 : 6;
            PowerAttentionOptions options = PowerAttentionOptions.builder().degree(p).scale(0.7).chunkSize(5).build();
            Tensor q = Fixtures.normal(ScalarType.Double, 2, t, 2, d), k = Fixtures.normal(ScalarType.Double, 2, t, 1, d);
            Tensor v = Fixtures.normal(ScalarType.Double, 2, t, 1, 4);
            Tensor logG = Fixtures.gates(2, t, 1);
            Tensor full = PowerAttention.powerFull(q, k, v, logG, options);
            assertClose(full, Oracle.powerFull(q, k, v, logG, p, 0.7), p % 2 == 1 ? 1e-9 : 1e-10, "full vs oracle");
            long n = t - 1;
            try (PowerAttentionResult prompt = PowerAttention.prefill(q.narrow(1, 0, n), k.narrow(1, 0, n),
                         v.narrow(1, 0, n), logG.narrow(1, 0, n), options);
                 PowerAttentionResult step = PowerAttention.decodeStep(prompt.state(), q.select(1, n),
                         k.select(1, n), v.select(1, n), logG.select(1, n), options);
                 PowerAttentionResult plain = PowerAttention.decodeStep(prompt.state(), q.select(1, n),
                         k.select(1, n), v.select(1, n), logG.select(1, n), fresh(p, 0))) {
                assertClose(step.output(), full.select(1, n), p % 2 == 1 ? 1e-9 : 1e-10, "decode step at " + n);
                assertClose(plain.output(), step.output(), 1e-12, "scale and chunk size do not matter to a step");
            }
        }
    }

    /**
     * A negative scale is SPEC §2's math as written: every weight of a row carries {@code scale^p}, so for odd p
     * the numerator and the normaliser change sign together. Forward and every gradient against the fp64 oracle
     * evaluated at the negative scale itself, both forms, degrees 1-4, gated.
     */
    @ParameterizedTest(name = "p{0}")
    @ValueSource(ints = {1, 2, 3, 4})
    void negativeScaleMatchesOracle(int p) {
        for (long chunk : new long[] {0, 4}) {
            try (PointerScope scope = new PointerScope()) {
                manual_seed(70 + p);
                long t = 11, d = p >= 3 ? 3 : 5;
                double scale = -0.8;
                Tensor q = Fixtures.normal(ScalarType.Double, 1, t, 2, d), k = Fixtures.normal(ScalarType.Double, 1, t, 1, d);
                Tensor v = Fixtures.normal(ScalarType.Double, 1, t, 1, 3), logG = Fixtures.gates(1, t, 1);
                Tensor dy = Fixtures.normal(ScalarType.Double, 1, t, 2, 3);
                Tensor[] x = {q.detach().requires_grad_(true), k.detach().requires_grad_(true),
                    v.detach().requires_grad_(true), logG.detach().requires_grad_(true)};
                Tensor[] r = {q.detach().requires_grad_(true), k.detach().requires_grad_(true),
                    v.detach().requires_grad_(true), logG.detach().requires_grad_(true)};
                PowerAttentionOptions.Builder o = PowerAttentionOptions.builder().degree(p).scale(scale);
                PowerAttentionOptions options = chunk > 0 ? o.chunkSize(chunk).build() : o.build();
                Tensor y = PowerAttention.powerFull(x[0], x[1], x[2], x[3], options);
                Tensor ref = Oracle.powerFull(r[0], r[1], r[2], r[3], p, scale);
                y.mul(dy).sum().backward();
                ref.mul(dy).sum().backward();
                String what = "p" + p + (chunk > 0 ? " chunk " + chunk : " quadratic") + ", scale " + scale;
                double tol = p % 2 == 1 ? 1e-8 : 1e-9;
                assertClose(y, ref, tol, what + ": y");
                String[] names = {"dq", "dk", "dv", "dlogG"};
                for (int i = 0; i < 4; ++i) {
                    assertClose(x[i].grad(), r[i].grad(), tol, what + ": " + names[i]);
                }
            }
        }
    }

    @Test
    void optionsAreValues() {
        PowerAttentionOptions a = PowerAttentionOptions.builder().degree(3).scale(0.5).chunkSize(64).build();
        PowerAttentionOptions b = PowerAttentionOptions.builder().chunkSize(64).scale(0.5).degree(3).build();
        assertEquals(a, b);
        assertEquals(a.hashCode(), b.hashCode());
        assertEquals(a, a.toBuilder().build());
        assertEquals(PowerAttentionOptions.builder().build(), PowerAttentionOptions.defaults());
        assertSame(PowerAttentionOptions.defaults(), PowerAttentionOptions.defaults());
        PowerAttentionOptions quadratic = a.toBuilder().quadratic().defaultScale().build();
        assertNotEquals(a, quadratic);
        assertTrue(quadratic.chunkSize().isEmpty() && quadratic.scale().isEmpty(), quadratic.toString());
        assertEquals(64, a.chunkSize().getAsLong(), "toBuilder leaves the original as it was");
        assertEquals("PowerAttentionOptions{degree=3, scale=0.5, chunkSize=64}", a.toString());
        assertEquals("PowerAttentionOptions{degree=2, scale=1/sqrt(d), chunkSize=none (quadratic)}",
                PowerAttentionOptions.defaults().toString());
    }
}
