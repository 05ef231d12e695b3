package io.github.powerattention;

/** A failure inside the native power attention code that is not a bad argument (for example, out of memory). */
public class PowerAttentionException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public PowerAttentionException(String message, Throwable cause) {
        super(message, cause);
    }
}
