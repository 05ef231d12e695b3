package io.github.powerattention.trainer;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Every setting of a training run, from {@code --flags} (nanoGPT's names; defaults sized for a CPU). Stored in the
 * checkpoint as text so that {@code --init_from=resume} continues the same run.
 */
public final class TrainConfig {
    /** Flags that fix the model's shape: on resume they come from the checkpoint and may not be changed. */
    static final Set<String> MODEL_FLAGS = Set.of("block_size", "n_layer", "n_head", "n_kv_head", "n_embd",
            "attention_kernel", "degree", "chunk_size", "disable_gating", "disable_token_shift", "rope_base");
    /** Flags that fix the shapes of the weights: {@code --init_from=PATH} takes them from that checkpoint. */
    static final Set<String> WEIGHT_FLAGS = Set.of("n_layer", "n_head", "n_kv_head", "n_embd", "disable_token_shift",
            "rope_base");
    static final Set<String> BOOLEAN_FLAGS = Set.of("disable_gating", "disable_token_shift");
    /**
     * The recall task's default difficulty: key letters, value digits, pairs per sample (0: half the context). The
     * hard setting of the long-context comparison is 2, 2, 0.
     */
    static final int[] RECALL_DEFAULTS = {1, 1, 8};
    /** Flags that only steer this invocation (where to write, whether to resume), never stored. */
    static final Set<String> RUN_FLAGS = Set.of("init_from", "out_dir");

    // I/O
    public final String outDir;
    public final String initFrom;          // scratch | resume | the path of another run's checkpoint
    public final String dataset;           // "recall" (embedded) or a path to a text file or folder
    public final int recallKeyLetters;     // the recall task's difficulty (dataset "recall")
    public final int recallValueDigits;
    public final int recallPairs;          // 0: definitions fill half the context
    public final int evalInterval;
    public final int evalIters;
    public final int logInterval;
    // data
    public final int batchSize;
    public final int blockSize;
    public final int gradientAccumulationSteps;
    // model
    public final int nLayer;
    public final int nHead;
    public final int nKvHead;
    public final int nEmbd;
    public final String attentionKernel;   // sdpa | power
    public final int degree;
    public final int chunkSize;            // 0: the quadratic form
    public final boolean disableGating;
    public final boolean disableTokenShift;
    public final double ropeBase;
    // optimizer
    public final double learningRate;
    public final int maxIters;
    public final double weightDecay;
    public final double beta1;
    public final double beta2;
    public final double gradClip;
    public final int warmupIters;
    public final int lrDecayIters;
    public final double minLr;
    // system
    public final String device;            // cpu | cuda
    public final String dtype;             // float32 | bfloat16 | float16
    public final long seed;
    public final int threads;              // LibTorch's intra-op threads on the CPU; 0: LibTorch's default
    public final int distTimeoutSeconds;

    /** The flag values this config was built from (for the checkpoint), in flag-name form. */
    final Map<String, String> values;

    private TrainConfig(Flags f) {
        outDir = f.string("out_dir", "out");
        String from = f.string("init_from", "scratch").strip();
        initFrom = from.equalsIgnoreCase("scratch") || from.equalsIgnoreCase("resume") ? from.toLowerCase() : from;
        if (initFrom.isEmpty()) {
            throw new UsageException("--init_from expects scratch, resume or the path of a checkpoint, got ''");
        }
        dataset = f.string("dataset", "recall");
        recallKeyLetters = f.integer("recall_key_letters", RECALL_DEFAULTS[0], 1);
        recallValueDigits = f.integer("recall_value_digits", RECALL_DEFAULTS[1], 1);
        recallPairs = f.integer("recall_pairs", RECALL_DEFAULTS[2], 0);
        evalInterval = f.integer("eval_interval", 100, 0);
        evalIters = f.integer("eval_iters", 20, 1);
        logInterval = f.integer("log_interval", 10, 1);
        batchSize = f.integer("batch_size", 8, 1);
        blockSize = f.integer("block_size", 256, 2);
        gradientAccumulationSteps = f.integer("gradient_accumulation_steps", 1, 1);
        nLayer = f.integer("n_layer", 4, 1);
        nHead = f.integer("n_head", 4, 1);
        nKvHead = f.integer("n_kv_head", nHead, 1);
        nEmbd = f.integer("n_embd", 128, 2);
        attentionKernel = f.choice("attention_kernel", "power", "sdpa", "power");
        degree = f.integer("degree", 2, 1);
        String chunk = f.string("chunk_size", "128");
        if (chunk.equalsIgnoreCase("none") || chunk.equals("0")) {
            chunkSize = 0;
        } else {
            try {
                chunkSize = Integer.parseInt(chunk.strip());
            } catch (NumberFormatException e) {
                throw new UsageException("--chunk_size expects a positive integer or 'none' (the quadratic form), got '"
                        + chunk + "'");
            }
            if (chunkSize < 1) {
                throw new UsageException("--chunk_size expects a positive integer or 'none', got " + chunk);
            }
        }
        disableGating = f.bool("disable_gating", false);
        disableTokenShift = f.bool("disable_token_shift", false);
        ropeBase = f.real("rope_base", 10000.0, 1.0, false);
        learningRate = f.real("learning_rate", 1e-3, 0.0, false);
        maxIters = f.integer("max_iters", 2000, 0);
        weightDecay = f.real("weight_decay", 0.1, 0.0, true);
        beta1 = f.real("beta1", 0.9, 0.0, true);
        beta2 = f.real("beta2", 0.95, 0.0, true);
        gradClip = f.real("grad_clip", 1.0, 0.0, true);
        warmupIters = f.integer("warmup_iters", 100, 0);
        lrDecayIters = f.integer("lr_decay_iters", maxIters, 0);
        minLr = f.real("min_lr", learningRate / 10, 0.0, true);
        device = f.choice("device", "cpu", "cpu", "cuda");
        dtype = f.choice("dtype", "float32", "float32", "bfloat16", "float16");
        seed = f.integer("seed", 1337, 0);
        threads = f.integer("threads", 1, 0);
        distTimeoutSeconds = f.integer("dist_timeout", 120, 1);

        if (nEmbd % nHead != 0) {
            throw new UsageException("--n_embd must be a multiple of --n_head: got n_embd=" + nEmbd + ", n_head=" + nHead);
        }
        if ((nEmbd / nHead) % 2 != 0) {
            throw new UsageException("the head dimension n_embd/n_head must be even for rotary embeddings, got "
                    + nEmbd + "/" + nHead + " = " + (nEmbd / nHead));
        }
        if (nHead % nKvHead != 0) {
            throw new UsageException("--n_head must be a multiple of --n_kv_head (grouped-query heads): got n_head="
                    + nHead + ", n_kv_head=" + nKvHead);
        }
        if (beta1 >= 1 || beta2 >= 1) {
            throw new UsageException("--beta1 and --beta2 expect numbers in [0, 1), got " + beta1 + ", " + beta2);
        }
        if (minLr > learningRate) {
            throw new UsageException("--min_lr must be <= --learning_rate, got min_lr=" + minLr + ", learning_rate="
                    + learningRate);
        }
        if (dataset.equals("recall") && recallPairs > 0) {
            int record = RecallTask.recordLength(recallKeyLetters, recallValueDigits);
            if ((long) recallPairs * record + record > blockSize + 1L) {
                throw new UsageException("--recall_pairs=" + recallPairs + " definitions take " + recallPairs * record
                        + " bytes and leave no query in --block_size=" + blockSize + ": use fewer pairs or a block of "
                        + "at least " + (recallPairs * record + record - 1));
            }
        }
        if (attentionKernel.equals("power") && degree > 8) {
            throw new UsageException("--degree expects 1..8 for power attention, got " + degree);
        }
        values = new LinkedHashMap<>();
        for (String n : f.usedNames()) {
            values.put(n, valueText(n));
        }
        f.requireAllUsed(knownFlags());
    }

    /** Parses the {@code train} command's flags. */
    public static TrainConfig parse(String... args) {
        return new TrainConfig(Flags.parse(args, BOOLEAN_FLAGS));
    }

    static TrainConfig fromFlags(Flags f) {
        return new TrainConfig(f);
    }

    /** Every flag the train command knows. */
    static Set<String> knownFlags() {
        return new LinkedHashSet<>(List.of("out_dir", "init_from", "dataset", "recall_key_letters",
                "recall_value_digits", "recall_pairs", "eval_interval", "eval_iters",
                "log_interval", "batch_size", "block_size", "gradient_accumulation_steps", "n_layer", "n_head",
                "n_kv_head", "n_embd", "attention_kernel", "degree", "chunk_size", "disable_gating",
                "disable_token_shift", "rope_base",
                "learning_rate", "max_iters", "weight_decay", "beta1", "beta2", "grad_clip", "warmup_iters",
                "lr_decay_iters", "min_lr", "device", "dtype", "seed", "threads", "dist_timeout"));
    }

    /** True for {@code --init_from=PATH}: weights from another run's checkpoint, a fresh optimizer and schedule. */
    boolean initFromCheckpoint() {
        return !initFrom.equals("scratch") && !initFrom.equals("resume");
    }

    /** The model's shape. */
    public GptConfig model() {
        return new GptConfig(256, blockSize, nLayer, nHead, nKvHead, nEmbd,
                attentionKernel.equals("power") ? GptConfig.Attention.POWER : GptConfig.Attention.SDPA, degree,
                chunkSize, !disableGating, !disableTokenShift, ropeBase);
    }

    /** This config as {@code --name=value} arguments (run flags excluded), to store and to re-parse. */
    List<String> toArgs() {
        List<String> out = new ArrayList<>();
        for (Map.Entry<String, String> e : values.entrySet()) {
            if (!RUN_FLAGS.contains(e.getKey())) {
                out.add("--" + e.getKey() + "=" + e.getValue());
            }
        }
        return out;
    }

    /** A flag's value as text, its default when it was not given. */
    String valueOrDefault(String name) {
        return valueText(name);
    }

    private String valueText(String name) {
        switch (name) {
            case "out_dir": return outDir;
            case "init_from": return initFrom;
            case "dataset": return dataset;
            case "recall_key_letters": return Integer.toString(recallKeyLetters);
            case "recall_value_digits": return Integer.toString(recallValueDigits);
            case "recall_pairs": return Integer.toString(recallPairs);
            case "eval_interval": return Integer.toString(evalInterval);
            case "eval_iters": return Integer.toString(evalIters);
            case "log_interval": return Integer.toString(logInterval);
            case "batch_size": return Integer.toString(batchSize);
            case "block_size": return Integer.toString(blockSize);
            case "gradient_accumulation_steps": return Integer.toString(gradientAccumulationSteps);
            case "n_layer": return Integer.toString(nLayer);
            case "n_head": return Integer.toString(nHead);
            case "n_kv_head": return Integer.toString(nKvHead);
            case "n_embd": return Integer.toString(nEmbd);
            case "attention_kernel": return attentionKernel;
            case "degree": return Integer.toString(degree);
            case "chunk_size": return chunkSize == 0 ? "none" : Integer.toString(chunkSize);
            case "disable_gating": return Boolean.toString(disableGating);
            case "disable_token_shift": return Boolean.toString(disableTokenShift);
            case "rope_base": return Double.toString(ropeBase);
            case "learning_rate": return Double.toString(learningRate);
            case "max_iters": return Integer.toString(maxIters);
            case "weight_decay": return Double.toString(weightDecay);
            case "beta1": return Double.toString(beta1);
            case "beta2": return Double.toString(beta2);
            case "grad_clip": return Double.toString(gradClip);
            case "warmup_iters": return Integer.toString(warmupIters);
            case "lr_decay_iters": return Integer.toString(lrDecayIters);
            case "min_lr": return Double.toString(minLr);
            case "device": return device;
            case "dtype": return dtype;
            case "seed": return Long.toString(seed);
            case "threads": return Integer.toString(threads);
            case "dist_timeout": return Integer.toString(distTimeoutSeconds);
            default: throw new IllegalStateException("no text for flag " + name);
        }
    }

    /** Learning rate at iteration {@code it}: linear warmup, cosine decay to min_lr at lr_decay_iters, then min_lr. */
    public double learningRateAt(int it) {
        if (it < warmupIters) {
            return learningRate * (it + 1) / (warmupIters + 1);
        }
        if (it > lrDecayIters || lrDecayIters <= warmupIters) {
            return it > lrDecayIters ? minLr : learningRate;
        }
        double ratio = (double) (it - warmupIters) / (lrDecayIters - warmupIters);
        double coeff = 0.5 * (1.0 + Math.cos(Math.PI * ratio));
        return minLr + coeff * (learningRate - minLr);
    }

    /** Tokens of one optimizer step on one rank. */
    long tokensPerRankStep() {
        return (long) batchSize * blockSize * gradientAccumulationSteps;
    }
}
