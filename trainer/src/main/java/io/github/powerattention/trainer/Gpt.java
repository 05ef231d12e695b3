package io.github.powerattention.trainer;

import static org.bytedeco.pytorch.global.torch.cat;
import static org.bytedeco.pytorch.global.torch.cross_entropy_loss;
import static org.bytedeco.pytorch.global.torch.embedding;
import static org.bytedeco.pytorch.global.torch.full;
import static org.bytedeco.pytorch.global.torch.gelu;
import static org.bytedeco.pytorch.global.torch.layer_norm;
import static org.bytedeco.pytorch.global.torch.linear;
import static org.bytedeco.pytorch.global.torch.log_sigmoid;
import static org.bytedeco.pytorch.global.torch.manual_seed;
import static org.bytedeco.pytorch.global.torch.ones;
import static org.bytedeco.pytorch.global.torch.randn;
import static org.bytedeco.pytorch.global.torch.scaled_dot_product_attention;
import static org.bytedeco.pytorch.global.torch.zeros;
import static org.bytedeco.pytorch.global.torch.zeros_like;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

import io.github.powerattention.PowerAttention;
import io.github.powerattention.PowerAttentionOptions;
import io.github.powerattention.PowerAttentionResult;
import io.github.powerattention.PowerAttentionState;
import org.bytedeco.pytorch.DoubleOptional;
import org.bytedeco.pytorch.Module;
import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorOptional;
import org.bytedeco.pytorch.TensorOptions;
import org.bytedeco.pytorch.TensorVector;
import org.bytedeco.pytorch.global.torch.ScalarType;

/**
 * A GPT over byte tokens: token embedding, {@code n_layer} pre-LayerNorm blocks (attention + MLP), a final
 * LayerNorm and an output head tied to the embedding. No biases in the linear layers, no dropout, no position
 * embedding: rotary embeddings on q and k carry position.
 *
 * <p>Attention is LibTorch's causal {@code scaled_dot_product_attention} or symmetric power attention
 * ({@link PowerAttention#powerFull}), with per-key/value-head gates {@code log_g = logsigmoid(b + x W_g)} computed
 * in fp32 from the normed input, initialised to {@code W_g = 0}, {@code sigmoid(b) = 0.999}.
 *
 * <p>Token shift (on unless {@link GptConfig#tokenShift} is off): each layer's keys and values are projected from
 * {@code ln_1(x_t) + mu * ln_1(e_{t-1})}, {@code e_{t-1}} the previous token's embedding (zero before the first token
 * of a window), {@code mu} learned per channel and initialised to 1; queries and gates see {@code ln_1(x_t)} alone.
 * A position then carries the token before it into its key, so one attention layer can find "the value after key
 * a" (associative recall) without first learning a previous-token head in another layer.
 *
 * <p>Parameters are fp32. With a lower compute dtype ({@link #computeDtype}) the matrix products run in that dtype
 * and the residual stream, norms, gates and loss stay in fp32 (what autocast does in the Python trainer).
 *
 * <p>Build it outside any {@code PointerScope}: its parameters and rotary tables must outlive loop scopes.
 */
public final class Gpt extends Module {
    private final GptConfig config;
    private final Tensor wte;
    private final List<Block> blocks = new ArrayList<>();
    private final Tensor lnfWeight;
    private final Tensor lnfBias;
    private final Rotary rotary;
    private ScalarType computeDtype = ScalarType.Float;

    /** A model initialised from {@code seed} (LibTorch's CPU generator is reseeded). */
    public Gpt(GptConfig config, long seed) {
        super("Gpt");
        this.config = config;
        manual_seed(seed);
        int c = config.nEmbd();
        double std = 0.02;
        double projStd = 0.02 / Math.sqrt(2.0 * config.nLayer());
        try (NoGradGuard g = new NoGradGuard()) {
            wte = register(this, "wte", normal(std, config.vocabSize(), c));
            for (int i = 0; i < config.nLayer(); i++) {
                blocks.add(register_module("h" + i, new Block(config, std, projStd)));
            }
            lnfWeight = register(this, "ln_f_weight", ones(new long[] {c}, f32()));
            lnfBias = register(this, "ln_f_bias", zeros(new long[] {c}, f32()));
        }
        rotary = new Rotary(config.headDim(), config.blockSize(), config.ropeBase());
    }

    public GptConfig config() {
        return config;
    }

