package dev.lmroute.client;

import io.grpc.Status;
import java.time.Duration;
import java.util.Objects;
import java.util.Set;

/**
 * When and how long {@link RouterClient} waits before trying a call again.
 *
 * <p>Only {@code UNAVAILABLE} (server not ready, draining, queue timeout, connection refused) and
 * {@code RESOURCE_EXHAUSTED} (queue full; not a message over gRPC's size limit) are retried, but not the
 * {@code UNAVAILABLE} of a channel that was shut down (it stays down); every other code surfaces at once. Before attempt
 * {@code n + 1} the client waits {@code min(maxBackoff, initialBackoff * multiplier^(n-1))}, spread by
 * {@code +-jitter} (a fraction) so that many clients refused at once do not come back at once, and capped at
 * {@code maxBackoff}. When the server sends a {@code google.rpc.RetryInfo} delay, that delay is waited
 * instead, spread upwards only by {@code delay x (1 + jitter x u)} (never earlier than the server asked),
 * as the Go and Python clients do. The call's deadline
 * covers every attempt and every wait: a wait that would pass it is not taken.
 *
 * <p>Immutable; build with {@link #newBuilder()}, or take {@link #defaults()} / {@link #none()}.
 */
public final class RetryPolicy {

  private static final Set<Status.Code> RETRYABLE =
      Set.of(Status.Code.UNAVAILABLE, Status.Code.RESOURCE_EXHAUSTED);

  private final int maxAttempts;
  private final Duration initialBackoff;
  private final Duration maxBackoff;
  private final double multiplier;
  private final double jitter;

  private RetryPolicy(Builder b) {
    if (b.maxAttempts < 1) {
      throw new IllegalArgumentException("maxAttempts: must be >= 1 (got " + b.maxAttempts + ")");
    }
    requirePositive("initialBackoff", b.initialBackoff);
    requirePositive("maxBackoff", b.maxBackoff);
    if (b.maxBackoff.compareTo(b.initialBackoff) < 0) {
      throw new IllegalArgumentException(
          "maxBackoff: must be >= initialBackoff (got " + b.maxBackoff + " < " + b.initialBackoff + ")");
    }
    if (!(b.multiplier >= 1.0) || Double.isInfinite(b.multiplier)) {
      throw new IllegalArgumentException("multiplier: must be a finite number >= 1 (got " + b.multiplier + ")");
    }
    if (!(b.jitter >= 0.0 && b.jitter <= 1.0)) { // 1: a wait anywhere in [0, 2 x base], as Go and Python take
      throw new IllegalArgumentException("jitter: must be in [0, 1] (got " + b.jitter + ")");
    }
    this.maxAttempts = b.maxAttempts;
    this.initialBackoff = b.initialBackoff;
    this.maxBackoff = b.maxBackoff;
    this.multiplier = b.multiplier;
    this.jitter = b.jitter;
  }

  private static void requirePositive(String name, Duration d) {
    Objects.requireNonNull(d, name);
    if (d.isNegative() || d.isZero()) {
      throw new IllegalArgumentException(name + ": must be > 0 (got " + d + ")");
    }
  }

  /** 4 attempts, 50 ms doubling to at most 2 s, +-20 % jitter. */
  public static RetryPolicy defaults() {
    return newBuilder().build();
  }

  /** One attempt: errors surface as they are (what the conformance mode uses). */
  public static RetryPolicy none() {
    return newBuilder().maxAttempts(1).build();
  }

  public static Builder newBuilder() {
    return new Builder();
  }

  public int maxAttempts() {
    return maxAttempts;
  }

  public Duration initialBackoff() {
    return initialBackoff;
  }

  public Duration maxBackoff() {
    return maxBackoff;
  }

  public double multiplier() {
    return multiplier;
  }

  public double jitter() {
    return jitter;
  }

  /** Whether a call that failed with {@code code} may be tried again. */
  public static boolean isRetryable(Status.Code code) {
    return RETRYABLE.contains(code);
  }

