package io.github.powerattention.trainer.bench;

import static org.bytedeco.pytorch.global.torch.log_sigmoid;
import static org.bytedeco.pytorch.global.torch.randn;
import static org.bytedeco.pytorch.global.torch.scaled_dot_product_attention;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import io.github.powerattention.PowerAttention;
import io.github.powerattention.PowerAttentionOptions;
import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.Device;
import org.bytedeco.pytorch.DeviceOptional;
import org.bytedeco.pytorch.DoubleOptional;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorOptional;
import org.bytedeco.pytorch.TensorOptions;
import org.bytedeco.pytorch.global.torch.ScalarType;
import org.bytedeco.pytorch.global.torch_cuda;

import io.github.powerattention.trainer.Main;

/**
 * The trainer on one GPU (not a test): tokens/s of a whole training step (fwd + bwd + AdamW, median over steps after
 * warm-up) and peak GPU memory (LibTorch's caching allocator, allocated bytes), power vs sdpa, bf16, at block sizes
 * 1024 to 65536 with the same tokens per step; then where the time goes: the attention op alone (fwd + bwd of all
 * layers at the step's shapes) against the whole step.
 *
 * <pre>
 * java -cp ... io.github.powerattention.trainer.bench.GpuTrainerBenchmark [OUT_DIR] [block ...]
 * </pre>
 * Model: 4 layers x 512, 8 heads of 64, power attention deg 2 with gates, chunk 512 (-Dbench.chunk),
 * -Dbench.tokens tokens per step (default 131072), -Dbench.steps steps (default 10, the first 4 not timed).
 */
public final class GpuTrainerBenchmark {
    private static final Pattern STEP = Pattern.compile("\\| ([0-9,]+) tok/s \\|");
    private static final int LAYERS = 4;
    private static final int HEADS = 8;
    private static final int HEAD_DIM = 64;

    private GpuTrainerBenchmark() {}

    public static void main(String[] args) throws Exception {
        Path dir = Path.of(args.length > 0 ? args[0] : "trainer/target/bench");
        Files.createDirectories(dir);
        int[] blocks = args.length > 1 ? Arrays.stream(args).skip(1).mapToInt(Integer::parseInt).toArray()
                : new int[] {1024, 4096, 16384, 65536};
        long tokens = Long.getLong("bench.tokens", 131072L);
        int steps = Integer.getInteger("bench.steps", 10);
        int chunk = Integer.getInteger("bench.chunk", 512);
        PowerAttention.loadNatives();
        Device cuda = new Device("cuda:0");
        // the caching allocator knows no device before the first allocation (its statistics calls fail until then)
        randn(new long[] {1}, new TensorOptions(ScalarType.Float).device(new DeviceOptional(cuda)));
        System.out.printf(Locale.ROOT, "gpu benchmark: %d layers x %d (%d heads of %d), bf16, %d tokens per step, "
                + "%d steps (first 4 not timed), power deg 2 gated chunk %d%n", LAYERS, HEADS * HEAD_DIM, HEADS,
                HEAD_DIM, tokens, steps, chunk);
        StringBuilder csv = new StringBuilder("kernel,block_size,batch_size,tokens_per_step,median_tokens_per_s,"
                + "step_ms,peak_allocated_mib,attention_fwd_bwd_ms_all_layers,attention_share\n");
        for (int block : blocks) {
            int batch = (int) Math.max(1, tokens / block);
            for (String kernel : new String[] {"power", "sdpa"}) {
                List<String> a = new ArrayList<>(List.of("train", "--out_dir=" + dir.resolve("run-" + kernel + "-" + block),
                        "--device=cuda", "--dtype=bfloat16", "--n_layer=" + LAYERS, "--n_head=" + HEADS,
                        "--n_embd=" + HEADS * HEAD_DIM, "--block_size=" + block, "--batch_size=" + batch,
                        "--max_iters=" + steps, "--eval_interval=0", "--eval_iters=1", "--log_interval=1",
                        "--warmup_iters=2", "--attention_kernel=" + kernel, "--chunk_size=" + chunk));
                torch_cuda.getAllocator().resetPeakStats((byte) 0);
                String log;
                try {
                    log = run(a);
                } catch (RuntimeException e) {
                    System.out.printf(Locale.ROOT, "%-5s block %6d batch %3d: failed: %s%n", kernel, block, batch,
                            e.getMessage().lines().findFirst().orElse(""));
                    csv.append(String.format(Locale.ROOT, "%s,%d,%d,%d,,,,,%n", kernel, block, batch, tokens));
                    continue;
                }
                long peak = torch_cuda.getAllocator().getDeviceStats((byte) 0).allocated_bytes().peak();
                List<Double> rates = new ArrayList<>();
                Matcher m = STEP.matcher(log);
                while (m.find()) {
                    rates.add(Double.parseDouble(m.group(1).replace(",", "")));
                }
                double median = median(rates.subList(Math.min(4, rates.size()), rates.size()));
                double stepMs = batch * (double) block / median * 1e3;
                double attnMs = LAYERS * attentionMs(kernel, batch, block, chunk, cuda);
                System.out.printf(Locale.ROOT, "%-5s block %6d batch %3d: %,10.0f tok/s, step %7.1f ms, peak %,7.0f MiB,"
                        + " attention fwd+bwd %6.1f ms (%2.0f%% of the step)%n", kernel, block, batch, median, stepMs,
                        peak / 1048576.0, attnMs, 100 * attnMs / stepMs);
                csv.append(String.format(Locale.ROOT, "%s,%d,%d,%d,%.0f,%.2f,%.0f,%.2f,%.3f%n", kernel, block, batch,
                        batch * (long) block, median, stepMs, peak / 1048576.0, attnMs, attnMs / stepMs));
            }
        }
        Files.writeString(dir.resolve("gpu-trainer-benchmark.csv"), csv);
    }

