package io.github.powerattention.trainer;

import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

import io.github.powerattention.PowerAttention;
import io.github.powerattention.PowerAttentionException;

/**
 * {@code java -jar power-attention-trainer.jar <command> [--flags]}:
 * <ul>
 *   <li>{@code train}: trains a GPT (see {@link TrainConfig} for the flags), one process or many;</li>
 *   <li>{@code sample}: generates text from the checkpoint in {@code --out_dir}.</li>
 * </ul>
 * Exit codes: 0 success, 2 bad command-line input or input files, 1 any other failure (a dead peer included).
 */
public final class Main {
    static final String USAGE = String.join("\n",
            "usage: java -jar power-attention-trainer.jar <command> [--flag=value ...]",
            "commands:",
            "  train    train a GPT with power (or sdpa) attention; e.g. train --max_iters=200",
            "           data: --dataset=recall (embedded, default) or --dataset=PATH (a text file or a folder);",
            "                 the recall task's difficulty: --recall_key_letters=1|2 --recall_value_digits=1|2",
            "                 --recall_pairs=N (pairs defined per sample, 0: as many as fill half the context)",
            "           model: --n_layer --n_head --n_kv_head --n_embd --block_size --attention_kernel=sdpa|power",
            "                  --degree --chunk_size=N|none --disable_gating --disable_token_shift",
            "           optimizer: --learning_rate --min_lr --warmup_iters --lr_decay_iters --max_iters",
            "                  --weight_decay --beta1 --beta2 --grad_clip --batch_size --gradient_accumulation_steps",
            "           run: --out_dir --init_from=scratch|resume|PATH --eval_interval --eval_iters --log_interval",
            "                  (PATH: another run's out_dir or ckpt folder; its weights, with the attention kernel,",
            "                  degree, chunk size and gating given now: e.g. an sdpa run fine-tuned as power)",
            "                  --device=cpu|cuda --dtype=float32|bfloat16|float16 --seed --threads --dist_timeout",
            "           many processes: set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (or use",
            "           trainer/launch.sh N ...)",
            "  sample   generate text from the checkpoint in --out_dir: --start=TEXT --max_new_tokens=200",
            "           --temperature=0.8 --top_k=0 --num_samples=1 --seed --mode=state|full --threads",
            "           --device=cpu|cuda (default: the checkpoint's device when available, else cpu)");

    private Main() {}

    public static void main(String[] args) {
        System.setProperty("java.awt.headless", "true");
        io.github.powerattention.PowerAttention.loadNatives();  // before LibTorch's first use: quietly
        int code = run(args, System.out, System.err, System.getenv());
        System.out.flush();
        System.exit(code);
    }

    /** Runs a command; returns the exit code. */
    public static int run(String[] args, PrintStream out, PrintStream err, Map<String, String> env) {
        if (args.length == 0 || args[0].equals("help") || args[0].equals("--help") || args[0].equals("-h")) {
            (args.length == 0 ? err : out).println(USAGE);
            return args.length == 0 ? 2 : 0;
        }
        String command = args[0];
        String[] rest = java.util.Arrays.copyOfRange(args, 1, args.length);
        try {
            switch (command) {
                case "train":
                    train(rest, out, env);
                    return 0;
                case "sample":
                    sample(rest, out);
                    return 0;
                default:
                    err.println("error: unknown command '" + command + "' (expected train or sample)");
                    err.println(USAGE);
                    return 2;
            }
        } catch (UsageException e) {
            err.println("error: " + e.getMessage());
            return 2;
        } catch (Distributed.DistributedException e) {
            err.println("error: " + e.getMessage());
            return 1;
        } catch (IllegalArgumentException | PowerAttentionException e) {
            err.println("error: " + Distributed.firstLine(e));
            return 1;
        } catch (Exception e) {
            err.println("error: " + e);
            e.printStackTrace(err);
            return 1;
        }
    }

    static Trainer.Result train(String[] args, PrintStream out, Map<String, String> env) throws Exception {
        TrainConfig cfg = resolve(args);
        Checkpoint resume = cfg.initFrom.equals("resume") ? Checkpoint.read(Paths.get(cfg.outDir)) : null;
        return Trainer.run(cfg, out, env, resume);
    }

    /**
     * The train command's config. With {@code --init_from=resume} the flags stored in the checkpoint are the base and
     * flags given now override them, except the model's shape, which must not change.
     */
    static TrainConfig resolve(String[] args) {
        TrainConfig given = TrainConfig.parse(args);
        if (given.initFromCheckpoint()) {
            return withWeightShape(given, args);
        }
        if (!given.initFrom.equals("resume")) {
            return given;
        }
        Checkpoint ckpt = Checkpoint.read(Paths.get(given.outDir));
        Flags cli = Flags.parse(args, TrainConfig.BOOLEAN_FLAGS);
        TrainConfig stored = TrainConfig.parse(ckpt.args.toArray(new String[0]));
        for (String name : cli.given()) {
            if (TrainConfig.MODEL_FLAGS.contains(name) && !stored.values.get(name).equals(given.values.get(name))) {
                throw new UsageException("--" + name + "=" + given.values.get(name) + " differs from the checkpoint's "
                        + stored.values.get(name) + ": the model's shape cannot change on --init_from=resume");
            }
        }
        List<String> merged = new ArrayList<>(ckpt.args);
        Set<String> override = new LinkedHashSet<>(cli.given());
        merged.removeIf(a -> override.contains(a.substring(2, a.indexOf('='))));
        for (String name : override) {
            merged.add("--" + name + "=" + given.values.get(name));
        }
        return TrainConfig.parse(merged.toArray(new String[0]));
    }

