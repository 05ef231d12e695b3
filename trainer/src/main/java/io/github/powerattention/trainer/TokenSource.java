package io.github.powerattention.trainer;

/**
 * Byte-level token streams for training and evaluation. A sample is {@code blockSize + 1} consecutive tokens
 * (input = the first blockSize, target = the last blockSize), chosen by a seed: the same seed gives the same sample
 * on every machine, which makes batches a pure function of (run seed, step, sample index) and resume exact.
 */
public interface TokenSource {
    enum Split { TRAIN, VAL }

    /** Fills {@code out} (length blockSize + 1) with sample number {@code sampleSeed} of {@code split}. */
    void sample(Split split, long sampleSeed, byte[] out);

    /** A one-line description for the log. */
    String describe();
}
