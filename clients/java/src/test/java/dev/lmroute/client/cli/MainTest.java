package dev.lmroute.client.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import io.grpc.Status;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.cert.CertPathBuilderException;
import java.security.cert.CertificateException;
import javax.net.ssl.SSLHandshakeException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Exit statuses and output of the CLI; no lmroute server is needed (a closed port stands for a dead one). */
class MainTest {

  private final ByteArrayOutputStream out = new ByteArrayOutputStream();
  private final ByteArrayOutputStream err = new ByteArrayOutputStream();

  private int run(String... argv) {
    return Main.run(argv, new PrintStream(out, true, StandardCharsets.UTF_8),
        new PrintStream(err, true, StandardCharsets.UTF_8));
  }

  private int runUnder(String encoding, String... argv) {
    return Main.run(argv, new PrintStream(out, true, StandardCharsets.UTF_8),
        new PrintStream(err, true, StandardCharsets.UTF_8), encoding);
  }

  private static int closedPort() throws Exception {
    try (ServerSocket s = new ServerSocket(0)) {
      return s.getLocalPort();
    }
  }

  @Test
  void badArgumentsExitTwo() {
    assertEquals(2, run());
    assertEquals(2, run("bogus"));
    assertEquals(2, run("conformance", "--addr", "127.0.0.1:1"));
    assertTrue(err.toString(StandardCharsets.UTF_8).contains("--cases: required"), err.toString());
    assertEquals(2, run("conformance", "--addr", "127.0.0.1:1", "--cases", "x.json", "--retries", "3"));
    assertEquals(2, run("route", "--router", "mf", "--threshold", "0.1", "--strong-share", "0.2", "p"));
    for (String number : new String[] {"0.5f", "0x1p-1", "NaN", "Infinity", " 0.5"}) { // parseDouble takes each
      assertEquals(2, run("route", "--addr", "127.0.0.1:1", "--router", "mf", "--threshold", number, "p"), number);
    }
    assertTrue(err.toString(StandardCharsets.UTF_8).contains("--threshold: not a number: 0.5f"));
    for (String addr : new String[] {"", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:0", ":50051", "::1:50051"}) {
      assertEquals(2, run("health", "--addr", addr), addr);
    }
    assertTrue(err.toString(StandardCharsets.UTF_8).contains("--addr '127.0.0.1:99999': expected HOST:PORT"));
  }

  @Test
  void unreadableOrInvalidCasesFileExitsTwo(@TempDir Path dir) throws Exception {
    assertEquals(2, run("conformance", "--addr", "127.0.0.1:1", "--cases", dir.resolve("missing.json").toString()));
    assertTrue(err.toString(StandardCharsets.UTF_8).contains("cannot read cases file"), err.toString());
    Path bad = Files.writeString(dir.resolve("bad.json"), "{\"cases\": [{\"id\": \"x\", \"rpc\": \"Nope\"}]}");
    assertEquals(2, run("conformance", "--addr", "127.0.0.1:1", "--cases", bad.toString()));
    assertEquals("", out.toString(StandardCharsets.UTF_8));
  }

  @Test
  void conformanceReportsErrorsAsResultsAndExitsZero(@TempDir Path dir) throws Exception {
    Path cases = Files.writeString(dir.resolve("cases.json"),
        "{\"cases\": [{\"id\": \"list\", \"rpc\": \"ListRouters\", \"timeout_ms\": 5000},"
            + " {\"id\": \"h\", \"rpc\": \"Health\", \"timeout_ms\": 5000}]}");
    assertEquals(0, run("conformance", "--addr", "127.0.0.1:" + closedPort(), "--cases", cases.toString()));
    JsonObject doc = JsonParser.parseString(out.toString(StandardCharsets.UTF_8)).getAsJsonObject();
    JsonArray results = doc.getAsJsonArray("results");
    assertEquals(2, results.size());
    for (int i = 0; i < 2; i++) {
      JsonObject r = results.get(i).getAsJsonObject();
      assertEquals(i == 0 ? "list" : "h", r.get("id").getAsString());
      assertEquals("UNAVAILABLE", r.get("code").getAsString());
      assertEquals("", r.get("reason").getAsString());
    }
  }

  @Test
  void healthOfADeadServerExitsOneAndSaysWhy() throws Exception {
    int port = closedPort();
    assertEquals(1, run("health", "--addr", "127.0.0.1:" + port, "--max-attempts", "1", "--timeout-ms", "5000"));
    String said = err.toString(StandardCharsets.UTF_8);
    assertTrue(said.startsWith("error: UNAVAILABLE"), said);
    assertTrue(said.contains("Connection refused") && said.contains(String.valueOf(port)), said); // not "io exception" alone
  }

  @Test
  void aKeyInATraditionalFormIsRefusedNamingTheConversion(@TempDir Path dir) throws Exception {
    Path key = Files.writeString(dir.resolve("client.key"), "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n");
    Path any = Files.writeString(dir.resolve("any.pem"), "not read");
    assertEquals(2, run("health", "--addr", "127.0.0.1:1", "--ca", any.toString(), "--cert", any.toString(), "--key", key.toString()));
    String said = err.toString(StandardCharsets.UTF_8);
    assertTrue(said.contains("--key " + key) && said.contains("PKCS#8") && said.contains("openssl pkcs8 -topk8"), said);
  }

  @Test
  void helpAfterACommandPrintsTheUsage() {
    assertEquals(0, run("route", "--help"));
    assertTrue(out.toString(StandardCharsets.UTF_8).startsWith("usage:"), out.toString(StandardCharsets.UTF_8));
    assertEquals(0, run("score", "--router", "mf", "-h"));
    assertEquals("", err.toString(StandardCharsets.UTF_8));
    assertEquals(2, run("route", "--bogus", "x"));
  }

  @Test
  void anArgumentThatIsNotUtf8IsRefusedNotRouted() throws Exception {
    // what the JVM makes of the bytes "ab\xff\xfe": U+FFFD for each
    String addr = "127.0.0.1:" + closedPort();
    assertEquals(2, run("route", "--addr", addr, "--max-attempts", "1", "ab\uFFFD\uFFFD"));
    String said = err.toString(StandardCharsets.UTF_8);
    assertTrue(said.startsWith("error: argument 6 (\"ab\\ufffd\\ufffd\") is not UTF-8 text"), said);
    assertFalse(said.contains("UNAVAILABLE"), said);
    assertEquals("", out.toString(StandardCharsets.UTF_8));
  }

  @Test
  void underANonUtf8LocaleTheRefusalSaysToRunUnderAUtf8One() throws Exception {
    // LC_ALL=C: sun.jnu.encoding is ANSI_X3.4-1968 and "café" arrives as "caf\uFFFD\uFFFD"
    assertEquals(2, runUnder("ANSI_X3.4-1968", "route", "--router", "mf", "caf\uFFFD\uFFFD"));
    String said = err.toString(StandardCharsets.UTF_8);
    assertTrue(said.contains("argument 4 (\"caf\\ufffd\\ufffd\") is not UTF-8 text"), said);
    assertTrue(said.contains("ANSI_X3.4-1968") && said.contains("LANG=C.UTF-8"), said);
    err.reset();
    // a Latin-1 locale decodes the UTF-8 bytes of "café" without U+FFFD, as "cafÃ©": not what was typed
    String misread = new String("café".getBytes(StandardCharsets.UTF_8), StandardCharsets.ISO_8859_1);
    assertEquals(2, runUnder("ISO-8859-1", "score", misread));
    said = err.toString(StandardCharsets.UTF_8);
    assertTrue(said.contains("argument 2 (\"caf\\u00c3\\u00a9\") may not be the text typed"), said);
    assertTrue(said.contains("LANG=C.UTF-8"), said);
    err.reset();
    // a character the locale's charset cannot hold was not typed in it
    assertEquals(2, runUnder("ANSI_X3.4-1968", "score", "naïve"));
    assertTrue(err.toString(StandardCharsets.UTF_8).contains("LANG=C.UTF-8"), err.toString(StandardCharsets.UTF_8));
  }

  @Test
  void textTypedInTheLocalesOwnCharsetOrInUtf8IsTaken() throws Exception {
    String addr = "127.0.0.1:" + closedPort();
    // "café" typed in Latin-1 (byte 0xe9, not UTF-8) under a Latin-1 locale: decoded as typed
    assertEquals(1, runUnder("ISO-8859-1", "route", "--addr", addr, "--max-attempts", "1", "caf\u00e9"));
    assertTrue(err.toString(StandardCharsets.UTF_8).startsWith("error: UNAVAILABLE"), err.toString(StandardCharsets.UTF_8));
    err.reset();
    assertEquals(1, runUnder("UTF-8", "route", "--addr", addr, "--max-attempts", "1", "café \uD83D\uDE00"));
    assertTrue(err.toString(StandardCharsets.UTF_8).startsWith("error: UNAVAILABLE"), err.toString(StandardCharsets.UTF_8));
  }

  @Test
  void aTlsFailureSaysItsCauseNotTheEnginesWrapper() {
    SSLHandshakeException wrapper = new SSLHandshakeException("General OpenSslEngine problem");
    wrapper.initCause(new CertificateException("No subject alternative names matching IP address 127.0.0.1 found"));
    Status mismatch = Status.UNAVAILABLE
        .withDescription("io exception\nChannel Pipeline: [SslHandler#0, ProtocolNegotiators$ClientTlsHandler#0]")
        .withCause(wrapper);
    assertEquals("io exception (TLS handshake failed: No subject alternative names matching IP address 127.0.0.1 found)",
        Main.detail(mismatch));

    SSLHandshakeException unknownCa = new SSLHandshakeException("General OpenSslEngine problem");
    unknownCa.initCause(new CertificateException("PKIX path building failed: CertPathBuilderException",
        new CertPathBuilderException("unable to find valid certification path to requested target")));
    String said = Main.detail(Status.UNAVAILABLE.withDescription("io exception").withCause(unknownCa));
    assertTrue(said.startsWith("io exception (TLS handshake failed: unable to find valid certification path"), said);
    assertTrue(said.contains("--ca"), said);
  }
}
