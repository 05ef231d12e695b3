package io.github.powerattention;

import static io.github.powerattention.Fixtures.assertClose;
import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.cat;
import static org.bytedeco.pytorch.global.torch.manual_seed;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.util.Random;

import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.InputArchive;
import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.OutputArchive;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorVector;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * SPEC §6: pieces carrying the state equal the whole (values and gradients), decoding token by token equals the
 * full forward at every position, state gradients by finite differences, bf16 decoding without drift, and the
 * state's save/load.
 */
class StateTest {

    private static PowerAttentionOptions options(int p, long chunk) {
        PowerAttentionOptions.Builder b = PowerAttentionOptions.builder().degree(p);
        return chunk > 0 ? b.chunkSize(chunk).build() : b.build();
    }

    @ParameterizedTest(name = "t{0}-c{1}-p{2}-gated{3}")
    @CsvSource({"97,16,2,true", "97,0,2,true", "130,32,2,false", "61,7,3,true", "40,8,4,true", "33,5,1,true"})
    void piecesEqualWhole(long t, long chunk, int p, boolean gated) {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(t * 13 + chunk + p);
            long split = 1 + new Random(t + chunk).nextInt((int) t - 1);  // anywhere, inside a chunk too
            Tensor q = Fixtures.normal(ScalarType.Double, 2, t, 4, 8).requires_grad_(true);
            Tensor k = Fixtures.normal(ScalarType.Double, 2, t, 2, 8).requires_grad_(true);
            Tensor v = Fixtures.normal(ScalarType.Double, 2, t, 2, 8).requires_grad_(true);
            Tensor logG = gated ? Fixtures.gates(2, t, 2).requires_grad_(true) : null;
            Tensor dy = Fixtures.normal(ScalarType.Double, 2, t, 4, 8);

            Tensor whole = PowerAttention.powerFull(q, k, v, logG, options(p, chunk));
            Tensor[] wholeGrads = grads(whole, dy, q, k, v, logG);

            long r = t - split;
            PowerAttentionOptions options = options(p, chunk);
            PowerAttentionResult first = PowerAttention.prefill(q.narrow(1, 0, split), k.narrow(1, 0, split),
                    v.narrow(1, 0, split), gated ? logG.narrow(1, 0, split) : null, options);
            PowerAttentionResult second = PowerAttention.continueFrom(first.state(), q.narrow(1, split, r),
                    k.narrow(1, split, r), v.narrow(1, split, r), gated ? logG.narrow(1, split, r) : null, options);
            Tensor pieces = cat(new TensorVector(first.output(), second.output()), 1);
            assertClose(pieces, whole, 1e-9, "Y in pieces (split " + split + ")");
            Tensor[] pieceGrads = grads(pieces, dy, q, k, v, logG);
            String[] names = {"dQ", "dK", "dV", "dlogG"};
            for (int i = 0; i < 4; i++) {
                if (wholeGrads[i] != null) {
                    assertClose(pieceGrads[i], wholeGrads[i], 1e-9, names[i] + " through the carried state");
                }
            }
        }
    }

    private static Tensor[] grads(Tensor y, Tensor dy, Tensor q, Tensor k, Tensor v, Tensor logG) {
        TensorVector inputs = logG != null ? new TensorVector(q, k, v, logG) : new TensorVector(q, k, v);
        TensorVector g = org.bytedeco.pytorch.global.torch.grad(new TensorVector(y), inputs, new TensorVector(dy),
                new org.bytedeco.pytorch.BoolOptional(true), false, false);
        return new Tensor[] {new Tensor(g.get(0)), new Tensor(g.get(1)), new Tensor(g.get(2)),
            logG != null ? new Tensor(g.get(3)) : null};
    }

    @ParameterizedTest(name = "p{0}-gated{1}-hq{2}")
    @CsvSource({"1,true,2", "2,true,4", "2,false,1", "3,true,2", "4,true,2"})
    void decodingEqualsFullForward(int p, boolean gated, long hq) {
        try (PointerScope scope = new PointerScope(); NoGradGuard guard = new NoGradGuard()) {
            manual_seed(p * 100 + hq);
            long t = 300, d = p >= 3 ? 4 : 8;
            Tensor q = Fixtures.normal(ScalarType.Double, 2, t, hq, d);
            Tensor k = Fixtures.normal(ScalarType.Double, 2, t, 1, d);
            Tensor v = Fixtures.normal(ScalarType.Double, 2, t, 1, 8);
            Tensor logG = gated ? Fixtures.gates(2, t, 1) : null;
            PowerAttentionOptions options = options(p, 64);
            Tensor full = PowerAttention.powerFull(q, k, v, logG, options);
            PowerAttentionState state = PowerAttentionState.zeros(2, 1, d, 8, p);
            for (long i = 0; i < t; i++) {
                PowerAttentionResult r = PowerAttention.decodeStep(state, q.select(1, i), k.select(1, i),
                        v.select(1, i), gated ? logG.select(1, i) : null, options);
                assertClose(r.output(), full.select(1, i), 1e-9, "decode step " + i);
                state.close();  // the old state is no longer needed
                state = r.state();
            }
        }
    }

    /**
     * With autograd on, the decode step is the differentiable ATen composition; without it, the fused one-pass step.
     * Both must agree, and the differentiable one's gradient must match central finite differences of the fused one.
     */
    @ParameterizedTest(name = "p{0}")
    @CsvSource({"1", "2", "3"})
    void decodeStepWithAndWithoutAutogradAgree(int p) {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(40 + p);
            long d = 4, e = 3, hq = 2;
            PowerAttentionState state;
            try (NoGradGuard guard = new NoGradGuard()) {
                Tensor q0 = Fixtures.normal(ScalarType.Double, 1, 9, hq, d);
                Tensor k0 = Fixtures.normal(ScalarType.Double, 1, 9, 1, d);
                Tensor v0 = Fixtures.normal(ScalarType.Double, 1, 9, 1, e);
                state = PowerAttention.prefill(q0, k0, v0, Fixtures.gates(1, 9, 1), options(p, 4)).state();
            }
            Tensor q = Fixtures.normal(ScalarType.Double, 1, hq, d);
            Tensor k = Fixtures.normal(ScalarType.Double, 1, 1, d);
            Tensor v = Fixtures.normal(ScalarType.Double, 1, 1, e);
            Tensor logG = Fixtures.gates(1, 1, 1).select(1, 0);
            Tensor qg = q.clone().requires_grad_(true);
            PowerAttentionResult differentiable = PowerAttention.decodeStep(state, qg, k, v, logG, options(p, 0));
            differentiable.output().sum().backward();
            double[] grad = new double[(int) (hq * d)];
            Tensor gq = qg.grad().contiguous();
            for (int i = 0; i < grad.length; i++) grad[i] = gq.view(-1).select(0, i).item_double();
            try (NoGradGuard guard = new NoGradGuard()) {
                PowerAttentionResult fused = PowerAttention.decodeStep(state, q, k, v, logG, options(p, 0));
                assertClose(differentiable.output().detach(), fused.output(), 1e-12, "output");
                assertClose(differentiable.state().S().detach(), fused.state().S(), 1e-12, "S");
                assertClose(differentiable.state().s().detach(), fused.state().s(), 1e-12, "s");
                double h = 1e-6;
                for (int i = 0; i < grad.length; i++) {
                    Tensor qp = q.clone(), qm = q.clone();
                    qp.view(-1).select(0, i).add_(new org.bytedeco.pytorch.Scalar(h));
                    qm.view(-1).select(0, i).sub_(new org.bytedeco.pytorch.Scalar(h));
                    double fp = PowerAttention.decodeStep(state, qp, k, v, logG, options(p, 0)).output().sum().item_double();
                    double fm = PowerAttention.decodeStep(state, qm, k, v, logG, options(p, 0)).output().sum().item_double();
                    double fd = (fp - fm) / (2 * h);
                    assertEquals(fd, grad[i], 1e-6 * Math.max(1, Math.abs(fd)), "d y / d q[" + i + "]");
                }
            }
        }
    }

    @Test
    void initialStateGradientByFiniteDifferences() {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(5);
            long d = 3, e = 2, D = PowerAttention.stateDim(d, 2);
            Tensor q = Fixtures.normal(ScalarType.Double, 1, 7, 2, d);
            Tensor k = Fixtures.normal(ScalarType.Double, 1, 7, 1, d);
            Tensor v = Fixtures.normal(ScalarType.Double, 1, 7, 1, e);
            Tensor logG = Fixtures.gates(1, 7, 1);
            Tensor S0 = Fixtures.normal(ScalarType.Double, 1, 1, D, e).requires_grad_(true);
            // a normaliser that keeps the denominators positive, as a real prefix would
            Tensor s0 = Fixtures.normal(ScalarType.Double, 1, 1, D).abs().add(new org.bytedeco.pytorch.Scalar(1.0))
                    .requires_grad_(true);
            Tensor w = Fixtures.normal(ScalarType.Double, 1, 7, 2, e);
            Tensor wS = Fixtures.normal(ScalarType.Double, 1, 1, D, e);
            PowerAttentionResult r = PowerAttention.continueFrom(PowerAttentionState.of(S0, s0), q, k, v, logG,
                    options(2, 3));
            r.output().mul(w).sum().add(r.state().S().mul(wS).sum()).backward();
            for (Tensor x : new Tensor[] {S0, s0}) {
                Tensor flat = x.detach().view(-1);
                Tensor grad = x.grad().contiguous().view(-1);
                for (long j = 0; j < flat.numel(); j += 2) {
                    double orig = flat.data_ptr_double().get(j);
                    flat.data_ptr_double().put(j, orig + 1e-6);
                    double up = loss(q, k, v, logG, S0, s0, w, wS);
                    flat.data_ptr_double().put(j, orig - 1e-6);
                    double down = loss(q, k, v, logG, S0, s0, w, wS);
                    flat.data_ptr_double().put(j, orig);
                    double numeric = (up - down) / 2e-6, analytic = grad.data_ptr_double().get(j);
                    if (Math.abs(numeric - analytic) > 1e-6 * Math.max(1, Math.abs(numeric))) {
                        fail(String.format("state gradient [%d]: analytic %.10f, finite difference %.10f", j, analytic,
                                numeric));
                    }
                }
            }
        }
    }

    private static double loss(Tensor q, Tensor k, Tensor v, Tensor logG, Tensor S0, Tensor s0, Tensor w, Tensor wS) {
        try (NoGradGuard guard = new NoGradGuard()) {
            PowerAttentionResult r = PowerAttention.continueFrom(PowerAttentionState.of(S0, s0), q, k, v, logG,
                    options(2, 3));
            return r.output().mul(w).sum().item_double() + r.state().S().mul(wS).sum().item_double();
        }
    }

    @Test
    void bf16DecodingDoesNotDrift() {
        try (PointerScope scope = new PointerScope(); NoGradGuard guard = new NoGradGuard()) {
            manual_seed(17);
            long t = 4096;
            Tensor q = Fixtures.normal(ScalarType.BFloat16, 1, t, 2, 16);
            Tensor k = Fixtures.normal(ScalarType.BFloat16, 1, t, 2, 16);
            Tensor v = Fixtures.normal(ScalarType.BFloat16, 1, t, 2, 16);
            Tensor logG = Fixtures.gates(1, t, 2);
            Tensor ref = PowerAttention.powerFull(q, k, v, logG, options(2, 256));  // fp64 inputs: the reference
            Tensor qb = q.to(ScalarType.BFloat16), kb = k.to(ScalarType.BFloat16), vb = v.to(ScalarType.BFloat16);
            PowerAttentionState state = PowerAttentionState.zeros(1, 2, 16, 16, 2);
            Tensor[] ys = new Tensor[(int) t];
            for (long i = 0; i < t; i++) {
                PowerAttentionResult r = PowerAttention.decodeStep(state, qb.select(1, i), kb.select(1, i),
                        vb.select(1, i), logG.select(1, i).to(ScalarType.Float), PowerAttentionOptions.defaults());
                ys[(int) i] = r.output();
                state.close();
                state = r.state();
            }
            Tensor last = cat(new TensorVector(java.util.Arrays.copyOfRange(ys, (int) t - 512, (int) t)), 0);
            assertEquals(ScalarType.BFloat16, last.scalar_type().intern());
            assertClose(last, ref.narrow(1, t - 512, 512).squeeze(0), 5e-3, "bf16 decode, last 512 of 4096 steps");
        }
    }

    /** SPEC §6: a returned state is fp32 for non-fp64 inputs, whatever precision the path computes in (positive
     *  log gates send the computation to fp64), and holds the true state (the fp64 inputs' state). */
    @ParameterizedTest(name = "{0}-c{1}")
    @CsvSource({"Float,8", "Float,0", "BFloat16,8"})
    void positiveGatesReturnTheStateInFloat32(String dtypeName, long chunk) {
        try (PointerScope scope = new PointerScope(); NoGradGuard guard = new NoGradGuard()) {
            manual_seed(23);
            ScalarType dtype = ScalarType.valueOf(dtypeName);
            long t = 20;
            Tensor q = Fixtures.normal(ScalarType.Double, 1, t, 2, 8).to(dtype).to(ScalarType.Double);
            Tensor k = Fixtures.normal(ScalarType.Double, 1, t, 2, 8).to(dtype).to(ScalarType.Double);
            Tensor v = Fixtures.normal(ScalarType.Double, 1, t, 2, 8).to(dtype).to(ScalarType.Double);
            Tensor logG = Fixtures.gates(1, t, 2).add(new org.bytedeco.pytorch.Scalar(1.0));  // some above 0
            PowerAttentionState ref = PowerAttention.prefill(q, k, v, logG, options(2, chunk)).state();
            PowerAttentionState got = PowerAttention.prefill(q.to(dtype), k.to(dtype), v.to(dtype), logG,
                    options(2, chunk)).state();
            assertEquals(ScalarType.Float, got.S().scalar_type().intern(), "S dtype");
            assertEquals(ScalarType.Float, got.s().scalar_type().intern(), "s dtype");
            assertClose(got.S().to(ScalarType.Double), ref.S(), 1e-5, "S");
            assertClose(got.s().to(ScalarType.Double), ref.s(), 1e-5, "s");
        }
    }

    @Test
    void saveAndLoad() throws IOException {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(9);
            Tensor q = Fixtures.normal(ScalarType.Float, 1, 20, 2, 8).to(ScalarType.Float);
            Tensor k = Fixtures.normal(ScalarType.Float, 1, 20, 2, 8).to(ScalarType.Float);
            Tensor v = Fixtures.normal(ScalarType.Float, 1, 20, 2, 8).to(ScalarType.Float);
            PowerAttentionState state = PowerAttention.prefill(q, k, v, null, options(2, 8)).state();
            File file = Files.createTempFile("state", ".pt").toFile();
            file.deleteOnExit();
            OutputArchive out = new OutputArchive();
            state.save(out, "layer0");
            out.save_to(file.getAbsolutePath());
            InputArchive in = new InputArchive();
            in.load_from(file.getAbsolutePath());
            PowerAttentionState loaded = PowerAttentionState.load(in, "layer0");
            assertClose(loaded.S(), state.S(), 0, "S after save/load");
            assertClose(loaded.s(), state.s(), 0, "s after save/load");
        }
    }

    /**
     * A decode step whose new state leaves fp32's range (a log gate of +89: exp(89) ~ 4.5e38 times a state of order
     * 1) is refused with an IllegalArgumentException naming log_G, on the fused path (no grad) and on the autograd
     * one, instead of returning a state of inf and a NaN output; the same step with a gate of +1 is served.
     */
    @ParameterizedTest(name = "grad {0}")
    @CsvSource({"false", "true"})
    void decodeStepThatOverflowsIsRefused(boolean grad) {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(61);
            long d = 4, e = 3;
            PowerAttentionState state;
            try (NoGradGuard guard = new NoGradGuard()) {
                Tensor q0 = float32(1, 6, 1, d), k0 = float32(1, 6, 1, d), v0 = float32(1, 6, 1, e);
                state = PowerAttention.prefill(q0, k0, v0, null, options(2, 0)).state();
            }
            Tensor q = float32(1, 1, d), k = float32(1, 1, d), v = float32(1, 1, e);
            if (grad) {
                q = q.requires_grad_(true);
            }
            Tensor q1 = q, k1 = k, v1 = v;
            Tensor huge = org.bytedeco.pytorch.global.torch.full(new long[] {1, 1},
                    new org.bytedeco.pytorch.Scalar(89.0)).to(ScalarType.Float);
            IllegalArgumentException ex = assertThrows(IllegalArgumentException.class,
                    () -> PowerAttention.decodeStep(state, q1, k1, v1, huge, options(2, 0)));
            assertTrue(ex.getMessage().startsWith("power_full: the state after this decode step overflows"),
                    ex.getMessage());
            assertTrue(ex.getMessage().contains("log_G"), ex.getMessage());
            Tensor mild = org.bytedeco.pytorch.global.torch.full(new long[] {1, 1},
                    new org.bytedeco.pytorch.Scalar(1.0)).to(ScalarType.Float);
            Fixtures.assertFinite(PowerAttention.decodeStep(state, q1, k1, v1, mild, options(2, 0)).output(),
                    "a step with log_G = +1");
        }
    }

    private static Tensor float32(long... shape) {
        return Fixtures.normal(ScalarType.Float, shape).to(ScalarType.Float);
    }

    @Test
    void badState() {
        try (PointerScope scope = new PointerScope()) {
            Tensor q = Fixtures.normal(ScalarType.Double, 1, 20, 2, 8);
            Tensor k = Fixtures.normal(ScalarType.Double, 1, 20, 2, 8);
            Tensor v = Fixtures.normal(ScalarType.Double, 1, 20, 2, 8);
            PowerAttentionState wrong = PowerAttentionState.zeros(1, 2, 8, 4, 2);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> PowerAttention.continueFrom(wrong, q, k, v, null, options(2, 8)));
            assertEquals("power_full: state S must have shape [b, h, D, e] = [1, 2, 36, 8], got [1, 2, 36, 4]",
                    e.getMessage());
        }
    }
}
