package io.github.powerattention;

import static org.bytedeco.pytorch.global.torch.ScalarType;
import static org.bytedeco.pytorch.global.torch.isfinite;
import static org.bytedeco.pytorch.global.torch.log_sigmoid;
import static org.bytedeco.pytorch.global.torch.randn;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import org.bytedeco.pytorch.Scalar;
import org.bytedeco.pytorch.Tensor;
import org.bytedeco.pytorch.TensorOptions;

/** Shared test helpers: SPEC §7 inputs, tolerances and error reports. */
final class Fixtures {
    private Fixtures() {}

    /** fp64 tensor options, new each call: a shared native object would be freed by the first PointerScope. */
    static TensorOptions f64() {
        return new TensorOptions(ScalarType.Double);
    }

    /** N(0, 1) in fp64, rounded through {@code dtype} so that oracle and op see the same numbers. */
    static Tensor normal(ScalarType dtype, long... shape) {
        return randn(shape, f64()).to(dtype).to(ScalarType.Double);
    }

    /** SPEC §7 gates: logsigmoid(N(0, 1) + 3). */
    static Tensor gates(long b, long t, long h) {
        return log_sigmoid(randn(new long[] {b, t, h}, f64()).add(new Scalar(3.0)));
    }

    /** A fresh leaf of dtype {@code dtype} holding x's values, requiring grad. */
    static Tensor leaf(Tensor x, ScalarType dtype) {
        return x.to(dtype).detach().requires_grad_(true);
    }

    static double forwardTolerance(ScalarType dtype) {
        if (dtype == ScalarType.Double) {
            return 1e-10;
        }
        return dtype == ScalarType.Float ? 1e-5 : 5e-3;
    }

    static double gradientTolerance(ScalarType dtype) {
        if (dtype == ScalarType.Double) {
            return 1e-9;
        }
        return dtype == ScalarType.Float ? 1e-4 : 1e-2;
    }

    static String dtypeName(ScalarType dtype) {
        switch (dtype) {
            case Double: return "f64";
            case Float: return "f32";
            case BFloat16: return "bf16";
            case Half: return "f16";
            default: return dtype.toString();
        }
    }

    /** Relative L2 error of {@code x} against {@code ref}, in fp64. */
    static double relativeError(Tensor x, Tensor ref) {
        Tensor a = x.to(ScalarType.Double);
        Tensor r = ref.to(ScalarType.Double);
        return a.sub(r).norm().item_double() / Math.max(r.norm().item_double(), 1e-300);
    }

    static double maxAbsError(Tensor x, Tensor ref) {
        return x.to(ScalarType.Double).sub(ref.to(ScalarType.Double)).abs().max().item_double();
    }

    static void assertFinite(Tensor x, String what) {
        assertTrue(x.defined(), what + " is undefined");
        long finite = isfinite(x).sum().item_long();
        assertTrue(finite == x.numel(), what + " has " + (x.numel() - finite) + " NaN or Inf values");
    }

    /**
     * Fails with both errors printed when the relative L2 error exceeds {@code tolerance}.
     */
    static void assertClose(Tensor x, Tensor ref, double tolerance, String what) {
        assertFinite(x, what);
        double rel = relativeError(x, ref);
        if (!(rel <= tolerance)) {
            fail(String.format("%s: relative L2 error %.3e > %.1e (max abs error %.3e)", what, rel, tolerance,
                    maxAbsError(x, ref)));
        }
    }

    /** For values that are zero mathematically: every element's magnitude at most {@code tolerance}. */
    static void assertZero(Tensor x, double tolerance, String what) {
        assertFinite(x, what);
        double max = x.to(ScalarType.Double).abs().max().item_double();
        if (!(max <= tolerance)) {
            fail(String.format("%s: expected zero, max abs value %.3e > %.1e", what, max, tolerance));
        }
    }

}
