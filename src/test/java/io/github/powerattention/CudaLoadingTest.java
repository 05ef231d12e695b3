package io.github.powerattention;

import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;

import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The first run of a JVM on an empty JavaCPP cache sees the GPU (it did not before: LibTorch's CUDA libraries were
 * loaded before the libraries they need were extracted), and so does the next run on the filled cache.
 */
@Tag("gpu")
class CudaLoadingTest {
    @Test
    void theFirstRunOnAFreshCacheSeesTheGpu(@TempDir Path dir) throws Exception {
        Path cache = dir.resolve("javacpp-cache");
        String first = NativeLoadingTest.probe(cache, dir.resolve("first.log"), "power-first", false);
        assertTrue(first.contains("cuda_is_available=true"), "first run on a fresh cache:\n" + first);
        String second = NativeLoadingTest.probe(cache, dir.resolve("second.log"), "power-first", false);
        assertTrue(second.contains("cuda_is_available=true"), "second run:\n" + second);
    }
}
