package io.github.powerattention;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;

import java.io.File;
import java.util.Map;
import org.bytedeco.javacpp.Loader;
import org.junit.jupiter.api.Test;

/**
 * The suite runs against the natives the build made: JavaCPP falls back from {@code linux-x86_64-gpu} to
 * {@code linux-x86_64} when a library does not load, which would let a broken gpu build pass on CPU natives.
 * The build names the expected platform folder in the system property {@code power_attention.natives}.
 */
class NativesTest {

    @Test
    void loadsTheNativesOfThisBuild() {
        String expected = System.getProperty("power_attention.natives", Loader.getPlatform());
        Loader.load(io.github.powerattention.internal.power_attention.class);
        Map<String, String> loaded = Loader.getLoadedLibraries();
        assertEquals(expected, platformFolderOf(loaded, "jnipower_attention"), "our JNI library, loaded " + loaded);
        assertEquals(expected, platformFolderOf(loaded, "jnitorch"), "LibTorch's JNI library, loaded " + loaded);
    }

    /** The folder (platform and extension) that the library {@code name} (libname.so, name.dll, ...) came from. */
    private static String platformFolderOf(Map<String, String> loaded, String name) {
        String file = System.mapLibraryName(name);
        String path = loaded.values().stream()
                .filter(p -> new File(p).getName().equals(file))
                .findFirst()
                .orElse(null);
        assertNotNull(path, file + " is not among the loaded libraries " + loaded);
        return new File(path).getParentFile().getName();
    }
}
