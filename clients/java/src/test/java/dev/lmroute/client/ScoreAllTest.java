package dev.lmroute.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Any;
import com.google.rpc.Code;
import com.google.rpc.ErrorInfo;
import io.grpc.Grpc;
import io.grpc.InsecureServerCredentials;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Collectors;
import java.util.stream.IntStream;
import lmroute.v1.Router.CallLimits;
import lmroute.v1.Router.ItemStatus;
import lmroute.v1.Router.ListRoutersRequest;
import lmroute.v1.Router.ListRoutersResponse;
import lmroute.v1.Router.Prompt;
import lmroute.v1.Router.PromptScores;
import lmroute.v1.Router.RouterScore;
import lmroute.v1.Router.ScoreRequest;
import lmroute.v1.Router.ScoreResponse;
import lmroute.v1.RouterServiceGrpc;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** scoreAll: split by the server's limits (the Python Controller's rule), results in the caller's order. */
@Timeout(value = 20, threadMode = Timeout.ThreadMode.SEPARATE_THREAD)
class ScoreAllTest {

  /**
   * Says its limits in ListRouters and enforces them in Score as lmroute-serve does: a call over
   * max_prompts_per_request or max_request_chars is refused whole; an empty prompt fails alone. A prompt's
   * score is its length / 1000, so a result shows which prompt it is of.
   */
  private static final class LimitedServer extends RouterServiceGrpc.RouterServiceImplBase {
    final CallLimits limits;
    final AtomicInteger listed = new AtomicInteger();
    final List<List<String>> calls = Collections.synchronizedList(new ArrayList<>());

    LimitedServer(CallLimits limits) {
      this.limits = limits;
    }

    @Override
    public void listRouters(ListRoutersRequest req, StreamObserver<ListRoutersResponse> out) {
      listed.incrementAndGet();
      out.onNext(ListRoutersResponse.newBuilder().setLimits(limits).build());
      out.onCompleted();
    }

    @Override
    public void score(ScoreRequest req, StreamObserver<ScoreResponse> out) {
      List<String> texts = req.getPromptsList().stream().map(Prompt::getText).collect(Collectors.toList());
      calls.add(texts);
      long chars = texts.stream().mapToLong(t -> t.codePointCount(0, t.length())).sum();
      if (texts.size() > limits.getMaxPromptsPerRequest()) {
        out.onError(invalid("TOO_MANY_PROMPTS", "prompts: " + texts.size() + " prompts"));
        return;
      }
      if (chars > limits.getMaxRequestChars()) {
        out.onError(invalid("REQUEST_TOO_LONG", "prompts: " + chars + " characters in all"));
        return;
      }
      ScoreResponse.Builder resp = ScoreResponse.newBuilder().setBundleVersion("v1");
      for (int i = 0; i < texts.size(); i++) {
        PromptScores.Builder r = PromptScores.newBuilder().setIndex(i);
        if (texts.get(i).isEmpty()) {
          r.setStatus(ItemStatus.newBuilder().setCode(3).setReason("EMPTY_PROMPT").setMessage("prompts[" + i + "]: empty prompt"));
        } else {
          r.addScores(RouterScore.newBuilder().setRouter("mf").setStrongWinProbability(texts.get(i).length() / 1000.0));
        }
        resp.addResults(r);
      }
      out.onNext(resp.build());
      out.onCompleted();
    }

    private static StatusRuntimeException invalid(String reason, String message) {
      return StatusProto.toStatusRuntimeException(com.google.rpc.Status.newBuilder()
          .setCode(Code.INVALID_ARGUMENT_VALUE).setMessage(message)
          .addDetails(Any.pack(ErrorInfo.newBuilder().setReason(reason).build())).build());
    }
  }

  private Server server;

  private RouterClient serve(LimitedServer srv) throws Exception {
    server = Grpc.newServerBuilderForPort(0, InsecureServerCredentials.create()).addService(srv).build().start();
    return RouterClient.newBuilder("127.0.0.1:" + server.getPort()).timeout(Duration.ofSeconds(5))
        .retryPolicy(RetryPolicy.none()).build();
  }

  @AfterEach
  void stop() {
    if (server != null) {
      server.shutdownNow();
    }
  }

  private static String spans(List<int[]> calls) {
    return calls.stream().map(c -> c[0] + "-" + c[1]).collect(Collectors.joining(" "));
  }

