package io.github.powerattention;

import java.util.Objects;
import java.util.OptionalDouble;
import java.util.OptionalLong;

/**
 * The settings of {@link PowerAttention}'s calls: the degree, the scale and the form (quadratic, or chunked with a
 * chunk size). Immutable and holding no tensor, so one object serves every layer, every call and every thread.
 * The log gates are an input of each call, not an option.
 *
 * <pre>{@code
 * PowerAttentionOptions options = PowerAttentionOptions.builder()
 *         .degree(2)         // p >= 1, default 2
 *         .chunkSize(128)    // optional: the chunked linear-cost form; absent: the quadratic form
 *         .build();
 * Tensor y = PowerAttention.powerFull(q, k, v, logG, options);   // logG [b, t, h] or null
 * }</pre>
 *
 * {@link Builder#build()} checks every value (with the op's own messages); tensor shapes are checked by the op.
 */
public final class PowerAttentionOptions {
    /** The default degree: 2, the workhorse of the paper. */
    public static final int DEFAULT_DEGREE = 2;

    private static final PowerAttentionOptions DEFAULTS = builder().build();

    private final int degree;
    private final OptionalDouble scale;
    private final OptionalLong chunkSize;

    private PowerAttentionOptions(Builder b) {
        this.degree = b.degree;
        this.scale = b.scale;
        this.chunkSize = b.chunkSize;
    }

    /** Degree 2, the default scale {@code 1 / sqrt(d)}, the quadratic form. */
    public static PowerAttentionOptions defaults() {
        return DEFAULTS;
    }

    /** A builder starting from {@link #defaults()}. */
    public static Builder builder() {
        return new Builder();
    }

    /** A builder holding this object's values, to derive other options from it. */
    public Builder toBuilder() {
        Builder b = new Builder();
        b.degree = degree;
        b.scale = scale;
        b.chunkSize = chunkSize;
        return b;
    }

    /** The power p. */
    public int degree() {
        return degree;
    }

    /** The scale inside the power; empty means {@code 1 / sqrt(d)}. */
    public OptionalDouble scale() {
        return scale;
    }

    /** The chunk length of the chunked form; empty means the quadratic (attention) form. */
    public OptionalLong chunkSize() {
        return chunkSize;
    }

    @Override
    public String toString() {
        return "PowerAttentionOptions{degree=" + degree
                + ", scale=" + (scale.isPresent() ? scale.getAsDouble() : "1/sqrt(d)")
                + ", chunkSize=" + (chunkSize.isPresent() ? chunkSize.getAsLong() : "none (quadratic)") + "}";
    }

    @Override
    public boolean equals(Object o) {
        if (!(o instanceof PowerAttentionOptions)) {
            return false;
        }
        PowerAttentionOptions x = (PowerAttentionOptions) o;
        return degree == x.degree && scale.equals(x.scale) && chunkSize.equals(x.chunkSize);
    }

    @Override
    public int hashCode() {
        return Objects.hash(degree, scale, chunkSize);
    }

    /** Builds {@link PowerAttentionOptions}; {@link #build()} validates. Not thread-safe; what it builds is. */
    public static final class Builder {
        private int degree = DEFAULT_DEGREE;
        private OptionalDouble scale = OptionalDouble.empty();
        private OptionalLong chunkSize = OptionalLong.empty();

        private Builder() {}

        /** The power p >= 1. Even powers give positive weights; odd powers are signed (see the README). */
        public Builder degree(int degree) {
            this.degree = degree;
            return this;
        }

        /**
         * The scale inside the power, finite and nonzero; default {@code 1 / sqrt(d)}. Every weight of a row carries
         * {@code scale^p}, so the output is the same for {@code scale} and {@code -scale}.
         */
        public Builder scale(double scale) {
            this.scale = OptionalDouble.of(scale);
            return this;
        }

        /** Back to the default scale {@code 1 / sqrt(d)}. */
        public Builder defaultScale() {
            this.scale = OptionalDouble.empty();
            return this;
        }

        /** The chunked linear-cost form with chunks of {@code chunkSize >= 1} tokens. */
        public Builder chunkSize(long chunkSize) {
            this.chunkSize = OptionalLong.of(chunkSize);
            return this;
        }

        /** The quadratic (attention) form: no chunking. */
        public Builder quadratic() {
            this.chunkSize = OptionalLong.empty();
            return this;
        }

        /**
         * The options; the op checks the same values with the same messages, so these fail where they are made.
         *
         * @throws IllegalArgumentException naming the bad value
         */
        public PowerAttentionOptions build() {
            if (degree < 1) {
                throw new IllegalArgumentException("power_full: deg must be >= 1, got " + degree);
            }
            if (scale.isPresent() && !(Double.isFinite(scale.getAsDouble()) && scale.getAsDouble() != 0)) {
                throw new IllegalArgumentException(
                        "power_full: scale must be finite and nonzero, got " + scale.getAsDouble());
            }
            if (chunkSize.isPresent() && chunkSize.getAsLong() < 1) {
                throw new IllegalArgumentException(
                        "power_full: chunk_size must be >= 1, got " + chunkSize.getAsLong());
            }
            return new PowerAttentionOptions(this);
        }
    }
}
