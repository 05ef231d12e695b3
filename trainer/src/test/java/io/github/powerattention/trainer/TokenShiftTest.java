package io.github.powerattention.trainer;

import static org.bytedeco.pytorch.global.torch.randn_like;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.StringTensorDict;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorVector;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/** The token shift: the token before a position reaches its key and value through {@code mu}, and nothing else. */
class TokenShiftTest {
    private static GptConfig config(GptConfig.Attention attention, boolean shift) {
        return new GptConfig(256, 16, 2, 4, 2, 32, attention, 2, 0, true, shift, 10000.0);
    }

    /** A model with random weights everywhere (so that every path matters). */
    private static Gpt randomModel(GptConfig cfg) {
        Gpt m = new Gpt(cfg, 3);
        try (NoGradGuard g = new NoGradGuard()) {
            TensorVector ps = m.parameters();
            for (long i = 0; i < ps.size(); i++) {
                ps.get(i).add_(randn_like(ps.get(i)).mul(new Scalar(0.3)));
            }
        }
        return m;
    }

    private static Tensor tokens(long... ids) {
        return Tensor.create(ids, 1, ids.length);
    }

    private static double maxDiff(Tensor a, Tensor b) {
        return a.sub(b).abs().max().item_double();
    }

    @ParameterizedTest
    @EnumSource(GptConfig.Attention.class)
    void thePreviousTokenActsOnlyThroughTheShift(GptConfig.Attention attention) {
        Tensor idx = tokens('a', '5', ' ', 'b', '3', ' ', 'a');
        Gpt shifted = randomModel(config(attention, true));
        try (NoGradGuard g = new NoGradGuard()) {
            Tensor none = shifted.forward(idx, null, 0, null);
            Tensor afterX = shifted.forward(idx, tokens('x'), 0, null);
            Tensor afterY = shifted.forward(idx, tokens('y'), 0, null);
            assertTrue(maxDiff(afterX, afterY) > 1e-3, "the token before the window changes the logits");
            assertTrue(maxDiff(none, afterX) > 1e-3, "no token before the window differs from one");

            // the same weights without the shift: the previous token is ignored ...
            Gpt plain = new Gpt(config(attention, false), 4);
            StringTensorDict from = shifted.named_parameters();
            StringTensorDict to = plain.named_parameters();
            for (long i = 0, j = 0; i < from.size(); i++) {
                if (!from.get(i).key().getString().endsWith("shift_mix")) {
                    assertEquals(from.get(i).key().getString(), to.get(j).key().getString());
                    to.get(j++).value().copy_(from.get(i).value());
                }
            }
            Tensor plainX = plain.forward(idx, tokens('x'), 0, null);
            assertEquals(0.0, maxDiff(plainX, plain.forward(idx, tokens('y'), 0, null)));
            assertTrue(maxDiff(plainX, afterX) > 1e-3, "the shift changes the model");
            // ... and with mu = 0 the shifted model is that model
            for (long i = 0; i < from.size(); i++) {
                if (from.get(i).key().getString().endsWith("shift_mix")) {
                    from.get(i).value().zero_();
                }
            }
            assertTrue(maxDiff(plainX, shifted.forward(idx, tokens('x'), 0, null)) < 1e-5);
        }
    }

    @ParameterizedTest
    @EnumSource(GptConfig.Attention.class)
    void theMixStartsAtOne(GptConfig.Attention attention) {
        StringTensorDict named = new Gpt(config(attention, true), 1).named_parameters();
        int found = 0;
        for (long i = 0; i < named.size(); i++) {
            if (named.get(i).key().getString().endsWith("attn.shift_mix")) {
                Tensor mu = named.get(i).value();
                assertEquals(32, mu.numel());
                assertEquals(1.0, mu.min().item_double());
                assertEquals(1.0, mu.max().item_double());
                found++;
            }
        }
        assertEquals(2, found, "one mix per layer");
    }
}