  /**
   * Whether a call that failed with {@code status} may be tried again: its code is retryable and it is not
   * gRPC's refusal of a message over the size limit (the server's "Received message larger than max",
   * grpc-java's own "gRPC message exceeds maximum size", the client's own check), which the same message
   * meets again, nor the {@code UNAVAILABLE} of a channel shut down ("Channel shutdown invoked",
   * "Channel shutdownNow invoked"), which no wait brings back.
   */
  public static boolean isRetryable(Status status) {
    String description = status.getDescription();
    boolean tooLarge = status.getCode() == Status.Code.RESOURCE_EXHAUSTED && description != null
        && (description.contains("message larger than max") || description.contains("message exceeds maximum size"));
    boolean channelShutDown = status.getCode() == Status.Code.UNAVAILABLE && description != null
        && description.startsWith("Channel shutdown");
    return isRetryable(status.getCode()) && !tooLarge && !channelShutDown;
  }

  /** The backoff before attempt {@code failedAttempts + 1}, without jitter or server hint. */
  public Duration baseBackoff(int failedAttempts) {
    if (failedAttempts < 1) {
      throw new IllegalArgumentException("failedAttempts: must be >= 1 (got " + failedAttempts + ")");
    }
    double nanos = initialBackoff.toNanos() * Math.pow(multiplier, failedAttempts - 1);
    double cap = maxBackoff.toNanos();
    return Duration.ofNanos((long) Math.min(nanos, cap));
  }

  /**
   * How long to wait after {@code failedAttempts} failed attempts: the server's delay x
   * {@code (1 + jitter x unitRandom)} when it sent one, else the base backoff x
   * {@code (1 + jitter x (2 x unitRandom - 1))}, at most {@code maxBackoff} (the rule of the Go and Python
   * clients).
   *
   * @param failedAttempts attempts made so far (>= 1)
   * @param serverDelay the server's RetryInfo delay, or null when it sent none (a negative one: none)
   * @param unitRandom a number in [0, 1), e.g. {@code ThreadLocalRandom.current().nextDouble()}
   */
  public Duration delay(int failedAttempts, Duration serverDelay, double unitRandom) {
    if (!(unitRandom >= 0.0 && unitRandom < 1.0)) {
      throw new IllegalArgumentException("unitRandom: must be in [0, 1) (got " + unitRandom + ")");
    }
    if (serverDelay != null && !serverDelay.isNegative()) { // a negative delay says nothing (as in Go)
      return stretched(serverDelay, jitter * unitRandom);
    }
    double base = baseBackoff(failedAttempts).toNanos();
    double spread = Math.min(base * (1.0 + jitter * (2.0 * unitRandom - 1.0)), maxBackoff.toNanos());
    return Duration.ofNanos((long) spread);
  }

  /** The longest delay stretched by jitter: longer ones (centuries, past any deadline) are kept as they are. */
  private static final Duration LONGEST_STRETCHED = Duration.ofDays(365L * 100);

  /** {@code d} x (1 + {@code fraction}); one too long for nanoseconds in a long is returned unchanged. */
  private static Duration stretched(Duration d, double fraction) {
    if (d.compareTo(LONGEST_STRETCHED) > 0) {
      return d;
    }
    return d.plusNanos((long) (d.toNanos() * fraction));
  }

  @Override
  public String toString() {
    return "RetryPolicy{maxAttempts=" + maxAttempts + ", initialBackoff=" + initialBackoff
        + ", maxBackoff=" + maxBackoff + ", multiplier=" + multiplier + ", jitter=" + jitter + "}";
  }

  /** Builder for {@link RetryPolicy}; settings are checked in {@link #build()}. */
  public static final class Builder {
    private int maxAttempts = 4;
    private Duration initialBackoff = Duration.ofMillis(50);
    private Duration maxBackoff = Duration.ofSeconds(2);
    private double multiplier = 2.0;
    private double jitter = 0.2;

    private Builder() {}

    /** Total attempts including the first; 1 turns retries off. */
    public Builder maxAttempts(int n) {
      this.maxAttempts = n;
      return this;
    }

    /** Wait before the second attempt (before jitter). */
    public Builder initialBackoff(Duration d) {
      this.initialBackoff = d;
      return this;
    }

    /** Upper bound of the exponential part (a server RetryInfo delay may exceed it). */
    public Builder maxBackoff(Duration d) {
      this.maxBackoff = d;
      return this;
    }

    /** Growth factor of the backoff per failed attempt (>= 1). */
    public Builder multiplier(double m) {
      this.multiplier = m;
      return this;
    }

    /** Relative spread of each wait, in [0, 1]: 0.2 means +-20 % (a server's delay: + up to 20 %). */
    public Builder jitter(double j) {
      this.jitter = j;
      return this;
    }

    public RetryPolicy build() {
      return new RetryPolicy(this);
    }
  }
}
