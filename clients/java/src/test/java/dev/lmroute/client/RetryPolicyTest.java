package dev.lmroute.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import java.time.Duration;
import org.junit.jupiter.api.Test;

class RetryPolicyTest {

  private final RetryPolicy policy = RetryPolicy.newBuilder()
      .initialBackoff(Duration.ofMillis(50)).maxBackoff(Duration.ofMillis(500)).multiplier(2.0).jitter(0.2).build();

  @Test
  void backoffDoublesUpToTheCap() {
    long[] expectedMs = {50, 100, 200, 400, 500, 500};
    for (int i = 0; i < expectedMs.length; i++) {
      assertEquals(Duration.ofMillis(expectedMs[i]), policy.baseBackoff(i + 1), "after " + (i + 1) + " failures");
    }
  }

  @Test
  void jitterSpreadsTheWaitByAtMostTheFraction() {
    assertEquals(Duration.ofMillis(80), policy.delay(2, null, 0.0)); // 100 ms - 20 %
    assertEquals(Duration.ofMillis(100), policy.delay(2, null, 0.5));
    Duration top = policy.delay(2, null, Math.nextDown(1.0));
    assertTrue(top.compareTo(Duration.ofMillis(119)) > 0 && top.compareTo(Duration.ofMillis(120)) <= 0, top.toString());
  }

  @Test
  void serverRetryDelayIsWaitedInsteadSpreadUpwardsOnly() {
    // as Go and Python: delay x (1 + jitter x u), whatever the computed backoff (shorter or longer)
    assertEquals(Duration.ofSeconds(3), policy.delay(1, Duration.ofSeconds(3), 0.0)); // above the 500 ms cap
    assertEquals(Duration.ofMillis(3300), policy.delay(1, Duration.ofSeconds(3), 0.5));
    assertEquals(Duration.ofMillis(11), policy.delay(4, Duration.ofMillis(10), 0.5)); // backoff would be 400 ms
    Duration top = policy.delay(1, Duration.ofSeconds(1), Math.nextDown(1.0));
    assertTrue(top.compareTo(Duration.ofMillis(1199)) > 0 && top.compareTo(Duration.ofMillis(1200)) <= 0, top.toString());
  }

  @Test
  void aNegativeServerDelayIsNoneAndACenturiesOneIsKept() {
    assertEquals(Duration.ofMillis(100), policy.delay(2, Duration.ofMillis(-5), 0.5));
    Duration ages = Duration.ofSeconds(100_000_000_000L); // too long for nanoseconds in a long
    assertEquals(ages, policy.delay(1, ages, 0.9));
  }

  @Test
  void jitterOneIsAcceptedAndTheSpreadIsCappedAtMaxBackoff() {
    RetryPolicy wide = RetryPolicy.newBuilder()
        .initialBackoff(Duration.ofMillis(400)).maxBackoff(Duration.ofMillis(500)).jitter(1.0).build();
    assertEquals(Duration.ZERO, wide.delay(1, null, 0.0));
    assertEquals(Duration.ofMillis(500), wide.delay(1, null, 0.9)); // 400 ms x 1.8, capped as Go and Python do
    assertEquals(Duration.ofMillis(880), wide.delay(1, Duration.ofMillis(800), 0.1)); // the server's: not capped
  }

  @Test
  void onlyOverloadAndUnavailableAreRetried() {
    for (Status.Code code : Status.Code.values()) {
      boolean expected = code == Status.Code.UNAVAILABLE || code == Status.Code.RESOURCE_EXHAUSTED;
      assertEquals(expected, RetryPolicy.isRetryable(code), code.name());
    }
    assertFalse(RetryPolicy.isRetryable(Status.Code.DEADLINE_EXCEEDED));
  }

  @Test
  void aMessageOverTheSizeLimitIsNotRetried() {
    assertTrue(RetryPolicy.isRetryable(Status.RESOURCE_EXHAUSTED.withDescription("queue full")));
    assertTrue(RetryPolicy.isRetryable(Status.UNAVAILABLE));
    assertFalse(RetryPolicy.isRetryable(
        Status.RESOURCE_EXHAUSTED.withDescription("gRPC message exceeds maximum size 4194304: 5000000")));
    assertFalse(RetryPolicy.isRetryable(
        Status.RESOURCE_EXHAUSTED.withDescription("Received message larger than max (5000000 vs. 4194304)")));
    assertFalse(RetryPolicy.isRetryable(Status.INVALID_ARGUMENT));
  }

  @Test
  void noneMeansOneAttempt() {
    assertEquals(1, RetryPolicy.none().maxAttempts());
    assertEquals(4, RetryPolicy.defaults().maxAttempts());
  }

  @Test
  void badSettingsAreRejectedWithTheFieldName() {
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
        () -> RetryPolicy.newBuilder().maxAttempts(0).build());
    assertEquals("maxAttempts: must be >= 1 (got 0)", e.getMessage());
    e = assertThrows(IllegalArgumentException.class, () -> RetryPolicy.newBuilder().jitter(1.5).build());
    assertEquals("jitter: must be in [0, 1] (got 1.5)", e.getMessage());
    e = assertThrows(IllegalArgumentException.class, () -> RetryPolicy.newBuilder().jitter(Double.NaN).build());
    assertEquals("jitter: must be in [0, 1] (got NaN)", e.getMessage());
    e = assertThrows(IllegalArgumentException.class, () -> RetryPolicy.newBuilder().multiplier(0.5).build());
    assertEquals("multiplier: must be a finite number >= 1 (got 0.5)", e.getMessage());
    e = assertThrows(IllegalArgumentException.class,
        () -> RetryPolicy.newBuilder().initialBackoff(Duration.ofSeconds(5)).maxBackoff(Duration.ofSeconds(1)).build());
    assertTrue(e.getMessage().startsWith("maxBackoff: must be >= initialBackoff"), e.getMessage());
    e = assertThrows(IllegalArgumentException.class,
        () -> RetryPolicy.newBuilder().initialBackoff(Duration.ZERO).build());
    assertEquals("initialBackoff: must be > 0 (got PT0S)", e.getMessage());
  }
}
