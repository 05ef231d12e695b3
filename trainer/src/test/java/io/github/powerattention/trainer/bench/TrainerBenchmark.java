package io.github.powerattention.trainer.bench;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.lang.management.ManagementFactory;
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

import io.github.powerattention.trainer.Main;

/**
 * Training throughput (tokens/s of fwd + bwd + AdamW step, median over steps after a warm-up) for sdpa and power
 * attention (deg 2, with and without gates) at block sizes 256, 1024 and 4096, same tokens per step, on CPU. Then
 * (with {@code compare}) the final validation losses of a short run of each on the same data.
 *
 * <pre>
 * mvn -q -f trainer test-compile exec:java -Dexec.classpathScope=test \
 *     -Dexec.mainClass=io.github.powerattention.trainer.bench.TrainerBenchmark [-Dexec.args="throughput compare"]
 * </pre>
 * Results (run from the repository root): trainer/target/bench/trainer-{throughput,compare}.csv.
 * {@code -Dbench.threads=N} is the trainer's {@code --threads} (default 1, as the trainer's; 0: LibTorch's default).
 */
public final class TrainerBenchmark {
    private static final Pattern STEP = Pattern.compile("\\| ([0-9,]+) tok/s \\|");
    private static final String[] MODEL = {"--n_layer=4", "--n_head=4", "--n_embd=128", "--eval_interval=0",
        "--eval_iters=1", "--log_interval=1", "--warmup_iters=2"};
    private static final String[][] KERNELS = {
        {"sdpa", "--attention_kernel=sdpa"},
        {"power-deg2-gated", "--attention_kernel=power", "--degree=2", "--chunk_size=128"},
        {"power-deg2-nogate", "--attention_kernel=power", "--degree=2", "--chunk_size=128", "--disable_gating"},
    };

    private TrainerBenchmark() {}

    public static void main(String[] args) throws Exception {
        List<String> what = args.length == 0 ? List.of("throughput", "compare") : Arrays.asList(args);
        Path dir = Path.of(System.getProperty("bench.dir", "trainer/target/bench"));
        Files.createDirectories(dir);
        int threads = Integer.getInteger("bench.threads", 1);
        System.out.printf(Locale.ROOT, "machine: %d cores (%s), load average %.2f, java %s, threads %s%n",
                Runtime.getRuntime().availableProcessors(), System.getProperty("os.arch"),
                ManagementFactory.getOperatingSystemMXBean().getSystemLoadAverage(), System.getProperty("java.version"),
                threads > 0 ? Integer.toString(threads) : "LibTorch default");
        if (what.contains("throughput")) {
            throughput(dir);
        }
        if (what.contains("compare")) {
            compare(dir);
        }
    }

    private static void throughput(Path dir) throws Exception {
        StringBuilder csv = new StringBuilder("kernel,block_size,batch_size,tokens_per_step,median_tokens_per_s,steps\n");
        int steps = 6;
        for (int block : new int[] {256, 1024, 4096}) {
            int batch = 4096 / block;
            for (String[] k : KERNELS) {
                List<String> a = new ArrayList<>(List.of("train", "--out_dir=" + dir.resolve("tp"),
                        "--block_size=" + block, "--batch_size=" + batch, "--max_iters=" + steps));
                a.addAll(List.of(MODEL));
                a.addAll(List.of(k).subList(1, k.length));
                String log = run(a);
                List<Double> rates = new ArrayList<>();
                Matcher m = STEP.matcher(log);
                while (m.find()) {
                    rates.add(Double.parseDouble(m.group(1).replace(",", "")));
                }
                List<Double> timed = rates.subList(Math.min(2, rates.size()), rates.size());   // 2 warm-up steps
                double median = median(timed);
                System.out.printf(Locale.ROOT, "%-18s block %5d batch %2d: %,8.0f tok/s (median of %d steps)%n",
                        k[0], block, batch, median, timed.size());
                csv.append(String.format(Locale.ROOT, "%s,%d,%d,%d,%.0f,%d%n", k[0], block, batch, 4096, median,
                        timed.size()));
            }
        }
        Files.writeString(dir.resolve("trainer-throughput.csv"), csv);
    }

    private static void compare(Path dir) throws Exception {
        StringBuilder csv = new StringBuilder("kernel,steps,final_val_loss,val_recall_accuracy,seconds\n");
        int steps = Integer.getInteger("compare.steps", 300);
        for (String[] k : KERNELS) {
            Path out = dir.resolve("compare-" + k[0]);
            List<String> a = new ArrayList<>(List.of("train", "--out_dir=" + out, "--n_layer=2", "--n_head=4",
                    "--n_embd=64", "--block_size=128", "--batch_size=8", "--max_iters=" + steps,
                    "--eval_interval=" + steps, "--eval_iters=20", "--log_interval=50", "--warmup_iters=20",
                    "--learning_rate=3e-3"));
            a.addAll(List.of(k).subList(1, k.length));
            long t0 = System.nanoTime();
            String log = run(a);
            double seconds = (System.nanoTime() - t0) / 1e9;
            Matcher m = Pattern.compile("eval step " + steps + ": train loss [0-9.]+, val loss ([0-9.]+), val recall "
                    + "accuracy ([0-9.]+)%").matcher(log);
            if (!m.find()) {
                throw new IllegalStateException("no final evaluation in:\n" + log);
            }
            System.out.printf(Locale.ROOT, "%-18s %d steps: val loss %s, val recall accuracy %s%% (%.0f s)%n", k[0],
                    steps, m.group(1), m.group(2), seconds);
            csv.append(String.format(Locale.ROOT, "%s,%d,%s,%s,%.0f%n", k[0], steps, m.group(1), m.group(2), seconds));
        }
        Files.writeString(dir.resolve("trainer-compare.csv"), csv);
    }

    private static String run(List<String> args) {
        args = new ArrayList<>(args);
        args.add("--threads=" + Integer.getInteger("bench.threads", 1));
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
