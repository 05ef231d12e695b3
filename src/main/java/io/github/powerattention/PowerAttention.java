package io.github.powerattention;

import io.github.powerattention.internal.power_attention;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorVector;

/**
 * Symmetric power attention ("Symmetric Power Transformers", Buckman, Gelada, Zhang, 2024) on Bytedeco LibTorch
 * tensors, differentiable: {@code loss.backward()} flows through it into Q, K, V, the gates and a carried state.
 *
 * <p>With {@code G = cumsum_t(logG)} (per key/value head; 0 without gates) and {@code s_ij = scale * <q_i, k_j>}:
 * <pre>
 *   w_ij = s_ij^p * exp(G_i - G_j)   for j &lt;= i (causal), 0 otherwise
 *   Y_i  = sum_j w_ij V_j / sum_j w_ij
 * </pre>
 *
 * Shapes (sequence-major, like flash-attention, not SDPA's {@code [b, h, t, d]}):
 * <ul>
 *   <li>{@code q [b, t, hq, d]}, {@code k [b, t, h, d]}, {@code v [b, t, h, e]}, with {@code hq % h == 0}: query head
 *       {@code i} uses key/value head {@code i / (hq / h)} (grouped-query attention, K and V are not copied);</li>
 *   <li>{@code logG [b, t, h]}: the per-token log forget gates, e.g. {@code logsigmoid} of a gate projection;
 *       {@code null} means no gating; any floating dtype, computed in fp32 (fp64 for fp64 inputs);</li>
 *   <li>result {@code [b, t, hq, e]}, same dtype and device as {@code q}.</li>
 * </ul>
 * q, k and v share one dtype (float32, float64, bfloat16, float16) and one device; any strides are accepted.
 * The gates are an input like q, k and v (they come from the model, and gradients flow into them); the degree, the
 * scale and the form are {@link PowerAttentionOptions}, immutable, built once and shared by every layer and call.
 *
 * <p>The calls:
 * <ul>
 *   <li>{@link #powerFull(Tensor, Tensor, Tensor, Tensor, PowerAttentionOptions) powerFull}: the output of a whole
 *       sequence;</li>
 *   <li>{@link #prefill prefill}: the output and the {@link PowerAttentionState state} after the last token, for a
 *       sequence that starts empty (a prompt, the first piece of a long sequence);</li>
 *   <li>{@link #continueFrom continueFrom}: the same for a piece that starts from a state (the next piece of a long
 *       sequence): pieces carrying the state equal the whole sequence, values and gradients;</li>
 *   <li>{@link #decodeStep decodeStep}: one new token from a state, {@code O(D e)} per head, no cache
 *       (generation).</li>
 * </ul>
 *
 * <p>Forms: without a chunk size, the quadratic form (cost {@code O(t^2 d)}); with one, the chunked form of cost
 * {@code O(t (D e + c d))} where {@code D = stateDim(d, p)}. Both compute the same function.
 *
 * <p>Errors: bad arguments throw {@link IllegalArgumentException} whose message names the argument, the expected
 * and the actual value (the checks are in C++, shared by every binding; only a Java {@code null} or a released
 * tensor, which the native side cannot see, is caught here: {@link NullPointerException} for a required argument
 * that is {@code null}); other native failures throw {@link PowerAttentionException} with the native message.
 */
public final class PowerAttention {
    private PowerAttention() {}

    /**
     * Loads LibTorch's natives and ours, LibTorch's in dependency order: with the {@code -gpu} natives, call it
     * (or any other method of this class) before LibTorch's first CUDA query ({@code torch.cuda_is_available()}),
     * which on an empty JavaCPP cache would otherwise load LibTorch without its CUDA libraries and see no GPU until
     * the next run. Idempotent and cheap after the first call. Called first in a program, before any LibTorch class,
     * it also keeps JavaCPP from printing its version warning about the OpenBLAS build our POMs pair with LibTorch
     * ({@code openblas:0.3.31-1.5.13}, as Bytedeco's own pairing is not on Maven Central); other warnings stay.
     */
    public static void loadNatives() {
        power_attention.load();
    }

