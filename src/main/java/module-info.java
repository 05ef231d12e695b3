/**
 * Symmetric power attention for Bytedeco LibTorch: {@link io.github.powerattention.PowerAttention} and its options,
 * state and result types. The only exported package is {@code io.github.powerattention}; the raw natives and the
 * JavaCPP presets stay inside.
 *
 * <p>On the module path the natives JARs (ours, LibTorch's, OpenBLAS's, JavaCPP's) are modules nothing requires:
 * add them to the module graph, e.g. {@code --add-modules io.github.powerattention.linux.x86_64,
 * org.bytedeco.pytorch.linux.x86_64,org.bytedeco.openblas.linux.x86_64,org.bytedeco.javacpp.linux.x86_64} (the
 * README, "Use it").
 */
module io.github.powerattention {
    // Tensor, TensorVector, Device and the archives are in the API
    requires transitive org.bytedeco.pytorch;
    requires org.bytedeco.javacpp;

    exports io.github.powerattention;

    // JavaCPP's Loader instantiates the presets class (a LoadEnabled) reflectively when it reads its properties
    exports io.github.powerattention.internal.presets to org.bytedeco.javacpp;
}
