package dev.lmroute.client.cli;

import io.grpc.CallCredentials;
import io.grpc.ChannelCredentials;
import io.grpc.CompositeChannelCredentials;
import io.grpc.InsecureChannelCredentials;
import io.grpc.Metadata;
import io.grpc.TlsChannelCredentials;
import java.io.File;
import java.io.IOException;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.Executor;

/**
 * The connection options every command takes: {@code --ca FILE} (TLS, trusting that CA certificate),
 * {@code --cert FILE --key FILE} (mTLS: the client certificate chain and its PKCS#8 private key) and
 * {@code --token-env NAME} (a bearer token read from that environment variable, sent with every call)
 * and {@code --tenant NAME} (the caller's tenant, named in every call's {@code x-lmroute-tenant}).
 */
final class Credentials {

  static final Set<String> OPTIONS = Set.of("ca", "cert", "key", "token-env", "tenant");

  private Credentials() {}

  /**
   * Sends {@code authorization: Bearer <token>} and {@code x-lmroute-tenant: <tenant>} with every call,
   * each when it is not null.
   */
  static final class CallMetadata extends CallCredentials {
    private static final Metadata.Key<String> AUTHORIZATION =
        Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private static final Metadata.Key<String> TENANT =
        Metadata.Key.of("x-lmroute-tenant", Metadata.ASCII_STRING_MARSHALLER);
    private final String token;
    private final String tenant;

    CallMetadata(String token, String tenant) {
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
  }

  /** The channel credentials the options ask for (plain text without {@code --ca}). */
  static ChannelCredentials of(Args a, Map<String, String> env) throws Args.UsageError {
    ChannelCredentials base = InsecureChannelCredentials.create();
    boolean cert = a.get("cert").isPresent();
    if (cert != a.get("key").isPresent() || (cert && a.get("ca").isEmpty())) {
      throw new Args.UsageError("--cert and --key go together, with --ca");
    }
    if (a.get("ca").isPresent()) {
      String ca = a.get("ca").get();
      try {
        TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder().trustManager(new File(ca));
        if (cert) {
          tls.keyManager(new File(a.get("cert").get()), new File(a.get("key").get()));
        }
        base = tls.build();
      } catch (IOException | RuntimeException e) {
        throw new Args.UsageError("--ca / --cert / --key: " + e.getMessage());
      }
    }
    String token = null;
    if (a.get("token-env").isPresent()) {
      String name = a.get("token-env").get();
      token = env.get(name);
      if (token == null || token.isEmpty()) {
        throw new Args.UsageError("--token-env: environment variable " + name + " is not set");
      }
    }
    String tenant = a.get("tenant").orElse(null);
    if (token == null && tenant == null) {
      return base;
    }
    return CompositeChannelCredentials.create(base, new CallMetadata(token, tenant));
  }
}
