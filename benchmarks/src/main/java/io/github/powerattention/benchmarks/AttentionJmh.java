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
import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.BoolOptional;
import org.bytedeco.pytorch.DoubleOptional;
import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorArrayRefOptional;
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
 * Power attention against LibTorch's causal {@code scaled_dot_product_attention} on the CPU, forward and
 * forward + backward, at several sequence lengths: b = 1, h = 8, d = e = 64, fp32, degree 2, gated, chunk 128
 * (the quadratic form where t <= 128). SDPA gets the same [b, t, h, d] tensors as transposed views, as a model
 * would pass them.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Fork(value = 1, jvmArgsAppend = {"-Xmx4g"})
@Warmup(iterations = 1, time = 2)
@Measurement(iterations = 3, time = 2)
public class AttentionJmh {
    static final long B = 1, H = 8, D = 64, CHUNK = 128;

    @Param({"256", "1024", "4096"})
    public long t;

    @Param({"power", "sdpa"})
    public String kernel;

    static {
        PowerAttention.loadNatives();  // in each forked JVM, before LibTorch's first use: quietly
    }

    private PointerScope scope;
    private Tensor q, k, v, logG, dy;
    private PowerAttentionOptions options;

    @Setup(Level.Trial)
    public void setUp() {
        scope = new PointerScope();
        Integer threads = Integer.getInteger("bench.threads");  // -jvmArgsAppend -Dbench.threads=N: LibTorch's threads
        if (threads != null) {
            set_num_threads(threads);
        }
        manual_seed(1);
        TensorOptions f32 = new TensorOptions(ScalarType.Float);
        q = randn(new long[] {B, t, H, D}, f32).requires_grad_(true);
        k = randn(new long[] {B, t, H, D}, f32).requires_grad_(true);
        v = randn(new long[] {B, t, H, D}, f32).requires_grad_(true);
        logG = log_sigmoid(randn(new long[] {B, t, H}, f32).add(new Scalar(3.0))).detach().requires_grad_(true);
        dy = randn(new long[] {B, t, H, D}, f32);
        options = PowerAttentionOptions.builder().degree(2).chunkSize(CHUNK).build();
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        scope.close();
    }

    private Tensor attention() {
        if (kernel.equals("sdpa")) {
            return scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                    new TensorOptional(), 0.0, true, new DoubleOptional(), false).transpose(1, 2);
        }
        return PowerAttention.powerFull(q, k, v, logG, options);
    }

    /** The forward alone, without autograd's bookkeeping. */
    @Benchmark
    public double forward() {
        try (PointerScope s = new PointerScope(); NoGradGuard g = new NoGradGuard()) {
            return attention().sum().item_double();
        }
    }

    /** The forward and the backward into q, k, v (and the gates for power attention). */
    @Benchmark
    public double forwardBackward() {
        try (PointerScope s = new PointerScope()) {
            attention().backward(dy, new BoolOptional(), false, new TensorArrayRefOptional());
            double r = q.grad().sum().item_double();
            q.grad().zero_();
            k.grad().zero_();
            v.grad().zero_();
            if (logG.grad().defined()) {
                logG.grad().zero_();
            }
            return r;
        }
    }
}
