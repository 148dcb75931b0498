package dev.lmroute.client;

import io.grpc.StatusRuntimeException;
import java.time.Duration;

/** Told before each retry, e.g. to log or count them; runs on the calling thread, so keep it quick. */
@FunctionalInterface
public interface RetryListener {

  /**
   * @param method the RPC, e.g. "Score"
   * @param failedAttempts attempts made so far
   * @param error why the last attempt failed (UNAVAILABLE or RESOURCE_EXHAUSTED)
   * @param wait how long the client now waits before the next attempt
   */
  void onRetry(String method, int failedAttempts, StatusRuntimeException error, Duration wait);

  /** Does nothing. */
  RetryListener NONE = (method, failedAttempts, error, wait) -> {};
}
