package io.github.powerattention.trainer;

import java.io.IOException;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * A text file, or every regular file under a folder (sorted by path, hidden files skipped), read as one stream of
 * bytes (tokens 0..255) through memory maps: a large corpus never sits in the Java heap, and a rank touches only
 * the pages of the samples it reads. The first 90% of the stream is the training split, the last 10% validation.
 */
public final class ByteCorpus implements TokenSource {
    /** Files are mapped in segments of at most this many bytes (a MappedByteBuffer holds up to 2 GiB). */
    private static final long SEGMENT = 1L << 30;
    static final double TRAIN_FRACTION = 0.9;

    private final String description;
    private final List<MappedByteBuffer> segments = new ArrayList<>();
    private final List<Long> segmentStart = new ArrayList<>();
    private final long length;
    private final long trainEnd;
    private final int window;

    /**
     * @param path      a file or folder
     * @param blockSize the training context: each split must hold at least blockSize + 1 bytes
     * @throws UsageException when the path is missing, unreadable, empty or too small
     */
    public ByteCorpus(Path path, int blockSize) {
        this.window = blockSize + 1;
        if (!Files.exists(path)) {
            throw new UsageException("--dataset: no such file or folder: " + path.toAbsolutePath()
                    + " (give a text file, a folder of text files, or 'recall' for the embedded task)");
        }
        List<Path> files;
        try {
            if (Files.isDirectory(path)) {
                try (Stream<Path> s = Files.walk(path)) {
                    files = s.filter(Files::isRegularFile)
                            .filter(p -> !path.relativize(p).toString().startsWith(".")
                                    && !p.getFileName().toString().startsWith("."))
                            .sorted().collect(Collectors.toList());
                }
            } else {
                files = List.of(path);
            }
            long offset = 0;
            for (Path f : files) {
                try (FileChannel ch = FileChannel.open(f, StandardOpenOption.READ)) {
                    long size = ch.size();
                    for (long pos = 0; pos < size; pos += SEGMENT) {
                        long n = Math.min(SEGMENT, size - pos);
                        segments.add(ch.map(FileChannel.MapMode.READ_ONLY, pos, n));
                        segmentStart.add(offset);
                        offset += n;
                    }
                }
            }
            this.length = offset;
        } catch (IOException e) {
            throw new UsageException("--dataset: cannot read " + path.toAbsolutePath() + ": " + e.getMessage());
        }
        this.trainEnd = (long) Math.floor(length * TRAIN_FRACTION);
        long valLength = length - trainEnd;
        if (trainEnd < window || valLength < window) {
            throw new UsageException("--dataset: " + path.toAbsolutePath() + " holds " + length + " bytes in "
                    + files.size() + " file(s); the train (90%) and validation (10%) splits each need at least "
                    + "block_size + 1 = " + window + " bytes, so at least " + minimumLength(window) + " bytes in all: use a larger corpus or a smaller --block_size");
        }
        this.description = "bytes of " + path + " (" + files.size() + " file(s), " + length + " bytes: "
                + trainEnd + " train, " + valLength + " validation)";
    }

    /** The smallest corpus whose two splits each hold {@code window} bytes. */
    static long minimumLength(int window) {
        long n = (long) Math.ceil(window / (1 - TRAIN_FRACTION) - 1e-6);
        while ((long) Math.floor(n * TRAIN_FRACTION) < window || n - (long) Math.floor(n * TRAIN_FRACTION) < window) {
            n++;
        }
        return n;
    }

    public long length() {
        return length;
    }

    /** First byte of the validation split. */
    public long trainEnd() {
        return trainEnd;
    }

    @Override
    public void sample(Split split, long sampleSeed, byte[] out) {
        long lo = split == Split.TRAIN ? 0 : trainEnd;
        long hi = split == Split.TRAIN ? trainEnd : length;
        long start = lo + new SplittableRandom(sampleSeed).nextLong(hi - lo - out.length + 1);
        read(start, out);
    }

    /** Copies {@code out.length} bytes starting at stream position {@code pos} (across file boundaries). */
    void read(long pos, byte[] out) {
        int seg = segmentOf(pos);
        int done = 0;
        while (done < out.length) {
            MappedByteBuffer b = segments.get(seg);
            int from = (int) (pos + done - segmentStart.get(seg));
            int n = Math.min(out.length - done, b.capacity() - from);
            b.get(from, out, done, n);
            done += n;
            seg++;
        }
    }

    private int segmentOf(long pos) {
        int lo = 0;
        int hi = segments.size() - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) >>> 1;
            if (segmentStart.get(mid) <= pos) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        return lo;
    }

    @Override
    public String describe() {
        return description;
    }
}
