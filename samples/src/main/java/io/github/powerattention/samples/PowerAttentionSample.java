package io.github.powerattention.samples;

import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.log_sigmoid;
import static org.bytedeco.pytorch.global.torch.manual_seed;
import static org.bytedeco.pytorch.global.torch.randn;

import io.github.powerattention.PowerAttention;
import io.github.powerattention.PowerAttentionOptions;
import io.github.powerattention.PowerAttentionResult;
import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorOptions;

/**
 * Symmetric power attention on the CPU: the quadratic and the chunked form of the same gated degree-2 attention,
 * forward and backward, with their agreement and their times as the sequence grows; then generation from the
 * recurrent state, one token against the full forward.
 */
public final class PowerAttentionSample {
    public static void main(String[] args) {
        PowerAttention.loadNatives();  // before LibTorch's first use: loads quietly (see its javadoc)
        manual_seed(0);
        long b = 1, h = 4, d = 32;
        // built once, used by every call: degree and form; the gates are an input of each call
        PowerAttentionOptions quadratic = PowerAttentionOptions.defaults();
        PowerAttentionOptions chunked = PowerAttentionOptions.builder().degree(2).chunkSize(128).build();
        System.out.println("power attention, degree 2, gated, b=" + b + " h=" + h + " d=e=" + d
                + ", state dimension D = " + PowerAttention.stateDim(d, 2));
        System.out.printf("%7s  %14s  %14s  %18s  %14s%n", "t", "quadratic ms", "chunked ms", "max |Y_q - Y_c|",
                "|dQ| chunked");
        for (long t : new long[] {256, 1024, 4096}) {
            try (PointerScope scope = new PointerScope()) {
                TensorOptions f32 = new TensorOptions(ScalarType.Float);
                Tensor q = randn(new long[] {b, t, h, d}, f32);
                Tensor k = randn(new long[] {b, t, h, d}, f32);
                Tensor v = randn(new long[] {b, t, h, d}, f32);
                Tensor logG = log_sigmoid(randn(new long[] {b, t, h}, f32).add(new Scalar(3.0)));

                Result quad = run(q, k, v, logG, quadratic);
                Result chunk = run(q, k, v, logG, chunked);
                double diff = quad.y.sub(chunk.y).abs().max().item_double();
                System.out.printf("%7d  %14.1f  %14.1f  %18.2e  %14.4f%n", t, quad.ms, chunk.ms, diff,
                        chunk.dq.norm().item_double());
            }
        }
        System.out.println("Same function, two costs: O(t^2 d) for the quadratic form, O(t D e) for the chunked.");

        // generation: the state after a prompt of 1023 tokens, then one decode step for token 1024
        try (PointerScope scope = new PointerScope(); NoGradGuard noGrad = new NoGradGuard()) {
            long t = 1024, n = t - 1;
            TensorOptions f32 = new TensorOptions(ScalarType.Float);
            Tensor q = randn(new long[] {b, t, h, d}, f32);
            Tensor k = randn(new long[] {b, t, h, d}, f32);
            Tensor v = randn(new long[] {b, t, h, d}, f32);
            Tensor logG = log_sigmoid(randn(new long[] {b, t, h}, f32).add(new Scalar(3.0)));
            Tensor full = PowerAttention.powerFull(q, k, v, logG, chunked);
            try (PowerAttentionResult prompt = PowerAttention.prefill(q.narrow(1, 0, n), k.narrow(1, 0, n),
                         v.narrow(1, 0, n), logG.narrow(1, 0, n), chunked);
                 PowerAttentionResult step = PowerAttention.decodeStep(prompt.state(), q.select(1, n),
                         k.select(1, n), v.select(1, n), logG.select(1, n), chunked)) {
                double diff = step.output().sub(full.select(1, n)).abs().max().item_double();
                System.out.printf("decode step for token %d from the state (%d x %d numbers a head): "
                        + "max |y_step - Y_full| = %.2e%n", t, PowerAttention.stateDim(d, 2), d + 1, diff);
            }
        }
    }

    /** Y, dL/dQ for L = sum(Y), and the fwd+bwd time. */
    private record Result(Tensor y, Tensor dq, double ms) {}

    private static Result run(Tensor q, Tensor k, Tensor v, Tensor logG, PowerAttentionOptions options) {
        Tensor xq = q.detach().requires_grad_(true);
        long start = System.nanoTime();
        Tensor y = PowerAttention.powerFull(xq, k, v, logG, options);
        y.sum().backward();
        double ms = (System.nanoTime() - start) / 1e6;
        return new Result(y.detach(), xq.grad(), ms);
    }
}
