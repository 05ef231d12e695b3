package io.github.powerattention.internal;

import java.io.IOException;
import java.net.URL;
import java.util.function.Supplier;

import org.bytedeco.javacpp.ClassProperties;
import org.bytedeco.javacpp.Loader;
import org.bytedeco.javacpp.annotation.ByRef;
import org.bytedeco.javacpp.annotation.ByVal;
import org.bytedeco.javacpp.annotation.Cast;
import org.bytedeco.javacpp.annotation.Const;
import org.bytedeco.javacpp.annotation.Name;
import org.bytedeco.javacpp.annotation.Namespace;
import org.bytedeco.javacpp.annotation.Properties;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorVector;

import io.github.powerattention.PowerAttentionException;

/**
 * Raw natives of {@code src/main/cpp/power_attention.h}, and the loading of LibTorch's natives and ours. Internal
 * (the module does not export this package): users call {@link io.github.powerattention.PowerAttention}. Errors are
 * typed here already: a bad argument (the C++ checks' {@code ArgumentError}, message {@code "power_full: ..."})
 * throws {@link IllegalArgumentException}, every other native failure {@link PowerAttentionException} (the C++
 * binding functions mark them apart, {@code errors.h}).
 *
 * <p>JavaCPP finds the JNI library {@code jnipower_attention} as the resource
 * {@code io/github/powerattention/<platform><extension>/} of the natives JAR ({@code linux-x86_64},
 * {@code linux-x86_64-gpu}, ...): it looks in this class's package first, then in its parents.
 */
@Properties(inherit = io.github.powerattention.internal.presets.power_attention.class)
public class power_attention {
    static {
        // first: JavaCPP's OpenBLAS version check, without its known warning (reading LibTorch's presets, as
        // cacheLinkedLibraries and Loader.load do, initialises OpenBLAS's presets and runs it)
        io.github.powerattention.internal.presets.OpenBlasVersionCheck.run();
        cacheLinkedLibraries(org.bytedeco.pytorch.global.torch.class);
        Loader.load(org.bytedeco.pytorch.global.torch.class);
        Loader.load(power_attention.class);
    }

    /**
     * Extracts the libraries that {@code presets} links ({@code platform.link}: for LibTorch {@code c10},
     * {@code torch}, {@code torch_cpu}) into JavaCPP's cache before its first load. JavaCPP loads a class's
     * {@code platform.preload} list before its {@code platform.link} list and extracts each library only when it comes
     * to it, so on an empty cache LibTorch's -gpu preloads {@code libc10_cuda.so} and {@code libtorch_cuda.so} fail
     * ("libc10.so: cannot open shared object file"), are not tried again, and LibTorch sees no CUDA device until the
     * next run. With the linked libraries in the cache first, every library loads on the first pass. This must run
     * before LibTorch's first CUDA question: a JVM that asked LibTorch first keeps its answer (no CUDA) even after
     * the libraries load (seen on an H200).
     */
    private static void cacheLinkedLibraries(Class<?> presets) {
        if (!Loader.isLoadLibraries()) {
            return;
        }
        ClassProperties p = Loader.loadProperties(presets, Loader.loadProperties(), true);
        for (String lib : p.get("platform.link")) {
            for (URL url : Loader.findLibrary(presets, p, lib, false)) {
                if (url.getProtocol().equals("jar")) {        // in a JAR: what JavaCPP extracts into its cache
                    try {
                        Loader.cacheResource(url);
                    } catch (IOException e) {
                        // the cache is not writable: JavaCPP's own load reports what fails
                    }
                    break;                                    // the first match is the one JavaCPP loads
                }
            }
        }
    }

    private power_attention() {}

    /** Runs this class's static initialiser (the loading above) if it has not run yet. */
    public static void load() {}

    private static final String BACKTRACE_MARK = "\nException raised from ";
    private static final String ARGUMENT_PREFIX = "power_full: ";

    /** A native failure with its Java type: IllegalArgumentException for our argument checks, else internal. */
    public static RuntimeException translate(RuntimeException e) {
        if (e instanceof IllegalArgumentException || e instanceof PowerAttentionException) {
            return e;
        }
        String message = e.getMessage() == null ? "" : e.getMessage();
        int cut = message.indexOf(BACKTRACE_MARK);
        if (cut >= 0) {
            message = message.substring(0, cut);
        }
        message = message.strip();
        if (message.startsWith(ARGUMENT_PREFIX)) {
            IllegalArgumentException iae = new IllegalArgumentException(message);
            iae.initCause(e);
            return iae;
        }
        return new PowerAttentionException(message.isEmpty() ? "native failure in power attention" : message, e);
    }

    /** The native call's result, or its failure with its Java type. */
    private static <T> T translated(Supplier<T> call) {
        try {
            return call.get();
        } catch (RuntimeException e) {
            throw translate(e);
        }
    }

