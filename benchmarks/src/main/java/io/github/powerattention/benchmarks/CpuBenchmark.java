package io.github.powerattention.benchmarks;

import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.get_num_threads;
import static org.bytedeco.pytorch.global.torch.log_sigmoid;
import static org.bytedeco.pytorch.global.torch.manual_seed;
import static org.bytedeco.pytorch.global.torch.randn;
import static org.bytedeco.pytorch.global.torch.scaled_dot_product_attention;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;

import io.github.powerattention.PowerAttention;
import io.github.powerattention.PowerAttentionOptions;
import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.DoubleOptional;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorOptional;
import org.bytedeco.pytorch.TensorOptions;

/**
 * CPU benchmark: fwd+bwd of power attention (deg 2, gated, fp32) against LibTorch's causal
 * scaled_dot_product_attention, through the same Bytedeco build, in one run. Median of several timed runs after a
 * warm-up; peak resident memory of each call from the kernel's high-water mark (reset before each case).
 *
 * <pre>
 *   mvn -q -f benchmarks compile exec:java -Dexec.mainClass=io.github.powerattention.benchmarks.CpuBenchmark \
 *       [-Dexec.args="1024 4096 16384"]
 * </pre>
 * Writes target/bench/cpu-benchmark.{csv,json}.
 */
public final class CpuBenchmark {
    static final long B = 1, H = 8, D = 64;

    record Row(String kernel, long t, long chunk, double medianMs, double minMs, double peakMiB) {}

    public static void main(String[] args) throws IOException {
        PowerAttention.loadNatives();  // before LibTorch's first use: quietly
        long[] lengths = args.length > 0 ? Arrays.stream(args).mapToLong(Long::parseLong).toArray()
                : new long[] {1024, 4096, 16384};
        long[] chunks = Long.getLong("chunks") != null ? new long[] {Long.getLong("chunks")} : new long[] {64, 128, 256, 512};
        boolean skipSdpa = Boolean.getBoolean("skipSdpa");
        System.out.printf(Locale.ROOT, "# CPU benchmark: fwd+bwd, fp32, b=%d h=%d d=e=%d, deg 2, gated; %d threads, %s, %d cores%n",
                B, H, D, get_num_threads(), cpuName(), Runtime.getRuntime().availableProcessors());
        List<Row> rows = new ArrayList<>();
        for (long t : lengths) {
            int runs = t >= 16384 ? 3 : t >= 4096 ? 5 : 10;
            if (!skipSdpa) {
                rows.add(measure("sdpa", t, 0, runs));
                print(rows.get(rows.size() - 1));
            }
            for (long c : chunks) {
                if (c < t) {
                    rows.add(measure("power", t, c, runs));
                    print(rows.get(rows.size() - 1));
                }
            }
        }
        write(rows);
    }

    static Row measure(String kernel, long t, long chunk, int runs) {
        double[] ms = new double[runs];
        double peak = 0;
        PowerAttentionOptions options = chunk > 0
                ? PowerAttentionOptions.builder().degree(2).chunkSize(chunk).build()
                : PowerAttentionOptions.defaults();
        for (int r = -1; r < runs; r++) {  // r = -1: warm-up
            try (PointerScope scope = new PointerScope()) {
                manual_seed(r + 1);
                TensorOptions f32 = new TensorOptions(ScalarType.Float);
                Tensor q = randn(new long[] {B, t, H, D}, f32).requires_grad_(true);
                Tensor k = randn(new long[] {B, t, H, D}, f32).requires_grad_(true);
                Tensor v = randn(new long[] {B, t, H, D}, f32).requires_grad_(true);
                Tensor logG = log_sigmoid(randn(new long[] {B, t, H}, f32).add(new Scalar(3.0))).requires_grad_(true);
                Tensor dy = randn(new long[] {B, t, H, D}, f32);
                long base = Memory.resetPeak();
                long start = System.nanoTime();
                Tensor y;
                if (kernel.equals("sdpa")) {
                    // SDPA takes [b, h, t, d]: the transposes are views, as a model would pass them
                    y = scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                            new TensorOptional(), 0.0, true, new DoubleOptional(), false).transpose(1, 2);
                } else {
                    y = PowerAttention.powerFull(q, k, v, logG, options);
                }
                y.backward(dy, new org.bytedeco.pytorch.BoolOptional(), false, new org.bytedeco.pytorch.TensorArrayRefOptional());
                double elapsed = (System.nanoTime() - start) / 1e6;
                if (r >= 0) {
                    ms[r] = elapsed;
                    peak = Math.max(peak, (Memory.peak() - base) / (1024.0 * 1024.0));
                }
            }
        }
        Arrays.sort(ms);
        return new Row(kernel, t, chunk, ms[runs / 2], ms[0], peak);
    }

    static void print(Row r) {
        System.out.printf(Locale.ROOT, "%-6s t=%6d chunk=%5s  median %9.1f ms  min %9.1f ms  peak +%8.1f MiB%n",
                r.kernel(), r.t(), r.chunk() == 0 ? "-" : Long.toString(r.chunk()), r.medianMs(), r.minMs(), r.peakMiB());
    }

    static void write(List<Row> rows) throws IOException {
        Path dir = Path.of("target", "bench");
        Files.createDirectories(dir);
        StringBuilder csv = new StringBuilder("kernel,t,chunk,median_ms,min_ms,peak_mib\n");
        StringBuilder json = new StringBuilder("[\n");
        for (int i = 0; i < rows.size(); i++) {
            Row r = rows.get(i);
            csv.append(String.format(Locale.ROOT, "%s,%d,%d,%.3f,%.3f,%.1f%n", r.kernel(), r.t(), r.chunk(),
                    r.medianMs(), r.minMs(), r.peakMiB()));
            json.append(String.format(Locale.ROOT,
                    "  {\"kernel\": \"%s\", \"t\": %d, \"chunk\": %d, \"median_ms\": %.3f, \"min_ms\": %.3f, "
                            + "\"peak_mib\": %.1f}%s%n",
                    r.kernel(), r.t(), r.chunk(), r.medianMs(), r.minMs(), r.peakMiB(), i + 1 < rows.size() ? "," : ""));
        }
        json.append("]\n");
        Files.writeString(dir.resolve("cpu-benchmark.csv"), csv);
        Files.writeString(dir.resolve("cpu-benchmark.json"), json);
        System.out.println("# wrote " + dir.resolve("cpu-benchmark.csv") + " and .json");
    }

    public static String cpuName() {
        try {
            return Files.readAllLines(Path.of("/proc/cpuinfo")).stream().filter(l -> l.startsWith("model name"))
                    .findFirst().map(l -> l.substring(l.indexOf(':') + 1).trim()).orElse("unknown CPU");
        } catch (IOException e) {
            return "unknown CPU";
        }
    }

    /** Peak resident set size through /proc (Linux): reset by writing 5 to clear_refs. */
    static final class Memory {
        static long resetPeak() {
            try {
                Files.writeString(Path.of("/proc/self/clear_refs"), "5");
            } catch (IOException | RuntimeException e) {
                // not Linux, or not allowed: the peak then covers the whole process
            }
            return field("VmRSS:");
        }

        static long peak() {
            return field("VmHWM:");
        }

        private static long field(String name) {
            try {
                for (String l : Files.readAllLines(Path.of("/proc/self/status"))) {
                    if (l.startsWith(name)) {
                        return Long.parseLong(l.replaceAll("[^0-9]", "")) * 1024;
                    }
                }
            } catch (IOException e) {
                // fall through
            }
            return 0;
        }
    }
}
