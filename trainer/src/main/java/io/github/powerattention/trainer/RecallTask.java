package io.github.powerattention.trainer;

import java.nio.charset.StandardCharsets;
import java.util.SplittableRandom;

/**
 * The embedded default dataset: a synthetic multi-query associative recall task (the MQAR of the Zoology paper,
 * in bytes), generated on the fly (no files, any block size). Each sample first defines key/value pairs, then
 * repeats keys defined earlier, each followed by its value:
 * <pre>
 *   qd47 mx02 ab91 ... mx02 qd47 ab91 mx02 ...
 * </pre>
 * Keys are lowercase letters (unique within a sample), values digits, records separated by a space. The
 * definitions are noise to a model; the values of the queries that follow are fully determined by a definition up to
 * {@code blockSize} bytes back, so they can only be predicted by recalling it (an induction head: find the earlier
 * occurrence of the current key, copy what followed it). A softmax model can look the pair up; power attention has to
 * keep it in its state of {@code D x hd} numbers per head, so recall accuracy (reported at each evaluation) shows
 * what the state size (the degree) buys.
 */
public final class RecallTask implements TokenSource {
    private static final long VAL_SALT = 0x5DEECE66DL;

    private final int keyLetters;
    private final int valueDigits;
    private final int pairs;
    private final int record;       // "qd47 "

    /** The hard setting: two-letter keys, two-digit values, definitions filling half the context. */
    public RecallTask() {
        this(2, 2, 0);
    }

    /**
     * @param keyLetters  1 or 2 lowercase letters per key (26 or 676 keys)
     * @param valueDigits 1 or 2 digits per value
     * @param pairs       key/value pairs defined per sample; 0: as many as fill half the context
     */
    public RecallTask(int keyLetters, int valueDigits, int pairs) {
        if (keyLetters < 1 || keyLetters > 2) {
            throw new UsageException("--recall_key_letters expects 1 or 2, got " + keyLetters);
        }
        if (valueDigits < 1 || valueDigits > 2) {
            throw new UsageException("--recall_value_digits expects 1 or 2, got " + valueDigits);
        }
        int keys = keyCount(keyLetters);
        if (pairs < 0 || pairs > keys) {
            throw new UsageException("--recall_pairs expects 0 (half the context) to " + keys + " (every "
                    + keyLetters + "-letter key), got " + pairs);
        }
        this.keyLetters = keyLetters;
        this.valueDigits = valueDigits;
        this.pairs = pairs;
        this.record = recordLength(keyLetters, valueDigits);
    }

    static int keyCount(int keyLetters) {
        return keyLetters == 1 ? 26 : 26 * 26;
    }

    /** Bytes of one record: the key, the value, a space. */
    static int recordLength(int keyLetters, int valueDigits) {
        return keyLetters + valueDigits + 1;
    }

    /** Pairs defined in a sample of {@code sampleLength} bytes (blockSize + 1). */
    int pairsIn(int sampleLength) {
        int records = (sampleLength + record - 1) / record;
        return pairs > 0 ? pairs : Math.max(1, Math.min(keyCount(keyLetters), records / 2));
    }

    @Override
    public void sample(Split split, long sampleSeed, byte[] out) {
        SplittableRandom rnd = new SplittableRandom(split == Split.TRAIN ? sampleSeed : sampleSeed ^ VAL_SALT);
        int[] keys = new int[keyCount(keyLetters)];
        int n = pairsIn(out.length);
        for (int i = 0; i < keys.length; i++) {
            keys[i] = i;
        }
        for (int i = 0; i < n; i++) {               // partial Fisher-Yates: unique keys
            int j = i + rnd.nextInt(keys.length - i);
            int tmp = keys[i];
            keys[i] = keys[j];
            keys[j] = tmp;
        }
        int[] values = new int[n];
        int valueRange = valueDigits == 1 ? 10 : 100;
        StringBuilder s = new StringBuilder(out.length + 2 * record);
        for (int i = 0; i < n; i++) {
            values[i] = rnd.nextInt(valueRange);
            record(s, keys[i], values[i]);
        }
        while (s.length() < out.length) {
            int i = rnd.nextInt(n);
            record(s, keys[i], values[i]);
        }
        byte[] text = s.toString().getBytes(StandardCharsets.US_ASCII);
        System.arraycopy(text, 0, out, 0, out.length);
    }

    private void record(StringBuilder s, int key, int value) {
        if (keyLetters == 2) {
            s.append((char) ('a' + key / 26));
        }
        s.append((char) ('a' + key % 26));
        if (valueDigits == 2) {
            s.append((char) ('0' + value / 10));
        }
        s.append((char) ('0' + value % 10)).append(' ');
    }

    /**
     * Which digit of a query's value target {@code sample[j + 1]} is (0 the first, 1 the second), or -1 when it is
     * not an answer digit (a definition, a key, a space), in a sample of {@code sampleLength} bytes.
     */
    int answerPlace(int sampleLength, int j) {
        int target = j + 1;
        int place = target % record - keyLetters;
        return target / record >= pairsIn(sampleLength) && place >= 0 && place < valueDigits ? place : -1;
    }

    /**
     * The guesses of a model that knows the format but recalls nothing: for every answer digit of {@code sample}
     * ({@code blockSize + 1} bytes), the digit that is most frequent at that place among the sample's definitions
     * (the smallest on a tie), indexed by input position; -1 elsewhere. Its accuracy is the floor that recall must
     * beat: about 10% with many pairs, more with few (with 4 pairs at least 25%).
     */
    int[] noRecallGuesses(byte[] sample) {
        int n = pairsIn(sample.length);
        int[][] counts = new int[valueDigits][10];
        for (int r = 0; r < n; r++) {
            for (int k = 0; k < valueDigits; k++) {
                int at = r * record + keyLetters + k;
                if (at < sample.length - 1) {       // the inputs' definitions
                    counts[k][sample[at] - '0']++;
                }
            }
        }
        int[] guess = new int[sample.length - 1];
        for (int j = 0; j < guess.length; j++) {
            int place = answerPlace(sample.length, j);
            guess[j] = -1;
            if (place >= 0) {
                int best = 0;
                for (int d = 1; d < 10; d++) {
                    if (counts[place][d] > counts[place][best]) {
                        best = d;
                    }
                }
                guess[j] = '0' + best;
            }
        }
        return guess;
    }

    /** Answer counts of a sample: answers, answers predicted right, answers the no-recall guess gets right. */
    record Score(long answers, long correct, long floorHits) {}

    /**
     * Scores one sample: {@code sample} is its {@code blockSize + 1} bytes (inputs then the last target),
     * {@code predicted[offset + j]} the predicted byte at input position {@code j} (the argmax of the logits for
     * target {@code sample[j + 1]}). Only answer digits count.
     */
    Score score(byte[] sample, long[] predicted, int offset) {
        int[] floor = noRecallGuesses(sample);
        long answers = 0;
        long correct = 0;
        long floorHits = 0;
        for (int j = 0; j < floor.length; j++) {
            if (floor[j] >= 0) {
                int target = sample[j + 1] & 0xFF;
                answers++;
                correct += predicted[offset + j] == target ? 1 : 0;
                floorHits += floor[j] == target ? 1 : 0;
            }
        }
        return new Score(answers, correct, floorHits);
    }

    @Override
    public String describe() {
        return String.format(java.util.Locale.ROOT, "embedded associative recall task (%s key/value definitions, "
                + "%d-letter keys, %d-digit values, then queries of defined keys; no files)",
                pairs > 0 ? Integer.toString(pairs) : "half-context", keyLetters, valueDigits);
    }
}
