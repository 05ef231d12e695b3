package io.github.powerattention.trainer;

import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;

import io.github.powerattention.PowerAttentionState;
import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.global.torch.ScalarType;

/**
 * Text generation from a trained {@link Gpt}.
 * <ul>
 *   <li>{@link Mode#STATE} (power attention): the prompt is run once ({@code prefill}), leaving one recurrent state
 *       per layer; each new token is then one decode step per layer, {@code O(D e)} work per head whatever the
 *       position: constant cost per token, no KV cache, no context limit (rotary angles continue past the block
 *       size, which the model never saw in training).</li>
 *   <li>{@link Mode#FULL}: the whole context (cropped to the last {@code block_size} tokens) is re-run for every
 *       token, the only way for SDPA models here (no KV cache).</li>
 * </ul>
 * Both draw from the same distribution with the same Java RNG, so for power attention they produce the same text
 * (the test checks this).
 */
public final class Sampler {
    public enum Mode { STATE, FULL }

    private final Gpt model;
    private final double temperature;
    private final int topK;

    /**
     * @param temperature 0 for greedy decoding, else the softmax temperature
     * @param topK        sample among the k most likely bytes; 0 for all
     */
    public Sampler(Gpt model, double temperature, int topK) {
        this.model = model;
        this.temperature = temperature;
        this.topK = topK;
    }

    /**
     * Generates {@code maxNewTokens} bytes after {@code prompt} (not empty).
     *
     * @param logitsOut if not null, receives the logits each new token was drawn from
     */
    public byte[] generate(byte[] prompt, int maxNewTokens, Mode mode, long seed, List<float[]> logitsOut) {
        if (prompt.length == 0) {
            throw new IllegalArgumentException("the prompt must hold at least one byte");
        }
        SplittableRandom rnd = new SplittableRandom(seed);
        byte[] text = Arrays.copyOf(prompt, prompt.length + maxNewTokens);
        int length = prompt.length;
        List<PowerAttentionState[]> slots = mode == Mode.STATE ? model.newStateSlots() : null;
        try (NoGradGuard g = new NoGradGuard()) {
            float[] logits = null;
            for (int i = 0; i <= maxNewTokens; i++) {
                if (i > 0) {
                    int next = pick(logits, rnd);
                    text[length++] = (byte) next;
                    if (i == maxNewTokens) {
                        break;
                    }
                }
                try (PointerScope scope = new PointerScope()) {
                    Tensor x;
                    Tensor previous = null;     // the token before x (token shift); none before a window
                    long pos0;
                    if (mode == Mode.STATE) {
                        pos0 = i == 0 ? 0 : length - 1;
                        x = tokens(text, (int) pos0, length, model.device());
                        if (pos0 > 0) {
                            previous = tokens(text, (int) pos0 - 1, (int) pos0, model.device());
                        }
                    } else {
                        pos0 = 0;
                        x = tokens(text, Math.max(0, length - model.config().blockSize()), length, model.device());
                    }
                    Tensor out = model.forward(x, previous, pos0, slots);
                    logits = lastRow(out);
                    if (slots != null) {
                        for (PowerAttentionState[] slot : slots) {
                            keep(scope, slot[0].S());     // the state outlives this token's scope
                            keep(scope, slot[0].s());
                        }
                    }
                }
                if (logitsOut != null) {
                    logitsOut.add(logits);
                }
            }
        } finally {
            if (slots != null) {
                for (PowerAttentionState[] slot : slots) {
                    if (slot[0] != null) {
                        slot[0].close();
                    }
                }
            }
        }
        return Arrays.copyOfRange(text, prompt.length, length);
    }

    /** Takes {@code t} out of {@code scope} alive (detach alone releases the scope's reference, freeing it). */
    private static void keep(PointerScope scope, Tensor t) {
        t.retainReference();
        scope.detach(t);
    }

    /** {@code text[from, to)} as int64 token ids {@code [1, to - from]} on {@code device}. */
    private static Tensor tokens(byte[] text, int from, int to, org.bytedeco.pytorch.Device device) {
        long[] ids = new long[to - from];
        for (int i = from; i < to; i++) {
            ids[i - from] = text[i] & 0xFF;
        }
        Tensor x = Tensor.create(ids, 1, ids.length);
        return device.is_cpu() ? x : x.to(device, ScalarType.Long);
    }

    private static float[] lastRow(Tensor logits) {
        long t = logits.size(1);
        Tensor row = logits.select(0, 0).select(0, t - 1).to(new org.bytedeco.pytorch.Device("cpu"),
                ScalarType.Float).contiguous();
        float[] out = new float[(int) row.numel()];
        row.data_ptr_float().get(out);
        return out;
    }

    /** Greedy (temperature 0) or a draw from softmax(logits / temperature) restricted to the top k. */
    int pick(float[] logits, SplittableRandom rnd) {
        int best = 0;
        for (int i = 1; i < logits.length; i++) {
            if (logits[i] > logits[best]) {
                best = i;
            }
        }
        if (temperature == 0) {
            return best;
        }
        double threshold = Double.NEGATIVE_INFINITY;
        if (topK > 0 && topK < logits.length) {
            float[] sorted = logits.clone();
            Arrays.sort(sorted);
            threshold = sorted[sorted.length - topK];
        }
        double[] w = new double[logits.length];
        double sum = 0;
        for (int i = 0; i < logits.length; i++) {
            w[i] = logits[i] >= threshold ? Math.exp((logits[i] - logits[best]) / temperature) : 0;
            sum += w[i];
        }
        double u = rnd.nextDouble() * sum;
        for (int i = 0; i < w.length; i++) {
            u -= w[i];
            if (u < 0 && w[i] > 0) {
                return i;
            }
        }
        return best;
    }
}
