package io.github.powerattention.trainer;

import static org.bytedeco.pytorch.global.torch.cuda_is_available;
import static org.bytedeco.pytorch.global.torch.set_num_threads;
import static org.bytedeco.pytorch.global.torch.stack;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;

import io.github.powerattention.PowerAttention;
import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.AdamW;
import org.bytedeco.pytorch.AdamWOptions;
import org.bytedeco.pytorch.Device;
import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorVector;
import org.bytedeco.pytorch.global.torch.ScalarType;

/**
 * The training loop: AdamW (decoupled weight decay on matrices only), linear warmup then cosine decay, gradient
 * accumulation and clipping, periodic evaluation on held-out data, checkpoints, a progress line per log interval
 * and a loss plot at the end. Data-parallel over c10d when the torchrun variables ask for it; only rank 0 writes.
 */
public final class Trainer {
    /** Test hook: the rank {@code EXIT_RANK_VAR} halts (as if killed) at the start of step {@code EXIT_STEP_VAR}. */
    static final String EXIT_STEP_VAR = "POWER_ATTENTION_TRAINER_EXIT_AT_STEP";
    static final String EXIT_RANK_VAR = "POWER_ATTENTION_TRAINER_EXIT_RANK";

    /** What a run ended with. */
    public record Result(int startStep, int endStep, List<Checkpoint.Point> history, double tokensPerSecond) {
        /** The last recorded loss of {@code split} ("train" or "val"), NaN if none. */
        public double last(String split) {
            for (int i = history.size() - 1; i >= 0; i--) {
                if (history.get(i).split().equals(split)) {
                    return history.get(i).loss();
                }
            }
            return Double.NaN;
        }
    }

    private final TrainConfig cfg;
    private final PrintStream out;
    private final Map<String, String> env;

    private Trainer(TrainConfig cfg, PrintStream out, Map<String, String> env) {
        this.cfg = cfg;
        this.out = out;
        this.env = env;
    }

    /** Runs {@code cfg} (resolved for resume by {@link Main}) to {@code max_iters}. */
    public static Result run(TrainConfig cfg, PrintStream out, Map<String, String> env, Checkpoint resume)
            throws IOException {
        return new Trainer(cfg, out, env).run(resume);
    }

