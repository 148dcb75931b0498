package dev.lmroute.client.cli;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import dev.lmroute.client.RetryPolicy;
import dev.lmroute.client.RouterClient;
import dev.lmroute.client.RouterErrors;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import lmroute.v1.Admin.DecisionsToJudgeRequest;
import lmroute.v1.Admin.DecisionsToJudgeResponse;
import lmroute.v1.Admin.GetBundleResponse;
import lmroute.v1.Admin.ListShareTargetsResponse;
import lmroute.v1.Admin.ListSpendTargetsResponse;
import lmroute.v1.Admin.ReloadBundleResponse;
import lmroute.v1.Admin.SetTargetsResponse;
import lmroute.v1.Admin.TenantSpendTarget;
import lmroute.v1.Admin.TenantTarget;
import lmroute.v1.Router.FeedbackRequest;
import lmroute.v1.Router.FeedbackResponse;
import lmroute.v1.Router.ItemStatus;
import lmroute.v1.Router.ModelEstimate;
import lmroute.v1.Router.PromptScores;
import lmroute.v1.Router.RouteRequest;
import lmroute.v1.Router.RouteResponse;
import lmroute.v1.Router.RouterInfo;
import lmroute.v1.Router.RouterScore;
import lmroute.v1.Router.ScoreRequest;
import lmroute.v1.Router.ScoreResponse;

/**
 * {@code conformance --addr HOST:PORT --cases FILE}: runs every case of clients/CONFORMANCE.md with retries
 * off and prints one JSON object {@code {"results": [...]}}. Exit 0 when every case ran (a gRPC error is a
 * result), 2 on bad arguments or an unreadable / invalid cases file.
 */
final class Conformance {

  static final Set<String> OPTIONS = Main.with(Credentials.OPTIONS, "addr", "cases");

  private static final Gson GSON =
      new GsonBuilder().disableHtmlEscaping().serializeSpecialFloatingPointValues().create();

  private Conformance() {}

  static int run(Args args, PrintStream out, PrintStream err) throws Args.UsageError {
    String addr = args.require("addr");
    String casesPath = args.require("cases");
    if (!args.positionals().isEmpty()) {
      throw new Args.UsageError("conformance takes no positional arguments (got " + args.positionals() + ")");
    }
    List<ConformanceCase> cases;
    try {
      String text = Files.readString(Path.of(casesPath), StandardCharsets.UTF_8);
      cases = ConformanceCase.parseAll(text, casesPath);
    } catch (IOException e) {
      err.println("error: cannot read cases file " + casesPath + ": " + e);
      return Main.EXIT_USAGE;
    } catch (ConformanceCase.CasesError e) {
      err.println("error: " + e.getMessage());
      return Main.EXIT_USAGE;
    }
    JsonArray results = new JsonArray();
    RouterClient.Builder builder = Credentials.configure(RouterClient.newBuilder(addr), args, System.getenv());
    try (RouterClient client = builder.retryPolicy(RetryPolicy.none()).build()) {
      for (ConformanceCase c : cases) {
        results.add(runCase(client, c));
      }
    }
    JsonObject doc = new JsonObject();
    doc.add("results", results);
    out.println(GSON.toJson(doc));
    out.flush();
    return Main.EXIT_OK;
  }

