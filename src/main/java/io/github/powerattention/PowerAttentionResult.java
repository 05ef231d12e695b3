package io.github.powerattention;

import org.bytedeco.pytorch.Tensor;

/**
 * The output of a stateful call: {@code output} ({@code [b, t, hq, e]}, or {@code [b, hq, e]} for a decode step)
 * and the state after the last token. Closing it releases both.
 */
public final class PowerAttentionResult implements AutoCloseable {
    private final Tensor output;
    private final PowerAttentionState state;

    PowerAttentionResult(Tensor output, PowerAttentionState state) {
        this.output = output;
        this.state = state;
    }

    public Tensor output() {
        return output;
    }

    public PowerAttentionState state() {
        return state;
    }

    @Override
    public void close() {
        output.close();
        state.close();
    }
}
