package dev.lmroute.client.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
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
}
