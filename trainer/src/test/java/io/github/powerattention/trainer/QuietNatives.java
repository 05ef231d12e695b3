package io.github.powerattention.trainer;

import io.github.powerattention.PowerAttention;
import org.junit.platform.launcher.LauncherSession;
import org.junit.platform.launcher.LauncherSessionListener;

/**
 * Loads the natives before any test touches LibTorch, so the suite's output has no JavaCPP version warning about
 * the OpenBLAS build paired with LibTorch ({@link PowerAttention#loadNatives()}). Registered in META-INF/services;
 * JUnit calls it once per test JVM (the trainer JVMs the distributed tests start load through Main).
 */
public final class QuietNatives implements LauncherSessionListener {
    @Override
    public void launcherSessionOpened(LauncherSession session) {
        try {
            PowerAttention.loadNatives();
        } catch (LinkageError | RuntimeException e) {
            // the tests that need the natives report it
        }
    }
}
