package io.github.powerattention;

import static io.github.powerattention.Fixtures.assertClose;
import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.manual_seed;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.Tensor;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.api.Test;

/**
 * Gradients by central finite differences in fp64 (the op against itself, no oracle involved), and the op under
 * no-grad, with inputs that do not require grad, and on non-contiguous views.
 */
class GradientTest {

    private static PowerAttentionOptions options(int p, long chunk) {
        PowerAttentionOptions.Builder b = PowerAttentionOptions.builder().degree(p);
        return chunk > 0 ? b.chunkSize(chunk).build() : b.build();
    }

    /** L = sum(Y * W) for a fixed random W. */
    private static double loss(Tensor q, Tensor k, Tensor v, Tensor logG, Tensor w, int p, long chunk) {
        try (NoGradGuard guard = new NoGradGuard()) {
            return PowerAttention.powerFull(q, k, v, logG, options(p, chunk)).mul(w).sum().item_double();
        }
    }

    @ParameterizedTest(name = "p{0}-c{1}")
    @CsvSource({"1,4", "2,4", "2,0", "3,3", "4,4", "2,1"})
    void finiteDifferences(int p, long chunk) {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(100 + p * 10 + chunk);
            Tensor q = Fixtures.normal(ScalarType.Double, 1, 9, 2, 4).requires_grad_(true);
            Tensor k = Fixtures.normal(ScalarType.Double, 1, 9, 1, 4).requires_grad_(true);
            Tensor v = Fixtures.normal(ScalarType.Double, 1, 9, 1, 3).requires_grad_(true);
            Tensor logG = Fixtures.gates(1, 9, 1).requires_grad_(true);
            Tensor w = Fixtures.normal(ScalarType.Double, 1, 9, 2, 3);
            PowerAttention.powerFull(q, k, v, logG, options(p, chunk)).mul(w).sum().backward();
            Tensor[] inputs = {q, k, v, logG};
            String[] names = {"Q", "K", "V", "log_G"};
            double h = 1e-6;
            for (int i = 0; i < inputs.length; i++) {
                Tensor x = inputs[i];
                Tensor flat = x.detach().view(-1);  // shares storage with x
                Tensor grad = x.grad().contiguous().view(-1);
                for (long j = 0; j < flat.numel(); j += 3) {
                    double orig = at(flat, j);
                    set(flat, j, orig + h);
                    double up = loss(q, k, v, logG, w, p, chunk);
                    set(flat, j, orig - h);
                    double down = loss(q, k, v, logG, w, p, chunk);
                    set(flat, j, orig);
                    double numeric = (up - down) / (2 * h);
                    double analytic = at(grad, j);
                    if (Math.abs(numeric - analytic) > 1e-6 * Math.max(1.0, Math.abs(numeric))) {
                        fail(String.format("d%s[%d]: analytic %.10f, finite difference %.10f", names[i], j, analytic,
                                numeric));
                    }
                }
            }
        }
    }

    /** flat: a contiguous fp64 vector; reads element j through its data pointer. */
    private static double at(Tensor flat, long j) {
        return flat.data_ptr_double().get(j);
    }

    private static void set(Tensor flat, long j, double value) {
        flat.data_ptr_double().put(j, value);
    }

    @Test
    void underNoGrad() {
        try (PointerScope scope = new PointerScope()) {
            Tensor q = Fixtures.normal(ScalarType.Float, 1, 50, 2, 16).to(ScalarType.Float).requires_grad_(true);
            Tensor k = Fixtures.normal(ScalarType.Float, 1, 50, 2, 16).to(ScalarType.Float);
            Tensor v = Fixtures.normal(ScalarType.Float, 1, 50, 2, 16).to(ScalarType.Float);
            Tensor with = PowerAttention.powerFull(q, k, v, null, options(2, 16));
            assertTrue(with.requires_grad(), "grad mode: output requires grad");
            try (NoGradGuard guard = new NoGradGuard()) {
                Tensor without = PowerAttention.powerFull(q, k, v, null, options(2, 16));
                assertFalse(without.requires_grad(), "no-grad: output does not require grad");
                assertClose(without, with.detach(), 1e-6, "no-grad output");
            }
        }
    }

    @Test
    void onlySomeInputsRequireGrad() {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(7);
            Tensor q = Fixtures.normal(ScalarType.Double, 1, 40, 2, 8);
            Tensor k = Fixtures.normal(ScalarType.Double, 1, 40, 1, 8);
            Tensor v = Fixtures.normal(ScalarType.Double, 1, 40, 1, 8);
            Tensor logG = Fixtures.gates(1, 40, 1);
            Tensor dy = Fixtures.normal(ScalarType.Double, 1, 40, 2, 8);
            for (long chunk : new long[] {0, 8}) {
                // reference: everything requires grad
                Tensor rq = Fixtures.leaf(q, ScalarType.Double), rk = Fixtures.leaf(k, ScalarType.Double);
                Tensor rv = Fixtures.leaf(v, ScalarType.Double), rg = Fixtures.leaf(logG, ScalarType.Double);
                PowerAttention.powerFull(rq, rk, rv, rg, options(2, chunk)).mul(dy).sum().backward();
                // only V, then only log_G, then only K
                Tensor xv = Fixtures.leaf(v, ScalarType.Double);
                PowerAttention.powerFull(q, k, xv, logG, options(2, chunk)).mul(dy).sum().backward();
                assertClose(xv.grad(), rv.grad(), 1e-12, "c" + chunk + " dV alone");
                Tensor xg = Fixtures.leaf(logG, ScalarType.Double);
                PowerAttention.powerFull(q, k, v, xg, options(2, chunk)).mul(dy).sum().backward();
                assertClose(xg.grad(), rg.grad(), 1e-12, "c" + chunk + " dlogG alone");
                Tensor xk = Fixtures.leaf(k, ScalarType.Double);
                PowerAttention.powerFull(q, xk, v, logG, options(2, chunk)).mul(dy).sum().backward();
                assertClose(xk.grad(), rk.grad(), 1e-12, "c" + chunk + " dK alone");
                Tensor none = PowerAttention.powerFull(q, k, v, logG, options(2, chunk));
                assertFalse(none.requires_grad(), "no input requires grad");
            }
        }
    }

    @Test
    void nonContiguousInputs() {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(11);
            // [b, h, t, d] tensors viewed as [b, t, h, d]: transposed, not contiguous
            Tensor q = Fixtures.normal(ScalarType.Double, 2, 4, 37, 16).transpose(1, 2);
            Tensor k = Fixtures.normal(ScalarType.Double, 2, 2, 37, 16).transpose(1, 2);
            Tensor v = Fixtures.normal(ScalarType.Double, 2, 2, 37, 24).transpose(1, 2);
            Tensor logG = Fixtures.gates(2, 2, 37).transpose(1, 2);
            assertFalse(q.is_contiguous());
            Tensor dy = Fixtures.normal(ScalarType.Double, 2, 37, 4, 24);
            for (long chunk : new long[] {0, 16}) {
                Tensor xq = q.detach().requires_grad_(true), xk = k.detach().requires_grad_(true);
                Tensor xv = v.detach().requires_grad_(true), xg = logG.detach().requires_grad_(true);
                Tensor y = PowerAttention.powerFull(xq, xk, xv, xg, options(2, chunk));
                y.mul(dy).sum().backward();
                Tensor cq = Fixtures.leaf(q.contiguous(), ScalarType.Double);
                Tensor ck = Fixtures.leaf(k.contiguous(), ScalarType.Double);
                Tensor cv = Fixtures.leaf(v.contiguous(), ScalarType.Double);
                Tensor cg = Fixtures.leaf(logG.contiguous(), ScalarType.Double);
                Tensor yc = PowerAttention.powerFull(cq, ck, cv, cg, options(2, chunk));
                yc.mul(dy).sum().backward();
                assertClose(y, yc, 1e-14, "c" + chunk + " Y");
                assertClose(xq.grad(), cq.grad(), 1e-14, "c" + chunk + " dQ");
                assertClose(xk.grad(), ck.grad(), 1e-14, "c" + chunk + " dK");
                assertClose(xv.grad(), cv.grad(), 1e-14, "c" + chunk + " dV");
                assertClose(xg.grad(), cg.grad(), 1e-14, "c" + chunk + " dlogG");
                assertClose(y, Oracle.powerFull(q, k, v, logG, 2, 0.25), 1e-10, "c" + chunk + " Y vs oracle");
            }
        }
    }

    @Test
    void explicitScale() {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(3);
            Tensor q = Fixtures.normal(ScalarType.Double, 1, 30, 2, 8);
            Tensor k = Fixtures.normal(ScalarType.Double, 1, 30, 2, 8);
            Tensor v = Fixtures.normal(ScalarType.Double, 1, 30, 2, 8);
            for (long chunk : new long[] {0, 7}) {
                PowerAttentionOptions.Builder b = PowerAttentionOptions.builder().scale(0.9).degree(3);
                Tensor y = PowerAttention.powerFull(q, k, v, chunk > 0 ? b.chunkSize(chunk).build() : b.build());
                assertClose(y, Oracle.powerFull(q, k, v, null, 3, 0.9), 1e-10, "scale 0.9, c" + chunk);
            }
        }
    }
}
