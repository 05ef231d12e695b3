package io.github.powerattention.trainer;

import java.nio.charset.StandardCharsets;
import java.util.SplittableRandom;

/**
 * The embedded default dataset: a synthetic long-range associative recall task, generated on the fly (no files,
 * any block size). Each sample first defines key/value pairs, then asks for keys defined earlier:
 * <pre>
 *   qd=47 mx=02 ab=91 ... | mx?02 qd?47 ab?91 mx?02 ...
 * </pre>
 * Keys are two lowercase letters (unique within a sample), values two digits. The definitions fill the first half
 * of the context and are pure noise to a model (about 1.85 nats per byte); the answers after {@code ?} are fully
 * determined by a definition up to {@code blockSize} bytes back, so they can only be predicted by recalling it.
 * A softmax model can look the pair up; power attention has to keep it in its state of {@code D x hd} numbers per
 * head, so recall accuracy (reported at each evaluation) shows what the state size (the degree) buys.
 */
public final class RecallTask implements TokenSource {
    private static final long VAL_SALT = 0x5DEECE66DL;

    private final int keyLetters;
    private final int valueDigits;
    private final int pairs;
    private final int record;       // "ab=12 " or "ab?12 "

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
        int keys = keyLetters == 1 ? 26 : 26 * 26;
        if (pairs < 0 || pairs > keys) {
            throw new UsageException("--recall_pairs expects 0 (half the context) to " + keys + " (every "
                    + keyLetters + "-letter key), got " + pairs);
        }
        this.keyLetters = keyLetters;
        this.valueDigits = valueDigits;
        this.pairs = pairs;
        this.record = keyLetters + valueDigits + 2;
    }

    @Override
    public void sample(Split split, long sampleSeed, byte[] out) {
        SplittableRandom rnd = new SplittableRandom(split == Split.TRAIN ? sampleSeed : sampleSeed ^ VAL_SALT);
        int records = (out.length + record - 1) / record;
        int[] keys = new int[keyLetters == 1 ? 26 : 26 * 26];
        int n = pairs > 0 ? pairs : Math.max(1, Math.min(keys.length, records / 2));
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
            record(s, keys[i], '=', values[i]);
        }
        while (s.length() < out.length + record) {
            int i = rnd.nextInt(n);
            record(s, keys[i], '?', values[i]);
        }
        byte[] text = s.toString().getBytes(StandardCharsets.US_ASCII);
        System.arraycopy(text, 0, out, 0, out.length);
    }

    private void record(StringBuilder s, int key, char op, int value) {
        if (keyLetters == 2) {
            s.append((char) ('a' + key / 26));
        }
        s.append((char) ('a' + key % 26)).append(op);
        if (valueDigits == 2) {
            s.append((char) ('0' + value / 10));
        }
        s.append((char) ('0' + value % 10)).append(' ');
    }

    /** True where target {@code y[j]} is an answer digit (one or two bytes after a '?'), given inputs {@code x}. */
    boolean isAnswer(byte[] x, int j) {
        return x[j] == '?' || (valueDigits == 2 && j > 0 && x[j - 1] == '?');
    }

    /**
     * The guesses of a model that knows the format but recalls nothing: for every answer digit of {@code x} (one
     * sample's inputs), the digit that is most frequent at that place among the sample's definitions (the smallest on
     * a tie); -1 elsewhere. Its accuracy is the floor that recall must beat: about 10% with many pairs, more with few
     * (with 4 pairs at least 25%).
     */
    int[] noRecallGuesses(byte[] x) {
        int[][] counts = new int[valueDigits][10];
        for (int j = 0; j + valueDigits < x.length; j++) {
            if (x[j] == '=') {
                for (int k = 0; k < valueDigits; k++) {
                    int digit = x[j + 1 + k] - '0';
                    if (digit >= 0 && digit <= 9) {
                        counts[k][digit]++;
                    }
                }
            }
        }
        int[] guess = new int[x.length];
        for (int j = 0; j < x.length; j++) {
            guess[j] = -1;
            if (isAnswer(x, j)) {
                int place = x[j] == '?' ? 0 : 1;
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

    @Override
    public String describe() {
        return String.format(java.util.Locale.ROOT, "embedded long-range recall task (%s key=value definitions, "
                + "%d-letter keys, %d-digit values, then key?value queries; no files)",
                pairs > 0 ? Integer.toString(pairs) : "half-context", keyLetters, valueDigits);
    }
}
