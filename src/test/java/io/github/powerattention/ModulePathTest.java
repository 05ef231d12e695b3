package io.github.powerattention;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import java.util.stream.Stream;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The library as a JPMS module: a small application module ({@code requires io.github.powerattention}) is compiled
 * against the module and run in a child JVM with everything on the module path (the library's classes and natives,
 * Bytedeco's class and natives JARs; no class path). It calls the op, its states and its options, and checks what
 * the module exports: {@code io.github.powerattention} only, its internal package closed to the application. The
 * suite itself runs on the class path (surefire's {@code useModulePath} is off in the POM).
 */
class ModulePathTest {

    private static final String MODULE_INFO = """
            module probe {
                requires io.github.powerattention;
            }
            """;

    private static final String PROBE = """
            package probe;

            import static org.bytedeco.pytorch.global.torch.log_sigmoid;
            import static org.bytedeco.pytorch.global.torch.randn;

            import io.github.powerattention.PowerAttention;
            import io.github.powerattention.PowerAttentionOptions;
            import io.github.powerattention.PowerAttentionResult;
            import org.bytedeco.pytorch.Tensor;

            public final class Probe {
                public static void main(String[] args) throws Exception {
                    PowerAttention.loadNatives();
                    Module m = PowerAttention.class.getModule();
                    System.out.println("module=" + m.getName() + " named=" + m.isNamed());
                    System.out.println("exports public=" + m.isExported("io.github.powerattention")
                            + " internal=" + m.isExported("io.github.powerattention.internal")
                            + " presets=" + m.isExported("io.github.powerattention.internal.presets"));
                    Tensor q = randn(1, 40, 2, 8), k = randn(1, 40, 1, 8), v = randn(1, 40, 1, 8);
                    Tensor logG = log_sigmoid(randn(1, 40, 1));
                    PowerAttentionOptions chunked = PowerAttentionOptions.builder().chunkSize(16).build();
                    Tensor quadratic = PowerAttention.powerFull(q, k, v, logG, PowerAttentionOptions.defaults());
                    Tensor y = PowerAttention.powerFull(q, k, v, logG, chunked);
                    System.out.println("chunked vs quadratic=" + y.sub(quadratic).abs().max().item_double());
                    try (PowerAttentionResult prompt = PowerAttention.prefill(q.narrow(1, 0, 39), k.narrow(1, 0, 39),
                                 v.narrow(1, 0, 39), logG.narrow(1, 0, 39), chunked);
                         PowerAttentionResult step = PowerAttention.decodeStep(prompt.state(), q.select(1, 39),
                                 k.select(1, 39), v.select(1, 39), logG.select(1, 39), chunked)) {
                        System.out.println("decode vs full=" + step.output().sub(y.select(1, 39)).abs().max()
                                .item_double());
                    }
                    try {
                        PowerAttention.powerFull(q, v.narrow(3, 0, 4), v, logG, chunked);
                    } catch (IllegalArgumentException e) {
                        System.out.println("argument error=" + e.getMessage());
                    }
                    Class<?> raw = Class.forName("io.github.powerattention.internal.power_attention");
                    try {
                        raw.getMethod("state_dim", long.class, long.class).invoke(null, 8L, 2L);
                        System.out.println("internal=open");
                    } catch (IllegalAccessException e) {
                        System.out.println("internal=closed");
                    }
                }
            }
            """;

    /** The module path: our classes (and natives) and Bytedeco's JARs of the test class path. */
    private static String modulePath() throws Exception {
        String classes = Path.of(PowerAttention.class.getProtectionDomain().getCodeSource().getLocation().toURI())
                .toString();
        List<String> path = new ArrayList<>(List.of(classes));
        for (String entry : NativeLoadingTest.classPath().split(File.pathSeparator)) {
            String name = Path.of(entry).getFileName().toString();
            if (name.endsWith(".jar") && Stream.of("javacpp-", "pytorch-", "openblas-", "cuda-")
                    .anyMatch(name::startsWith)) {
                path.add(entry);
            }
        }
        return String.join(File.pathSeparator, path);
    }

    @Test
    void runsAsANamedModuleOnTheModulePath(@TempDir Path dir) throws Exception {
        Path src = dir.resolve("src/probe");
        Files.createDirectories(src.resolve("probe"));
        Files.writeString(src.resolve("module-info.java"), MODULE_INFO);
        Files.writeString(src.resolve("probe/Probe.java"), PROBE);
        Path out = dir.resolve("out");
        String modulePath = modulePath();
        Path bin = Path.of(System.getProperty("java.home"), "bin");
        assertTrue(Files.isExecutable(bin.resolve("javac")), "the tests run on a JDK: javac compiles the probe");
        String compiled = run(List.of(bin.resolve("javac").toString(), "-d", out.toString(), "--module-path",
                modulePath, src.resolve("module-info.java").toString(), src.resolve("probe/Probe.java").toString()),
                dir.resolve("javac.log"));

        List<String> cmd = new ArrayList<>(List.of(bin.resolve("java").toString(), "-Xmx1g"));
        String extension = System.getProperty("org.bytedeco.javacpp.platform.extension");
        if (extension != null) {
            cmd.add("-Dorg.bytedeco.javacpp.platform.extension=" + extension);
        }
        // the natives modules are required by no module: ALL-MODULE-PATH resolves them (README, "Use it")
        cmd.addAll(List.of("--module-path", modulePath + File.pathSeparator + out, "--add-modules",
                "ALL-MODULE-PATH", "-m", "probe/probe.Probe"));
        String text = run(cmd, dir.resolve("probe.log"));
        assertTrue(compiled.isBlank(), "javac: " + compiled);
        List<String> lines = text.lines().collect(Collectors.toList());
        assertTrue(lines.contains("module=io.github.powerattention named=true"), text);
        assertTrue(lines.contains("exports public=true internal=false presets=false"), text);
        assertTrue(lines.contains("internal=closed"), text);
        assertTrue(lines.contains("argument error=power_full: K must have shape [b, t, h, d] = [1, 40, 1, 8], "
                + "got [1, 40, 1, 4]"), text);
        assertTrue(value(lines, "chunked vs quadratic=") < 1e-5, text);
        assertTrue(value(lines, "decode vs full=") < 1e-5, text);
        // no JavaCPP warning: it instantiates the presets class (exported to it), and loadNatives keeps the
        // OpenBLAS version warning away
        assertFalse(text.contains("Warning"), text);
    }

    /** Runs {@code cmd}, fails unless it exits with 0 within 300 s; returns its output. */
    private static String run(List<String> cmd, Path log) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile()).start();
        boolean done = p.waitFor(300, TimeUnit.SECONDS);
        if (!done) {
            p.destroyForcibly();
        }
        String text = Files.readString(log);
        assertTrue(done, cmd.get(0) + " did not finish:\n" + text);
        assertEquals(0, p.exitValue(), cmd.get(0) + " failed:\n" + text);
        return text;
    }

    private static double value(List<String> lines, String prefix) {
        return lines.stream().filter(l -> l.startsWith(prefix)).map(l -> Double.parseDouble(l.substring(prefix.length())))
                .findFirst().orElse(Double.NaN);
    }
}
