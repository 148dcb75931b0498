package dev.lmroute.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Any;
import com.google.rpc.Code;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import io.grpc.Deadline;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/** The retry loop with a clock that only moves when the loop sleeps; errors are real gRPC statuses. */
class RetrierTest {

  /** A ticker driven by the fake sleeper, so deadlines and waits share one clock. */
  private static final class FakeTime extends Deadline.Ticker implements Retrier.Sleeper {
    long nanos;
    final List<Duration> sleeps = new ArrayList<>();

    @Override
    public long nanoTime() {
      return nanos;
    }

    @Override
    public void sleep(Duration d) {
      sleeps.add(d);
      nanos += d.toNanos();
    }

    Deadline after(Duration d) {
      return Deadline.after(d.toNanos(), TimeUnit.NANOSECONDS, this);
    }
  }

  private final FakeTime time = new FakeTime();
  private final RetryPolicy policy = RetryPolicy.newBuilder()
      .maxAttempts(4).initialBackoff(Duration.ofMillis(50)).maxBackoff(Duration.ofSeconds(2)).jitter(0.2).build();
  private final List<String> told = new ArrayList<>();
  private final Retrier retrier = new Retrier(policy, time, () -> 0.5, // 0.5 = no jitter offset
      (method, failed, error, wait) -> told.add(method + " " + failed + " " + RouterErrors.reason(error) + " " + wait.toMillis()));

  /** A failure as the server sends it: google.rpc.Status with ErrorInfo and, optionally, RetryInfo. */
  static StatusRuntimeException serverError(Code code, String reason, Duration retryDelay) {
    com.google.rpc.Status.Builder st = com.google.rpc.Status.newBuilder().setCode(code.getNumber()).setMessage(reason)
        .addDetails(Any.pack(ErrorInfo.newBuilder().setReason(reason).setDomain("lmroute").build()));
    if (retryDelay != null) {
      st.addDetails(Any.pack(RetryInfo.newBuilder().setRetryDelay(com.google.protobuf.Duration.newBuilder()
          .setSeconds(retryDelay.getSeconds()).setNanos(retryDelay.getNano())).build()));
    }
    return StatusProto.toStatusRuntimeException(st.build());
  }

  /** A call that fails with the given errors in turn, then answers "ok". */
  private static final class Script {
    final List<StatusRuntimeException> failures;
    int attempts;

    Script(StatusRuntimeException... failures) {
      this.failures = List.of(failures);
    }

    String attempt(Deadline d) {
      attempts++;
      if (attempts <= failures.size()) {
        throw failures.get(attempts - 1);
      }
      return "ok";
    }
  }

  @Test
  void retriesUnavailableWithGrowingBackoffThenSucceeds() {
    Script s = new Script(serverError(Code.UNAVAILABLE, "QUEUE_TIMEOUT", null),
        serverError(Code.UNAVAILABLE, "QUEUE_TIMEOUT", null));
    assertEquals("ok", retrier.call("Score", time.after(Duration.ofSeconds(10)), s::attempt));
    assertEquals(3, s.attempts);
    assertEquals(List.of(Duration.ofMillis(50), Duration.ofMillis(100)), time.sleeps);
    assertEquals(List.of("Score 1 QUEUE_TIMEOUT 50", "Score 2 QUEUE_TIMEOUT 100"), told);
  }

  @Test
  void honoursTheServersRetryDelay() {
    Script s = new Script(serverError(Code.RESOURCE_EXHAUSTED, "QUEUE_FULL", Duration.ofMillis(750)));
    assertEquals("ok", retrier.call("Score", time.after(Duration.ofSeconds(10)), s::attempt));
    assertEquals(List.of(Duration.ofMillis(825)), time.sleeps); // 750 ms x (1 + 0.2 jitter x 0.5)
  }

