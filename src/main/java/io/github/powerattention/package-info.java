/**
 * Symmetric power attention on Bytedeco LibTorch tensors: {@link io.github.powerattention.PowerAttention} (the
 * calls), {@link io.github.powerattention.PowerAttentionOptions} (degree, scale, form; immutable, shared by every
 * call), {@link io.github.powerattention.PowerAttentionState} (the recurrent state of a sequence),
 * {@link io.github.powerattention.PowerAttentionResult} (an output with the state after it) and
 * {@link io.github.powerattention.PowerAttentionException} (a native failure that is not a bad argument).
 * The contract is {@code docs/SPEC.md}.
 */
package io.github.powerattention;
