package io.github.powerattention;

import org.junit.platform.launcher.LauncherSession;
import org.junit.platform.launcher.LauncherSessionListener;

/**
 * Loads the natives before any test class touches LibTorch, so the suite's output has no JavaCPP version warning
 * about the OpenBLAS build we pair with LibTorch ({@link PowerAttention#loadNatives()}). Registered in
 * META-INF/services; JUnit calls it once per test JVM.
 */
public final class QuietNatives implements LauncherSessionListener {
    @Override
    public void launcherSessionOpened(LauncherSession session) {
        try {
            PowerAttention.loadNatives();
        } catch (LinkageError | RuntimeException e) {
            // the tests that need the natives report it (NativesTest names the libraries)
        }
    }
}
