package dev.lmroute.client;

import io.grpc.Deadline;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.TimeUnit;
import java.util.function.DoubleSupplier;
import java.util.function.Function;

/**
 * Runs one blocking call under a {@link RetryPolicy} and one deadline that covers every attempt and
 * every wait. The sleeper and the random source are parameters so the loop is tested without a server
 * or real sleeping.
 */
final class Retrier {

  /** Waits for a duration; the real one is {@code Thread.sleep}. */
  interface Sleeper {
    void sleep(Duration d) throws InterruptedException;
  }

  static final Sleeper THREAD_SLEEP = d -> TimeUnit.NANOSECONDS.sleep(d.toNanos());

  /**
   * The least time left of the deadline in which a retry is begun: with less it could only end
   * DEADLINE_EXCEEDED, and the caller is better told why the last attempt was refused.
   */
  static final Duration MIN_ATTEMPT = Duration.ofMillis(10);

  private final RetryPolicy policy;
  private final Sleeper sleeper;
  private final DoubleSupplier unitRandom;
  private final RetryListener listener;

  Retrier(RetryPolicy policy, Sleeper sleeper, DoubleSupplier unitRandom, RetryListener listener) {
    this.policy = Objects.requireNonNull(policy, "policy");
    this.sleeper = Objects.requireNonNull(sleeper, "sleeper");
    this.unitRandom = Objects.requireNonNull(unitRandom, "unitRandom");
    this.listener = Objects.requireNonNull(listener, "listener");
  }

  RetryPolicy policy() {
    return policy;
  }

  /**
   * Calls {@code attempt} (which must apply the deadline it is given to its RPC) until it returns, fails
   * with a code that is not retryable, runs out of attempts, or would have to wait past the deadline;
   * then the last error is thrown as it came. {@code method} names the RPC for the listener.
   */
  <T> T call(String method, Deadline deadline, Function<Deadline, T> attempt) {
    int failed = 0;
    while (true) {
      try {
        return attempt.apply(deadline);
      } catch (StatusRuntimeException e) {
        failed++;
        if (failed >= policy.maxAttempts() || !RetryPolicy.isRetryable(e.getStatus())) {
          throw e;
        }
        Duration wait = policy.delay(failed, RouterErrors.retryDelay(e).orElse(null), unitRandom.getAsDouble());
        // compared as Durations: a server's delay of centuries overflows nanoseconds in a long
        if (wait.plus(MIN_ATTEMPT).compareTo(left(deadline)) >= 0) {
          throw e; // waiting would leave the retry no time: the caller gets the server's answer, not ours
        }
        listener.onRetry(method, failed, e, wait);
        try {
          sleeper.sleep(wait);
        } catch (InterruptedException ie) {
          Thread.currentThread().interrupt();
          StatusRuntimeException cancelled =
              Status.CANCELLED.withDescription("interrupted while waiting to retry").withCause(ie).asRuntimeException();
          cancelled.addSuppressed(e);
          throw cancelled;
        }
        if (left(deadline).compareTo(MIN_ATTEMPT) < 0) {
          throw e; // the sleep overran
        }
      }
    }
  }

  private static Duration left(Deadline deadline) {
    return Duration.ofNanos(deadline.timeRemaining(TimeUnit.NANOSECONDS));
  }
}
