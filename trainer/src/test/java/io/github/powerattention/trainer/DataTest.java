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
        byte[] x = "a=3 b=3 c=7 d=1 a?3 c?7 b?3 d?1 ".getBytes(StandardCharsets.US_ASCII);
        int[] g = few.noRecallGuesses(x);
        int answers = 0;
        for (int j = 0; j < x.length; j++) {
            if (x[j] == '?') {
                assertEquals('3', g[j], "position " + j);
                answers++;
            } else {
                assertEquals(-1, g[j], "position " + j);
            }
        }
        assertEquals(4, answers);
        // on average over samples: at least 1 in 4 with 4 pairs, near 1 in 10 with many
        assertTrue(floorAccuracy(few, 128) >= 0.25, "4 pairs: " + floorAccuracy(few, 128));
        double many = floorAccuracy(new RecallTask(), 1024);
        assertTrue(many > 0.08 && many < 0.2, "half-context pairs: " + many);
    }

    private static double floorAccuracy(RecallTask t, int blockSize) {
        int hits = 0;
        int answers = 0;
        for (long seed = 0; seed < 200; seed++) {
            byte[] b = new byte[blockSize + 1];
            t.sample(TokenSource.Split.TRAIN, seed, b);
            byte[] x = java.util.Arrays.copyOf(b, blockSize);
            int[] g = t.noRecallGuesses(x);
            for (int j = 0; j < blockSize; j++) {
                if (t.isAnswer(x, j)) {
                    answers++;
                    hits += g[j] == b[j + 1] ? 1 : 0;
                }
            }
        }
        return (double) hits / answers;
    }

    @Test
    void recallAnswersRepeatTheirDefinitions() {
        RecallTask t = new RecallTask();
        Pattern def = Pattern.compile("([a-z]{2})=([0-9]{2}) ");
        Pattern query = Pattern.compile("([a-z]{2})\\?([0-9]{2}) ");
        for (int blockSize : new int[] {64, 256, 1024}) {
            for (long seed = 0; seed < 20; seed++) {
                byte[] b = new byte[blockSize + 1];
                t.sample(TokenSource.Split.TRAIN, seed, b);
                String text = new String(b, StandardCharsets.US_ASCII);
                Map<String, String> defs = new HashMap<>();
                Matcher m = def.matcher(text);
                while (m.find()) {
                    assertEquals(null, defs.put(m.group(1), m.group(2)), "key defined twice in " + text);
                }
                assertTrue(defs.size() >= blockSize / 12 - 1, "too few definitions: " + text);
                Matcher q = query.matcher(text);
                int queries = 0;
                while (q.find()) {
                    assertEquals(defs.get(q.group(1)), q.group(2), "answer of " + q.group(1) + " in " + text);
                    queries++;
                }
                assertTrue(queries >= blockSize / 12 - 2, "too few queries: " + text);
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
