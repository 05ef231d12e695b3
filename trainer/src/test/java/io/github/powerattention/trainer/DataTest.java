package io.github.powerattention.trainer;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.Random;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Byte corpora against plain file reads; the recall task against its own definition; batches' determinism. */
class DataTest {
    @Test
    void folderIsOneStreamOfItsFilesInPathOrder(@TempDir Path dir) throws Exception {
        Random r = new Random(1);
        byte[][] parts = {new byte[3000], new byte[1], new byte[517], new byte[4096]};
        Files.createDirectories(dir.resolve("b"));
        Path[] paths = {dir.resolve("a.txt"), dir.resolve("b/c.txt"), dir.resolve("b/d.txt"), dir.resolve("e.txt")};
        ByteArrayOutputStream all = new ByteArrayOutputStream();
        for (int i = 0; i < parts.length; i++) {
            r.nextBytes(parts[i]);
            Files.write(paths[i], parts[i]);
            all.write(parts[i]);
        }
        Files.write(dir.resolve(".hidden"), new byte[] {1, 2, 3});
        byte[] expected = all.toByteArray();
        ByteCorpus c = new ByteCorpus(dir, 32);
        assertEquals(expected.length, c.length());
        assertEquals((long) Math.floor(expected.length * 0.9), c.trainEnd());
        for (int trial = 0; trial < 200; trial++) {
            int len = 1 + r.nextInt(600);
            int pos = r.nextInt(expected.length - len + 1);
            byte[] got = new byte[len];
            c.read(pos, got);
            assertArrayEquals(Arrays.copyOfRange(expected, pos, pos + len), got, "bytes at " + pos + " (+" + len + ")");
        }
        // samples come from their split and are windows of the stream
        byte[] s = new byte[33];
        for (long seed = 0; seed < 50; seed++) {
            c.sample(TokenSource.Split.VAL, seed, s);
            assertTrue(indexOf(expected, s) >= c.trainEnd(), "a validation sample outside the validation split");
            c.sample(TokenSource.Split.TRAIN, seed, s);
            int at = indexOf(expected, s);
            assertTrue(at >= 0 && at + s.length <= c.trainEnd(), "a training sample outside the training split");
        }
    }

    @Test
    void tooSmallOrMissingCorpusIsAClearError(@TempDir Path dir) throws Exception {
        Path small = dir.resolve("small.txt");
        Files.write(small, new byte[100]);
        UsageException e = assertThrows(UsageException.class, () -> new ByteCorpus(small, 64));
        assertEquals("--dataset: " + small.toAbsolutePath() + " holds 100 bytes in 1 file(s); the train (90%) and "
                + "validation (10%) splits each need at least block_size + 1 = 65 bytes, so at least 650 bytes in all: "
                + "use a larger corpus or a smaller --block_size", e.getMessage());
        Path missing = dir.resolve("nope.txt");
        e = assertThrows(UsageException.class, () -> new ByteCorpus(missing, 64));
        assertTrue(e.getMessage().startsWith("--dataset: no such file or folder: " + missing.toAbsolutePath()),
                e.getMessage());
    }

    @Test
    void theNoRecallFloorGuessesTheMostFrequentDefinedDigit() {
        RecallTask few = new RecallTask(1, 1, 4);
        byte[] sample = "a3 b3 c7 d1 a3 c7 b3 d1 ".getBytes(StandardCharsets.US_ASCII);
        int[] g = few.noRecallGuesses(sample);
        assertEquals(sample.length - 1, g.length);
        for (int j = 0; j < g.length; j++) {
            // the answers are the digits of the last four records: targets 13, 16, 19, 22
            boolean answer = j == 12 || j == 15 || j == 18 || j == 21;
            assertEquals(answer ? '3' : -1, g[j], "input position " + j);
        }
        // on average over samples: at least 1 in 4 with 4 pairs, near 1 in 10 with many
        assertTrue(floorAccuracy(few, 128) >= 0.25, "4 pairs: " + floorAccuracy(few, 128));
        double many = floorAccuracy(new RecallTask(), 1024);
        assertTrue(many > 0.08 && many < 0.2, "half-context pairs: " + many);
    }