    /** {@code power_attention::power_full_flat}: an undefined {@code logG} means no gating. */
    public static Tensor power_full_flat(Tensor q, Tensor k, Tensor v, Tensor logG, long degree, boolean hasScale,
            double scale, boolean hasChunkSize, long chunkSize) {
        return translated(() -> power_full_flat0(q, k, v, logG, degree, hasScale, scale, hasChunkSize, chunkSize));
    }

    /** {@code power_attention::power_full_with_state_flat}: {Y, S, s}; undefined S0/s0 mean a zero state. */
    public static TensorVector power_full_with_state_flat(Tensor q, Tensor k, Tensor v, Tensor logG, long degree,
            boolean hasScale, double scale, boolean hasChunkSize, long chunkSize, Tensor S0, Tensor s0) {
        return translated(() -> power_full_with_state_flat0(q, k, v, logG, degree, hasScale, scale, hasChunkSize,
                chunkSize, S0, s0));
    }

    /** {@code power_attention::power_decode_step_flat}: {y, S', s'}. */
    public static TensorVector power_decode_step(Tensor q, Tensor k, Tensor v, Tensor logG, Tensor S, Tensor s,
            long degree) {
        return translated(() -> power_decode_step0(q, k, v, logG, S, s, degree));
    }

    /** {@code power_attention::state_dim_flat}: C(d + p - 1, p). */
    public static long state_dim(long headDim, long degree) {
        return translated(() -> state_dim0(headDim, degree));
    }

    /** {@code power_attention::reference::power_full_quadratic}: plain-ATen SPEC §3, differentiable by autograd. */
    public static Tensor power_full_quadratic(Tensor q, Tensor k, Tensor v, Tensor logG, long degree, double scale) {
        return translated(() -> power_full_quadratic0(q, k, v, logG, degree, scale));
    }

    /** {@code power_attention::reference::power_full_chunked}: plain-ATen SPEC §4, differentiable by autograd. */
    public static Tensor power_full_chunked(Tensor q, Tensor k, Tensor v, Tensor logG, long degree, double scale,
            long chunkSize) {
        return translated(() -> power_full_chunked0(q, k, v, logG, degree, scale, chunkSize));
    }

    /** {@code power_attention::reference::symmetric_power_embedding}: phi of the last dimension. */
    public static Tensor symmetric_power_embedding(Tensor x, long degree) {
        return translated(() -> symmetric_power_embedding0(x, degree));
    }

    @Namespace("power_attention") @Name("power_full_flat")
    private static native @ByVal Tensor power_full_flat0(
            @Const @ByRef Tensor q, @Const @ByRef Tensor k, @Const @ByRef Tensor v, @Const @ByRef Tensor logG,
            @Cast("int64_t") long degree, @Cast("bool") boolean hasScale, double scale,
            @Cast("bool") boolean hasChunkSize, @Cast("int64_t") long chunkSize);

    @Namespace("power_attention") @Name("power_full_with_state_flat")
    private static native @ByVal TensorVector power_full_with_state_flat0(
            @Const @ByRef Tensor q, @Const @ByRef Tensor k, @Const @ByRef Tensor v, @Const @ByRef Tensor logG,
            @Cast("int64_t") long degree, @Cast("bool") boolean hasScale, double scale,
            @Cast("bool") boolean hasChunkSize, @Cast("int64_t") long chunkSize,
            @Const @ByRef Tensor S0, @Const @ByRef Tensor s0);

    @Namespace("power_attention") @Name("power_decode_step_flat")
    private static native @ByVal TensorVector power_decode_step0(
            @Const @ByRef Tensor q, @Const @ByRef Tensor k, @Const @ByRef Tensor v, @Const @ByRef Tensor logG,
            @Const @ByRef Tensor S, @Const @ByRef Tensor s, @Cast("int64_t") long degree);

    @Namespace("power_attention") @Name("state_dim_flat")
    private static native @Cast("int64_t") long state_dim0(@Cast("int64_t") long headDim,
            @Cast("int64_t") long degree);

    @Namespace("power_attention::reference") @Name("power_full_quadratic")
    private static native @ByVal Tensor power_full_quadratic0(
            @Const @ByRef Tensor q, @Const @ByRef Tensor k, @Const @ByRef Tensor v, @Const @ByRef Tensor logG,
            @Cast("int64_t") long degree, double scale);

    @Namespace("power_attention::reference") @Name("power_full_chunked")
    private static native @ByVal Tensor power_full_chunked0(
            @Const @ByRef Tensor q, @Const @ByRef Tensor k, @Const @ByRef Tensor v, @Const @ByRef Tensor logG,
            @Cast("int64_t") long degree, double scale, @Cast("int64_t") long chunkSize);

    @Namespace("power_attention::reference") @Name("symmetric_power_embedding")
    private static native @ByVal Tensor symmetric_power_embedding0(@Const @ByRef Tensor x,
            @Cast("int64_t") long degree);
}