    /** The device the parameters are on. */
    public org.bytedeco.pytorch.Device device() {
        return wte.device();
    }

    /** The dtype of matrix products and attention (float32, bfloat16 or float16); parameters stay fp32. */
    public void computeDtype(ScalarType dtype) {
        this.computeDtype = dtype;
    }

    public ScalarType computeDtype() {
        return computeDtype;
    }

    /** Logits {@code [b, t, vocab]} (fp32) for tokens {@code idx [b, t]} (int64), a window with nothing before it. */
    public Tensor forward(Tensor idx) {
        return forward(idx, null, 0, null);
    }

    /** Mean cross-entropy of predicting {@code targets [b, t]} from {@code idx [b, t]}. */
    public Tensor loss(Tensor idx, Tensor targets) {
        Tensor logits = forward(idx);
        return cross_entropy_loss(logits.view(-1, config.vocabSize()), targets.reshape(-1));
    }

    /**
     * The forward pass from absolute position {@code pos0}; {@code previous [b, 1]} (int64) is the token before
     * {@code idx} for the token shift (null: none, as at the start of a training window). With {@code states} (one
     * slot per layer, power attention only) each layer starts from its slot's state (none: an empty prefix) and leaves
     * the state after the last token there.
     */
    Tensor forward(Tensor idx, Tensor previous, long pos0, List<PowerAttentionState[]> states) {
        Tensor x = embedding(wte, idx);
        Tensor e = config.tokenShift() ? x : null;
        Tensor ePrevious = config.tokenShift() && previous != null ? embedding(wte, previous) : null;
        for (int i = 0; i < blocks.size(); i++) {
            x = blocks.get(i).forward(x, e, ePrevious, pos0, rotary, computeDtype,
                    states == null ? null : states.get(i));
        }
        x = layerNorm(x, lnfWeight, lnfBias);
        return linear(x.to(computeDtype), cast(wte, computeDtype)).to(ScalarType.Float);
    }

    /** One slot per layer for {@link #forward(Tensor, Tensor, long, List)}. */
    List<PowerAttentionState[]> newStateSlots() {
        if (config.attention() != GptConfig.Attention.POWER) {
            throw new IllegalStateException("recurrent states need power attention, this model uses sdpa");
        }
        List<PowerAttentionState[]> slots = new ArrayList<>();
        for (int i = 0; i < config.nLayer(); i++) {
            slots.add(new PowerAttentionState[1]);
        }
        return Collections.unmodifiableList(slots);
    }

    /** Parameters with two or more dimensions (weight-decayed) or fewer (not decayed), in registration order. */
    List<Tensor> parameterList(boolean matrices) {
        List<Tensor> out = new ArrayList<>();
        TensorVector all = parameters();
        for (long i = 0; i < all.size(); i++) {
            Tensor p = all.get(i);
            if ((p.dim() >= 2) == matrices) {
                out.add(new Tensor(p));
            }
        }
        return out;
    }

    /**
     * Registers a parameter and returns an owning handle to it: register_parameter returns a reference into the
     * module's parameter table, which moves when the table grows.
     */
    private static Tensor register(Module m, String name, Tensor value) {
        return new Tensor(m.register_parameter(name, value));
    }

    static Tensor layerNorm(Tensor x, Tensor weight, Tensor bias) {
        return layer_norm(x, new long[] {x.size(-1)}, new TensorOptional(weight), new TensorOptional(bias), 1e-5,
                false);
    }

    static Tensor cast(Tensor w, ScalarType dtype) {
        return w.scalar_type() == dtype ? w : w.to(dtype);
    }

    static TensorOptions f32() {
        return new TensorOptions(ScalarType.Float);
    }

    static Tensor normal(double std, long... shape) {
        return randn(shape, f32()).mul_(new Scalar(std));
    }

    /** Pre-LayerNorm block: {@code x + attn(ln1(x))}, then {@code x + mlp(ln2(x))}. */
    static final class Block extends Module {
        private final Tensor ln1Weight;
        private final Tensor ln1Bias;
        private final Attention attn;
        private final Tensor ln2Weight;
        private final Tensor ln2Bias;
        private final Tensor fc;     // [4C, C]
        private final Tensor proj;   // [C, 4C]