    /**
     * The device {@code sample} runs on: {@code --device} if given (cuda must be visible), else the device the
     * checkpoint was trained on when it is available here, else cpu.
     */
    static String sampleDevice(String requested, String trainedOn) {
        if (requested.equals("cuda") || (requested.isEmpty() && trainedOn.equals("cuda"))) {
            PowerAttention.loadNatives();
            boolean visible = org.bytedeco.pytorch.global.torch.cuda_is_available();
            if (requested.equals("cuda") && !visible) {
                throw new UsageException("--device=cuda: no CUDA device is visible to LibTorch (the sampler needs "
                        + "the linux-x86_64-gpu natives and CUDA 13 libraries); use --device=cpu");
            }
            return visible ? "cuda" : "cpu";
        }
        return "cpu";
    }

    /**
     * {@code --init_from=PATH}: the flags given now (defaults for the rest), with the weight shapes
     * ({@link TrainConfig#WEIGHT_FLAGS}) of PATH's checkpoint; a given one that differs is an error.
     */
    static TrainConfig withWeightShape(TrainConfig given, String[] args) {
        Checkpoint source = Checkpoint.read(Checkpoint.outDirOf(Paths.get(given.initFrom)), "--init_from=" + given.initFrom);
        TrainConfig stored = TrainConfig.parse(source.args.toArray(new String[0]));
        Flags cli = Flags.parse(args, TrainConfig.BOOLEAN_FLAGS);
        List<String> merged = new ArrayList<>(List.of(args));
        for (String name : TrainConfig.WEIGHT_FLAGS) {
            String theirs = stored.valueOrDefault(name);
            if (cli.given().contains(name)) {
                if (!given.valueOrDefault(name).equals(theirs)) {
                    throw new UsageException("--" + name + "=" + given.valueOrDefault(name) + " differs from the "
                            + "checkpoint's " + theirs + " (--init_from=" + given.initFrom + "): its weights would "
                            + "not fit; leave --" + name + " out");
                }
            } else {
                merged.add("--" + name + "=" + theirs);
            }
        }
        return TrainConfig.parse(merged.toArray(new String[0]));
    }

    static void sample(String[] args, PrintStream out) {
        Flags f = Flags.parse(args, Set.of());
        Path outDir = Paths.get(f.string("out_dir", "out"));
        String start = f.string("start", "\n");
        int maxNew = f.integer("max_new_tokens", 200, 1);
        double temperature = f.real("temperature", 0.8, 0.0, true);
        int topK = f.integer("top_k", 0, 0);
        int numSamples = f.integer("num_samples", 1, 1);
        long seed = f.integer("seed", 1337, 0);
        int threads = f.integer("threads", 1, 0);
        String modeName = f.choice("mode", "", "state", "full");
        String deviceName = f.choice("device", "", "cpu", "cuda");
        f.requireAllUsed(new LinkedHashSet<>(List.of("out_dir", "start", "max_new_tokens", "temperature", "top_k",
                "num_samples", "seed", "mode", "threads", "device")));
        if (threads > 0) {
            Trainer.cpuThreads(threads);
        }
        Checkpoint ckpt = Checkpoint.read(outDir);
        TrainConfig cfg = TrainConfig.parse(ckpt.args.toArray(new String[0]));
        Gpt model = new Gpt(cfg.model(), cfg.seed);
        Checkpoint.loadInto(outDir, model, null);
        String device = sampleDevice(deviceName, cfg.device);
        if (device.equals("cuda")) {
            model.to(new org.bytedeco.pytorch.Device("cuda:0"), false);
        }
        model.computeDtype(Trainer.dtype(cfg.dtype));
        boolean power = cfg.model().attention() == GptConfig.Attention.POWER;
        Sampler.Mode mode = modeName.isEmpty() ? (power ? Sampler.Mode.STATE : Sampler.Mode.FULL)
                : Sampler.Mode.valueOf(modeName.toUpperCase());
        if (mode == Sampler.Mode.STATE && !power) {
            throw new UsageException("--mode=state needs a power-attention model; this checkpoint uses sdpa "
                    + "(use --mode=full)");
        }
        byte[] prompt = start.replace("\\n", "\n").getBytes(StandardCharsets.UTF_8);
        if (prompt.length == 0) {
            throw new UsageException("--start must not be empty");
        }
        Sampler sampler = new Sampler(model, temperature, topK);
        out.printf(java.util.Locale.ROOT, "sampling on %s%s%n", device, deviceName.isEmpty()
                ? " (checkpoint trained on " + cfg.device + "; --device=cpu|cuda to choose)" : "");
        for (int i = 0; i < numSamples; i++) {
            long t0 = System.nanoTime();
            byte[] text = sampler.generate(prompt, maxNew, mode, seed + i, null);
            double s = (System.nanoTime() - t0) / 1e9;
            out.println(new String(prompt, StandardCharsets.UTF_8) + new String(text, StandardCharsets.UTF_8));
            out.printf(java.util.Locale.ROOT, "--- %d tokens in %.2f s (%.1f tokens/s, %s mode)%n", maxNew, s,
                    maxNew / s, mode.name().toLowerCase());
        }
    }
}
