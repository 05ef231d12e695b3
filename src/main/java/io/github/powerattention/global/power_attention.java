package io.github.powerattention.global;

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
 * Raw natives of {@code src/main/cpp/power_attention.h}. Internal: users call
 * {@link io.github.powerattention.PowerAttention}. Errors are typed here already: a bad argument (the C++ checks'
 * {@code ArgumentError}, message {@code "power_full: ..."}) throws {@link IllegalArgumentException}, every other
 * native failure {@link PowerAttentionException} (the C++ binding functions mark them apart, {@code errors.h}).
 */
@Properties(inherit = io.github.powerattention.presets.power_attention.class)
public class power_attention {
    static {
        io.github.powerattention.presets.OpenBlasVersionCheck.run();
        Loader.load(org.bytedeco.pytorch.global.torch.class);
        Loader.load();
    }

    private static final String BACKTRACE_MARK = "\nException raised from ";
    private static final String ARGUMENT_PREFIX = "power_full: ";

    private power_attention() {}

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

    /** {@code power_attention::power_full_flat}: an undefined {@code logG} means no gating. */
    public static Tensor power_full_flat(Tensor q, Tensor k, Tensor v, Tensor logG, long degree, boolean hasScale,
            double scale, boolean hasChunkSize, long chunkSize) {
        try {
            return power_full_flat0(q, k, v, logG, degree, hasScale, scale, hasChunkSize, chunkSize);
        } catch (RuntimeException e) {
            throw translate(e);
        }
    }

    /** {@code power_attention::power_full_with_state_flat}: {Y, S, s}; undefined S0/s0 mean a zero state. */
    public static TensorVector power_full_with_state_flat(Tensor q, Tensor k, Tensor v, Tensor logG, long degree,
            boolean hasScale, double scale, boolean hasChunkSize, long chunkSize, Tensor S0, Tensor s0) {
        try {
            return power_full_with_state_flat0(q, k, v, logG, degree, hasScale, scale, hasChunkSize, chunkSize, S0,
                    s0);
        } catch (RuntimeException e) {
            throw translate(e);
        }
    }

    /** {@code power_attention::power_decode_step_flat}: {y, S', s'}. */
    public static TensorVector power_decode_step(Tensor q, Tensor k, Tensor v, Tensor logG, Tensor S, Tensor s,
            long degree) {
        try {
            return power_decode_step0(q, k, v, logG, S, s, degree);
        } catch (RuntimeException e) {
            throw translate(e);
        }
    }

    /** {@code power_attention::state_dim_flat}: C(d + p - 1, p). */
    public static long state_dim(long headDim, long degree) {
        try {
            return state_dim0(headDim, degree);
        } catch (RuntimeException e) {
            throw translate(e);
        }
    }

    /** {@code power_attention::reference::power_full_quadratic}: plain-ATen SPEC §3, differentiable by autograd. */
    public static Tensor power_full_quadratic(Tensor q, Tensor k, Tensor v, Tensor logG, long degree, double scale) {
        try {
            return power_full_quadratic0(q, k, v, logG, degree, scale);
        } catch (RuntimeException e) {
            throw translate(e);
        }
    }

    /** {@code power_attention::reference::power_full_chunked}: plain-ATen SPEC §4, differentiable by autograd. */
    public static Tensor power_full_chunked(Tensor q, Tensor k, Tensor v, Tensor logG, long degree, double scale,
            long chunkSize) {
        try {
            return power_full_chunked0(q, k, v, logG, degree, scale, chunkSize);
        } catch (RuntimeException e) {
            throw translate(e);
        }
    }

    /** {@code power_attention::reference::symmetric_power_embedding}: phi of the last dimension. */
    public static Tensor symmetric_power_embedding(Tensor x, long degree) {
        try {
            return symmetric_power_embedding0(x, degree);
        } catch (RuntimeException e) {
            throw translate(e);
        }
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