    private Result run(Checkpoint resume) throws IOException {
        boolean cuda = cfg.device.equals("cuda");
        PowerAttention.loadNatives();     // LibTorch's CUDA libraries load in dependency order before the question
        if (cuda && !cuda_is_available()) {
            throw new UsageException("--device=cuda: no CUDA device is visible to LibTorch (the trainer needs the "
                    + "linux-x86_64-gpu natives, built with -Pgpu, and CUDA 13 libraries); use --device=cpu");
        }
        if (cfg.threads > 0) {
            cpuThreads(cfg.threads);
        }
        Distributed dist = Distributed.requested(env) ? Distributed.fromEnvironment(env, cuda, cfg.distTimeoutSeconds)
                : null;
        int rank = dist == null ? 0 : dist.rank;
        int world = dist == null ? 1 : dist.worldSize;
        boolean master = rank == 0;
        Device device = cuda ? new Device("cuda:" + (dist == null ? 0 : dist.localRank)) : new Device("cpu");
        ScalarType dtype = dtype(cfg.dtype);

        TokenSource source = cfg.dataset.equals("recall")
                ? new RecallTask(cfg.recallKeyLetters, cfg.recallValueDigits, cfg.recallPairs)
                : new ByteCorpus(Paths.get(cfg.dataset), cfg.blockSize);
        boolean recall = source instanceof RecallTask;
        Batches batches = new Batches(source, cfg.seed, cfg.blockSize);

        Gpt model = new Gpt(cfg.model(), cfg.seed);
        Checkpoint.Transfer transfer = null;
        Path initDir = null;
        if (cfg.initFromCheckpoint()) {
            initDir = Checkpoint.outDirOf(Paths.get(cfg.initFrom));
            transfer = Checkpoint.loadShared(initDir, model);
        }
        if (cuda) {
            model.to(device, false);
        }
        model.computeDtype(dtype);
        List<Tensor> params = new ArrayList<>();
        TensorVector pv = model.parameters();
        for (long i = 0; i < pv.size(); i++) {
            params.add(new Tensor(pv.get(i)));
        }
        List<Tensor> decayed = model.parameterList(true);
        AdamW optimizer = new AdamW(new TensorVector(params.toArray(new Tensor[0])),
                adamWOptions(cfg.learningRate, cfg.beta1, cfg.beta2));

        int startStep = 0;
        List<Checkpoint.Point> history = new ArrayList<>();
        Path outDir = Paths.get(cfg.outDir);
        if (resume != null) {
            Checkpoint.loadInto(outDir, model, optimizer);
            startStep = resume.step;
            history.addAll(resume.history);
        }
        if (dist != null) {
            dist.broadcast(params, "the initial parameters");
        }

        long paramCount = 0;
        for (Tensor p : params) {
            paramCount += p.numel();
        }
        long tokensPerStep = cfg.tokensPerRankStep() * world;
        if (master) {
            GptConfig m = cfg.model();
            out.printf(Locale.ROOT, "model: %d layers, %d heads (%d kv), n_embd %d, %s attention%s%s, %.2fM "
                    + "parameters%n", m.nLayer(), m.nHead(), m.nKvHead(), m.nEmbd(),
                    m.attention().name().toLowerCase(Locale.ROOT),
                    m.attention() == GptConfig.Attention.POWER ? String.format(Locale.ROOT,
                            " (degree %d, %s, %s)", m.degree(),
                            m.chunkSize() > 0 ? "chunk " + m.chunkSize() : "quadratic form",
                            m.gating() ? "gated" : "no gating") : "",
                    m.tokenShift() ? ", token shift" : "", paramCount / 1e6);
            if (transfer != null) {
                Checkpoint from = Checkpoint.read(initDir, "--init_from=" + cfg.initFrom);
                out.printf(Locale.ROOT, "init: %d of %d parameter tensors from %s (a %s model at step %d); "
                        + "initialised here: %s; not used: %s; optimizer and schedule start fresh%n",
                        transfer.copied().size(), transfer.copied().size() + transfer.initialised().size(), initDir,
                        TrainConfig.parse(from.args.toArray(new String[0])).attentionKernel, from.step,
                        transfer.initialised().isEmpty() ? "none" : String.join(", ", transfer.initialised()),
                        transfer.unused().isEmpty() ? "none" : String.join(", ", transfer.unused()));
            }
            out.printf(Locale.ROOT, "data: %s%n", source.describe());
            out.printf(Locale.ROOT, "run: %s %s, %d process(es), %d tokens per step (%d x %d x %d x %d), %s%n",
                    cfg.device, cfg.dtype, world, tokensPerStep, cfg.batchSize, cfg.blockSize,
                    cfg.gradientAccumulationSteps, world, resume != null ? "resuming at step " + startStep
                            : transfer != null ? "fine-tuning from " + initDir : "from scratch");
            Files.createDirectories(outDir);
        }

        int exitStep = env.containsKey(EXIT_STEP_VAR) ? Integer.parseInt(env.get(EXIT_STEP_VAR)) : -1;
        int exitRank = env.containsKey(EXIT_RANK_VAR) ? Integer.parseInt(env.get(EXIT_RANK_VAR)) : -1;
        double lastTokensPerSecond = 0;
        long intervalStart = System.nanoTime();
        long trainNanos = 0;
        int trainedSteps = 0;
        int intervalSteps = 0;
        for (int step = startStep; step <= cfg.maxIters; step++) {
            boolean last = step == cfg.maxIters;
            boolean resumedHere = resume != null && step == startStep;    // evaluated before the checkpoint
            if (((cfg.evalInterval > 0 && step % cfg.evalInterval == 0) || last) && !resumedHere) {
                long t0 = System.nanoTime();
                evaluate(model, batches, dist, device, step, recall ? (RecallTask) source : null, history);
                if (master && step > startStep) {
                    Checkpoint.save(outDir, model, optimizer, step, cfg.toArgs(), history);
                }
                intervalStart += System.nanoTime() - t0;     // evaluation time is not training time
            }
            if (last) {
                break;
            }
            if (step == exitStep && rank == exitRank) {
                out.flush();
                Runtime.getRuntime().halt(3);
            }
            long s0 = System.nanoTime();
            double lr = cfg.learningRateAt(step);
            optimizer.param_groups().get(0).options().set_lr(lr);
            double loss = 0;
            try (PointerScope scope = new PointerScope()) {
                for (int micro = 0; micro < cfg.gradientAccumulationSteps; micro++) {
                    long first = ((long) rank * cfg.gradientAccumulationSteps + micro) * cfg.batchSize;
                    Tensor[] xy = batches.batch(Batches.Purpose.TRAIN_STEP, step, first, cfg.batchSize, device);
                    Tensor l = model.loss(xy[0], xy[1]).div(new Scalar((double) cfg.gradientAccumulationSteps));
                    l.backward();
                    loss += l.item_double();
                }
                if (dist != null) {
                    dist.averageGradients(params, step);
                }
                try (NoGradGuard g = new NoGradGuard()) {
                    if (cfg.gradClip > 0) {
                        clipGradNorm(params, cfg.gradClip);
                    }
                    if (cfg.weightDecay > 0) {
                        Scalar keep = new Scalar(1.0 - lr * cfg.weightDecay);
                        for (Tensor p : decayed) {
                            p.mul_(keep);
                        }
                    }
                }
                optimizer.step();
                optimizer.zero_grad();
            }
            long dt = System.nanoTime() - s0;
            trainNanos += dt;
            trainedSteps++;
            intervalSteps++;
            if (step % cfg.logInterval == 0 || step == cfg.maxIters - 1) {
                double logged = loss;
                if (dist != null) {
                    logged = dist.sum(new double[] {loss}, "loss for the log at step " + step)[0] / world;
                }
                long now = System.nanoTime();
                double seconds = (now - intervalStart) / 1e9;
                lastTokensPerSecond = intervalSteps * tokensPerStep / Math.max(seconds, 1e-9);
                intervalStart = now;
                intervalSteps = 0;
                history.add(new Checkpoint.Point(step, "train", logged, Double.NaN));
                if (master) {
                    double perStep = trainNanos / 1e9 / trainedSteps;
                    out.printf(Locale.ROOT, "step %6d/%d | loss %.4f | lr %.2e | %,.0f tok/s | ETA %s%n", step,
                            cfg.maxIters, logged, lr, lastTokensPerSecond,
                            duration(perStep * (cfg.maxIters - step - 1)));
                }
            }
        }
        if (master) {
            writeHistory(outDir.resolve("losses.csv"), history);
            Path png = outDir.resolve("loss.png");
            LossPlot.write(png, String.format(Locale.ROOT, "%s attention%s, %d x %d, byte-level",
                    cfg.attentionKernel, cfg.attentionKernel.equals("power") ? " deg " + cfg.degree
                            + (cfg.disableGating ? "" : ", gated") : "", cfg.nLayer, cfg.nEmbd), history);
            out.printf(Locale.ROOT, "wrote %s, %s and the checkpoint %s%n", png, outDir.resolve("losses.csv"),
                    Checkpoint.dir(outDir));
        }
        return new Result(startStep, cfg.maxIters, history, lastTokensPerSecond);
    }

