package io.github.powerattention.trainer;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.bytedeco.pytorch.StringTensorDict;
import org.bytedeco.pytorch.Tensor;

/** Test helpers: tiny runs of the trainer, in this JVM or in child JVMs, and their checkpoints' parameters. */
final class Runs {
    private Runs() {}

    /** A tiny model and a short schedule; {@code extra} flags are added (and may repeat none of these). */
    static List<String> tiny(Path outDir, String... extra) {
        List<String> a = new ArrayList<>(List.of("--out_dir=" + outDir, "--n_layer=2", "--n_head=4", "--n_kv_head=2",
                "--n_embd=32", "--block_size=64", "--batch_size=4", "--eval_iters=2", "--log_interval=1",
                "--warmup_iters=2", "--learning_rate=3e-3", "--threads=1"));
        a.addAll(Arrays.asList(extra));
        return a;
    }

    /** The outcome of a command: exit code and both streams. */
    record Outcome(int code, String out, String err) {}

    /** Runs {@code Main} in this JVM with an empty environment (one process). */
    static Outcome main(String... args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        int code = Main.run(args, new PrintStream(out, true, StandardCharsets.UTF_8),
                new PrintStream(err, true, StandardCharsets.UTF_8), Map.of());
        return new Outcome(code, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
    }

    /** Runs {@code train} in this JVM and fails with its output unless it exits 0. */
    static String train(List<String> flags) {
        List<String> args = new ArrayList<>();
        args.add("train");
        args.addAll(flags);
        Outcome o = main(args.toArray(new String[0]));
        assertEquals(0, o.code(), () -> "train failed:\n" + o.out() + o.err());
        return o.out();
    }

    /** Starts {@code Main} in a child JVM with the test class path and extra environment. */
    static Process spawn(List<String> args, Map<String, String> env, Path log) throws IOException {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        cmd.add("-Xmx1g");
        for (String property : List.of("org.bytedeco.javacpp.platform.extension", "org.bytedeco.javacpp.cachedir")) {
            if (System.getProperty(property) != null) {      // the natives and the cache this JVM uses
                cmd.add("-D" + property + "=" + System.getProperty(property));
            }
        }
        cmd.add("-cp");
        cmd.add(System.getProperty("java.class.path"));
        cmd.add(Main.class.getName());
        cmd.addAll(args);
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile());
        pb.environment().putAll(env);
        return pb.start();
    }

    static int freePort() throws IOException {
        try (ServerSocket s = new ServerSocket(0)) {
            return s.getLocalPort();
        }
    }

    /** The parameters stored in {@code outDir}'s checkpoint, by name. */
    static Map<String, Tensor> parameters(Path outDir) {
        Checkpoint c = Checkpoint.read(outDir);
        TrainConfig cfg = TrainConfig.parse(c.args.toArray(new String[0]));
        Gpt model = new Gpt(cfg.model(), cfg.seed + 1);   // another seed: every value must come from the file
        Checkpoint.loadInto(outDir, model, null);
        StringTensorDict named = model.named_parameters();
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (long i = 0; i < named.size(); i++) {
            out.put(named.get(i).key().getString(), new Tensor(named.get(i).value()).clone());
        }
        return out;
    }
}