    /** {@link #powerFull(Tensor, Tensor, Tensor, Tensor, PowerAttentionOptions)} ungated, with the default options. */
    public static Tensor powerFull(Tensor q, Tensor k, Tensor v) {
        return powerFull(q, k, v, null, PowerAttentionOptions.defaults());
    }

    /** {@link #powerFull(Tensor, Tensor, Tensor, Tensor, PowerAttentionOptions)} ungated ({@code logG = null}). */
    public static Tensor powerFull(Tensor q, Tensor k, Tensor v, PowerAttentionOptions options) {
        return powerFull(q, k, v, null, options);
    }

    /**
     * Symmetric power attention of {@code q [b, t, hq, d]}, {@code k [b, t, h, d]}, {@code v [b, t, h, e]} with the
     * log forget gates {@code logG [b, t, h]} ({@code null}: no gating).
     *
     * @return {@code [b, t, hq, e]} in q's dtype and on q's device, with a grad_fn when any input requires grad
     * @throws IllegalArgumentException on bad shapes, dtypes or devices, or a state that cannot be afforded
     * @throws NullPointerException if q, k, v or options is null
     * @throws PowerAttentionException on other native failures
     */
    public static Tensor powerFull(Tensor q, Tensor k, Tensor v, Tensor logG, PowerAttentionOptions options) {
        requireInputs(q, k, v, logG, options);
        try (Tensor none = new Tensor()) {
            return power_attention.power_full_flat(q, k, v, logG != null ? logG : none, options.degree(),
                    options.scale().isPresent(), options.scale().orElse(0.0),
                    options.chunkSize().isPresent(), options.chunkSize().orElse(0L));
        }
    }

    /**
     * Power attention of a sequence that starts empty (a prompt, or the first piece of a long sequence): its output
     * and the state after its last token, from which {@link #continueFrom} or {@link #decodeStep} go on. The output
     * equals {@link #powerFull(Tensor, Tensor, Tensor, Tensor, PowerAttentionOptions) powerFull}'s. Runs the chunked
     * algorithm (one chunk of t without a chunk size), on CPU tensors and, with the {@code linux-x86_64-gpu}
     * natives, on CUDA tensors.
     *
     * @return the output {@code [b, t, hq, e]} and the state ({@code S [b, h, D, e]}, {@code s [b, h, D]}, fp32;
     *     fp64 for fp64 inputs); close it to release both
     * @throws IllegalArgumentException as {@code powerFull}, and where the returned state would overflow its dtype
     *     (log gates above 0 summing to more than 44 nats in fp32, SPEC §6)
     */
    public static PowerAttentionResult prefill(Tensor q, Tensor k, Tensor v, Tensor logG,
            PowerAttentionOptions options) {
        requireInputs(q, k, v, logG, options);
        try (Tensor none = new Tensor()) {
            return withState(q, k, v, logG != null ? logG : none, options, none, none);
        }
    }

    /**
     * Power attention of the next piece of a sequence, starting from {@code state}, the state after the tokens
     * before it ({@link #prefill}, an earlier {@code continueFrom}, {@link #decodeStep}, or one loaded from a
     * checkpoint): its output and the state after its last token. Pieces carrying the state equal the whole sequence
     * (values and gradients; gradients flow into the carried state unless it is
     * {@link PowerAttentionState#detach() detached}).
     *
     * @param state the state entering the piece; not closed or changed here
     * @return the piece's output {@code [b, t, hq, e]} and the state after it; close it to release both
     * @throws IllegalArgumentException as {@link #prefill}, and for a state whose shape, dtype or device does not fit
     */
    public static PowerAttentionResult continueFrom(PowerAttentionState state, Tensor q, Tensor k, Tensor v,
            Tensor logG, PowerAttentionOptions options) {
        requireState(state, "continuing from a state");
        requireInputs(q, k, v, logG, options);
        try (Tensor none = new Tensor()) {
            return withState(q, k, v, logG != null ? logG : none, options, state.S(), state.s());
        }
    }