    /** Mean loss (and recall accuracy) over eval_iters batches of each split, shared out over ranks. */
    private void evaluate(Gpt model, Batches batches, Distributed dist, Device device, int step, RecallTask recall,
            List<Checkpoint.Point> history) {
        int rank = dist == null ? 0 : dist.rank;
        int world = dist == null ? 1 : dist.worldSize;
        double[][] results = new double[2][];
        Batches.Purpose[] purposes = {Batches.Purpose.EVAL_TRAIN, Batches.Purpose.EVAL_VAL};
        for (int s = 0; s < 2; s++) {
            double[] sums = new double[5];   // loss sum, batches, correct answers, answers, no-recall floor hits
            for (int e = rank; e < cfg.evalIters; e += world) {
                try (PointerScope scope = new PointerScope(); NoGradGuard g = new NoGradGuard()) {
                    byte[][] raw = batches.bytes(purposes[s], e, 0, cfg.batchSize);
                    Tensor[] xy = batches.batch(purposes[s], e, 0, cfg.batchSize, device);
                    Tensor logits = model.forward(xy[0]);
                    Tensor loss = org.bytedeco.pytorch.global.torch.cross_entropy_loss(
                            logits.view(-1, logits.size(-1)), xy[1].reshape(-1));
                    sums[0] += loss.item_double();
                    sums[1] += 1;
                    if (recall != null) {
                        Tensor pred = logits.argmax(new org.bytedeco.pytorch.LongOptional(-1), false)
                                .to(new Device("cpu"), ScalarType.Long).contiguous();
                        long[] p = new long[(int) pred.numel()];
                        pred.data_ptr_long().get(p);
                        for (int r = 0; r < raw.length; r++) {
                            RecallTask.Score score = recall.score(raw[r], p, r * cfg.blockSize);
                            sums[2] += score.correct();
                            sums[3] += score.answers();
                            sums[4] += score.floorHits();
                        }
                    }
                }
            }
            results[s] = dist == null ? sums : dist.sum(sums, "evaluation at step " + step);
        }
        double train = results[0][0] / results[0][1];
        double val = results[1][0] / results[1][1];
        double valRecall = recall != null ? results[1][2] / Math.max(1, results[1][3]) : Double.NaN;
        history.add(new Checkpoint.Point(step, "val", val, valRecall));
        if (rank == 0) {
            out.printf(Locale.ROOT, "eval step %d: train loss %.4f, val loss %.4f%s%n", step, train, val,
                    recall != null ? String.format(Locale.ROOT, ", val recall accuracy %.1f%% (no-recall floor %.1f%%)",
                            100 * valRecall, 100 * results[1][4] / Math.max(1, results[1][3])) : "");
        }
    }

