package dev.lmroute.client.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import io.grpc.Grpc;
import io.grpc.InsecureServerCredentials;
import io.grpc.Server;
import io.grpc.stub.StreamObserver;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import lmroute.v1.Router.FeedbackRequest;
import lmroute.v1.Router.FeedbackResponse;
import lmroute.v1.Router.RouteRequest;
import lmroute.v1.Router.RouteResponse;
import lmroute.v1.Router.Tier;
import lmroute.v1.RouterServiceGrpc;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** The commands against a fake RouterService: what they print, and how they take a broken answer. */
@Timeout(value = 20, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class CommandsTest {

  /** Route: an exploring decision (propensity 0.25), or "route:" + its prompt's presence; Feedback: no status at all. */
  private static final class FakeServer extends RouterServiceGrpc.RouterServiceImplBase {
    @Override
    public void route(RouteRequest req, StreamObserver<RouteResponse> out) {
      out.onNext(RouteResponse.newBuilder().setChosenModel(req.hasPrompt() ? "weak" : "no-prompt")
          .setTier(Tier.TIER_WEAK).setScore(0.75).setThreshold(0.5).setRouter(req.getRouter())
          .setDecisionId("a".repeat(32)).setPropensity(0.25).build());
      out.onCompleted();
    }

    @Override
    public void feedback(FeedbackRequest req, StreamObserver<FeedbackResponse> out) {
      out.onNext(FeedbackResponse.getDefaultInstance());
      out.onCompleted();
    }
  }

  private final ByteArrayOutputStream out = new ByteArrayOutputStream();
  private final ByteArrayOutputStream err = new ByteArrayOutputStream();
  private Server server;
  private String addr;

  @BeforeEach
  void start() throws Exception {
    server = Grpc.newServerBuilderForPort(0, InsecureServerCredentials.create()).addService(new FakeServer()).build()
        .start();
    addr = "127.0.0.1:" + server.getPort();
  }

  @AfterEach
  void stop() {
    server.shutdownNow();
  }

  private int run(String... argv) {
    return Main.run(argv, new PrintStream(out, true, StandardCharsets.UTF_8),
        new PrintStream(err, true, StandardCharsets.UTF_8));
  }

  @Test
  void routePrintsThePropensity() {
    assertEquals(0, run("route", "--addr", addr, "--router", "mf", "--threshold", "0.5", "hi"), err.toString());
    assertTrue(out.toString(StandardCharsets.UTF_8).contains("propensity    0.250000\n"), out.toString());
  }

  @Test
  void feedbackWithNoStatusFromTheServerFailsNamingIt() {
    assertEquals(1, run("feedback", "--addr", addr, "--max-attempts", "1", "--decision-id", "x", "--quality", "1"));
    assertTrue(err.toString(StandardCharsets.UTF_8).contains("the server answered 0 statuses for the 1 outcome sent"),
        err.toString());
  }

  @Test
  void conformanceReportsARefusedRequestAsItsCaseAndRunsTheRest(@TempDir Path dir) throws Exception {
    Path cases = Files.writeString(dir.resolve("cases.json"), """
        {"cases": [
          {"id": "surrogate", "rpc": "Route", "prompt": "a\\ud800b", "router": "mf", "threshold": 0.5},
          {"id": "no-prompt", "rpc": "Route", "threshold": 0.5},
          {"id": "routed", "rpc": "Route", "prompt": "hi", "router": "mf", "threshold": 0.5}
        ]}""");
    assertEquals(0, run("conformance", "--addr", addr, "--cases", cases.toString()), err.toString());
    JsonArray results = JsonParser.parseString(out.toString(StandardCharsets.UTF_8)).getAsJsonObject()
        .getAsJsonArray("results");
    assertEquals(3, results.size());
    JsonObject refused = results.get(0).getAsJsonObject();
    assertEquals("INVALID_ARGUMENT", refused.get("code").getAsString());
    assertEquals("", refused.get("reason").getAsString());
    assertTrue(refused.get("client_error").getAsString().startsWith("prompt: holds an unpaired surrogate"), refused.toString());
    assertEquals("no-prompt", results.get(1).getAsJsonObject().get("chosen_model").getAsString()); // sent unset
    assertEquals("", results.get(1).getAsJsonObject().get("router").getAsString());
    assertEquals("OK", results.get(2).getAsJsonObject().get("code").getAsString());
  }
}