    /** Median ms of one layer's attention fwd + bwd at the trainer's shapes ([b, t, 8, 64] bf16, fp32 gates). */
    static double attentionMs(String kernel, int b, int t, int chunk, Device cuda) {
        try (PointerScope scope = new PointerScope()) {
            TensorOptions bf16 = new TensorOptions(ScalarType.BFloat16).device(new DeviceOptional(cuda));
            TensorOptions f32 = new TensorOptions(ScalarType.Float).device(new DeviceOptional(cuda));
            Tensor q = randn(new long[] {b, t, HEADS, HEAD_DIM}, bf16).requires_grad_(true);
            Tensor k = randn(new long[] {b, t, HEADS, HEAD_DIM}, bf16).requires_grad_(true);
            Tensor v = randn(new long[] {b, t, HEADS, HEAD_DIM}, bf16).requires_grad_(true);
            Tensor g = log_sigmoid(randn(new long[] {b, t, HEADS}, f32).add(new Scalar(3.0))).requires_grad_(true);
            Tensor dy = randn(new long[] {b, t, HEADS, HEAD_DIM}, bf16);
            PowerAttentionOptions options = PowerAttentionOptions.builder().degree(2).chunkSize(chunk).build();
            double[] ms = new double[7];
            for (int i = 0; i < ms.length; i++) {
                try (PointerScope s = new PointerScope()) {
                    torch_cuda.device_synchronize();
                    long t0 = System.nanoTime();
                    Tensor y = kernel.equals("sdpa")
                            ? scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                    new TensorOptional(), 0.0, true, new DoubleOptional(), false).transpose(1, 2)
                            : PowerAttention.powerFull(q, k, v, g, options);
                    y.mul(dy).sum().backward();
                    torch_cuda.device_synchronize();
                    ms[i] = (System.nanoTime() - t0) / 1e6;
                    q.grad().zero_();
                    k.grad().zero_();
                    v.grad().zero_();
                    if (g.grad().defined()) {
                        g.grad().zero_();
                    }
                }
            }
            return median(Arrays.stream(ms).skip(2).boxed().toList());
        }
    }

    private static String run(List<String> args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int code = Main.run(args.toArray(new String[0]), new PrintStream(out, true, StandardCharsets.UTF_8),
                new PrintStream(err, true, StandardCharsets.UTF_8), Map.of());
        if (code != 0) {
            throw new IllegalStateException("train failed (" + code + "): " + err.toString(StandardCharsets.UTF_8));
        }
        return out.toString(StandardCharsets.UTF_8);
    }

    private static double median(List<Double> xs) {
        if (xs.isEmpty()) {
            return Double.NaN;
        }
        double[] a = xs.stream().mapToDouble(Double::doubleValue).sorted().toArray();
        return a.length % 2 == 1 ? a[a.length / 2] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2;
    }
}
