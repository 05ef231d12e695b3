package io.github.powerattention;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The first run on an empty JavaCPP cache loads LibTorch's natives in dependency order: JavaCPP's debug log (of a
 * child JVM with a fresh {@code org.bytedeco.javacpp.cachedir}) shows no library that failed to load because another
 * library of the natives JARs was not yet in the cache. Before the fix, {@code libtorch.so} failed for want of
 * {@code libtorch_cpu.so}, and with the -gpu natives {@code libc10_cuda.so} and {@code libtorch_cuda.so} for want of
 * {@code libc10.so} (never tried again, so LibTorch saw no GPU on a first run). With the -gpu natives on a machine
 * without CUDA libraries, {@code libtorch_cuda.so} still fails, for want of the system's CUDA libraries: that is
 * expected and not what this test looks for.
 */
class NativeLoadingTest {
    private static final Pattern FAILED = Pattern.compile(
            "Failed to load (\\S+): java\\.lang\\.UnsatisfiedLinkError: \\S+: (lib[^:/\\s]+): cannot open shared object file");

    /** The test JVM's class path (surefire's when under Maven, else java.class.path). */
    static String classPath() {
        return System.getProperty("surefire.test.class.path", System.getProperty("java.class.path"));
    }

    /** Runs {@link NativeLoadingProbe} in a child JVM on the cache {@code cache}; returns its output. */
    static String probe(Path cache, Path log, String mode, boolean debug) throws Exception {
        List<String> cmd = new ArrayList<>(List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                "-Xmx1g", "-Dorg.bytedeco.javacpp.cachedir=" + cache));
        if (debug) {
            cmd.add("-Dorg.bytedeco.javacpp.logger.debug=true");
        }
        String extension = System.getProperty("org.bytedeco.javacpp.platform.extension");
        if (extension != null) {
            cmd.add("-Dorg.bytedeco.javacpp.platform.extension=" + extension);
        }
        cmd.addAll(List.of("-cp", classPath(), NativeLoadingProbe.class.getName(), mode));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile()).start();
        boolean done = p.waitFor(300, TimeUnit.SECONDS);
        if (!done) {
            p.destroyForcibly();
        }
        String out = Files.readString(log);
        assertTrue(done, "the probe JVM did not finish:\n" + out);
        assertEquals(0, p.exitValue(), "the probe JVM failed:\n" + out);
        return out;
    }

    @Test
    void aFreshCacheLoadsLibTorchInDependencyOrder(@TempDir Path dir) throws Exception {
        Path cache = dir.resolve("javacpp-cache");
        String out = probe(cache, dir.resolve("probe.log"), "power-first", true);
        assertTrue(out.contains("stateDim(64, 2)=2080"), out);
        List<String> cached = new ArrayList<>();
        try (Stream<Path> s = Files.walk(cache)) {
            s.filter(Files::isRegularFile).forEach(f -> cached.add(f.getFileName().toString()));
        }
        assertTrue(cached.contains("libc10.so") && cached.contains("libtorch_cpu.so"), "cache holds " + cached);
        List<String> outOfOrder = new ArrayList<>();
        Matcher m = FAILED.matcher(out);
        while (m.find()) {
            if (m.group(1).startsWith(cache.toString()) && cached.contains(m.group(2))) {
                outOfOrder.add(Path.of(m.group(1)).getFileName() + " (needed " + m.group(2) + ")");
            }
        }
        assertTrue(outOfOrder.isEmpty(), "libraries loaded before a library of the natives JARs they need was "
                + "in the cache: " + outOfOrder);
    }
}
