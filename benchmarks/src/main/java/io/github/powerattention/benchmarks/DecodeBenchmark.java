package io.github.powerattention.benchmarks;

import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.log_sigmoid;
import static org.bytedeco.pytorch.global.torch.randn;
import static org.bytedeco.pytorch.global.torch.scaled_dot_product_attention;

import java.util.Arrays;
import java.util.Locale;

import io.github.powerattention.PowerAttention;
import io.github.powerattention.PowerAttentionOptions;
import io.github.powerattention.PowerAttentionResult;
import io.github.powerattention.PowerAttentionState;
import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.DoubleOptional;
import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorOptional;
import org.bytedeco.pytorch.TensorOptions;

/**
 * Generation cost per token at a given context (CPU, fp32, b = 1, h = 8, d = e = 64, deg 2, gated): a power
 * attention decode step from the state, recomputing the full power forward over the context, and a softmax
 * attention step against a KV cache (SDPA, one query). Median of 20 (decode, KV) or 3 (full forward) runs.
 *
 * <pre>
 *   mvn -q -f benchmarks compile exec:java -Dexec.mainClass=io.github.powerattention.benchmarks.DecodeBenchmark \
 *       [-Dexec.args="4096 65536"]
 * </pre>
 */
public final class DecodeBenchmark {
    static final long H = 8, D = 64;

    public static void main(String[] args) {
        PowerAttention.loadNatives();  // before LibTorch's first use: quietly
        long[] contexts = args.length > 0 ? Arrays.stream(args).mapToLong(Long::parseLong).toArray()
                : new long[] {4096, 65536};
        System.out.printf(Locale.ROOT, "# decode cost per token, CPU fp32, h=%d d=e=%d deg 2 gated, %s%n", H, D,
                CpuBenchmark.cpuName());
        System.out.printf(Locale.ROOT, "%8s  %16s  %14s  %16s  %14s  %16s%n", "context", "power step ms", "state MiB",
                "power full ms", "sdpa+KV ms", "KV cache MiB");
        // degree 2; the full forward's chunk size (the decode step uses the degree only)
        PowerAttentionOptions options = PowerAttentionOptions.builder().degree(2).chunkSize(128).build();
        try (NoGradGuard guard = new NoGradGuard()) {
            for (long t : contexts) {
                try (PointerScope scope = new PointerScope()) {
                    TensorOptions f32 = new TensorOptions(ScalarType.Float);
                    // the state after a context of t tokens: its size does not depend on t
                    PowerAttentionState state = PowerAttentionState.zeros(1, H, D, D, 2);
                    Tensor q1 = randn(new long[] {1, H, D}, f32), k1 = randn(new long[] {1, H, D}, f32);
                    Tensor v1 = randn(new long[] {1, H, D}, f32);
                    Tensor g1 = log_sigmoid(randn(new long[] {1, H}, f32).add(new Scalar(3.0)));
                    double step = median(20, () -> PowerAttention.decodeStep(state, q1, k1, v1, g1, options).close());
                    double stateMiB = (state.S().numel() + state.s().numel()) * 4 / 1048576.0;

                    double full = Double.NaN;
                    if (t <= 16384) {
                        Tensor q = randn(new long[] {1, t, H, D}, f32), k = randn(new long[] {1, t, H, D}, f32);
                        Tensor v = randn(new long[] {1, t, H, D}, f32);
                        Tensor g = log_sigmoid(randn(new long[] {1, t, H}, f32).add(new Scalar(3.0)));
                        full = median(3, () -> PowerAttention.powerFull(q, k, v, g, options).close());
                    }

                    Tensor kc = randn(new long[] {1, H, t, D}, f32), vc = randn(new long[] {1, H, t, D}, f32);
                    Tensor qs = randn(new long[] {1, H, 1, D}, f32);
                    double kv = median(20, () -> scaled_dot_product_attention(qs, kc, vc, new TensorOptional(), 0.0,
                            false, new DoubleOptional(), false).close());
                    double kvMiB = 2.0 * H * t * D * 4 / 1048576.0;
                    System.out.printf(Locale.ROOT, "%8d  %16.3f  %14.2f  %16s  %14.3f  %16.1f%n", t, step, stateMiB,
                            Double.isNaN(full) ? "(skipped)" : String.format(Locale.ROOT, "%.1f", full), kv, kvMiB);
                }
            }
        }
    }

    static double median(int runs, Runnable r) {
        r.run();
        double[] ms = new double[runs];
        for (int i = 0; i < runs; i++) {
            long s = System.nanoTime();
            r.run();
            ms[i] = (System.nanoTime() - s) / 1e6;
        }
        Arrays.sort(ms);
        return ms[runs / 2];
    }
}