        Block(GptConfig cfg, double std, double projStd) {
            super("Block");
            int c = cfg.nEmbd();
            ln1Weight = register(this, "ln_1_weight", ones(new long[] {c}, f32()));
            ln1Bias = register(this, "ln_1_bias", zeros(new long[] {c}, f32()));
            attn = register_module("attn", new Attention(cfg, std, projStd));
            ln2Weight = register(this, "ln_2_weight", ones(new long[] {c}, f32()));
            ln2Bias = register(this, "ln_2_bias", zeros(new long[] {c}, f32()));
            fc = register(this, "mlp_fc_weight", normal(std, 4L * c, c));
            proj = register(this, "mlp_proj_weight", normal(projStd, c, 4L * c));
        }

        /** {@code e}: the token embeddings (token shift), {@code ePrevious}: the embedding before them or null. */
        Tensor forward(Tensor x, Tensor e, Tensor ePrevious, long pos0, Rotary rotary, ScalarType dt,
                PowerAttentionState[] slot) {
            Tensor shifted = e == null ? null : shifted(e, ePrevious);
            x = x.add(attn.forward(layerNorm(x, ln1Weight, ln1Bias), shifted, pos0, rotary, dt, slot));
            Tensor h = layerNorm(x, ln2Weight, ln2Bias).to(dt);
            Tensor m = linear(gelu(linear(h, cast(fc, dt))), cast(proj, dt));
            return x.add(m.to(ScalarType.Float));
        }

        /** {@code ln_1(e_{t-1})} at every position t of {@code e [b, t, C]}; at t = 0 {@code ln_1(ePrevious)} or 0. */
        private Tensor shifted(Tensor e, Tensor ePrevious) {
            long t = e.size(1);
            Tensor first = ePrevious == null ? zeros_like(e.narrow(1, 0, 1)) : layerNorm(ePrevious, ln1Weight, ln1Bias);
            if (t == 1) {
                return first;
            }
            return cat(new TensorVector(first, layerNorm(e.narrow(1, 0, t - 1), ln1Weight, ln1Bias)), 1);
        }
    }

    /** Causal self-attention with rotary q/k, grouped-query heads and (power attention) forget gates. */
    static final class Attention extends Module {
        private final GptConfig cfg;
        private final Tensor wq;     // [nHead*hd, C]
        private final Tensor wkv;    // [2*nKvHead*hd, C]
        private final Tensor wo;     // [C, nHead*hd]
        private final Tensor wg;     // [nKvHead, C]   gates (power attention with gating)
        private final Tensor bg;     // [nKvHead]
        private final PowerAttentionOptions options;   // degree and form, shared by every call
        private final Tensor mu;     // [C]   token shift: the previous token's share in the key/value input

        Attention(GptConfig cfg, double std, double projStd) {
            super("Attention");
            this.cfg = cfg;
            this.options = powerOptions(cfg);
            int c = cfg.nEmbd();
            int hd = cfg.headDim();
            wq = register(this, "q_weight", normal(std, (long) cfg.nHead() * hd, c));
            wkv = register(this, "kv_weight", normal(std, 2L * cfg.nKvHead() * hd, c));
            wo = register(this, "o_weight", normal(projStd, c, (long) cfg.nHead() * hd));
            if (cfg.attention() == GptConfig.Attention.POWER && cfg.gating()) {
                wg = register(this, "gate_weight", zeros(new long[] {cfg.nKvHead(), c}, f32()));
                bg = register(this, "gate_bias",
                        full(new long[] {cfg.nKvHead()}, new Scalar(GptConfig.GATE_BIAS_INIT), f32()));
            } else {
                wg = null;
                bg = null;
            }
            mu = cfg.tokenShift() ? register(this, "shift_mix", ones(new long[] {c}, f32())) : null;
        }

