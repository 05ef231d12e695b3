package io.github.powerattention.trainer;

import static org.bytedeco.pytorch.global.torch.getDefaultCPUGenerator;

import java.io.IOException;
import java.io.Reader;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Properties;
import java.util.stream.Stream;

import org.bytedeco.pytorch.DeviceOptional;
import org.bytedeco.pytorch.InputArchive;
import org.bytedeco.pytorch.NoGradGuard;
import org.bytedeco.pytorch.Optimizer;
import org.bytedeco.pytorch.OutputArchive;
import org.bytedeco.pytorch.StringTensorDict;
import org.bytedeco.pytorch.StringVector;
import org.bytedeco.pytorch.Tensor;

/**
 * A training checkpoint: the folder {@code <out_dir>/ckpt} with
 * <ul>
 *   <li>{@code model.pt}: the parameters (LibTorch archive, names as in {@link Gpt});</li>
 *   <li>{@code optimizer.pt}: AdamW's state (moments and step counts) and LibTorch's CPU RNG state;</li>
 *   <li>{@code state.properties}: the next step to run, the run's flags, the loss history (for the plot).</li>
 * </ul>
 * Batches are a function of (seed, step), so this is all a resumed run needs to continue bit for bit. The folder is
 * written next to the old one and swapped in by renames, so an interrupted save leaves the previous checkpoint.
 */
final class Checkpoint {
    static final String DIR = "ckpt";
    private static final String FORMAT = "power-attention-trainer-1";

    /** One point of the loss history: the step, "train" or "val", the loss and (recall task) the answer accuracy. */
    record Point(int step, String split, double loss, double recallAccuracy) {}

    final int step;
    final List<String> args;
    final List<Point> history;

    private Checkpoint(int step, List<String> args, List<Point> history) {
        this.step = step;
        this.args = args;
        this.history = history;
    }

    static Path dir(Path outDir) {
        return outDir.resolve(DIR);
    }

    static boolean exists(Path outDir) {
        return Files.isRegularFile(dir(outDir).resolve("state.properties"));
    }