  @Test
  void splitKeepsEachCallWithinEveryLimit() {
    ScoreCalls small = new ScoreCalls(3, 10, 100);
    assertEquals("0-3 3-6 6-7", spans(small.split(List.of("a", "b", "c", "d", "e", "f", "g"))));
    assertEquals("0-2 2-4", spans(small.split(List.of("aaaa", "bbbb", "cccc", "d"))));
    // 4 characters of 3 bytes: 12 + 16 bytes a prompt, so the third passes 60 bytes; 4 ASCII ones fit
    ScoreCalls bytes = new ScoreCalls(3, 100, 60);
    assertEquals("0-2 2-3", spans(bytes.split(List.of("量量量量", "量量量量", "量量量量"))));
    assertEquals("0-3", spans(bytes.split(List.of("aaaa", "bbbb", "cccc"))));
    // characters are code points, as the server counts them: an emoji is 1, not 2 chars
    assertEquals("0-2", spans(small.split(List.of("😀😀😀😀😀", "😀😀😀😀😀"))));
    assertEquals("0-1 1-2 2-3", spans(small.split(List.of("a", "x".repeat(11), "b")))); // alone, over a limit
    assertEquals("", spans(small.split(List.of())));
  }

  @Test
  void limitsAreTheServersOrItsDefaults() {
    assertEquals(new ScoreCalls(128, 1_000_000, 3774873), ScoreCalls.of(CallLimits.getDefaultInstance(), 4 << 20));
    CallLimits said = CallLimits.newBuilder().setMaxPromptsPerRequest(5).setMaxRequestChars(2000)
        .setMaxMessageBytes(4096).build();
    assertEquals(new ScoreCalls(5, 2000, 3686), ScoreCalls.of(said, 4 << 20));
    CallLimits big = CallLimits.newBuilder().setMaxPromptsPerRequest(1000).setMaxMessageBytes(64 << 20).build();
    assertEquals(new ScoreCalls(128, 1_000_000, 1887436), ScoreCalls.of(big, 2 << 20)); // this client's limit
  }

  @Test
  void scoreAllSplitsByTheServersLimitsAndKeepsTheOrder() throws Exception {
    LimitedServer srv = new LimitedServer(CallLimits.newBuilder().setMaxPromptsPerRequest(5)
        .setMaxRequestChars(2000).setMaxMessageBytes(4096).build());
    try (RouterClient client = serve(srv)) {
      List<String> texts = IntStream.range(0, 12).mapToObj(i -> i == 7 ? "" : "p".repeat(i + 1)).collect(Collectors.toList());
      StatusRuntimeException whole = assertThrows(StatusRuntimeException.class, () -> client.score(texts, List.of()));
      assertEquals("TOO_MANY_PROMPTS", RouterErrors.reason(whole)); // else this test proves nothing
      srv.calls.clear();
      ScoreResponse resp = client.scoreAll(texts, List.of("mf"));
      assertEquals(List.of(5, 5, 2), srv.calls.stream().map(List::size).collect(Collectors.toList()));
      assertEquals(12, resp.getResultsCount());
      assertEquals("v1", resp.getBundleVersion());
      for (int i = 0; i < 12; i++) {
        PromptScores r = resp.getResults(i);
        assertEquals(i, r.getIndex());
        if (i == 7) {
          assertEquals("EMPTY_PROMPT", r.getStatus().getReason());
          assertEquals("prompts[7]: empty prompt", r.getStatus().getMessage());
        } else {
          assertEquals((i + 1) / 1000.0, r.getScores(0).getStrongWinProbability(), "results[" + i + "]");
        }
      }
      client.scoreAll(texts.subList(0, 2), List.of());
      assertEquals(1, srv.listed.get()); // the limits are asked once
    }
  }

  @Test
  void scoreAllSplitsByCharactersAndEndsWithACallsError() throws Exception {
    LimitedServer srv = new LimitedServer(CallLimits.newBuilder().setMaxPromptsPerRequest(100).setMaxRequestChars(10).build());
    try (RouterClient client = serve(srv)) {
      ScoreResponse resp = client.scoreAll(List.of("aaaa", "bbbb", "cccc", "dd"), List.of());
      assertEquals(2, srv.calls.size());
      assertEquals(3, resp.getResults(3).getIndex());
      // alone over max_request_chars: the server refuses its call, and scoreAll says so (as the Python Controller)
      StatusRuntimeException e = assertThrows(StatusRuntimeException.class,
          () -> client.scoreAll(List.of("a", "x".repeat(11), "b"), List.of()));
      assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
      assertEquals("REQUEST_TOO_LONG", RouterErrors.reason(e));
      assertEquals(0, client.scoreAll(List.of(), List.of()).getResultsCount());
      assertEquals(4, srv.calls.size()); // none for no prompts
      IllegalArgumentException bad = assertThrows(IllegalArgumentException.class,
          () -> client.scoreAll(List.of("a", "b", "c", "d\ud800"), List.of()));
      assertTrue(bad.getMessage().startsWith("prompts[3]: holds an unpaired surrogate"), bad.getMessage());
      assertEquals(4, srv.calls.size()); // checked before the first call
    }
  }
}