        /**
         * {@code h [b, t, C]} is the normed input (fp32), {@code shifted} the normed previous-token embeddings (token
         * shift) or null; returns {@code [b, t, C]} in fp32.
         */
        Tensor forward(Tensor h, Tensor shifted, long pos0, Rotary rotary, ScalarType dt, PowerAttentionState[] slot) {
            long b = h.size(0);
            long t = h.size(1);
            int hd = cfg.headDim();
            Tensor hc = h.to(dt);
            Tensor kvIn = shifted == null ? hc : h.add(shifted.mul(mu)).to(dt);
            Tensor q = linear(hc, cast(wq, dt)).view(b, t, cfg.nHead(), hd);
            Tensor kv = linear(kvIn, cast(wkv, dt)).view(b, t, 2, cfg.nKvHead(), hd);
            Tensor k = kv.select(2, 0);
            Tensor v = kv.select(2, 1);
            q = rotary.apply(q, pos0);
            k = rotary.apply(k, pos0);
            Tensor y;
            if (cfg.attention() == GptConfig.Attention.SDPA) {
                Tensor yt = scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                        new TensorOptional(), 0.0, true, new DoubleOptional(), cfg.nHead() != cfg.nKvHead());
                y = yt.transpose(1, 2);
            } else {
                Tensor logG = wg == null ? null : log_sigmoid(linear(h.to(ScalarType.Float), wg, bg));  // [b, t, h]
                y = power(q, k, v, logG, slot);
            }
            return linear(y.reshape(b, t, -1), cast(wo, dt)).to(ScalarType.Float);
        }

        private Tensor power(Tensor q, Tensor k, Tensor v, Tensor logG, PowerAttentionState[] slot) {
            if (slot == null) {
                return PowerAttention.powerFull(q, k, v, logG, options);
            }
            PowerAttentionState previous = slot[0];
            if (previous == null) {
                PowerAttentionResult r = PowerAttention.prefill(q, k, v, logG, options);
                slot[0] = r.state();
                return r.output();
            }
            if (q.size(1) != 1) {
                throw new IllegalArgumentException("decoding from a state takes one token at a time, got t = "
                        + q.size(1));
            }
            PowerAttentionResult r = PowerAttention.decodeStep(previous, q.select(1, 0), k.select(1, 0),
                    v.select(1, 0), logG == null ? null : logG.select(1, 0), options);
            previous.close();
            slot[0] = r.state();
            return r.output().unsqueeze(1);
        }

        private static PowerAttentionOptions powerOptions(GptConfig cfg) {
            PowerAttentionOptions.Builder o = PowerAttentionOptions.builder().degree(cfg.degree());
            if (cfg.chunkSize() > 0) {
                o.chunkSize(cfg.chunkSize());
            }
            return o.build();
        }
    }

    /**
     * Rotary position embedding, half-split form: for a head vector {@code x = [x1, x2]} at position n,
     * {@code [x1 cos - x2 sin, x2 cos + x1 sin]} with angles {@code n * base^(-2i/hd)}. Tables for positions
     * {@code [0, blockSize)} are cached; others (generation past the block size) are computed when needed.
     */
    static final class Rotary {
        private final int headDim;
        private final double base;
        private final Tensor cos;   // [blockSize, hd/2] fp32
        private final Tensor sin;

        Rotary(int headDim, int blockSize, double base) {
            this.headDim = headDim;
            this.base = base;
            Tensor[] cs = tables(0, blockSize);
            cos = cs[0];
            sin = cs[1];
        }

        private Tensor[] tables(long pos0, long t) {
            int half = headDim / 2;
            float[] c = new float[(int) (t * half)];
            float[] s = new float[(int) (t * half)];
            for (int n = 0; n < t; n++) {
                for (int i = 0; i < half; i++) {
                    double angle = (pos0 + n) * Math.pow(base, -2.0 * i / headDim);
                    c[n * half + i] = (float) Math.cos(angle);
                    s[n * half + i] = (float) Math.sin(angle);
                }
            }
            return new Tensor[] {Tensor.create(c, t, half), Tensor.create(s, t, half)};
        }

        /** {@code x [b, t, h, hd]} at positions {@code pos0 .. pos0 + t - 1}. */
        Tensor apply(Tensor x, long pos0) {
            long t = x.size(1);
            int half = headDim / 2;
            Tensor c;
            Tensor s;
            if (pos0 + t <= cos.size(0)) {
                c = cos.narrow(0, pos0, t);
                s = sin.narrow(0, pos0, t);
            } else {
                Tensor[] cs = tables(pos0, t);
                c = cs[0];
                s = cs[1];
            }
            c = c.view(1, t, 1, half).to(x.device(), x.scalar_type());
            s = s.view(1, t, 1, half).to(x.device(), x.scalar_type());
            Tensor x1 = x.narrow(3, 0, half);
            Tensor x2 = x.narrow(3, half, half);
            return cat(new TensorVector(x1.mul(c).sub(x2.mul(s)), x2.mul(c).add(x1.mul(s))), 3);
        }
    }
}
