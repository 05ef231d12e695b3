package io.github.powerattention.trainer;

import static org.bytedeco.pytorch.global.torch.randn_like;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorVector;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/** Sampling with the recurrent state equals sampling by re-running the full forward at every token. */
class SampleTest {
    // tol: the largest logit difference allowed. Odd degree has signed normalizers (SPEC §2: defined, can be
    // ill-conditioned), which magnify the two evaluations' rounding: 2.6e-4 of logits up to 7.2 measured on an AMD
    // EPYC (AVX2), under 2e-4 on an Intel AVX-512 machine; a wrong state gives differences of order the logits.
    @ParameterizedTest(name = "deg{0}-chunk{1}-gating{2}-shift{3}")
    @CsvSource({"2, 16, true, true, 2e-4", "2, 0, false, true, 2e-4", "1, 8, true, false, 1e-3"})
    void stateSamplingEqualsFullForward(int degree, int chunk, boolean gating, boolean tokenShift, double tol) {
        GptConfig cfg = new GptConfig(256, 64, 2, 4, 2, 32, GptConfig.Attention.POWER, degree, chunk, gating,
                tokenShift, 10000.0);
        Gpt model = new Gpt(cfg, 7);
        // random weights everywhere (gates included), so every path of the state matters
        try (NoGradGuard g = new NoGradGuard()) {
            TensorVector ps = model.parameters();
            for (long i = 0; i < ps.size(); i++) {
                Tensor p = ps.get(i);
                p.add_(randn_like(p).mul(new Scalar(0.3)));
            }
        }
        byte[] prompt = "qd=47 mx=02 ab=91 mx?".getBytes(StandardCharsets.US_ASCII);
        int n = 64 - prompt.length;   // prompt + generated = the block size: the full forward never crops
        Sampler sampler = new Sampler(model, 1.0, 0);
        List<float[]> stateLogits = new ArrayList<>();
        List<float[]> fullLogits = new ArrayList<>();
        byte[] viaState = sampler.generate(prompt, n, Sampler.Mode.STATE, 11, stateLogits);
        byte[] viaFull = sampler.generate(prompt, n, Sampler.Mode.FULL, 11, fullLogits);
        assertEquals(n, stateLogits.size());
        double worst = 0, scale = 0;
        for (int i = 0; i < n; i++) {
            for (int v = 0; v < 256; v++) {
                worst = Math.max(worst, Math.abs(stateLogits.get(i)[v] - fullLogits.get(i)[v]));
                scale = Math.max(scale, Math.abs(fullLogits.get(i)[v]));
            }
        }
        assertTrue(worst < tol, "logits of state decoding differ from the full forward by up to " + worst
                + " (largest logit " + scale + ")");
        assertArrayEquals(viaFull, viaState, "generated text differs:\nstate: "
                + new String(viaState, StandardCharsets.ISO_8859_1) + "\nfull:  "
                + new String(viaFull, StandardCharsets.ISO_8859_1));
        // the logits are not trivially equal across positions (the test would pass for a constant model)
        assertTrue(Math.abs(fullLogits.get(0)[65] - fullLogits.get(n - 1)[65]) > 1e-3);
    }
}
