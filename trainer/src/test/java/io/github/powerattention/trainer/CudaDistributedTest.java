package io.github.powerattention.trainer;

import static org.bytedeco.pytorch.global.torch.cuda_is_available;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

import io.github.powerattention.PowerAttention;
import org.bytedeco.pytorch.Device;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.global.torch_cuda;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The trainer's NCCL path from Java: the process group and the bucketed gradient all-reduce on one GPU (world size 1),
 * and, where the machine has two GPUs or more, two processes against one with the same global batch. Tagged
 * {@code gpu}; the GPU suite runs this class in a JVM of its own (a native failure here must not take the rest).
 */
@Tag("gpu")
class CudaDistributedTest {
    @BeforeAll
    static void needsCuda() {
        PowerAttention.loadNatives();
        assertTrue(cuda_is_available(), "no CUDA device is visible to LibTorch: the gpu suite needs one");
    }

    @Test
    void ncclGroupOfOneAveragesBucketedGradients() throws Exception {
        int port = Runs.freePort();
        Map<String, String> env = Map.of("RANK", "0", "WORLD_SIZE", "1", "LOCAL_RANK", "0", "MASTER_ADDR",
                "127.0.0.1", "MASTER_PORT", Integer.toString(port));
        // 4 layers x 512: 12.7M parameters, 51 MB of fp32 gradients: two full 25 MiB buckets and a short one
        TrainConfig cfg = TrainConfig.parse("--n_layer=4", "--n_embd=512", "--n_head=8", "--block_size=64",
                "--device=cuda");
        Gpt model = new Gpt(cfg.model(), 1);
        Device cuda = new Device("cuda:0");
        model.to(cuda, false);
        Batches batches = new Batches(new RecallTask(), 1, 64);
        Tensor[] xy = batches.batch(Batches.Purpose.TRAIN_STEP, 0, 0, 4, cuda);
        model.loss(xy[0], xy[1]).backward();
        List<Tensor> params = model.parameterList(true);
        params.addAll(model.parameterList(false));
        List<Tensor> before = new ArrayList<>();
        long bytes = 0;
        for (Tensor p : params) {
            before.add(p.grad().clone());
            bytes += p.numel() * 4;
        }
        assertTrue(bytes > Distributed.BUCKET_BYTES + Distributed.BUCKET_BYTES / 2,
                "the gradients should fill more than one bucket: " + bytes);
        try (Distributed dist = Distributed.fromEnvironment(env, true, 60)) {
            assertEquals(1, dist.worldSize);
            dist.averageGradients(params, 0);
            for (int i = 0; i < params.size(); i++) {
                assertTrue(params.get(i).grad().is_cuda());
                assertTrue(params.get(i).grad().equal(before.get(i)), "gradient " + i + " changed in a group of one");
            }
            assertArrayEquals(new double[] {1.5, -2.0}, dist.sum(new double[] {1.5, -2.0}, "a test sum"));
            dist.broadcast(params, "the parameters");
            dist.barrier("the end of the test");
        }
    }

    /** Runs where the machine has two GPUs or more (skipped, not passed, on one). */
    @Test
    void twoProcessesOnTwoGpusEndWithTheParametersOfOneProcess(@TempDir Path dir) throws Exception {
        int gpus = torch_cuda.device_count();
        Assumptions.assumeTrue(gpus >= 2, "needs 2 GPUs, this machine has " + gpus);
        String[] model = {"--max_iters=4", "--eval_interval=2", "--chunk_size=16", "--device=cuda"};
        Path one = dir.resolve("one");
        Path two = dir.resolve("two");
        List<String> single = Runs.tiny(one, model);
        single.set(single.indexOf("--batch_size=4"), "--batch_size=8");
        Runs.train(single);
        int port = Runs.freePort();
        List<String> args = new ArrayList<>(List.of("train"));
        args.addAll(Runs.tiny(two, model));
        List<Process> ranks = new ArrayList<>();
        for (int r = 0; r < 2; r++) {
            ranks.add(Runs.spawn(args, Map.of("RANK", Integer.toString(r), "WORLD_SIZE", "2", "LOCAL_RANK",
                    Integer.toString(r), "MASTER_ADDR", "127.0.0.1", "MASTER_PORT", Integer.toString(port)),
                    dir.resolve("rank" + r + ".log")));
        }
        for (int r = 0; r < 2; r++) {
            boolean done = ranks.get(r).waitFor(300, TimeUnit.SECONDS);
            if (!done) {
                ranks.forEach(Process::destroyForcibly);
            }
            String log = Files.readString(dir.resolve("rank" + r + ".log"));
            assertTrue(done, "rank " + r + " did not finish:\n" + log);
            assertEquals(0, ranks.get(r).exitValue(), "rank " + r + " failed:\n" + log);
        }
        Map<String, Tensor> a = Runs.parameters(one);
        Map<String, Tensor> b = Runs.parameters(two);
        double worst = 0;
        for (String name : a.keySet()) {
            worst = Math.max(worst, a.get(name).sub(b.get(name)).abs().max().item_double());
        }
        assertTrue(worst < 1e-4, "1 and 2 processes over NCCL differ by up to " + worst);
    }
}
