package dev.lmroute.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.ErrorInfo;
import com.google.rpc.RetryInfo;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.Optional;

/**
 * Reads the rich error details the service puts in the {@code grpc-status-details-bin} trailer: a
 * {@code google.rpc.Status} whose details hold an {@code ErrorInfo} (a stable machine {@code reason} such
 * as {@code EMPTY_PROMPT}, {@code ROUTER_NOT_FOUND}, {@code QUEUE_FULL}) and, for overload, a
 * {@code RetryInfo} (how long to wait before trying again).
 *
 * <pre>{@code
 * } catch (StatusRuntimeException e) {
 *   if (RouterErrors.reason(e).equals("ROUTER_NOT_FOUND")) { ... }
 * }
 * }</pre>
 */
public final class RouterErrors {

  private RouterErrors() {}

  /** The gRPC status code of {@code t} ({@code UNKNOWN} for a throwable that carries none). */
  public static Status.Code code(Throwable t) {
    return Status.fromThrowable(t).getCode();
  }

  /** The {@code reason} of the first {@code ErrorInfo} in the status details, or "" when there is none. */
  public static String reason(Throwable t) {
    return firstDetail(t, ErrorInfo.class).map(ErrorInfo::getReason).orElse("");
  }

  /** The server's {@code RetryInfo.retry_delay}, when it sent one. */
  public static Optional<Duration> retryDelay(Throwable t) {
    return firstDetail(t, RetryInfo.class)
        .filter(RetryInfo::hasRetryDelay)
        .map(r -> Duration.ofSeconds(r.getRetryDelay().getSeconds(), r.getRetryDelay().getNanos()))
        .filter(d -> !d.isNegative());
  }

  private static <T extends com.google.protobuf.Message> Optional<T> firstDetail(Throwable t, Class<T> type) {
    com.google.rpc.Status status = StatusProto.fromThrowable(t);
    if (status == null) {
      return Optional.empty();
    }
    for (Any detail : status.getDetailsList()) {
      if (detail.is(type)) {
        try {
          return Optional.of(detail.unpack(type));
        } catch (InvalidProtocolBufferException e) {
          return Optional.empty(); // a malformed detail is treated as absent
        }
      }
    }
    return Optional.empty();
  }
}
