package io.github.powerattention.trainer;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

import org.bytedeco.pytorch.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Two JVMs over Gloo on loopback against one process with the same global batch; a rank that dies. */
class DistributedTest {
    private static final String[] MODEL = {"--max_iters=4", "--eval_interval=2", "--chunk_size=16"};

    @Test
    void twoProcessesEndWithTheParametersOfOneProcessWithTheSameGlobalBatch(@TempDir Path dir) throws Exception {
        Path one = dir.resolve("one");
        Path two = dir.resolve("two");
        List<String> single = Runs.tiny(one, MODEL);
        single.set(single.indexOf("--batch_size=4"), "--batch_size=8");
        Runs.train(single);

        int port = Runs.freePort();
        List<String> args = new ArrayList<>(List.of("train"));
        args.addAll(Runs.tiny(two, MODEL));     // batch 4 per rank: global batch 8
        List<Process> ranks = new ArrayList<>();
        for (int r = 0; r < 2; r++) {
            ranks.add(Runs.spawn(args, env(r, port), dir.resolve("rank" + r + ".log")));
        }
        for (int r = 0; r < 2; r++) {
            Process p = ranks.get(r);
            boolean done = p.waitFor(180, TimeUnit.SECONDS);
            if (!done) {
                ranks.forEach(Process::destroyForcibly);
            }
            String log = Files.readString(dir.resolve("rank" + r + ".log"));
            assertTrue(done, "rank " + r + " did not finish:\n" + log);
            assertEquals(0, p.exitValue(), "rank " + r + " failed:\n" + log);
        }
        String log0 = Files.readString(dir.resolve("rank0.log"));
        String log1 = Files.readString(dir.resolve("rank1.log"));
        assertTrue(log0.contains("2 process(es), 512 tokens per step"), log0);
        assertTrue(!log1.contains("step ") && !log1.contains("eval"), "only rank 0 logs:\n" + log1);
        assertTrue(Checkpoint.exists(two));

        Map<String, Tensor> a = Runs.parameters(one);
        Map<String, Tensor> b = Runs.parameters(two);
        Map<String, Tensor> init = initialParameters();
        double worst = 0;
        double moved = 0;
        for (String name : a.keySet()) {
            worst = Math.max(worst, a.get(name).sub(b.get(name)).abs().max().item_double());
            moved = Math.max(moved, a.get(name).sub(init.get(name)).abs().max().item_double());
        }
        assertTrue(worst < 1e-5, "1 and 2 processes differ by up to " + worst);
        assertTrue(moved > 1e-3, "training should have moved the parameters (max change " + moved + ")");
    }

    @Test
    void aRankThatDiesMakesTheOtherFailWithAClearMessage(@TempDir Path dir) throws Exception {
        int port = Runs.freePort();
        List<String> args = new ArrayList<>(List.of("train"));
        args.addAll(Runs.tiny(dir, "--max_iters=50", "--eval_interval=0", "--dist_timeout=20"));
        List<Process> ranks = new ArrayList<>();
        for (int r = 0; r < 2; r++) {
            Map<String, String> env = new java.util.HashMap<>(env(r, port));
            env.put(Trainer.EXIT_STEP_VAR, "2");
            env.put(Trainer.EXIT_RANK_VAR, "1");
            ranks.add(Runs.spawn(args, env, dir.resolve("rank" + r + ".log")));
        }
        long t0 = System.nanoTime();
        boolean done = ranks.get(0).waitFor(90, TimeUnit.SECONDS);
        double seconds = (System.nanoTime() - t0) / 1e9;
        boolean oneDone = ranks.get(1).waitFor(10, TimeUnit.SECONDS);
        ranks.forEach(Process::destroyForcibly);
        String log = Files.readString(dir.resolve("rank0.log"));
        assertTrue(done, "rank 0 hung after rank 1 died:\n" + log);
        assertTrue(oneDone);
        assertEquals(3, ranks.get(1).exitValue(), "rank 1 should have halted with the test hook's code 3");
        assertEquals(1, ranks.get(0).exitValue(), log);
        assertTrue(log.contains("error: rank 0 of 2: all-reduce of gradient bucket 1/1 at step 2 failed: another rank "
                + "has probably died or is stuck (collective timeout 20 s, --dist_timeout)"), log);
        assertTrue(seconds < 60, "rank 0 took " + seconds + " s to fail");
    }

    private static Map<String, String> env(int rank, int port) {
        return Map.of("RANK", Integer.toString(rank), "WORLD_SIZE", "2", "LOCAL_RANK", Integer.toString(rank),
                "MASTER_ADDR", "127.0.0.1", "MASTER_PORT", Integer.toString(port), "OMP_NUM_THREADS", "1");
    }

    private static Map<String, Tensor> initialParameters() {
        TrainConfig cfg = TrainConfig.parse(Runs.tiny(Path.of("unused"), MODEL).toArray(new String[0]));
        Gpt m = new Gpt(cfg.model(), cfg.seed);
        Map<String, Tensor> out = new java.util.LinkedHashMap<>();
        var named = m.named_parameters();
        for (long i = 0; i < named.size(); i++) {
            out.put(named.get(i).key().getString(), new Tensor(named.get(i).value()).clone());
        }
        return out;
    }
}
