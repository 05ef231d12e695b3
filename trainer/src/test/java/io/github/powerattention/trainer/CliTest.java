package io.github.powerattention.trainer;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/** Bad input: exit code 2 and one line naming the flag, what was expected and what was given. */
class CliTest {
    @ParameterizedTest(name = "{0}")
    @CsvSource(delimiter = '|', value = {
        "--bogus=1|unknown flag --bogus; known flags: --out_dir --init_from --dataset",
        "--max_iters=abc|--max_iters expects an integer, got 'abc'",
        "--max_iters=-5|--max_iters expects an integer >= 0, got -5",
        "--attention_kernel=flash|--attention_kernel expects one of sdpa|power, got 'flash'",
        "--dtype=float64|--dtype expects one of float32|bfloat16|float16, got 'float64'",
        "--learning_rate=0|--learning_rate expects a finite number > 0.0, got 0",
        "--chunk_size=big|--chunk_size expects a positive integer or 'none' (the quadratic form), got 'big'",
        "--n_embd=100|--n_embd must be a multiple of --n_head: got n_embd=100, n_head=8",
        "--n_kv_head=3|--n_head must be a multiple of --n_kv_head (grouped-query heads): got n_head=4, n_kv_head=3",
        "--disable_gating=maybe|--disable_gating expects true or false, got 'maybe'",
        "--max_iters|flag --max_iters needs a value (--max_iters=VALUE)",
        "--block_size=24|--recall_pairs=8 definitions take 24 bytes and leave no query in --block_size=24: use fewer "
                + "pairs or a block of at least 26",
    })
    void badFlagIsNamed(String flag, String message) {
        String[] args = flag.startsWith("--n_embd") ? new String[] {"train", "--n_head=8", flag}
                : new String[] {"train", flag};
        Runs.Outcome o = Runs.main(args);
        assertEquals(2, o.code(), o.err());
        assertTrue(o.err().startsWith("error: " + message), "got: " + o.err());
        assertEquals(1, o.err().lines().count(), "one line expected, got: " + o.err());
        assertEquals("", o.out());
    }

    @Test
    void missingDatasetIsNamed(@TempDir Path dir) {
        Path missing = dir.resolve("corpus.txt");
        Runs.Outcome o = Runs.main("train", "--dataset=" + missing, "--out_dir=" + dir.resolve("out"));
        assertEquals(2, o.code(), o.err());
        assertEquals("error: --dataset: no such file or folder: " + missing.toAbsolutePath() + " (give a text file, a "
                + "folder of text files, or 'recall' for the embedded task)\n", o.err());
    }

    @Test
    void resumeWithoutCheckpointIsNamed(@TempDir Path dir) {
        Runs.Outcome o = Runs.main("train", "--init_from=resume", "--out_dir=" + dir);
        assertEquals(2, o.code());
        assertTrue(o.err().startsWith("error: --init_from=resume: no checkpoint in --out_dir=" + dir.toAbsolutePath()),
                o.err());
    }

    @Test
    void unknownCommandAndBadEnvironment() {
        Runs.Outcome o = Runs.main("fly");
        assertEquals(2, o.code());
        assertTrue(o.err().startsWith("error: unknown command 'fly' (expected train or sample)"), o.err());
        TrainConfig cfg = TrainConfig.parse("--max_iters=1");
        java.util.Map<String, String> env = java.util.Map.of("WORLD_SIZE", "2", "RANK", "0");
        UsageException e = org.junit.jupiter.api.Assertions.assertThrows(UsageException.class,
                () -> Trainer.run(cfg, System.out, env, null));
        assertEquals("environment: WORLD_SIZE=2 needs MASTER_ADDR and MASTER_PORT (the rendezvous address of rank 0), "
                + "got MASTER_ADDR=null, MASTER_PORT=null", e.getMessage());
    }
}