    @Test
    void recallScoreCountsOnlyAnswerDigitsAgainstAHandCount() {
        // inputs "a3 b3 c7 d1 a3 c7 b3 d1" and the last target ' '; the answers are predicted at the queries' keys
        byte[] one = "a3 b3 c7 d1 a3 c7 b3 d1 ".getBytes(StandardCharsets.US_ASCII);
        long[] predicted = new long[one.length - 1];
        for (int j = 0; j < predicted.length; j++) {
            predicted[j] = one[j + 1];      // right everywhere ...
        }
        predicted[12] = '4';                // ... except the answer of the query a (3)
        predicted[15] = '3';                // and of c (7)
        predicted[0] = '9';                 // a definition's digit: not an answer, not counted
        RecallTask.Score s = new RecallTask(1, 1, 4).score(one, predicted, 0);
        assertEquals(4, s.answers());
        assertEquals(2, s.correct());       // b 3, d 1
        assertEquals(2, s.floorHits());     // the floor guesses 3 (defined twice): right for a and b

        // two-digit values, a prediction array holding another sample first, the sample cut inside an answer
        byte[] two = "ab12 cd34 cd34 ab1".getBytes(StandardCharsets.US_ASCII);
        long[] both = new long[100 + two.length - 1];
        Arrays.fill(both, '1');
        int at = 100;
        both[at + 11] = '3';                // the query cd's first digit: right
        both[at + 12] = '3';                // its second digit (4): wrong
        both[at + 16] = '1';                // ab's first digit, the last target: right
        RecallTask.Score t = new RecallTask(2, 2, 2).score(two, both, at);
        assertEquals(3, t.answers());
        assertEquals(2, t.correct());
        // floor: first digits 1, 3 (a tie: the smallest, 1); second digits 2, 4 (2): it hits only ab's first digit
        assertEquals(1, t.floorHits());
    }

    private static double floorAccuracy(RecallTask t, int blockSize) {
        int hits = 0;
        int answers = 0;
        for (long seed = 0; seed < 200; seed++) {
            byte[] b = new byte[blockSize + 1];
            t.sample(TokenSource.Split.TRAIN, seed, b);
            int[] g = t.noRecallGuesses(b);
            for (int j = 0; j < blockSize; j++) {
                if (g[j] >= 0) {
                    answers++;
                    hits += g[j] == b[j + 1] ? 1 : 0;
                }
            }
        }
        return (double) hits / answers;
    }

    @Test
    void recallQueriesRepeatTheirDefinitions() {
        RecallTask t = new RecallTask();
        Pattern rec = Pattern.compile("([a-z]{2})([0-9]{2}) ");
        for (int blockSize : new int[] {64, 256, 1024}) {
            for (long seed = 0; seed < 20; seed++) {
                byte[] b = new byte[blockSize + 1];
                t.sample(TokenSource.Split.TRAIN, seed, b);
                String text = new String(b, StandardCharsets.US_ASCII);
                Map<String, String> defs = new HashMap<>();
                Matcher m = rec.matcher(text);
                int records = 0;
                int queries = 0;
                while (m.find()) {
                    assertEquals(records * 5, m.start(), "records are back to back in " + text);
                    records++;
                    String value = defs.get(m.group(1));
                    if (value == null) {
                        assertEquals(0, queries, "a definition after the first query in " + text);
                        defs.put(m.group(1), m.group(2));
                    } else {
                        assertEquals(value, m.group(2), "answer of " + m.group(1) + " in " + text);
                        queries++;
                    }
                }
                // half the context: (blockSize + 1) / 5 records, rounded up, half of them definitions
                int all = (blockSize + 1 + 4) / 5;
                assertEquals(all / 2, defs.size(), "definitions in " + text);
                assertTrue(queries >= all - all / 2 - 1, "too few queries: " + text);
            }
        }
        byte[] a = new byte[65];
        byte[] v = new byte[65];
        t.sample(TokenSource.Split.TRAIN, 5, a);
        t.sample(TokenSource.Split.VAL, 5, v);
        assertNotEquals(new String(a, StandardCharsets.US_ASCII), new String(v, StandardCharsets.US_ASCII));
    }

    @Test
    void batchesDependOnlyOnSeedStepAndGlobalIndex() {
        Batches b = new Batches(new RecallTask(), 42, 32);
        byte[][] whole = b.bytes(Batches.Purpose.TRAIN_STEP, 3, 0, 8);
        byte[][] secondHalf = b.bytes(Batches.Purpose.TRAIN_STEP, 3, 4, 4);
        for (int i = 0; i < 4; i++) {
            assertArrayEquals(whole[4 + i], secondHalf[i]);
        }
        assertNotEquals(Arrays.toString(whole[0]), Arrays.toString(b.bytes(Batches.Purpose.TRAIN_STEP, 4, 0, 1)[0]));
        assertNotEquals(Arrays.toString(whole[0]), Arrays.toString(
                new Batches(new RecallTask(), 43, 32).bytes(Batches.Purpose.TRAIN_STEP, 3, 0, 1)[0]));
    }

    private static int indexOf(byte[] hay, byte[] needle) {
        String h = new String(hay, StandardCharsets.ISO_8859_1);
        return h.indexOf(new String(needle, StandardCharsets.ISO_8859_1));
    }
}
