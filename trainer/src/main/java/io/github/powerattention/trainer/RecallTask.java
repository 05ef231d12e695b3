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
    private static final int RECORD = 6;       // "ab=12 " or "ab?12 "
    private static final long VAL_SALT = 0x5DEECE66DL;

    @Override
    public void sample(Split split, long sampleSeed, byte[] out) {
        SplittableRandom rnd = new SplittableRandom(split == Split.TRAIN ? sampleSeed : sampleSeed ^ VAL_SALT);
        int records = (out.length + RECORD - 1) / RECORD;
        int pairs = Math.max(1, Math.min(26 * 26, records / 2));
        int[] keys = new int[26 * 26];
        for (int i = 0; i < keys.length; i++) {
            keys[i] = i;
        }
        for (int i = 0; i < pairs; i++) {               // partial Fisher-Yates: unique keys
            int j = i + rnd.nextInt(keys.length - i);
            int tmp = keys[i];
            keys[i] = keys[j];
            keys[j] = tmp;
        }
        int[] values = new int[pairs];
        StringBuilder s = new StringBuilder(out.length + 2 * RECORD);
        // start at a random phase so that no byte position is special
        for (int i = 0; i < pairs; i++) {
            values[i] = rnd.nextInt(100);
            record(s, keys[i], '=', values[i]);
        }
        while (s.length() < out.length + RECORD) {
            int i = rnd.nextInt(pairs);
            record(s, keys[i], '?', values[i]);
        }
        byte[] text = s.toString().getBytes(StandardCharsets.US_ASCII);
        System.arraycopy(text, 0, out, 0, out.length);
    }

    private static void record(StringBuilder s, int key, char op, int value) {
        s.append((char) ('a' + key / 26)).append((char) ('a' + key % 26)).append(op)
                .append((char) ('0' + value / 10)).append((char) ('0' + value % 10)).append(' ');
    }

    /** True where target {@code y[j]} is an answer digit (one or two bytes after a '?'), given inputs {@code x}. */
    static boolean isAnswer(byte[] x, int j) {
        return x[j] == '?' || (j > 0 && x[j - 1] == '?');
    }

    @Override
    public String describe() {
        return "embedded long-range recall task (key=value definitions, then key?value queries; no files)";
    }
}
