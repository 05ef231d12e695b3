package io.github.powerattention.trainer;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.awt.image.BufferedImage;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import javax.imageio.ImageIO;

import org.bytedeco.pytorch.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** Short CPU runs of tiny models: the loss falls, resume is bit-exact, the loss plot is written. */
class TrainerTest {
    /** Cross-entropy of a uniform guess over 256 bytes: what an untrained model with small weights scores. */
    private static final double UNIFORM_LOSS = Math.log(256);

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"power-gated-chunk16", "power-nogate-quadratic", "sdpa"})
    void lossFallsOnTheEmbeddedTask(String variant, @TempDir Path dir) throws Exception {
        String[] model;
        switch (variant) {
            case "power-gated-chunk16": model = new String[] {"--attention_kernel=power", "--chunk_size=16"}; break;
            case "power-nogate-quadratic":
                model = new String[] {"--attention_kernel=power", "--chunk_size=none", "--disable_gating"};
                break;
            default: model = new String[] {"--attention_kernel=sdpa"};
        }
        List<String> flags = Runs.tiny(dir, "--max_iters=40", "--eval_interval=40");
        flags.addAll(List.of(model));
        String log = Runs.train(flags);
        List<Checkpoint.Point> history = Checkpoint.read(dir).history;
        double first = history.get(0).loss();
        double last = history.get(history.size() - 1).loss();
        assertEquals("val", history.get(0).split());
        assertEquals(UNIFORM_LOSS, first, 0.1, "initial validation loss should be that of a uniform guess\n" + log);
        assertTrue(last < first - 1.0, "validation loss should fall by more than 1 nat in 40 steps: " + first + " -> "
                + last + "\n" + log);
        assertTrue(log.contains("step     39/40 | loss "), log);
        assertTrue(log.contains("tok/s | ETA "), log);
    }

    @Test
    void resumeContinuesTheUninterruptedRunBitForBit(@TempDir Path dir) throws Exception {
        Path straight = dir.resolve("straight");
        Path pieces = dir.resolve("pieces");
        String[] common = {"--eval_interval=3", "--lr_decay_iters=7", "--gradient_accumulation_steps=2",
                "--chunk_size=16"};
        List<String> a = Runs.tiny(straight, common);
        a.add("--max_iters=7");
        Runs.train(a);
        List<String> b = Runs.tiny(pieces, common);
        b.add("--max_iters=4");
        Runs.train(b);
        assertEquals(4, Checkpoint.read(pieces).step);
        String resumed = Runs.train(List.of("--out_dir=" + pieces, "--init_from=resume", "--max_iters=7"));
        assertTrue(resumed.contains("resuming at step 4"), resumed);

        Map<String, Tensor> x = Runs.parameters(straight);
        Map<String, Tensor> y = Runs.parameters(pieces);
        assertEquals(x.keySet(), y.keySet());
        for (String name : x.keySet()) {
            assertTrue(x.get(name).equal(y.get(name)), "parameter " + name + " differs after resume: max |diff| = "
                    + x.get(name).sub(y.get(name)).abs().max().item_double());
        }
        // every logged loss is equal too; the interrupted run has one more evaluation, at its end (step 4)
        List<Checkpoint.Point> resumedHistory = new java.util.ArrayList<>(Checkpoint.read(pieces).history);
        assertTrue(resumedHistory.removeIf(p -> p.step() == 4 && p.split().equals("val")));
        assertEquals(Checkpoint.read(straight).history, resumedHistory,
                "the loss history of the resumed run should equal the uninterrupted run's");
    }

    @Test
    void resumeRefusesAnotherModelShape(@TempDir Path dir) {
        List<String> a = Runs.tiny(dir, "--max_iters=1", "--eval_interval=0");
        Runs.train(a);
        Runs.Outcome o = Runs.main("train", "--out_dir=" + dir, "--init_from=resume", "--n_layer=3");
        assertEquals(2, o.code());
        assertEquals("error: --n_layer=3 differs from the checkpoint's 2: the model's shape cannot change on "
                + "--init_from=resume\n", o.err());
    }

    @Test
    void writesALossPlotAndCsv(@TempDir Path dir) throws Exception {
        Runs.train(Runs.tiny(dir, "--max_iters=4", "--eval_interval=2", "--attention_kernel=sdpa"));
        BufferedImage png = ImageIO.read(dir.resolve("loss.png").toFile());
        assertNotNull(png, "loss.png is not a readable image");
        assertEquals(900, png.getWidth());
        List<String> csv = Files.readAllLines(dir.resolve("losses.csv"));
        assertEquals("step,split,loss,recall_accuracy", csv.get(0));
        // evaluations at 0, 2, 4 and train losses at steps 0..3
        assertEquals(1 + 3 + 4, csv.size(), String.join("\n", csv));
    }

    @Test
    void adamWTakesBeta1AndBeta2InTheirPlaces() {
        // two steps of lr 1 on p = 0 with gradients 1 then 0, eps 0: by hand, p1 = -1 and
        // p2 = -1 - (b1 (1 - b1) / (1 - b1^2)) / sqrt(b2 (1 - b2) / (1 - b2^2))
        //    = -1 - (b1 / (1 + b1)) / sqrt(b2 / (1 + b2))
        double b1 = 0.9;
        double b2 = 0.5;
        Tensor p = org.bytedeco.pytorch.global.torch.zeros(new long[] {1},
                new org.bytedeco.pytorch.TensorOptions(org.bytedeco.pytorch.global.torch.ScalarType.Float))
                .set_requires_grad(true);
        org.bytedeco.pytorch.AdamWOptions opts = Trainer.adamWOptions(1.0, b1, b2);
        opts.eps().put(0.0);
        org.bytedeco.pytorch.AdamW adam = new org.bytedeco.pytorch.AdamW(new org.bytedeco.pytorch.TensorVector(p),
                opts);
        double[] after = new double[2];
        double[] grads = {1.0, 0.0};
        for (int i = 0; i < 2; i++) {
            adam.zero_grad();
            p.mul(new org.bytedeco.pytorch.Scalar(grads[i])).sum().backward();
            adam.step();
            after[i] = p.item_double();
        }
        assertEquals(-1.0, after[0], 1e-6);
        assertEquals(-1 - (b1 / (1 + b1)) / Math.sqrt(b2 / (1 + b2)), after[1], 1e-6,
                "(with beta1 and beta2 swapped it would be " + (-1 - (b2 / (1 + b2)) / Math.sqrt(b1 / (1 + b1))) + ")");
    }

    @Test
    void learningRateScheduleWarmsUpThenDecays() {
        TrainConfig c = TrainConfig.parse("--learning_rate=1e-3", "--min_lr=1e-4", "--warmup_iters=10",
                "--lr_decay_iters=110", "--max_iters=200");
        assertEquals(1e-3 * 1 / 11, c.learningRateAt(0), 1e-15);
        assertEquals(1e-3 * 10 / 11, c.learningRateAt(9), 1e-15);
        assertEquals(1e-3, c.learningRateAt(10), 1e-15);
        assertEquals(1e-4 + 0.5 * (1e-3 - 1e-4), c.learningRateAt(60), 1e-15);   // half way: cos(pi/2) = 0
        assertEquals(1e-4, c.learningRateAt(110), 1e-15);
        assertEquals(1e-4, c.learningRateAt(150), 1e-15);
    }
}
