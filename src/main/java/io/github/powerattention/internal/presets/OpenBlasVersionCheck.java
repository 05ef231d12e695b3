package io.github.powerattention.internal.presets;

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.util.Properties;

import org.bytedeco.javacpp.Loader;

/**
 * Runs JavaCPP's version check of the OpenBLAS presets without its one known, harmless warning. Internal: called
 * before our natives load ({@link io.github.powerattention.internal.power_attention}) and by
 * {@link io.github.powerattention.PowerAttention#loadNatives()}.
 *
 * <p>Bytedeco's {@code pytorch:2.13.0-1.5.14} names {@code openblas:0.3.34-1.5.14}, which is not on Maven Central;
 * our POMs pair it with {@code openblas:0.3.31-1.5.13} instead. The OpenBLAS presets class checks, once, when it is
 * initialised ({@code static { Loader.checkVersion("org.bytedeco", "openblas"); }}), that the last part of its
 * version equals JavaCPP's, and prints {@code Warning: Versions of org.bytedeco:javacpp:1.5.14 and
 * org.bytedeco:openblas:0.3.31-1.5.13 do not match.} otherwise. JavaCPP has no switch for one check: its logger
 * property would hide every message. So, for exactly the pairing this build made (versions.properties, written by
 * Maven), this class initialises the presets class itself while {@code System.err} drops that one line; every other
 * line passes, and any other mismatch still warns. The check never runs twice, so later loads are quiet too. A
 * program that touches LibTorch before any class of ours has run the check already (and printed the line).
 */
public final class OpenBlasVersionCheck {
    static final String PRESETS = "org.bytedeco.openblas.presets.openblas_nolapack";
    private static boolean done;

    private OpenBlasVersionCheck() {}

    /** Initialises the OpenBLAS presets class (its version check) quietly if the versions are the expected pair. */
    public static synchronized void run() {
        if (done) {
            return;
        }
        done = true;
        ClassLoader loader = OpenBlasVersionCheck.class.getClassLoader();
        Class<?> presets;
        try {
            presets = Class.forName(PRESETS, false, loader);
        } catch (ClassNotFoundException e) {
            return;  // no OpenBLAS presets on the class path: Loader reports that where it matters
        }
        String line = expectedWarning(presets);
        if (line == null) {
            return;  // versions match, or not the pairing we made: leave the check to JavaCPP as it is
        }
        PrintStream err = System.err;
        System.setErr(new PrintStream(err, true) {
            @Override
            public void println(String x) {
                if (!line.equals(x)) {
                    err.println(x);
                }
            }
        });
        try {
            Class.forName(PRESETS, true, loader);
        } catch (ClassNotFoundException | LinkageError e) {
            // Loader.load reports the failure when it loads the presets itself
        } finally {
            System.setErr(err);
        }
    }

    /** JavaCPP's warning for the JavaCPP and OpenBLAS versions this build paired, or null if others are loaded. */
    static String expectedWarning(Class<?> presets) {
        Properties built = new Properties();
        try (InputStream in = OpenBlasVersionCheck.class.getResourceAsStream("versions.properties")) {
            if (in == null) {
                return null;
            }
            built.load(in);
            String javacpp = Loader.getVersion();
            String openblas = Loader.getVersion("org.bytedeco", "openblas", presets);
            if (javacpp == null || openblas == null || !javacpp.equals(built.getProperty("javacpp.version"))
                    || !openblas.equals(built.getProperty("openblas.version"))
                    || openblas.endsWith("-" + javacpp)) {
                return null;
            }
            return "Warning: Versions of org.bytedeco:javacpp:" + javacpp + " and org.bytedeco:openblas:" + openblas
                    + " do not match.";
        } catch (IOException e) {
            return null;
        }
    }
}