    static void save(Path outDir, Gpt model, Optimizer optimizer, int step, List<String> args, List<Point> history)
            throws IOException {
        Files.createDirectories(outDir);
        Path tmp = outDir.resolve(DIR + ".tmp");
        deleteTree(tmp);
        Files.createDirectories(tmp);
        OutputArchive m = new OutputArchive();
        model.save(m);
        m.save_to(tmp.resolve("model.pt").toString());
        OutputArchive o = new OutputArchive();
        optimizer.save(o);
        o.write("torch_cpu_rng_state", getDefaultCPUGenerator().get_state());
        o.save_to(tmp.resolve("optimizer.pt").toString());
        Properties p = new Properties();
        p.setProperty("format", FORMAT);
        p.setProperty("step", Integer.toString(step));
        p.setProperty("args", String.join("\n", args));
        StringBuilder h = new StringBuilder();
        for (Point pt : history) {
            h.append(pt.step()).append(',').append(pt.split()).append(',').append(pt.loss()).append(',')
                    .append(pt.recallAccuracy()).append('\n');
        }
        p.setProperty("history", h.toString());
        try (Writer w = Files.newBufferedWriter(tmp.resolve("state.properties"), StandardCharsets.UTF_8)) {
            p.store(w, "power-attention-trainer checkpoint");
        }
        Path target = dir(outDir);
        Path old = outDir.resolve(DIR + ".old");
        deleteTree(old);
        if (Files.exists(target)) {
            Files.move(target, old, StandardCopyOption.ATOMIC_MOVE);
        }
        Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE);
        deleteTree(old);
    }

    /** Reads the step, the flags and the history (the tensors are loaded by {@link #loadInto}). */
    static Checkpoint read(Path outDir) {
        return read(outDir, "--init_from=resume");
    }

    /** {@link #read(Path)}, with {@code flag} (the flag that named the checkpoint) in the error messages. */
    static Checkpoint read(Path outDir, String flag) {
        Path state = dir(outDir).resolve("state.properties");
        if (!Files.isRegularFile(state)) {
            String where = flag.equals("--init_from=resume") ? "--out_dir=" + outDir.toAbsolutePath()
                    : outDir.toAbsolutePath().toString();
            throw new UsageException(flag + ": no checkpoint in " + where + " (expected " + state
                    + "); train with --init_from=scratch first");
        }
        Properties p = new Properties();
        try (Reader r = Files.newBufferedReader(state, StandardCharsets.UTF_8)) {
            p.load(r);
        } catch (IOException e) {
            throw new UsageException(flag + ": cannot read " + state + ": " + e.getMessage());
        }
        if (!FORMAT.equals(p.getProperty("format"))) {
            throw new UsageException(flag + ": " + state + " is not a checkpoint of this trainer (format "
                    + p.getProperty("format") + ", expected " + FORMAT + ")");
        }
        List<String> args = new ArrayList<>(List.of(p.getProperty("args", "").split("\n")));
        args.removeIf(String::isEmpty);
        List<Point> history = new ArrayList<>();
        for (String line : p.getProperty("history", "").split("\n")) {
            if (!line.isEmpty()) {
                String[] f = line.split(",");
                history.add(new Point(Integer.parseInt(f[0]), f[1], Double.parseDouble(f[2]),
                        Double.parseDouble(f[3])));
            }
        }
        return new Checkpoint(Integer.parseInt(p.getProperty("step")), args, history);
    }

    /** Loads parameters (and, when {@code optimizer} is not null, AdamW's state and the RNG state). */
    static void loadInto(Path outDir, Gpt model, Optimizer optimizer) {
        Path d = dir(outDir);
        InputArchive m = new InputArchive();
        // onto the model's device: a CUDA run's checkpoint loads into a CPU model (and the other way round)
        m.load_from(d.resolve("model.pt").toString(), new DeviceOptional(model.device()));
        model.load(m);
        if (optimizer != null) {
            InputArchive o = new InputArchive();
            o.load_from(d.resolve("optimizer.pt").toString());
            optimizer.load(o);
            Tensor rng = new Tensor();
            if (o.try_read("torch_cpu_rng_state", rng)) {
                getDefaultCPUGenerator().set_state(rng);
            }
        }
    }

    /** The run folder of {@code path}: {@code path} itself, or its parent when {@code path} is the ckpt folder. */
    static Path outDirOf(Path path) {
        if (Files.isRegularFile(path.resolve("state.properties")) && path.getParent() != null
                && path.getFileName().toString().equals(DIR)) {
            return path.getParent();
        }
        return path;
    }

    /** What {@link #loadShared} did: parameters copied, parameters left as initialised, stored ones not used. */
    record Transfer(List<String> copied, List<String> initialised, List<String> unused) {}

    /**
     * Copies every parameter of {@code outDir}'s checkpoint into the parameter of {@code model} with the same name
     * (its shape must match); parameters the checkpoint lacks (e.g. the gates of an sdpa model turned into a power
     * model) keep their initial values, and stored ones the model has no place for are left out.
     */
    static Transfer loadShared(Path outDir, Gpt model) {
        InputArchive archive = new InputArchive();
        archive.load_from(dir(outDir).resolve("model.pt").toString(), new DeviceOptional(model.device()));
        List<String> copied = new ArrayList<>();
        List<String> initialised = new ArrayList<>();
        StringTensorDict named = model.named_parameters(true);
        java.util.Set<String> names = new java.util.HashSet<>();
        try (NoGradGuard g = new NoGradGuard()) {
            for (long i = 0; i < named.size(); i++) {
                String name = named.get(i).key().getString();
                names.add(name);
                Tensor param = named.get(i).value();
                Tensor stored = readNested(archive, name);
                if (stored == null) {
                    initialised.add(name);
                    continue;
                }
                if (!java.util.Arrays.equals(stored.sizes().vec().get(), param.sizes().vec().get())) {
                    throw new UsageException("--init_from=" + outDir + ": parameter " + name + " has shape "
                            + java.util.Arrays.toString(stored.sizes().vec().get()) + " in the checkpoint, the model "
                            + "needs " + java.util.Arrays.toString(param.sizes().vec().get()));
                }
                param.copy_(stored);
                copied.add(name);
            }
        }
        List<String> unused = new ArrayList<>();
        collectNames(archive, "", unused);
        unused.removeIf(names::contains);
        return new Transfer(copied, initialised, unused);
    }

    /** The tensor {@code a.b.c} of a module archive (submodules are nested archives), null if absent. */
    private static Tensor readNested(InputArchive archive, String dotted) {
        String[] parts = dotted.split("\\.");
        InputArchive at = archive;
        for (int i = 0; i < parts.length - 1; i++) {
            InputArchive sub = new InputArchive();
            if (!at.try_read(parts[i], sub)) {
                return null;
            }
            at = sub;
        }
        Tensor t = new Tensor();
        return at.try_read(parts[parts.length - 1], t) ? t : null;
    }

    /** The dotted names of every tensor in a module archive. */
    private static void collectNames(InputArchive archive, String prefix, List<String> out) {
        StringVector keys = archive.keys();
        for (long i = 0; i < keys.size(); i++) {
            String key = keys.get(i).getString();
            InputArchive sub = new InputArchive();
            if (archive.try_read(key, sub)) {
                collectNames(sub, prefix + key + ".", out);
            } else {
                out.add(prefix + key);
            }
        }
    }

    static void deleteTree(Path p) throws IOException {
        if (!Files.exists(p)) {
            return;
        }
        try (Stream<Path> s = Files.walk(p)) {
            for (Path x : (Iterable<Path>) s.sorted(Comparator.reverseOrder())::iterator) {
                Files.delete(x);
            }
        }
    }
}
