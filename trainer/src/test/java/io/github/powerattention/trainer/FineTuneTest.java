package io.github.powerattention.trainer;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import org.bytedeco.pytorch.StringTensorDict;
import org.bytedeco.pytorch.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code --init_from=PATH}: a softmax (sdpa) run's weights become a power-attention model's starting point. */
class FineTuneTest {
    private static final double UNIFORM_LOSS = Math.log(256);

    @Test
    void anSdpaCheckpointBecomesAPowerModelWithEverySharedWeightKept(@TempDir Path dir) {
        Path sdpa = dir.resolve("sdpa");
        Runs.train(Runs.tiny(sdpa, "--attention_kernel=sdpa", "--max_iters=30", "--eval_interval=30"));
        Map<String, Tensor> trained = Runs.parameters(sdpa);

        TrainConfig cfg = TrainConfig.parse(Runs.tiny(dir.resolve("x"), "--attention_kernel=power", "--chunk_size=16")
                .toArray(new String[0]));
        Gpt power = new Gpt(cfg.model(), 99);
        Checkpoint.Transfer t = Checkpoint.loadShared(sdpa, power);
        assertEquals(trained.keySet().size(), t.copied().size(), "every sdpa parameter is copied: " + t);
        assertEquals(List.of("h0.attn.gate_weight", "h0.attn.gate_bias", "h1.attn.gate_weight", "h1.attn.gate_bias"),
                t.initialised());
        assertTrue(t.unused().isEmpty(), t.toString());
        StringTensorDict named = power.named_parameters();
        for (long i = 0; i < named.size(); i++) {
            String name = named.get(i).key().getString();
            Tensor p = named.get(i).value();
            if (name.contains("gate_weight")) {
                assertEquals(0.0, p.abs().max().item_double(), "gate weights start at 0");
            } else if (name.contains("gate_bias")) {
                double gate = 1 / (1 + Math.exp(-p.min().item_double()));
                assertEquals(0.999, gate, 1e-6, "gates start near 1 (sigmoid of the bias)");
            } else {
                assertTrue(p.equal(trained.get(name)), name + " differs from the checkpoint's");
            }
        }
    }

    @Test
    void fineTuningStartsFromTheCheckpointsLossWithAFreshOptimizer(@TempDir Path dir) {
        Path sdpa = dir.resolve("sdpa");
        Runs.train(Runs.tiny(sdpa, "--attention_kernel=sdpa", "--max_iters=40", "--eval_interval=40"));
        double sdpaLoss = Checkpoint.read(sdpa).history.get(Checkpoint.read(sdpa).history.size() - 1).loss();
        Path tuned = dir.resolve("tuned");
        String log = Runs.train(List.of("--out_dir=" + tuned, "--init_from=" + sdpa.resolve("ckpt"),
                "--attention_kernel=power", "--chunk_size=16", "--max_iters=6", "--eval_interval=6",
                "--eval_iters=2", "--batch_size=4", "--block_size=64", "--threads=1", "--log_interval=1"));
        assertTrue(log.contains("init: 23 of 27 parameter tensors from " + sdpa + " (a sdpa model at step 40)"), log);
        assertTrue(log.contains("power attention (degree 2, chunk 16, gated)"), log);
        assertTrue(log.contains("fine-tuning from " + sdpa), log);
        assertTrue(log.contains("step      0/6"), "a fresh schedule starts at step 0:\n" + log);
        double start = Checkpoint.read(tuned).history.get(0).loss();
        assertTrue(start < UNIFORM_LOSS - 1.0, "the converted model starts far below a fresh model's loss "
                + UNIFORM_LOSS + ": " + start + " (the sdpa model ended at " + sdpaLoss + ")\n" + log);
        // the shape comes from the checkpoint: n_embd, n_layer, heads were not given
        TrainConfig stored = TrainConfig.parse(Checkpoint.read(tuned).args.toArray(new String[0]));
        assertEquals(32, stored.nEmbd);
        assertEquals(2, stored.nKvHead);
        assertEquals("power", stored.attentionKernel);
    }

    @Test
    void aShapeThatDiffersOrAMissingCheckpointIsAClearError(@TempDir Path dir) {
        Path sdpa = dir.resolve("sdpa");
        Runs.train(Runs.tiny(sdpa, "--attention_kernel=sdpa", "--max_iters=1", "--eval_interval=1"));
        Runs.Outcome o = Runs.main("train", "--out_dir=" + dir.resolve("t"), "--init_from=" + sdpa, "--n_embd=64");
        assertEquals(2, o.code(), o.out() + o.err());
        assertTrue(o.err().contains("error: --n_embd=64 differs from the checkpoint's 32 (--init_from=" + sdpa
                + "): its weights would not fit; leave --n_embd out"), o.err());
        Path none = dir.resolve("nothing-here");
        Runs.Outcome m = Runs.main("train", "--out_dir=" + dir.resolve("t"), "--init_from=" + none);
        assertEquals(2, m.code(), m.out() + m.err());
        assertTrue(m.err().contains("error: --init_from=" + none + ": no checkpoint in " + none.toAbsolutePath()), m.err());
    }
}
