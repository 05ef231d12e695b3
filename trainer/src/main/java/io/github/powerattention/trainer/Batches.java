package io.github.powerattention.trainer;

import org.bytedeco.pytorch.Device;
import org.bytedeco.pytorch.Tensor;

/**
 * Batches as a pure function of (run seed, purpose, step, global sample index): sample {@code g} of the global
 * batch of step {@code s} is the same bytes whichever rank reads it, so a run on N processes sees exactly the
 * samples of a run on one process with N times the batch (or N times the accumulation), and a resumed run sees
 * exactly the samples the uninterrupted run would have seen. No RNG state needs saving.
 *
 * <p>Global sample index of rank {@code r}, micro-step {@code m}, row {@code i}:
 * {@code g = (r * accumulation + m) * batchSize + i}.
 */
final class Batches {
    /** What a batch is for: each purpose draws from its own stream. */
    enum Purpose { TRAIN_STEP, EVAL_TRAIN, EVAL_VAL }

    private final TokenSource source;
    private final long seed;
    private final int blockSize;

    Batches(TokenSource source, long seed, int blockSize) {
        this.source = source;
        this.seed = seed;
        this.blockSize = blockSize;
    }

    TokenSource source() {
        return source;
    }

    /** The seed of one sample. */
    long sampleSeed(Purpose purpose, long step, long globalIndex) {
        long h = mix(seed ^ 0x243F6A8885A308D3L);
        h = mix(h ^ (purpose.ordinal() + 1) * 0x9E3779B97F4A7C15L);
        h = mix(h ^ step * 0xBF58476D1CE4E5B9L);
        return mix(h ^ globalIndex * 0x94D049BB133111EBL);
    }

    /** Rows {@code first .. first + rows - 1}: {@code [inputs, targets]}, each {@code [rows, blockSize]} int64. */
    Tensor[] batch(Purpose purpose, long step, long first, int rows, Device device) {
        byte[][] raw = bytes(purpose, step, first, rows);
        long[] x = new long[rows * blockSize];
        long[] y = new long[rows * blockSize];
        for (int r = 0; r < rows; r++) {
            for (int j = 0; j < blockSize; j++) {
                x[r * blockSize + j] = raw[r][j] & 0xFF;
                y[r * blockSize + j] = raw[r][j + 1] & 0xFF;
            }
        }
        Tensor xt = Tensor.create(x, rows, blockSize);
        Tensor yt = Tensor.create(y, rows, blockSize);
        if (device != null && !device.is_cpu()) {
            xt = xt.to(device, xt.scalar_type());
            yt = yt.to(device, yt.scalar_type());
        }
        return new Tensor[] {xt, yt};
    }

    /** The raw samples ({@code blockSize + 1} bytes each). */
    byte[][] bytes(Purpose purpose, long step, long first, int rows) {
        TokenSource.Split split = purpose == Purpose.EVAL_VAL ? TokenSource.Split.VAL : TokenSource.Split.TRAIN;
        byte[][] out = new byte[rows][blockSize + 1];
        for (int r = 0; r < rows; r++) {
            source.sample(split, sampleSeed(purpose, step, first + r), out[r]);
        }
        return out;
    }

    /** SplitMix64's finaliser. */
    static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }
}
