package io.github.powerattention.trainer.bench;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.Locale;
import java.util.Map;

import io.github.powerattention.trainer.Main;

/**
 * Several {@code train} runs one after the other in one JVM (no JVM start or native loading per run), each given
 * as one argument of space-separated flags; prints each run's evaluations and wall time, and its whole log on
 * failure. Used for comparisons of settings (e.g. the recall task's difficulty) and for fine-tuning demonstrations.
 * <pre>
 * java -cp ... io.github.powerattention.trainer.bench.TrainerRuns "--max_iters=300 --attention_kernel=sdpa" ...
 * </pre>
 */
public final class TrainerRuns {
    private TrainerRuns() {}

    public static void main(String[] args) {
        int failed = 0;
        for (String run : args) {
            String[] flags = run.trim().split("\\s+");
            String[] argv = new String[flags.length + 1];
            argv[0] = "train";
            System.arraycopy(flags, 0, argv, 1, flags.length);
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            long t0 = System.nanoTime();
            int code = Main.run(argv, new PrintStream(out, true, StandardCharsets.UTF_8),
                    new PrintStream(out, true, StandardCharsets.UTF_8), Map.of());
            double seconds = (System.nanoTime() - t0) / 1e9;
            String log = out.toString(StandardCharsets.UTF_8);
            System.out.printf(Locale.ROOT, "== %s%n   exit %d, %.1f s%n", run.trim(), code, seconds);
            if (code != 0) {
                failed++;
                System.out.println(log);
                continue;
            }
            log.lines().filter(l -> l.startsWith("eval step") || l.startsWith("init:") || l.startsWith("model:"))
                    .forEach(l -> System.out.println("   " + l));
        }
        System.out.println(failed == 0 ? "all runs finished" : failed + " run(s) failed");
    }
}
