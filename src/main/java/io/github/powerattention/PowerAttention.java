package io.github.powerattention;

import java.util.Objects;

import io.github.powerattention.global.power_attention;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorVector;

/**
 * Symmetric power attention ("Symmetric Power Transformers", Buckman, Gelada, Zhang, 2024) on Bytedeco LibTorch
 * tensors, differentiable: {@code loss.backward()} flows through it into Q, K, V and the gates.
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
 *   <li>{@code logG [b, t, h]}, optional, any floating dtype, computed in fp32 (fp64 for fp64 inputs);</li>
 *   <li>result {@code [b, t, hq, e]}, same dtype and device as {@code q}.</li>
 * </ul>
 * q, k and v share one dtype (float32, float64, bfloat16, float16) and one device; any strides are accepted.
 *
 * <p>Forms: without a chunk size, the quadratic form (cost {@code O(t^2 d)}); with one, the chunked form of cost
 * {@code O(t (D e + c d))} where {@code D = stateDim(d, p)}. Both compute the same function.
 *
 * <p>Errors: bad arguments throw {@link IllegalArgumentException} whose message names the argument, the expected
 * and the actual value (the checks are in C++, shared by every binding); other native failures throw
 * {@link PowerAttentionException} with the native message.
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

    /** {@link #powerFull(Tensor, Tensor, Tensor, PowerAttentionOptions)} with degree 2, no gates, quadratic form. */
    public static Tensor powerFull(Tensor q, Tensor k, Tensor v) {
        return powerFull(q, k, v, PowerAttentionOptions.defaults());
    }

    /**
     * Symmetric power attention of {@code q [b, t, hq, d]}, {@code k [b, t, h, d]}, {@code v [b, t, h, e]}.
     *
     * @return {@code [b, t, hq, e]} in q's dtype and on q's device, with a grad_fn when any input requires grad
     * @throws IllegalArgumentException on bad shapes, dtypes, devices or options, or a state that cannot be afforded
     * @throws PowerAttentionException on other native failures
     */
    public static Tensor powerFull(Tensor q, Tensor k, Tensor v, PowerAttentionOptions options) {
        requireInputs(q, k, v, options);
        Tensor logG = options.logG();
        Tensor gates = logG != null ? logG : new Tensor();
        try {
            return power_attention.power_full_flat(q, k, v, gates, options.degree(),
                    options.scale().isPresent(), options.scale().orElse(0.0),
                    options.chunkSize().isPresent(), options.chunkSize().orElse(0L));
        } catch (RuntimeException e) {
            throw translate(e);
        } finally {
            if (logG == null) {
                gates.close();
            }
        }
    }

    /**
     * Power attention that starts from {@code initial} (null: an empty prefix) and returns the state after the last
     * token with the output (SPEC §6). Processing a sequence in pieces, carrying the state, equals processing it
     * whole; gradients flow through the carried state unless it is {@link PowerAttentionState#detach() detached}.
     * Runs the chunked algorithm (one chunk of t without a chunk size), on CPU tensors and, with the
     * {@code linux-x86_64-gpu} natives, on CUDA tensors.
     */
    public static PowerAttentionResult powerFull(Tensor q, Tensor k, Tensor v, PowerAttentionOptions options,
            PowerAttentionState initial) {
        requireInputs(q, k, v, options);
        Tensor logG = options.logG();
        if (initial != null) {
            requireTensor(initial.S(), "state S");
            requireTensor(initial.s(), "state s");
        }
        try (Tensor none = new Tensor()) {
            TensorVector out = power_attention.power_full_with_state_flat(q, k, v, logG != null ? logG : none,
                    options.degree(), options.scale().isPresent(), options.scale().orElse(0.0),
                    options.chunkSize().isPresent(), options.chunkSize().orElse(0L),
                    initial != null ? initial.S() : none, initial != null ? initial.s() : none);
            return result(out);
        } catch (RuntimeException e) {
            throw translate(e);
        }
    }

    /** Owning copies of the three tensors (get() refers into the vector, which is released here). */
    private static PowerAttentionResult result(TensorVector out) {
        try (out) {
            return new PowerAttentionResult(new Tensor(out.get(0)),
                    PowerAttentionState.of(new Tensor(out.get(1)), new Tensor(out.get(2))));
        }
    }

    /** The state after a prompt (and the prompt's output): {@code powerFull(q, k, v, options, null)}. */
    public static PowerAttentionResult prefill(Tensor q, Tensor k, Tensor v, PowerAttentionOptions options) {
        return powerFull(q, k, v, options, null);
    }

    /**
     * One generation step: the new token's {@code q [b, hq, d]}, {@code k [b, h, d]}, {@code v [b, h, e]} and
     * {@code logG [b, h]} (null: no gating) against {@code state}; returns {@code y [b, hq, e]} and the state that
     * includes the token. {@code O(D e)} work per head, no cache: {@code S' = g S + phi(k) v^T}, {@code s' = g s +
     * phi(k)}, {@code y = phi(q) S' / phi(q) s'}. Equals {@code powerFull} at that position. The scale cancels here.
     */
    public static PowerAttentionResult decodeStep(Tensor q, Tensor k, Tensor v, Tensor logG, PowerAttentionState state,
            int degree) {
        requireTensor(q, "Q");
        requireTensor(k, "K");
        requireTensor(v, "V");
        Objects.requireNonNull(state, "power_full: a decode step needs a state");
        try (Tensor none = new Tensor()) {
            TensorVector out = power_attention.power_decode_step(q, k, v, logG != null ? logG : none, state.S(),
                    state.s(), degree);
            return result(out);
        } catch (RuntimeException e) {
            throw translate(e);
        }
    }

    /**
     * The dimension D of the symmetric power embedding: {@code C(d + p - 1, p)} (2080 for d = 64, p = 2). A chunked
     * state holds {@code D x e} numbers per head ({@code S}) and {@code D} more ({@code s}).
     */
    public static long stateDim(long headDim, int degree) {
        try {
            return power_attention.state_dim(headDim, degree);
        } catch (RuntimeException e) {
            throw translate(e);
        }
    }

    private static void requireInputs(Tensor q, Tensor k, Tensor v, PowerAttentionOptions options) {
        requireTensor(q, "Q");
        requireTensor(k, "K");
        requireTensor(v, "V");
        Objects.requireNonNull(options, "options must not be null");
        if (options.logG() != null) {
            requireTensor(options.logG(), "log_G");
        }
    }

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
