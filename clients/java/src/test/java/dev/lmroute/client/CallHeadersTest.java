package dev.lmroute.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.grpc.CallCredentials;
import io.grpc.Metadata;
import io.grpc.Status;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;

class CallHeadersTest {

  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
  private static final Metadata.Key<String> TENANT =
      Metadata.Key.of("x-lmroute-tenant", Metadata.ASCII_STRING_MARSHALLER);

  private static Metadata applied(CallHeaders headers) {
    AtomicReference<Metadata> got = new AtomicReference<>();
    headers.applyRequestMetadata(null, Runnable::run, new CallCredentials.MetadataApplier() {
      @Override
      public void apply(Metadata m) {
        got.set(m);
      }

      @Override
      public void fail(Status status) {
        throw new AssertionError("failed: " + status);
      }
    });
    return got.get();
  }

  @Test
  void sendsTheTokenAndTheTenantEachWhenGiven() {
    Metadata both = applied(new CallHeaders("s3cret", "team-a"));
    assertEquals("Bearer s3cret", both.get(AUTHORIZATION));
    assertEquals("team-a", both.get(TENANT));
    Metadata tenantOnly = applied(new CallHeaders(null, "team-b"));
    assertNull(tenantOnly.get(AUTHORIZATION));
    assertEquals("team-b", tenantOnly.get(TENANT));
  }

  @Test
  void theBuilderRefusesValuesThatCannotBeSentAsHeaders() {
    var b = RouterClient.newBuilder("127.0.0.1:1");
    assertEquals("tenant: must not be empty", assertThrows(IllegalArgumentException.class, () -> b.tenant("")).getMessage());
    assertEquals("tenant: only printable ASCII may be sent (character 4 is not)",
        assertThrows(IllegalArgumentException.class, () -> b.tenant("team\n")).getMessage());
    assertEquals("token: must not be empty", assertThrows(IllegalArgumentException.class, () -> b.token("")).getMessage());
    assertThrows(IllegalArgumentException.class, () -> b.token("caf\u00e9"));
  }
}
