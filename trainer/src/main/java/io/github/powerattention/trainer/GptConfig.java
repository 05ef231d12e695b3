package io.github.powerattention.trainer;

/**
 * The shape of a GPT: byte vocabulary, context, depth, width, heads and the attention it uses.
 *
 * @param vocabSize  256 (byte-level tokens)
 * @param blockSize  the training context length t
 * @param nLayer     pre-LayerNorm blocks (attention + MLP)
 * @param nHead      query heads
 * @param nKvHead    key/value heads ({@code nHead % nKvHead == 0}: grouped-query attention)
 * @param nEmbd      model width; head dimension {@code nEmbd / nHead}
 * @param attention  SDPA (LibTorch's causal softmax attention) or POWER (symmetric power attention)
 * @param degree     the power p of power attention
 * @param chunkSize  chunk length of power attention's chunked form; 0 for the quadratic form
 * @param gating     per-head forget gates {@code log_g = logsigmoid(b + x W_g)} (power attention only)
 * @param tokenShift keys and values also see the previous token's embedding (see {@link Gpt})
 * @param ropeBase   rotary embedding base
 */
public record GptConfig(int vocabSize, int blockSize, int nLayer, int nHead, int nKvHead, int nEmbd,
        Attention attention, int degree, int chunkSize, boolean gating, boolean tokenShift, double ropeBase) {

    public enum Attention { SDPA, POWER }

    public int headDim() {
        return nEmbd / nHead;
    }

    /** Gate bias at initialisation: sigmoid(b) = 0.999, so a token's memory starts with a ~1000-token horizon. */
    public static final double GATE_BIAS_INIT = Math.log(0.999 / 0.001);
}
