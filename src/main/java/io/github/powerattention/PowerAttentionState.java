package io.github.powerattention;

import java.util.Objects;

import org.bytedeco.pytorch.Device;
import org.bytedeco.pytorch.InputArchive;
import org.bytedeco.pytorch.OutputArchive;
import org.bytedeco.pytorch.Tensor;

import static org.bytedeco.pytorch.global.torch.ScalarType;

/**
 * The recurrent state of symmetric power attention (SPEC §6), one per (batch, key/value head):
 * <pre>
 *   S [b, h, D, e]   sum_j exp(G_t - G_j) phi(k_j) v_j^T     (fp32; fp64 for fp64 inputs)
 *   s [b, h, D]      sum_j exp(G_t - G_j) phi(k_j)            (the normaliser)
 * </pre>
 * with {@code D = PowerAttention.stateDim(d, degree)} and phi's index layout as in the README (multi-indices
 * {@code a_1 <= ... <= a_p} in lexicographic order). The state after a prefix makes the rest of a sequence
 * computable without the prefix: {@link PowerAttention#prefill} makes one, {@link PowerAttention#continueFrom}
 * continues a sequence from it, {@link PowerAttention#decodeStep} advances it by one token. Those calls return a new
 * state and leave the one passed in as it was.
 *
 * <p>Owns its two tensors: {@link #close()} releases them. The state can carry autograd history (so a long
 * sequence can be trained in pieces with gradients through the carried state); {@link #detach()} cuts it.
 */
public final class PowerAttentionState implements AutoCloseable {
    private final Tensor S;
    private final Tensor s;

    private PowerAttentionState(Tensor S, Tensor s) {
        this.S = S;
        this.s = s;
    }

    /** Wraps {@code S [b, h, D, e]} and {@code s [b, h, D]} (shapes are checked when the state is used). */
    public static PowerAttentionState of(Tensor S, Tensor s) {
        Objects.requireNonNull(S, "power_full: state S must not be null");
        Objects.requireNonNull(s, "power_full: state s must not be null");
        return new PowerAttentionState(S, s);
    }

    /** The state of an empty prefix: zeros of shape {@code [b, h, D, e]} and {@code [b, h, D]} in fp32. */
    public static PowerAttentionState zeros(long b, long h, long headDim, long valueDim, int degree) {
        long D = PowerAttention.stateDim(headDim, degree);
        org.bytedeco.pytorch.TensorOptions f32 = new org.bytedeco.pytorch.TensorOptions(ScalarType.Float);
        return new PowerAttentionState(org.bytedeco.pytorch.global.torch.zeros(new long[] {b, h, D, valueDim}, f32),
                org.bytedeco.pytorch.global.torch.zeros(new long[] {b, h, D}, f32));
    }

    /** {@code [b, h, D, e]}: the gated sum of phi(k) v^T. */
    public Tensor S() {
        return S;
    }

    /** {@code [b, h, D]}: the gated sum of phi(k). */
    public Tensor s() {
        return s;
    }

    /** A copy on {@code device}. */
    public PowerAttentionState to(Device device) {
        return new PowerAttentionState(S.to(device, S.scalar_type()), s.to(device, s.scalar_type()));
    }

    /** A copy with {@code S} in {@code dtype} ({@code s} stays fp32 or fp64, as SPEC §6 asks). */
    public PowerAttentionState to(ScalarType dtype) {
        return new PowerAttentionState(S.to(dtype), s);
    }

    /** The same values without autograd history. */
    public PowerAttentionState detach() {
        return new PowerAttentionState(S.detach(), s.detach());
    }

    /** Writes the state into a checkpoint under {@code name + ".S"} and {@code name + ".s"}. */
    public void save(OutputArchive archive, String name) {
        archive.write(name + ".S", S, false);
        archive.write(name + ".s", s, false);
    }

    /** Reads a state written by {@link #save}. */
    public static PowerAttentionState load(InputArchive archive, String name) {
        Tensor S = new Tensor();
        Tensor s = new Tensor();
        archive.read(name + ".S", S, false);
        archive.read(name + ".s", s, false);
        return new PowerAttentionState(S, s);
    }

    @Override
    public void close() {
        S.close();
        s.close();
    }
}
