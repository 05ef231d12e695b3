package io.github.powerattention.benchmarks;

import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.log_sigmoid;
import static org.bytedeco.pytorch.global.torch.manual_seed;
import static org.bytedeco.pytorch.global.torch.randn;
import static org.bytedeco.pytorch.global.torch.scaled_dot_product_attention;
import static org.bytedeco.pytorch.global.torch.set_num_threads;

import java.util.concurrent.TimeUnit;

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
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * One generated token at a given context length t (CPU, fp32, b = 1, h = 8, d = e = 64, degree 2, gated, no
 * gradient): a power attention decode step from the recurrent state, whose cost does not depend on t, against a
 * softmax attention step (SDPA, one query) over a KV cache of t tokens.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Fork(value = 1, jvmArgsAppend = {"-Xmx4g"})
@Warmup(iterations = 1, time = 1)
@Measurement(iterations = 3, time = 1)
public class DecodeJmh {
    static final long H = 8, D = 64;
    static final PowerAttentionOptions OPTIONS = PowerAttentionOptions.builder().degree(2).build();

    @Param({"1024", "4096", "16384"})
    public long t;

    @Param({"power", "sdpa"})
    public String kernel;

    static {
        PowerAttention.loadNatives();  // in each forked JVM, before LibTorch's first use: quietly
    }

    private PointerScope scope;
    private PowerAttentionState state;
    private Tensor q1, k1, v1, g1, qs, kCache, vCache;

    @Setup(Level.Trial)
    public void setUp() {
        scope = new PointerScope();
        Integer threads = Integer.getInteger("bench.threads");  // -jvmArgsAppend -Dbench.threads=N: LibTorch's threads
        if (threads != null) {
            set_num_threads(threads);
        }
        manual_seed(1);
        TensorOptions f32 = new TensorOptions(ScalarType.Float);
        if (kernel.equals("power")) {
            // the state after any context has the same size: [b, h, D, e] and [b, h, D]
            state = PowerAttentionState.zeros(1, H, D, D, 2);
            q1 = randn(new long[] {1, H, D}, f32);
            k1 = randn(new long[] {1, H, D}, f32);
            v1 = randn(new long[] {1, H, D}, f32);
            g1 = log_sigmoid(randn(new long[] {1, H}, f32).add(new Scalar(3.0)));
        } else {
            qs = randn(new long[] {1, H, 1, D}, f32);
            kCache = randn(new long[] {1, H, t, D}, f32);
            vCache = randn(new long[] {1, H, t, D}, f32);
        }
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        scope.close();
    }

    @Benchmark
    public double step() {
        try (PointerScope s = new PointerScope(); NoGradGuard g = new NoGradGuard()) {
            if (kernel.equals("power")) {
                try (PowerAttentionResult r = PowerAttention.decodeStep(state, q1, k1, v1, g1, OPTIONS)) {
                    return r.output().sum().item_double();
                }
            }
            return scaled_dot_product_attention(qs, kCache, vCache, new TensorOptional(), 0.0, false,
                    new DoubleOptional(), false).sum().item_double();
        }
    }
}