  /** The output object of one case: its answer, or its gRPC error code and ErrorInfo reason. */
  static JsonObject runCase(RouterClient client, ConformanceCase c) {
    JsonObject r = new JsonObject();
    r.addProperty("id", c.id());
    try {
      switch (c.rpc()) {
        case "Score", "ScoreAll" -> score(client, c, r);
        case "Route" -> route(client, c, r);
        case "Health" -> health(client, c, r);
        case "ListRouters" -> listRouters(client, c, r);
        case "Feedback" -> feedback(client, c, r);
        case "SetTargets" -> {
          SetTargetsResponse resp =
              client.setTargets(RouterClient.setTargetsRequest(c.shares(), c.spends()), c.timeout());
          r.addProperty("code", "OK");
          r.add("share_targets", shareMap(resp.getShareTargetsList()));
          r.add("spend_targets", spendMap(resp.getSpendTargetsList()));
        }
        case "ListShareTargets" -> {
          ListShareTargetsResponse resp = client.listShareTargets(c.timeout());
          r.addProperty("code", "OK");
          r.add("targets", shareMap(resp.getTargetsList()));
        }
        case "GetBundle" -> {
          GetBundleResponse resp = client.getBundle(c.timeout());
          r.addProperty("code", "OK");
          r.addProperty("bundle_version", resp.getBundleVersion());
          JsonArray routers = new JsonArray();
          resp.getRoutersList().forEach(routers::add);
          r.add("routers", routers);
        }
        case "ReloadBundle" -> {
          ReloadBundleResponse resp = client.reloadBundle(c.path(), c.timeout());
          r.addProperty("code", "OK");
          r.addProperty("bundle_version", resp.getBundleVersion());
          r.addProperty("previous_version", resp.getPreviousVersion());
        }
        case "ListSpendTargets" -> {
          ListSpendTargetsResponse resp = client.listSpendTargets(c.timeout());
          r.addProperty("code", "OK");
          r.add("targets", spendMap(resp.getTargetsList()));
        }
        case "DecisionsToJudge" -> toJudge(client, c, r);
        default -> throw new IllegalStateException("unchecked rpc " + c.rpc());
      }
    } catch (StatusRuntimeException e) {
      return failed(c, e.getStatus().getCode().name(), RouterErrors.reason(e));
    } catch (IllegalArgumentException e) { // the client's own check refused the request (a lone surrogate)
      JsonObject failed = failed(c, "INVALID_ARGUMENT", "");
      failed.addProperty("client_error", e.getMessage());
      return failed;
    }
    return r;
  }

  /** The output of a case that ended in an error: its id, the gRPC code's name and the ErrorInfo reason. */
  private static JsonObject failed(ConformanceCase c, String code, String reason) {
    JsonObject failed = new JsonObject();
    failed.addProperty("id", c.id());
    failed.addProperty("code", code);
    failed.addProperty("reason", reason);
    return failed;
  }

  /** The decisions to judge, as counts: which ones depends on the store, which every client's run changes. */
  private static void toJudge(RouterClient client, ConformanceCase c, JsonObject r) {
    ConformanceCase.JudgeAsk ask = c.judge();
    DecisionsToJudgeRequest req = DecisionsToJudgeRequest.newBuilder()
        .setBudget(ask.budget()).setWindow(ask.window()).setSinceMs(ask.sinceMs()).build();
    DecisionsToJudgeResponse resp = client.decisionsToJudge(req, c.timeout());
    long withPrompts = resp.getDecisionsList().stream()
        .filter(d -> !d.getPrompt().isEmpty() && d.getDecisionId().length() == 32).count();
    r.addProperty("code", "OK");
    r.addProperty("picked", resp.getDecisionsCount());
    r.addProperty("window", resp.getWindow());
    r.addProperty("with_prompts", withPrompts);
    r.addProperty("next_since_ms_moved", resp.getNextSinceMs() != ask.sinceMs());
  }

  /** A Score call, or for ScoreAll as many as the server's limits need ({@link RouterClient#scoreAll}). */
  private static void score(RouterClient client, ConformanceCase c, JsonObject r) {
    ScoreResponse resp;
    if (c.rpc().equals("ScoreAll")) {
      resp = client.scoreAll(c.prompts(), c.routers(), c.timeout());
    } else {
      ScoreRequest.Builder req = ScoreRequest.newBuilder().addAllRouters(c.routers());
      c.prompts().forEach(p -> req.addPrompts(RouterClient.textPrompt(p)));
      resp = client.score(req.build(), c.timeout());
    }
    r.addProperty("code", "OK");
    r.addProperty("bundle_version", resp.getBundleVersion());
    JsonArray items = new JsonArray();
    for (PromptScores ps : resp.getResultsList()) {
      ItemStatus st = ps.getStatus();
      JsonObject item = new JsonObject();
      item.addProperty("index", ps.getIndex());
      item.addProperty("item_code", st.getCode());
      item.addProperty("item_reason", st.getReason());
      item.addProperty("n_tokens", ps.getNTokens());
      item.addProperty("truncated", ps.getTruncated());
      JsonObject scores = new JsonObject();
      for (RouterScore s : ps.getScoresList()) {
        scores.addProperty(s.getRouter(), s.getStrongWinProbability());
      }
      item.add("scores", scores);
      items.add(item);
    }
    r.add("results", items);
  }

  /** A ModelEstimate as the conformance output prints it ({} when there is none). */
  private static JsonObject estimate(boolean present, ModelEstimate e) {
    JsonObject o = new JsonObject();
    if (present) {
      o.addProperty("model", e.getModel());
      o.addProperty("predicted_quality", e.getPredictedQuality());
      o.addProperty("expected_cost_usd", e.getExpectedCostUsd());
    }
    return o;
  }

