package dev.lmroute.client;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.google.rpc.Code;
import io.grpc.Status;
import java.time.Duration;
import java.util.Optional;
import org.junit.jupiter.api.Test;

class RouterErrorsTest {

  @Test
  void readsReasonAndRetryDelayFromTheStatusDetails() {
    var e = RetrierTest.serverError(Code.RESOURCE_EXHAUSTED, "QUEUE_FULL", Duration.ofMillis(50));
    assertEquals(Status.Code.RESOURCE_EXHAUSTED, RouterErrors.code(e));
    assertEquals("QUEUE_FULL", RouterErrors.reason(e));
    assertEquals(Optional.of(Duration.ofMillis(50)), RouterErrors.retryDelay(e));
  }

  @Test
  void plainStatusHasNoReasonAndNoDelay() {
    var e = Status.NOT_FOUND.withDescription("unknown service").asRuntimeException();
    assertEquals("", RouterErrors.reason(e));
    assertEquals(Optional.empty(), RouterErrors.retryDelay(e));
    assertEquals(Status.Code.UNKNOWN, RouterErrors.code(new IllegalStateException("not grpc")));
  }
}
