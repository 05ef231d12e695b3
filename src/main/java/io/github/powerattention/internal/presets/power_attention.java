package io.github.powerattention.internal.presets;

import java.util.List;

import org.bytedeco.javacpp.ClassProperties;
import org.bytedeco.javacpp.LoadEnabled;
import org.bytedeco.javacpp.annotation.Platform;
import org.bytedeco.javacpp.annotation.Properties;
import org.bytedeco.pytorch.presets.torch;

/**
 * JavaCPP presets of the power attention native library: what the JavaCPP plugin builds the JNI library
 * {@code jnipower_attention} with, and what {@link io.github.powerattention.internal.power_attention} inherits. Internal
 * (the module exports this package to JavaCPP only, which instantiates it as a {@link LoadEnabled}): users call
 * {@link io.github.powerattention.PowerAttention}.
 *
 * <p>Inherits Bytedeco's LibTorch presets for their link and preload lists (and their CUDA preloads in the
 * {@code -gpu} build), but keeps only our own header in the JNI file: the inherited header list names files that no
 * LibTorch distribution ships (gloo, {@code datasets.h}).
 */
@Properties(
        inherit = torch.class,
        value = {
                // Every platform Bytedeco's LibTorch 2.13.0-1.5.14 is served for (no linux-arm64)
                @Platform(
                        value = {"linux-x86_64", "macosx-arm64", "macosx-x86_64", "windows-x86_64"},
                        compiler = "cpp20",
                        include = "power_attention.h",
                        link = "power_attention_core",
                        library = "jnipower_attention"),
                // The -gpu build: the core library holds the CUDA kernels (nvcc, build/native.sh); the JNI library
                // is plain g++ and links them against LibTorch's CUDA libraries and the shared CUDA runtime
                // (libcudart.so.13, the one LibTorch loads). The pom links with --as-needed and --no-undefined:
                // only the libraries the kernels use end up needed, and a missing one fails the build.
                // As in JavaCPP's own presets, the last matching @Platform's link list replaces the earlier one,
                // dependencies first (JavaCPP puts it on the command line in reverse).
                @Platform(
                        value = "linux-x86_64",
                        extension = "-gpu",
                        link = {"cudart@.13", "c10_cuda", "torch_cuda", "power_attention_core"}),
                // Windows links against import libraries: the toolkit's cudart.lib, and for LibTorch's DLLs the
                // ones build/native.sh makes from them (Bytedeco's JARs ship DLLs only)
                @Platform(
                        value = "windows-x86_64",
                        extension = "-gpu",
                        link = {"cudart", "c10_cuda", "torch_cuda", "power_attention_core"})})
public class power_attention implements LoadEnabled {
    static final String HEADER = "power_attention.h";

    @Override
    public void init(ClassProperties properties) {
        List<String> include = properties.get("platform.include");
        include.clear();
        include.add(HEADER);
        properties.get("platform.cinclude").clear();
        // LibTorch's own libraries load OpenBLAS (Loader.load(torch.class) comes first); we need no -lopenblas,
        // and the openblas jar ships only libopenblas.so.0 to link against.
        properties.get("platform.link").removeIf(l -> l.startsWith("openblas"));
    }
}
