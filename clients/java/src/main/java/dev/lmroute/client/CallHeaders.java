package dev.lmroute.client;

import io.grpc.CallCredentials;
import io.grpc.Metadata;
import java.util.concurrent.Executor;

/**
 * Sends {@code authorization: Bearer <token>} and {@code x-lmroute-tenant: <tenant>} with every call,
 * each when it is not null ({@link RouterClient.Builder#token}, {@link RouterClient.Builder#tenant}).
 */
final class CallHeaders extends CallCredentials {
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
  private static final Metadata.Key<String> TENANT =
      Metadata.Key.of("x-lmroute-tenant", Metadata.ASCII_STRING_MARSHALLER);
  private final String token;
  private final String tenant;

  CallHeaders(String token, String tenant) {
    this.token = token;
    this.tenant = tenant;
  }

  @Override
  public void applyRequestMetadata(RequestInfo info, Executor executor, MetadataApplier applier) {
    Metadata headers = new Metadata();
    if (token != null) {
      headers.put(AUTHORIZATION, "Bearer " + token);
    }
    if (tenant != null) {
      headers.put(TENANT, tenant);
    }
    applier.apply(headers);
  }

  /** {@code value} when it can be sent as a header value (printable ASCII, not empty), else an error naming {@code what}. */
  static String checked(String what, String value) {
    if (value == null || value.isEmpty()) {
      throw new IllegalArgumentException(what + ": must not be empty");
    }
    for (int i = 0; i < value.length(); i++) {
      char c = value.charAt(i);
      if (c < 0x20 || c > 0x7e) {
        throw new IllegalArgumentException(what + ": only printable ASCII may be sent (character " + i + " is not)");
      }
    }
    return value;
  }
}