  @Test
  void nonRetryableErrorSurfacesAtOnce() {
    StatusRuntimeException bad = serverError(Code.INVALID_ARGUMENT, "EMPTY_PROMPT", null);
    Script s = new Script(bad);
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
        () -> retrier.call("Score", time.after(Duration.ofSeconds(10)), s::attempt));
    assertSame(bad, e);
    assertEquals(1, s.attempts);
    assertEquals(List.of(), time.sleeps);
    assertEquals(List.of(), told);
    assertEquals("EMPTY_PROMPT", RouterErrors.reason(e));
  }

  @Test
  void givesUpAfterMaxAttemptsWithTheLastError() {
    StatusRuntimeException last = serverError(Code.UNAVAILABLE, "NOT_READY", null);
    Script s = new Script(serverError(Code.UNAVAILABLE, "NOT_READY", null),
        serverError(Code.RESOURCE_EXHAUSTED, "QUEUE_FULL", null), serverError(Code.UNAVAILABLE, "NOT_READY", null),
        last, serverError(Code.UNAVAILABLE, "NEVER_REACHED", null));
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
        () -> retrier.call("Score", time.after(Duration.ofSeconds(10)), s::attempt));
    assertSame(last, e);
    assertEquals(4, s.attempts);
    assertEquals(List.of(Duration.ofMillis(50), Duration.ofMillis(100), Duration.ofMillis(200)), time.sleeps);
  }

  @Test
  void doesNotWaitPastTheDeadline() {
    StatusRuntimeException busy = serverError(Code.RESOURCE_EXHAUSTED, "QUEUE_FULL", Duration.ofSeconds(1));
    Script s = new Script(busy);
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
        () -> retrier.call("Score", time.after(Duration.ofMillis(500)), s::attempt));
    assertSame(busy, e);
    assertEquals(1, s.attempts);
    assertEquals(List.of(), time.sleeps);
  }

  @Test
  void aServersDelayOfCenturiesIsTheServersAnswerNotAnOverflow() {
    StatusRuntimeException busy = serverError(Code.RESOURCE_EXHAUSTED, "FEEDBACK_RATE", Duration.ofSeconds(100_000_000_000L));
    Script s = new Script(busy);
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
        () -> retrier.call("Feedback", time.after(Duration.ofSeconds(10)), s::attempt));
    assertSame(busy, e); // not an ArithmeticException from Duration.toNanos
    assertEquals(1, s.attempts);
  }

  @Test
  void noRetryBegunWithUnderTenMillisecondsLeft() {
    StatusRuntimeException busy = serverError(Code.RESOURCE_EXHAUSTED, "QUEUE_FULL", Duration.ofMillis(495));
    Script s = new Script(busy);
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
        () -> retrier.call("Score", time.after(Duration.ofMillis(500)), s::attempt));
    assertSame(busy, e); // a retry with 5 ms left could only end DEADLINE_EXCEEDED
    assertEquals(1, s.attempts);
    assertEquals(List.of(), time.sleeps);
  }

  @Test
  void oneAttemptWhenRetriesAreOff() {
    Retrier off = new Retrier(RetryPolicy.none(), time, () -> 0.5, RetryListener.NONE);
    Script s = new Script(serverError(Code.UNAVAILABLE, "DRAINING", null));
    assertThrows(StatusRuntimeException.class, () -> off.call("Score", time.after(Duration.ofSeconds(10)), s::attempt));
    assertEquals(1, s.attempts);
  }

  @Test
  void interruptedWaitEndsAsCancelledAndKeepsTheFlag() {
    Retrier interrupted = new Retrier(policy, d -> {
      throw new InterruptedException("test");
    }, () -> 0.5, RetryListener.NONE);
    Script s = new Script(serverError(Code.UNAVAILABLE, "QUEUE_TIMEOUT", null));
    try {
      StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
          () -> interrupted.call("Score", time.after(Duration.ofSeconds(10)), s::attempt));
      assertEquals(Status.Code.CANCELLED, e.getStatus().getCode());
      assertEquals(1, e.getSuppressed().length);
      assertTrue(Thread.currentThread().isInterrupted());
    } finally {
      Thread.interrupted(); // clear the flag for the next test
    }
  }

  @Test
  void aShutDownChannelIsNotRetried() {
    for (String said : List.of("Channel shutdown invoked", "Channel shutdownNow invoked")) {
      Script s = new Script(Status.UNAVAILABLE.withDescription(said).asRuntimeException());
      StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
          () -> retrier.call("Route", time.after(Duration.ofSeconds(10)), s::attempt));
      assertEquals(said, e.getStatus().getDescription());
      assertEquals(1, s.attempts);
    }
    assertEquals(List.of(), time.sleeps);
  }
}