    /**
     * Sets the threads of CPU kernels: LibTorch's intra-op threads and OpenBLAS's own pool (which set_num_threads
     * leaves at one per core; its idle threads spin, which on cores shared with other work makes small models
     * several times slower).
     */
    static void cpuThreads(int n) {
        set_num_threads(n);
        org.bytedeco.openblas.presets.openblas_nolapack.blas_set_num_threads(n);
    }

    /**
     * AdamW's options: {@code lr}, betas, eps 1e-8 and no weight decay (decoupled decay is applied to matrices only,
     * in the loop). The betas are a {@code std::tuple<double, double>} seen from Java as two doubles in memory order,
     * which is the tuple's order under libc++ and the reverse under libstdc++ and MSVC: LibTorch's defaults
     * (0.9, 0.999) show which, so that beta1 lands in {@code std::get<0>}.
     */
    static AdamWOptions adamWOptions(double lr, double beta1, double beta2) {
        AdamWOptions opts = new AdamWOptions(lr);
        org.bytedeco.javacpp.DoublePointer betas = opts.betas();
        int first;
        if (betas.get(0) == 0.9 && betas.get(1) == 0.999) {
            first = 0;
        } else if (betas.get(0) == 0.999 && betas.get(1) == 0.9) {
            first = 1;
        } else {
            throw new IllegalStateException("AdamW's default betas read as (" + betas.get(0) + ", " + betas.get(1)
                    + ") in memory order, neither (0.9, 0.999) nor its reverse: cannot tell where beta1 goes");
        }
        betas.put(first, beta1).put(1 - first, beta2);
        opts.eps().put(1e-8);
        opts.weight_decay().put(0.0);
        return opts;
    }

    /** Scales all gradients so that their global L2 norm is at most {@code maxNorm}; returns the norm before. */
    static double clipGradNorm(List<Tensor> params, double maxNorm) {
        TensorVector norms = new TensorVector();
        for (Tensor p : params) {
            Tensor g = p.grad();
            if (g.defined()) {
                norms.push_back(g.norm());
            }
        }
        if (norms.size() == 0) {
            return 0;
        }
        double total = stack(norms).norm().item_double();
        double coef = maxNorm / (total + 1e-6);
        if (coef < 1) {
            Scalar c = new Scalar(coef);
            for (Tensor p : params) {
                Tensor g = p.grad();
                if (g.defined()) {
                    g.mul_(c);
                }
            }
        }
        return total;
    }

    static ScalarType dtype(String name) {
        switch (name) {
            case "bfloat16": return ScalarType.BFloat16;
            case "float16": return ScalarType.Half;
            default: return ScalarType.Float;
        }
    }

    private static void writeHistory(Path file, List<Checkpoint.Point> history) throws IOException {
        StringBuilder s = new StringBuilder("step,split,loss,recall_accuracy\n");
        for (Checkpoint.Point p : history) {
            s.append(p.step()).append(',').append(p.split()).append(',').append(p.loss()).append(',')
                    .append(Double.isNaN(p.recallAccuracy()) ? "" : Double.toString(p.recallAccuracy())).append('\n');
        }
        Files.writeString(file, s, StandardCharsets.UTF_8);
    }

    static String duration(double seconds) {
        long s = Math.round(seconds);
        if (s < 60) {
            return s + "s";
        }
        if (s < 3600) {
            return (s / 60) + "m" + String.format(Locale.ROOT, "%02d", s % 60) + "s";
        }
        return (s / 3600) + "h" + String.format(Locale.ROOT, "%02d", (s % 3600) / 60) + "m";
    }
}
