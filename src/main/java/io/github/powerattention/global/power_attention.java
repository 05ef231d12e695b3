package io.github.powerattention.global;

import org.bytedeco.javacpp.Loader;
import org.bytedeco.javacpp.annotation.ByRef;
import org.bytedeco.javacpp.annotation.ByVal;
import org.bytedeco.javacpp.annotation.Cast;
import org.bytedeco.javacpp.annotation.Const;
import org.bytedeco.javacpp.annotation.Namespace;
import org.bytedeco.javacpp.annotation.Properties;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorVector;

/**
 * Raw natives of {@code src/main/cpp/power_attention.h}. Internal: no argument checks happen here beyond the C++
 * ones, and C++ errors arrive as plain {@link RuntimeException}s. Users call
 * {@link io.github.powerattention.PowerAttention}, which checks arguments and maps errors.
 */
@Properties(inherit = io.github.powerattention.presets.power_attention.class)
public class power_attention {
    static {
        io.github.powerattention.presets.OpenBlasVersionCheck.run();
        Loader.load(org.bytedeco.pytorch.global.torch.class);
        Loader.load();
    }

    private power_attention() {}

    /** {@code power_attention::power_full_flat}: an undefined {@code logG} means no gating. */
    @Namespace("power_attention")
    public static native @ByVal Tensor power_full_flat(
            @Const @ByRef Tensor q, @Const @ByRef Tensor k, @Const @ByRef Tensor v, @Const @ByRef Tensor logG,
            @Cast("int64_t") long degree, @Cast("bool") boolean hasScale, double scale,
            @Cast("bool") boolean hasChunkSize, @Cast("int64_t") long chunkSize);

    /** {@code power_attention::power_full_with_state_flat}: {Y, S, s}; undefined S0/s0 mean a zero state. */
    @Namespace("power_attention")
    public static native @ByVal TensorVector power_full_with_state_flat(
            @Const @ByRef Tensor q, @Const @ByRef Tensor k, @Const @ByRef Tensor v, @Const @ByRef Tensor logG,
            @Cast("int64_t") long degree, @Cast("bool") boolean hasScale, double scale,
            @Cast("bool") boolean hasChunkSize, @Cast("int64_t") long chunkSize,
            @Const @ByRef Tensor S0, @Const @ByRef Tensor s0);

    /** {@code power_attention::power_decode_step}: {y, S', s'}. */
    @Namespace("power_attention")
    public static native @ByVal TensorVector power_decode_step(
            @Const @ByRef Tensor q, @Const @ByRef Tensor k, @Const @ByRef Tensor v, @Const @ByRef Tensor logG,
            @Const @ByRef Tensor S, @Const @ByRef Tensor s, @Cast("int64_t") long degree);

    /** {@code power_attention::state_dim}: C(d + p - 1, p). */
    @Namespace("power_attention")
    public static native @Cast("int64_t") long state_dim(@Cast("int64_t") long headDim, @Cast("int64_t") long degree);

    /** {@code power_attention::reference::power_full_quadratic}: plain-ATen SPEC §3, differentiable by autograd. */
    @Namespace("power_attention::reference")
    public static native @ByVal Tensor power_full_quadratic(
            @Const @ByRef Tensor q, @Const @ByRef Tensor k, @Const @ByRef Tensor v, @Const @ByRef Tensor logG,
            @Cast("int64_t") long degree, double scale);

    /** {@code power_attention::reference::power_full_chunked}: plain-ATen SPEC §4, differentiable by autograd. */
    @Namespace("power_attention::reference")
    public static native @ByVal Tensor power_full_chunked(
            @Const @ByRef Tensor q, @Const @ByRef Tensor k, @Const @ByRef Tensor v, @Const @ByRef Tensor logG,
            @Cast("int64_t") long degree, double scale, @Cast("int64_t") long chunkSize);

    /** {@code power_attention::reference::symmetric_power_embedding}: phi of the last dimension. */
    @Namespace("power_attention::reference")
    public static native @ByVal Tensor symmetric_power_embedding(@Const @ByRef Tensor x, @Cast("int64_t") long degree);
}