  /** Route among the case's candidates; the threshold (NaN) is not printed. */
  private static void routeAmong(RouterClient client, ConformanceCase c, JsonObject r) {
    String prompt = c.prompt() == null ? "" : c.prompt();
    RouteResponse resp = client.route(
        RouterClient.routeAmongRequest(prompt, c.router() == null ? "" : c.router(), c.candidates(), c.rule()),
        c.timeout());
    r.addProperty("code", "OK");
    r.addProperty("chosen_model", resp.getChosenModel());
    r.addProperty("tier", resp.getTier().name());
    r.addProperty("score", resp.getScore());
    r.addProperty("router", resp.getRouter());
    r.add("chosen", estimate(resp.hasChosen(), resp.getChosen()));
    r.add("runner_up", estimate(resp.hasRunnerUp(), resp.getRunnerUp()));
  }

  private static void route(RouterClient client, ConformanceCase c, JsonObject r) {
    if (c.candidates() != null) {
      routeAmong(client, c, r);
      return;
    }
    RouteRequest.Builder req = RouteRequest.newBuilder().setRouter(c.router());
    if (c.prompt() != null) { // none: sent unset, as the other clients do (the server names it missing)
      req.setPrompt(RouterClient.textPrompt(c.prompt()));
    }
    if (c.threshold() != null) {
      req.setThreshold(c.threshold());
    }
    if (c.strongShare() != null) {
      req.setStrongShare(c.strongShare());
    }
    RouteResponse resp = client.route(req.build(), c.timeout());
    r.addProperty("code", "OK");
    r.addProperty("chosen_model", resp.getChosenModel());
    r.addProperty("tier", resp.getTier().name());
    r.addProperty("score", resp.getScore());
    r.addProperty("threshold", resp.getThreshold());
    r.addProperty("router", resp.getRouter());
  }

  private static void feedback(RouterClient client, ConformanceCase c, JsonObject r) {
    String routed = "";
    if (c.prompt() != null) {
      RouteRequest.Builder req =
          RouteRequest.newBuilder().setPrompt(RouterClient.textPrompt(c.prompt())).setRouter(c.router());
      if (c.threshold() != null) {
        req.setThreshold(c.threshold());
      }
      routed = client.route(req.build(), c.timeout()).getDecisionId();
    }
    FeedbackRequest.Builder req = FeedbackRequest.newBuilder();
    for (ConformanceCase.Outcome o : c.outcomes()) {
      String id = ConformanceCase.ROUTED.equals(o.decisionId()) ? routed : o.decisionId();
      req.addOutcomes(o.single() != null
          ? RouterClient.singleOutcome(id, o.single(), o.source())
          : RouterClient.pairedOutcome(id, o.paired()[0], o.paired()[1], o.source()));
    }
    FeedbackResponse resp = client.feedback(req.build(), c.timeout());
    r.addProperty("code", "OK");
    r.addProperty("stored", resp.getStored());
    JsonArray items = new JsonArray();
    for (ItemStatus st : resp.getResultsList()) {
      JsonObject item = new JsonObject();
      item.addProperty("item_code", st.getCode());
      item.addProperty("item_reason", st.getReason());
      items.add(item);
    }
    r.add("results", items);
  }

  private static JsonObject shareMap(List<TenantTarget> targets) {
    JsonObject m = new JsonObject();
    targets.forEach(t -> m.addProperty(t.getTenant(), t.getStrongShare()));
    return m;
  }

  private static JsonObject spendMap(List<TenantSpendTarget> targets) {
    JsonObject m = new JsonObject();
    targets.forEach(t -> m.addProperty(t.getTenant(), t.getSpendPer1KUsd()));
    return m;
  }

  private static void health(RouterClient client, ConformanceCase c, JsonObject r) {
    ServingStatus status = client.health(c.service(), c.timeout());
    r.addProperty("code", "OK");
    r.addProperty("status", status.name());
  }

  private static void listRouters(RouterClient client, ConformanceCase c, JsonObject r) {
    JsonArray names = new JsonArray();
    client.listRouters(c.timeout()).getRoutersList().stream().map(RouterInfo::getName).sorted().forEach(names::add);
    r.addProperty("code", "OK");
    r.add("routers", names);
  }
}
