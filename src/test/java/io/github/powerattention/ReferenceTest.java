package io.github.powerattention;

import static io.github.powerattention.Fixtures.assertClose;
import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.manual_seed;
import static org.junit.jupiter.api.Assertions.assertEquals;

import io.github.powerattention.internal.power_attention;
import org.bytedeco.javacpp.PointerScope;
import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.ScalarTypeOptional;
import org.bytedeco.pytorch.Tensor;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/** The library's references and the embedding phi, checked against the test oracle and against their definitions. */
class ReferenceTest {

    @ParameterizedTest(name = "d{0}-p{1}")
    @CsvSource({"1,1", "5,1", "7,2", "16,2", "5,3", "16,3", "6,4", "16,4", "3,6"})
    void embeddingReproducesPowerOfDotProduct(long d, int p) {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(d * 31 + p);
            Tensor x = Fixtures.normal(ScalarType.Double, 11, d);
            Tensor y = Fixtures.normal(ScalarType.Double, 11, d);
            Tensor px = power_attention.symmetric_power_embedding(x, p);
            Tensor py = power_attention.symmetric_power_embedding(y, p);
            assertEquals(PowerAttention.stateDim(d, p), px.size(1), "D = C(d + p - 1, p)");
            Tensor lhs = px.mul(py).sum(new long[] {1}, false, new ScalarTypeOptional());
            Tensor rhs = x.mul(y).sum(new long[] {1}, false, new ScalarTypeOptional()).pow(new Scalar(p));
            assertClose(lhs, rhs, 1e-12, "phi(x) . phi(y) vs (x . y)^p");
        }
    }

    @Test
    void stateDimensions() {
        assertEquals(2080, PowerAttention.stateDim(64, 2));
        assertEquals(45760, PowerAttention.stateDim(64, 3));
        assertEquals(766480, PowerAttention.stateDim(64, 4));
        assertEquals(64, PowerAttention.stateDim(64, 1));
        assertEquals(136, PowerAttention.stateDim(16, 2));
    }

    @ParameterizedTest(name = "p{0}-gated{1}")
    @CsvSource({"1,true", "2,true", "2,false", "3,true", "4,true"})
    void quadraticReferenceMatchesOracle(int p, boolean gated) {
        try (PointerScope scope = new PointerScope()) {
            manual_seed(p * 7 + (gated ? 1 : 0));
            Tensor q = Fixtures.normal(ScalarType.Double, 2, 33, 4, 8);
            Tensor k = Fixtures.normal(ScalarType.Double, 2, 33, 2, 8);
            Tensor v = Fixtures.normal(ScalarType.Double, 2, 33, 2, 12);
            Tensor logG = gated ? Fixtures.gates(2, 33, 2) : null;
            double scale = 0.3;
            Tensor ref = power_attention.power_full_quadratic(q, k, v, gated ? logG : new Tensor(), p, scale);
            assertClose(ref, Oracle.powerFull(q, k, v, logG, p, scale), 1e-12, "quadratic reference vs oracle");
            Tensor chunked = power_attention.power_full_chunked(q, k, v, gated ? logG : new Tensor(), p, scale, 8);
            assertClose(chunked, Oracle.powerFull(q, k, v, logG, p, scale), 1e-12, "chunked reference vs oracle");
        }
    }
}
