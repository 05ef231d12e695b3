package io.github.powerattention;

import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.manual_seed;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.BoolOptional;
import org.bytedeco.pytorch.Device;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorVector;
import org.bytedeco.pytorch.global.torch;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * SPEC §5: a backward that builds a graph ({@code create_graph}) gives correct second derivatives. The first
 * gradients of L = {@code <Y, dy>} (plus {@code <S, w>} with a returned state) are themselves differentiated: the
 * derivative of {@code H = sum_x <dL/dx, r_x>} along a direction u of each input is checked against central finite
 * differences of H, in fp64.
 */
class SecondDerivativeTest {

    @ParameterizedTest(name = "chunk{0}-stateful{1}-p{2}")
    @CsvSource({"0,false,2", "5,false,2", "0,true,2", "4,true,2", "5,false,3", "0,false,1"})
    void matchesFiniteDifferences(long chunk, boolean stateful, int p) {
        check(chunk, stateful, p, null);
    }

    /** The check on {@code device} (null: the CPU); inputs are made on the CPU in fp64 and moved there. */
    static void check(long chunk, boolean stateful, int p, Device device) {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(31 + chunk + (stateful ? 7 : 0) + p);
            long t = 13, hq = 2, h = 1, d = 4, e = 3;
            Tensor[] x = {
                Fixtures.normal(ScalarType.Double, 1, t, hq, d), Fixtures.normal(ScalarType.Double, 1, t, h, d),
                Fixtures.normal(ScalarType.Double, 1, t, h, e), torch.randn(new long[] {1, t, h}, Fixtures.f64())
            };
            Tensor dy = on(Fixtures.normal(ScalarType.Double, 1, t, hq, e), device);
            long D = PowerAttention.stateDim(d, p);
            Tensor w = on(Fixtures.normal(ScalarType.Double, 1, h, D, e), device);
            Tensor[] r = new Tensor[4];
            Tensor[] u = new Tensor[4];
            for (int i = 0; i < 4; ++i) {
                r[i] = on(torch.randn(x[i].sizes().vec().get(), Fixtures.f64()), device);
                u[i] = on(torch.randn(x[i].sizes().vec().get(), Fixtures.f64()), device);
                x[i] = on(x[i], device);
            }
            // analytic: H with a graph, then its gradient
            Tensor[] leaves = new Tensor[4];
            for (int i = 0; i < 4; ++i) {
                leaves[i] = x[i].detach().requires_grad_(true);
            }
            Tensor H = h(leaves, dy, w, r, chunk, stateful, p, true);
            assertTrue(H.requires_grad(), "the first gradients carry a graph");
            H.backward();
            double analytic = 0;
            for (int i = 0; i < 4; ++i) {
                analytic += leaves[i].grad().mul(u[i]).sum().item_double();
            }
            // central differences of H along u
            double step = 1e-5;
            double up = hAt(x, u, step, dy, w, r, chunk, stateful, p);
            double down = hAt(x, u, -step, dy, w, r, chunk, stateful, p);
            double numeric = (up - down) / (2 * step);
            if (!(Math.abs(numeric - analytic) <= 1e-6 * Math.max(1.0, Math.abs(numeric)))) {
                fail(String.format("second derivative along u: analytic %.10f, finite difference %.10f", analytic,
                        numeric));
            }
        }
    }

    private static Tensor on(Tensor x, Device device) {
        return device == null ? x : x.to(device, ScalarType.Double);
    }

    private static double hAt(Tensor[] x, Tensor[] u, double step, Tensor dy, Tensor w, Tensor[] r, long chunk,
            boolean stateful, int p) {
        Tensor[] moved = new Tensor[4];
        for (int i = 0; i < 4; ++i) {
            moved[i] = x[i].add(u[i].mul(new Scalar(step))).detach().requires_grad_(true);
        }
        return h(moved, dy, w, r, chunk, stateful, p, false).item_double();
    }

    /** H = sum_i <dL/dx_i, r_i>, L = <Y, dy> (+ <S, w>); with a graph when {@code graph}. */
    private static Tensor h(Tensor[] x, Tensor dy, Tensor w, Tensor[] r, long chunk, boolean stateful, int p,
            boolean graph) {
        PowerAttentionOptions.Builder b = PowerAttentionOptions.builder().degree(p);
        PowerAttentionOptions options = chunk > 0 ? b.chunkSize(chunk).build() : b.build();
        Tensor loss;
        if (stateful) {
            PowerAttentionResult out = PowerAttention.prefill(x[0], x[1], x[2], x[3], options);
            loss = out.output().mul(dy).sum().add(out.state().S().mul(w).sum());
        } else {
            loss = PowerAttention.powerFull(x[0], x[1], x[2], x[3], options).mul(dy).sum();
        }
        TensorVector grads = torch.grad(new TensorVector(loss), new TensorVector(x[0], x[1], x[2], x[3]),
                new TensorVector(), new BoolOptional(true), graph, false);
        Tensor H = null;
        for (int i = 0; i < 4; ++i) {
            Tensor term = grads.get(i).mul(r[i]).sum();
            H = H == null ? term : H.add(term);
        }
        return H;
    }
}
