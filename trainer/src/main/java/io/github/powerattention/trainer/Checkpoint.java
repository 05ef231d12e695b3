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

import org.bytedeco.pytorch.InputArchive;
import org.bytedeco.pytorch.Optimizer;
import org.bytedeco.pytorch.OutputArchive;
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
        Path state = dir(outDir).resolve("state.properties");
        if (!Files.isRegularFile(state)) {
            throw new UsageException("--init_from=resume: no checkpoint in --out_dir=" + outDir.toAbsolutePath()
                    + " (expected " + state + "); train with --init_from=scratch first");
        }
        Properties p = new Properties();
        try (Reader r = Files.newBufferedReader(state, StandardCharsets.UTF_8)) {
            p.load(r);
        } catch (IOException e) {
            throw new UsageException("--init_from=resume: cannot read " + state + ": " + e.getMessage());
        }
        if (!FORMAT.equals(p.getProperty("format"))) {
            throw new UsageException("--init_from=resume: " + state + " is not a checkpoint of this trainer (format "
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
        m.load_from(d.resolve("model.pt").toString());
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
