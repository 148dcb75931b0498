package dev.lmroute.client;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.InsecureServerCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.StreamObserver;
import java.net.ServerSocket;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import lmroute.v1.Router.ChatMessage;
import lmroute.v1.Router.Conversation;
import lmroute.v1.Router.OutcomeReport;
import lmroute.v1.Router.Prompt;
import lmroute.v1.Router.RouteRequest;
import lmroute.v1.Router.RouteResponse;
import lmroute.v1.RouterServiceGrpc;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** RouterClient against a fake RouterService over real gRPC: what is refused before a call, and when. */
// A separate thread: without the client's size check, grpc-java's refusal of an oversized request on a channel
// not yet connected was swallowed and the blocking call waited on past its deadline.
@Timeout(value = 20, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class RouterClientTest {

  /** Answers Route with the prompt text it received as the chosen model; counts every call. */
  private static final class EchoServer extends RouterServiceGrpc.RouterServiceImplBase {
    final AtomicInteger calls = new AtomicInteger();

    @Override
    public void route(RouteRequest req, StreamObserver<RouteResponse> out) {
      calls.incrementAndGet();
      out.onNext(RouteResponse.newBuilder().setChosenModel(req.getPrompt().getText()).build());
      out.onCompleted();
    }
  }

  private final EchoServer echo = new EchoServer();
  private final AtomicInteger retries = new AtomicInteger();
  private Server server;

  @BeforeEach
  void start() throws Exception {
    server = Grpc.newServerBuilderForPort(0, InsecureServerCredentials.create()).addService(echo).build().start();
  }

  @AfterEach
  void stop() {
    server.shutdownNow();
  }

  private RouterClient.Builder builder(String target) {
    return RouterClient.newBuilder(target).timeout(Duration.ofSeconds(5))
        .retryListener((method, failed, e, wait) -> retries.incrementAndGet());
  }

  private RouterClient client() {
    return builder("127.0.0.1:" + server.getPort()).build();
  }

  private static int closedPort() throws Exception {
    try (ServerSocket s = new ServerSocket(0)) {
      return s.getLocalPort();
    }
  }

  @Test
  void anUnpairedSurrogateIsRefusedBeforeAnyCallNamingFieldAndIndex() {
    try (RouterClient c = client()) {
      IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
          () -> c.routeByThreshold("ab\uD800cd", "mf", 0.5));
      assertEquals("prompt: holds an unpaired surrogate ('\\ud800') at index 2, not text", e.getMessage());
      e = assertThrows(IllegalArgumentException.class, () -> c.score(List.of("ok", "x\uDC00"), List.of()));
      assertEquals("prompts[1]: holds an unpaired surrogate ('\\udc00') at index 1, not text", e.getMessage());
      OutcomeReport byPrompt = OutcomeReport.newBuilder().setPrompt(RouterClient.textPrompt("why\uDBFF"))
          .setSingle(lmroute.v1.Router.SingleOutcome.newBuilder().setQuality(1)).build();
      e = assertThrows(IllegalArgumentException.class, () -> c.feedback(List.of(byPrompt)));
      assertEquals("outcomes[0].prompt: holds an unpaired surrogate ('\\udbff') at index 3, not text", e.getMessage());
      RouteRequest chat = RouteRequest.newBuilder().setRouter("mf").setThreshold(0.5).setPrompt(Prompt.newBuilder()
          .setConversation(Conversation.newBuilder()
              .addMessages(ChatMessage.newBuilder().setRole("user").setContent("hi"))
              .addMessages(ChatMessage.newBuilder().setRole("user").setContent("\uDE00 reversed pair \uD83D")))).build();
      e = assertThrows(IllegalArgumentException.class, () -> c.route(chat));
      assertTrue(e.getMessage().startsWith("prompt.conversation.messages[1].content: holds an unpaired surrogate ('\\ude00') at index 0"),
          e.getMessage());
      e = assertThrows(IllegalArgumentException.class, () -> c.routeByThreshold("hi", "m\uD800f", 0.5));
      assertTrue(e.getMessage().startsWith("router: holds an unpaired surrogate"), e.getMessage());
      assertEquals(0, echo.calls.get());
      // a surrogate pair is text: routed as it is
      assertEquals("smile \uD83D\uDE00", c.routeByThreshold("smile \uD83D\uDE00", "mf", 0.5).getChosenModel());
    }
  }

  @Test
  void routeAmongRequestCarriesTheModelsAndOneRule() {
    RouteRequest req =
        RouterClient.routeAmongRequest("hi", "quality", List.of("a", "b"), RouterClient.qualityMargin(0.05));
    assertEquals("hi", req.getPrompt().getText());
    assertEquals("quality", req.getRouter());
    assertEquals(List.of("a", "b"), req.getCandidatesList().stream().map(c -> c.getModel()).toList());
    assertEquals(0.05, req.getModelPolicy().getQualityMargin());
    assertEquals(2.0, RouterClient.routeAmongRequest("hi", "", List.of("a", "b"), RouterClient.costWeight(2))
        .getModelPolicy().getCostWeight());
    assertEquals(0.8, RouterClient.routeAmongRequest("hi", "", List.of("a", "b"), RouterClient.qualityFloor(0.8))
        .getModelPolicy().getQualityFloor());
    assertFalse(RouterClient.routeAmongRequest("hi", "", List.of("a", "b"), null).hasModelPolicy()); // spend target
    NullPointerException e = assertThrows(NullPointerException.class,
        () -> RouterClient.routeAmongRequest("hi", "", null, null));
    assertTrue(e.getMessage().startsWith("models: null"), e.getMessage());
  }

  @Test
  void nullArgumentsAreRefusedByName() {
    try (RouterClient c = client()) {
      NullPointerException e = assertThrows(NullPointerException.class, () -> c.routeByThreshold(null, "mf", 0.5));
      assertTrue(e.getMessage().startsWith("prompt: null"), e.getMessage());
      e = assertThrows(NullPointerException.class, () -> c.routeByStrongShare("hi", null, 0.5));
      assertTrue(e.getMessage().startsWith("router: null"), e.getMessage());
      e = assertThrows(NullPointerException.class, () -> c.score(Arrays.asList("a", null), List.of()));
      assertTrue(e.getMessage().startsWith("prompts[1]: null"), e.getMessage());
      e = assertThrows(NullPointerException.class, () -> c.getRouter(null));
      assertTrue(e.getMessage().startsWith("name: null"), e.getMessage());
      assertEquals(0, echo.calls.get());
    }
  }

  @Test
  void aCallAfterCloseIsRefusedAtOnceAndCloseTwiceIsANoOp() {
    RouterClient c = client();
    assertEquals("hi", c.routeByThreshold("hi", "mf", 0.5).getChosenModel());
    c.close();
    long start = System.nanoTime();
    IllegalStateException e = assertThrows(IllegalStateException.class, () -> c.routeByThreshold("hi", "mf", 0.5));
    assertEquals("client is closed", e.getMessage());
    assertThrows(IllegalStateException.class, () -> c.health());
    assertTrue(System.nanoTime() - start < 100_000_000L, "refused at once, not after retries");
    assertEquals(0, retries.get());
    assertDoesNotThrow(c::close);
    assertEquals(1, echo.calls.get());
  }

  @Test
  void aChannelShutDownByItsOwnerFailsWithoutRetries() {
    ManagedChannel channel =
        Grpc.newChannelBuilder("127.0.0.1:" + server.getPort(), InsecureChannelCredentials.create()).build();
    channel.shutdown();
    try (RouterClient c = RouterClient.newBuilder(channel)
        .retryListener((method, failed, e, wait) -> retries.incrementAndGet()).build()) {
      StatusRuntimeException e = assertThrows(StatusRuntimeException.class, () -> c.routeByThreshold("hi", "mf", 0.5));
      assertEquals(Status.Code.UNAVAILABLE, e.getStatus().getCode());
      assertEquals(0, retries.get());
    }
  }

  @Test
  void aRequestOverTheSizeLimitIsResourceExhaustedAndNotSent() {
    try (RouterClient c = builder("127.0.0.1:" + server.getPort()).maxMessageBytes(1024).build()) {
      StatusRuntimeException e =
          assertThrows(StatusRuntimeException.class, () -> c.routeByThreshold("x".repeat(2000), "mf", 0.5));
      assertEquals(Status.Code.RESOURCE_EXHAUSTED, e.getStatus().getCode());
      String said = e.getStatus().getDescription();
      assertTrue(said.contains("Route request is 20") && said.contains("bytes, over the limit of 1024"), said);
      assertFalse(RetryPolicy.isRetryable(e.getStatus()));
      assertEquals(0, retries.get());
      assertEquals(0, echo.calls.get());
      assertEquals("x".repeat(900), c.routeByThreshold("x".repeat(900), "mf", 0.5).getChosenModel());
    }
  }

  @Test
  void healthIsNotRetried() throws Exception {
    try (RouterClient c = builder("127.0.0.1:" + closedPort()).build()) {
      StatusRuntimeException e =
          assertThrows(StatusRuntimeException.class, () -> c.health("", Duration.ofSeconds(5)));
      assertEquals(Status.Code.UNAVAILABLE, e.getStatus().getCode());
      assertEquals(0, retries.get());
    }
  }
}
