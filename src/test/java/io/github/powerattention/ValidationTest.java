package io.github.powerattention;

import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.randn;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.github.powerattention.internal.power_attention;
import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.Tensor;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * One test per bad input: the exception type and the whole message (argument, expected, actual). The tensor checks
 * live in C++ and reach Java through the facade; scalar options are checked by the builder with the same wording,
 * and by C++ as well (tested through the raw binding).
 */
class ValidationTest {
    private PointerScope scope;
    private Tensor q, k, v, logG;

    @BeforeEach
    void inputs() {
        scope = new PointerScope();
        q = randn(2, 128, 4, 64);
        k = randn(2, 128, 4, 64);
        v = randn(2, 128, 4, 32);
        logG = randn(2, 128, 4);
    }

    @AfterEach
    void release() {
        scope.close();
    }

    private static void assertArgument(String message, Runnable call) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, call::run);
        assertEquals(message, e.getMessage());
    }


    @Test
    void keyHeadDimension() {
        assertArgument("power_full: K must have shape [b, t, h, d] = [2, 128, 4, 64], got [2, 128, 4, 32]",
                () -> PowerAttention.powerFull(q, randn(2, 128, 4, 32), v));
    }

    @Test
    void keyLength() {
        assertArgument("power_full: K must have shape [b, t, h, d] = [2, 128, 4, 64], got [2, 100, 4, 64]",
                () -> PowerAttention.powerFull(q, randn(2, 100, 4, 64), v));
    }

    @Test
    void valueShape() {
        assertArgument("power_full: V must have shape [b, t, h, e] = [2, 128, 4, 32], got [2, 128, 2, 32]",
                () -> PowerAttention.powerFull(q, k, randn(2, 128, 2, 32)));
    }

    @Test
    void queryRank() {
        assertArgument("power_full: Q must have 4 dimensions [b, t, hq, d], got 3 dimensions [128, 4, 64]",
                () -> PowerAttention.powerFull(randn(128, 4, 64), k, v));
    }

    @Test
    void keyRank() {
        assertArgument("power_full: K must have 4 dimensions [b, t, h, d], got 2 dimensions [128, 64]",
                () -> PowerAttention.powerFull(q, randn(128, 64), v));
    }

    @Test
    void queryHeadsMultipleOfKeyHeads() {
        assertArgument("power_full: the number of query heads hq = 6 must be a multiple of the number of "
                        + "key/value heads h = 4",
                () -> PowerAttention.powerFull(randn(2, 128, 6, 64), k, v));
    }

    @Test
    void sharedDtype() {
        assertArgument("power_full: Q, K and V must share one dtype, got Q Float, K Double, V Float",
                () -> PowerAttention.powerFull(q, k.to(ScalarType.Double), v));
    }

    @Test
    void unsupportedDtype() {
        Tensor qi = q.to(ScalarType.Int), ki = k.to(ScalarType.Int), vi = v.to(ScalarType.Int);
        assertArgument("power_full: Q must have dtype float32, float64, bfloat16 or float16, got Int",
                () -> PowerAttention.powerFull(qi, ki, vi));
    }

    @Test
    void gateShape() {
        assertArgument("power_full: log_G must have shape [b, t, h] = [2, 128, 4], got [2, 128, 1]",
                () -> PowerAttention.powerFull(q, k, v, randn(2, 128, 1), PowerAttentionOptions.defaults()));
    }

    @Test
    void gateRank() {
        assertArgument("power_full: log_G must have 3 dimensions [b, t, h], got 4 dimensions [2, 128, 4, 1]",
                () -> PowerAttention.powerFull(q, k, v, randn(2, 128, 4, 1), PowerAttentionOptions.defaults()));
    }

    @Test
    void gateDtype() {
        assertArgument("power_full: log_G must have a floating dtype, got Long",
                () -> PowerAttention.powerFull(q, k, v, logG.to(ScalarType.Long), PowerAttentionOptions.defaults()));
    }

    @Test
    void emptySequence() {
        assertArgument("power_full: Q must have b, t, hq, d >= 1, got [2, 0, 4, 64]",
                () -> PowerAttention.powerFull(randn(2, 0, 4, 64), randn(2, 0, 4, 64), randn(2, 0, 4, 32)));
    }

    @Test
    void degreeInBuilder() {
        assertArgument("power_full: deg must be >= 1, got 0", () -> PowerAttentionOptions.builder().degree(0).build());
    }

    @Test
    void chunkSizeInBuilder() {
        assertArgument("power_full: chunk_size must be >= 1, got 0",
                () -> PowerAttentionOptions.builder().chunkSize(0).build());
    }

    @Test
    void scaleInBuilder() {
        assertArgument("power_full: scale must be finite and nonzero, got NaN",
                () -> PowerAttentionOptions.builder().scale(Double.NaN).build());
        assertArgument("power_full: scale must be finite and nonzero, got 0.0",
                () -> PowerAttentionOptions.builder().scale(0).build());
        assertArgument("power_full: scale must be finite and nonzero, got Infinity",
                () -> PowerAttentionOptions.builder().scale(Double.POSITIVE_INFINITY).build());
    }

    @Test
    void scalarChecksInNativeCode() {
        RuntimeException deg = assertThrows(RuntimeException.class,
                () -> power_attention.power_full_flat(q, k, v, new Tensor(), 0, false, 0, false, 0));
        assertTrue(deg.getMessage().startsWith("power_full: deg must be >= 1, got 0"), deg.getMessage());
        RuntimeException chunk = assertThrows(RuntimeException.class,
                () -> power_attention.power_full_flat(q, k, v, new Tensor(), 2, false, 0, true, -3));
        assertTrue(chunk.getMessage().startsWith("power_full: chunk_size must be >= 1, got -3"), chunk.getMessage());
        RuntimeException scale = assertThrows(RuntimeException.class,
                () -> power_attention.power_full_flat(q, k, v, new Tensor(), 2, true, 0, false, 0));
        assertTrue(scale.getMessage().startsWith("power_full: scale must be finite and nonzero, got 0"), scale.getMessage());
    }

    @Test
    void nullTensor() {
        NullPointerException e = assertThrows(NullPointerException.class, () -> PowerAttention.powerFull(q, null, v));
        assertEquals("power_full: K must not be null", e.getMessage());
    }

    @Test
    void nullOptions() {
        NullPointerException e = assertThrows(NullPointerException.class,
                () -> PowerAttention.powerFull(q, k, v, logG, null));
        assertEquals("power_full: options must not be null (PowerAttentionOptions.defaults())", e.getMessage());
    }

    @Test
    void releasedGates() {
        Tensor released = randn(2, 128, 4);
        released.close();
        assertArgument("power_full: log_G is a released tensor (null native pointer)",
                () -> PowerAttention.powerFull(q, k, v, released, PowerAttentionOptions.defaults()));
    }

    @Test
    void nullState() {
        NullPointerException c = assertThrows(NullPointerException.class,
                () -> PowerAttention.continueFrom(null, q, k, v, logG, PowerAttentionOptions.defaults()));
        assertEquals("power_full: continuing from a state needs a state (prefill makes the first one)",
                c.getMessage());
        NullPointerException d = assertThrows(NullPointerException.class, () -> PowerAttention.decodeStep(null,
                q.select(1, 0), k.select(1, 0), v.select(1, 0), null, PowerAttentionOptions.defaults()));
        assertEquals("power_full: a decode step needs a state (prefill makes the first one)", d.getMessage());
    }

    @Test
    void statefulCallsNameTheArgument() {
        PowerAttentionOptions o = PowerAttentionOptions.builder().chunkSize(32).build();
        assertArgument("power_full: K must have shape [b, t, h, d] = [2, 128, 4, 64], got [2, 128, 4, 32]",
                () -> PowerAttention.prefill(q, randn(2, 128, 4, 32), v, logG, o));
        try (PowerAttentionState state = PowerAttentionState.zeros(2, 4, 64, 32, 2)) {
            assertArgument("power_full: log_G must have shape [b, t, h] = [2, 128, 4], got [2, 128, 1]",
                    () -> PowerAttention.continueFrom(state, q, k, v, randn(2, 128, 1), o));
            assertArgument("power_full: log_G must have shape [b, h] = [2, 4], got [2, 1]",
                    () -> PowerAttention.decodeStep(state, q.select(1, 0), k.select(1, 0), v.select(1, 0),
                            randn(2, 1), o));
            assertArgument("power_full: Q must have 3 dimensions [b, hq, d], got 4 dimensions [2, 128, 4, 64]",
                    () -> PowerAttention.decodeStep(state, q, k.select(1, 0), v.select(1, 0), null, o));
        }
        try (PowerAttentionState wrong = PowerAttentionState.zeros(2, 4, 64, 16, 2)) {
            assertArgument("power_full: state S must have shape [b, h, D, e] = [2, 4, 2080, 32], got [2, 4, 2080, 16]",
                    () -> PowerAttention.decodeStep(wrong, q.select(1, 0), k.select(1, 0), v.select(1, 0), null, o));
        }
        try (PowerAttentionState degree3 = PowerAttentionState.zeros(2, 4, 64, 32, 3)) {
            // a state made for another degree than the options': D differs
            assertArgument("power_full: state S must have shape [b, h, D, e] = [2, 4, 2080, 32], got [2, 4, 45760, 32]",
                    () -> PowerAttention.decodeStep(degree3, q.select(1, 0), k.select(1, 0), v.select(1, 0), null, o));
        }
    }

    @Test
    void undefinedTensor() {
        assertArgument("power_full: V must be a tensor [b, t, h, e], got an undefined tensor",
                () -> PowerAttention.powerFull(q, k, new Tensor()));
    }

    @Test
    void unaffordableState() {
        // d = 64, deg 4: D = 766,480; 8 heads x 64 chunks of states is about 1.5 TiB
        Tensor q4 = randn(1, 4096, 8, 64), k4 = randn(1, 4096, 8, 64), v4 = randn(1, 4096, 8, 64);
        q4.requires_grad_(true);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> PowerAttention.powerFull(
                q4, k4, v4, PowerAttentionOptions.builder().degree(4).chunkSize(64).build()));
        String m = e.getMessage();
        assertTrue(m.startsWith("power_full: the chunked form with d = 64, deg = 4 has state dimension "
                + "D = C(d + deg - 1, deg) = 766480 and needs about "), m);
        assertTrue(m.contains("Options: the quadratic form (no chunk_size), a larger chunk_size, a smaller head "
                + "dimension d or a lower degree"), m);
    }

    @Test
    void stateDimArguments() {
        assertArgument("power_full: deg must be >= 1, got 0", () -> PowerAttention.stateDim(64, 0));
        assertArgument("power_full: head_dim must be >= 1, got 0", () -> PowerAttention.stateDim(0, 2));
    }

    @Test
    void nativeErrorsAreNotArgumentErrors() {
        // an error that is not one of our checks keeps its native message, as PowerAttentionException
        RuntimeException e = PowerAttention.translate(new RuntimeException("boom\nException raised from x"));
        assertTrue(e instanceof PowerAttentionException);
        assertEquals("boom", e.getMessage());
    }
}
