package io.github.powerattention.trainer;

/** Bad command-line input or a missing/unusable input file: the message names the flag, what was expected and what was given. */
public final class UsageException extends RuntimeException {
    public UsageException(String message) {
        super(message);
    }
}
