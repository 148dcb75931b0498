package dev.lmroute.client.cli;

import dev.lmroute.client.RouterClient;
import io.grpc.ChannelCredentials;
import io.grpc.InsecureChannelCredentials;
import io.grpc.TlsChannelCredentials;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.Set;

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
   * {@code b} with what the options ask for: its channel credentials (plain text without {@code --ca}), the
   * bearer token and the tenant.
   */
  static RouterClient.Builder configure(RouterClient.Builder b, Args a, Map<String, String> env)
      throws Args.UsageError {
    ChannelCredentials base = InsecureChannelCredentials.create();
    boolean cert = a.get("cert").isPresent();
    if (cert != a.get("key").isPresent() || (cert && a.get("ca").isEmpty())) {
      throw new Args.UsageError("--cert and --key go together, with --ca");
    }
    if (a.get("ca").isPresent()) {
      String ca = a.get("ca").get();
      try {
        if (cert) {
          checkKeyForm(a.get("key").get()); // before any file is parsed: the one message that names the fix
        }
        TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder().trustManager(new File(ca));
        if (cert) {
          tls.keyManager(new File(a.get("cert").get()), new File(a.get("key").get()));
        }
        base = tls.build();
      } catch (IOException | RuntimeException e) {
        throw new Args.UsageError("--ca / --cert / --key: " + e.getMessage());
      }
    }
    b.credentials(base);
    if (a.get("token-env").isPresent()) {
      String name = a.get("token-env").get();
      String token = env.get(name);
      if (token == null || token.isEmpty()) {
        throw new Args.UsageError("--token-env: environment variable " + name + " is not set");
      }
      try {
        b.token(token);
      } catch (IllegalArgumentException e) {
        throw new Args.UsageError("--token-env " + name + ": " + e.getMessage());
      }
    }
    if (a.get("tenant").isPresent()) {
      try {
        b.tenant(a.get("tenant").get());
      } catch (IllegalArgumentException e) {
        throw new Args.UsageError("--" + e.getMessage());
      }
    }
    return b;
  }

  /**
   * Refuses, naming the file and the fix, a private key gRPC Java cannot read: it reads unencrypted PKCS#8
   * ("BEGIN PRIVATE KEY") only, and says of any other form just "does not contain valid private key".
   */
  static void checkKeyForm(String keyFile) throws IOException, Args.UsageError {
    String pem = Files.readString(Path.of(keyFile), StandardCharsets.ISO_8859_1);
    String convert = "; convert it: openssl pkcs8 -topk8 -nocrypt -in " + keyFile + " -out KEY.pk8.pem";
    if (pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || pem.contains("Proc-Type: 4,ENCRYPTED")) {
      throw new Args.UsageError("--key " + keyFile + ": an encrypted private key (not supported: give it unencrypted,"
          + " PKCS#8)" + convert);
    }
    for (String form : new String[] {"RSA", "EC", "DSA"}) {
      if (pem.contains("-----BEGIN " + form + " PRIVATE KEY-----")) {
        throw new Args.UsageError("--key " + keyFile + ": a traditional " + form + " key (BEGIN " + form
            + " PRIVATE KEY); gRPC Java reads PKCS#8 keys (BEGIN PRIVATE KEY) only" + convert);
      }
    }
  }
}