    private static PowerAttentionResult withState(Tensor q, Tensor k, Tensor v, Tensor logG,
            PowerAttentionOptions options, Tensor S0, Tensor s0) {
        return result(power_attention.power_full_with_state_flat(q, k, v, logG, options.degree(),
                options.scale().isPresent(), options.scale().orElse(0.0),
                options.chunkSize().isPresent(), options.chunkSize().orElse(0L), S0, s0));
    }

    /**
     * One generation step: the new token's {@code q [b, hq, d]}, {@code k [b, h, d]}, {@code v [b, h, e]} and
     * {@code logG [b, h]} ({@code null}: no gating) from {@code state}, the state after the tokens before it.
     * {@code O(D e)} work per head, no cache: {@code S' = g S + phi(k) v^T}, {@code s' = g s + phi(k)},
     * {@code y = phi(q) S' / phi(q) s'} with {@code g = exp(logG)}. Equals {@code powerFull} of the whole sequence at
     * that position. Of the options only the degree matters here: the scale cancels in the ratio, and there are no
     * chunks; pass the options the state was made with.
     *
     * @param state the state before the token; not closed or changed here
     * @return {@code y [b, hq, e]} in q's dtype and the state that includes the token; close it to release both
     * @throws IllegalArgumentException on bad shapes, dtypes or devices (of the state too), or a state that
     *     overflows its dtype
     */
    public static PowerAttentionResult decodeStep(PowerAttentionState state, Tensor q, Tensor k, Tensor v,
            Tensor logG, PowerAttentionOptions options) {
        requireState(state, "a decode step");
        requireInputs(q, k, v, logG, options);
        try (Tensor none = new Tensor()) {
            return result(power_attention.power_decode_step(q, k, v, logG != null ? logG : none, state.S(),
                    state.s(), options.degree()));
        }
    }

    /**
     * The dimension D of the symmetric power embedding: {@code C(d + p - 1, p)} (2080 for d = 64, p = 2). A chunked
     * state holds {@code D x e} numbers per head ({@code S}) and {@code D} more ({@code s}).
     *
     * @throws IllegalArgumentException if {@code headDim < 1} or {@code degree < 1}
     */
    public static long stateDim(long headDim, int degree) {
        return power_attention.state_dim(headDim, degree);
    }

    /** Owning copies of the three tensors (get() refers into the vector, which is released here). */
    private static PowerAttentionResult result(TensorVector out) {
        try (out) {
            return new PowerAttentionResult(new Tensor(out.get(0)),
                    PowerAttentionState.of(new Tensor(out.get(1)), new Tensor(out.get(2))));
        }
    }

    private static void requireInputs(Tensor q, Tensor k, Tensor v, Tensor logG, PowerAttentionOptions options) {
        requireTensor(q, "Q");
        requireTensor(k, "K");
        requireTensor(v, "V");
        if (logG != null) {
            requireTensor(logG, "log_G");
        }
        if (options == null) {
            throw new NullPointerException("power_full: options must not be null (PowerAttentionOptions.defaults())");
        }
    }

    private static void requireState(PowerAttentionState state, String what) {
        if (state == null) {
            throw new NullPointerException("power_full: " + what + " needs a state (prefill makes the first one)");
        }
        requireTensor(state.S(), "state S");
        requireTensor(state.s(), "state s");
    }

    /** What the native side cannot see: a Java null, or a tensor whose native memory was released. */
    private static void requireTensor(Tensor x, String name) {
        if (x == null) {
            throw new NullPointerException("power_full: " + name + " must not be null");
        }
        if (x.isNull()) {
            throw new IllegalArgumentException("power_full: " + name + " is a released tensor (null native pointer)");
        }
    }

    /** Native errors with their Java type (see {@link power_attention#translate}). */
    static RuntimeException translate(RuntimeException e) {
        return power_attention.translate(e);
    }
}
