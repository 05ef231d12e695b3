package io.github.powerattention.trainer;

import static org.bytedeco.pytorch.global.torch.cuda_is_available;
import static org.bytedeco.pytorch.global.torch.randn_like;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import io.github.powerattention.PowerAttention;
import org.bytedeco.pytorch.Device;
import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorVector;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The trainer on CUDA: training in bf16 lowers the loss (power and sdpa), resume is bit-exact, sampling from the
 * state equals sampling by the full forward, {@code sample} runs on a CUDA run's checkpoint. Tagged {@code gpu}.
 */
@Tag("gpu")
class CudaTrainerTest {
    private static final double UNIFORM_LOSS = Math.log(256);

    @BeforeAll
    static void needsCuda() {
        PowerAttention.loadNatives();
        assertTrue(cuda_is_available(), "no CUDA device is visible to LibTorch: the gpu suite needs one");
    }

    static String[] kernel(String name) {
        return name.equals("sdpa") ? new String[] {"--attention_kernel=sdpa"}
                : new String[] {"--attention_kernel=power", "--chunk_size=16"};
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"power", "sdpa"})
    void lossFallsInBf16(String name, @TempDir Path dir) {
        List<String> flags = Runs.tiny(dir, "--max_iters=40", "--eval_interval=40", "--device=cuda",
                "--dtype=bfloat16");
        flags.addAll(List.of(kernel(name)));
        String log = Runs.train(flags);
        assertTrue(log.contains("run: cuda bfloat16"), log);
        List<Checkpoint.Point> history = Checkpoint.read(dir).history;
        double first = history.get(0).loss();
        double last = history.get(history.size() - 1).loss();
        assertEquals(UNIFORM_LOSS, first, 0.1, log);
        assertTrue(last < first - 1.0, "validation loss should fall by more than 1 nat in 40 steps: " + first + " -> "
                + last + "\n" + log);
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"power", "sdpa"})
    void resumeIsBitExact(String name, @TempDir Path dir) {
        Path straight = dir.resolve("straight");
        Path pieces = dir.resolve("pieces");
        List<String> common = new ArrayList<>(List.of("--eval_interval=3", "--lr_decay_iters=7",
                "--gradient_accumulation_steps=2", "--device=cuda", "--dtype=bfloat16"));
        common.addAll(List.of(kernel(name)));
        List<String> a = Runs.tiny(straight, common.toArray(new String[0]));
        a.add("--max_iters=7");
        Runs.train(a);
        List<String> b = Runs.tiny(pieces, common.toArray(new String[0]));
        b.add("--max_iters=4");
        Runs.train(b);
        String resumed = Runs.train(List.of("--out_dir=" + pieces, "--init_from=resume", "--max_iters=7"));
        assertTrue(resumed.contains("resuming at step 4"), resumed);
        Map<String, Tensor> x = Runs.parameters(straight);
        Map<String, Tensor> y = Runs.parameters(pieces);
        assertEquals(x.keySet(), y.keySet());
        for (String p : x.keySet()) {
            assertTrue(x.get(p).equal(y.get(p)), name + ": parameter " + p + " differs after resume on CUDA: max |diff| = "
                    + x.get(p).sub(y.get(p)).abs().max().item_double());
        }
    }

    @ParameterizedTest(name = "chunk{0}")
    @ValueSource(ints = {16, 0})
    void stateSamplingEqualsFullForwardOnCuda(int chunk) {
        GptConfig cfg = new GptConfig(256, 64, 2, 4, 2, 32, GptConfig.Attention.POWER, 2, chunk, true, true, 10000.0);
        Gpt model = new Gpt(cfg, 7);
        try (NoGradGuard g = new NoGradGuard()) {
            TensorVector ps = model.parameters();
            for (long i = 0; i < ps.size(); i++) {
                Tensor p = ps.get(i);
                p.add_(randn_like(p).mul(new Scalar(0.3)));
            }
        }
        model.to(new Device("cuda:0"), false);
        assertTrue(model.device().is_cuda());
        byte[] prompt = "qd=47 mx=02 ab=91 mx?".getBytes(StandardCharsets.US_ASCII);
        int n = 64 - prompt.length;
        Sampler sampler = new Sampler(model, 1.0, 0);
        List<float[]> stateLogits = new ArrayList<>();
        List<float[]> fullLogits = new ArrayList<>();
        byte[] viaState = sampler.generate(prompt, n, Sampler.Mode.STATE, 11, stateLogits);
        byte[] viaFull = sampler.generate(prompt, n, Sampler.Mode.FULL, 11, fullLogits);
        double worst = 0;
        for (int i = 0; i < n; i++) {
            for (int v = 0; v < 256; v++) {
                worst = Math.max(worst, Math.abs(stateLogits.get(i)[v] - fullLogits.get(i)[v]));
            }
        }
        assertTrue(worst < 2e-4, "logits of state decoding on CUDA differ from the full forward by up to " + worst);
        assertArrayEquals(viaFull, viaState, "generated text differs:\nstate: "
                + new String(viaState, StandardCharsets.ISO_8859_1) + "\nfull:  "
                + new String(viaFull, StandardCharsets.ISO_8859_1));
        assertTrue(Math.abs(fullLogits.get(0)[65] - fullLogits.get(n - 1)[65]) > 1e-3);
    }

    @Test
    void sampleRunsOnACudaRunsCheckpoint(@TempDir Path dir) {
        List<String> flags = Runs.tiny(dir, "--max_iters=4", "--eval_interval=4", "--device=cuda",
                "--dtype=bfloat16", "--chunk_size=16");
        Runs.train(flags);
        String[] common = {"sample", "--out_dir=" + dir, "--start=ab=12 cd=34 ab?", "--max_new_tokens=30"};
        for (String[] extra : new String[][] {{}, {"--device=cuda"}, {"--device=cpu"}, {"--mode=full"}}) {
            List<String> args = new ArrayList<>(List.of(common));
            args.addAll(List.of(extra));
            Runs.Outcome o = Runs.main(args.toArray(new String[0]));
            assertEquals(0, o.code(), () -> String.join(" ", args) + ":\n" + o.out() + o.err());
            String device = extra.length == 1 && extra[0].equals("--device=cpu") ? "cpu" : "cuda";
            assertTrue(o.out().contains("sampling on " + device), o.out());
            assertTrue(o.out().contains("--- 30 tokens in"), o.out());
        }
    }
}
