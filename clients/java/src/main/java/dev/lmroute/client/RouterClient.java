package dev.lmroute.client;

import com.google.protobuf.Message;
import io.grpc.ChannelCredentials;
import io.grpc.Deadline;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import io.grpc.health.v1.HealthGrpc;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.TreeMap;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.function.Function;
import lmroute.v1.Admin.DecisionsToJudgeRequest;
import lmroute.v1.Admin.DecisionsToJudgeResponse;
import lmroute.v1.Admin.GetBundleRequest;
import lmroute.v1.Admin.GetBundleResponse;
import lmroute.v1.Admin.ListShareTargetsRequest;
import lmroute.v1.Admin.ListShareTargetsResponse;
import lmroute.v1.Admin.ListSpendTargetsRequest;
import lmroute.v1.Admin.ListSpendTargetsResponse;
import lmroute.v1.Admin.ReloadBundleRequest;
import lmroute.v1.Admin.ReloadBundleResponse;
import lmroute.v1.Admin.SetTargetsRequest;
import lmroute.v1.Admin.SetTargetsResponse;
import lmroute.v1.Admin.TargetChange;
import lmroute.v1.AdminServiceGrpc;
import lmroute.v1.Router.CallLimits;
import lmroute.v1.Router.Candidate;
import lmroute.v1.Router.FeedbackRequest;
import lmroute.v1.Router.FeedbackResponse;
import lmroute.v1.Router.GetRouterRequest;
import lmroute.v1.Router.GetRouterResponse;
import lmroute.v1.Router.ListRoutersRequest;
import lmroute.v1.Router.ListRoutersResponse;
import lmroute.v1.Router.ModelPolicy;
import lmroute.v1.Router.OutcomeReport;
import lmroute.v1.Router.ItemStatus;
import lmroute.v1.Router.PairedOutcome;
import lmroute.v1.Router.Prompt;
import lmroute.v1.Router.PromptScores;
import lmroute.v1.Router.RouteRequest;
import lmroute.v1.Router.RouteResponse;
import lmroute.v1.Router.ScoreRequest;
import lmroute.v1.Router.ScoreResponse;
import lmroute.v1.Router.SingleOutcome;
import lmroute.v1.RouterServiceGrpc;

/**
 * A blocking client for {@code lmroute.v1.RouterService}, the target calls of {@code lmroute.v1.AdminService}
 * and {@code grpc.health.v1.Health}.
 *
 * <pre>{@code
 * try (RouterClient client = RouterClient.newBuilder("127.0.0.1:50051").build()) {
 *   RouteResponse d = client.routeByStrongShare("Prove Fermat's little theorem", "mf", 0.3);
 *   String model = d.getChosenModel();
 * }
 * }</pre>
 *
 * <p>Every call has a deadline (the builder's {@code timeout}, or the one passed to the call) that covers
 * all its attempts. Calls failing with {@code UNAVAILABLE} or {@code RESOURCE_EXHAUSTED} are retried per
 * the {@link RetryPolicy} (every RPC here is safe to repeat: reads, Feedback whose repeated outcomes are
 * duplicates, SetTargets setting values); the health check is not. Failures are thrown as
 * {@link io.grpc.StatusRuntimeException}; read the machine reason with {@link RouterErrors#reason}.
 *
 * <p>Before anything is sent a request is checked: a string holding an unpaired surrogate (protobuf would
 * send it as '?') is refused with {@link IllegalArgumentException} naming the field and the index, a null
 * argument with {@link NullPointerException} naming it, and a request over {@code maxMessageBytes} with
 * {@code RESOURCE_EXHAUSTED} (not retried). After {@link #close()} every call throws
 * {@link IllegalStateException}. Thread-safe: share one instance.
 */
public final class RouterClient implements AutoCloseable {

  private final ManagedChannel channel;
  private final boolean ownsChannel;
  private final Duration timeout;
  private final int maxMessageBytes;
  private final AtomicBoolean closed = new AtomicBoolean();
  private final Retrier retrier;
  private final RouterServiceGrpc.RouterServiceBlockingStub stub;
  private final AdminServiceGrpc.AdminServiceBlockingStub admin;
  private final HealthGrpc.HealthBlockingStub health;
  /** The server's per-call limits, from its first ListRouters answer ({@link #limits()}); null until asked. */
  private volatile CallLimits limits;

  private RouterClient(Builder b, ManagedChannel channel, boolean ownsChannel) {
    this.channel = channel;
    this.ownsChannel = ownsChannel;
    this.timeout = b.timeout;
    this.maxMessageBytes = b.maxMessageBytes;
    this.retrier = new Retrier(b.retryPolicy, Retrier.THREAD_SLEEP, () -> ThreadLocalRandom.current().nextDouble(),
        b.retryListener);
    RouterServiceGrpc.RouterServiceBlockingStub s = RouterServiceGrpc.newBlockingStub(channel)
        .withMaxInboundMessageSize(b.maxMessageBytes)
        .withMaxOutboundMessageSize(b.maxMessageBytes);
    this.stub = b.token == null && b.tenant == null ? s : s.withCallCredentials(new CallHeaders(b.token, b.tenant));
    AdminServiceGrpc.AdminServiceBlockingStub a = AdminServiceGrpc.newBlockingStub(channel);
    this.admin = b.token == null && b.tenant == null ? a : a.withCallCredentials(new CallHeaders(b.token, b.tenant));
    this.health = HealthGrpc.newBlockingStub(channel);
  }

  /** A client that opens (and on {@link #close()} shuts) its own channel to {@code target} ("host:port"). */
  public static Builder newBuilder(String target) {
    return new Builder(Objects.requireNonNull(target, "target"), null);
  }

  /** A client over a channel the caller owns (TLS, interceptors, ...); {@link #close()} leaves it open. */
  public static Builder newBuilder(ManagedChannel channel) {
    return new Builder(null, Objects.requireNonNull(channel, "channel"));
  }

  /** A plain-text prompt ({@link NullPointerException} for null). */
  public static Prompt textPrompt(String text) {
    return Prompt.newBuilder().setText(Objects.requireNonNull(text, "prompt: null, expected text")).build();
  }

  // ---- Score

  /** Scores of every prompt under {@code routers} (empty = every loaded router); per-prompt status inside. */
  public ScoreResponse score(List<String> prompts, List<String> routers) {
    return score(scoreRequest(prompts, routers), timeout);
  }

  /** The Score request of {@code prompts} (texts) under {@code routers}, null checked by name and index. */
  private static ScoreRequest scoreRequest(List<String> prompts, List<String> routers) {
    Objects.requireNonNull(prompts, "prompts: null, expected a list of texts");
    Objects.requireNonNull(routers, "routers: null, expected a list of names (empty: every loaded router)");
    ScoreRequest.Builder req = ScoreRequest.newBuilder();
    for (int i = 0; i < routers.size(); i++) {
      req.addRouters(Objects.requireNonNull(routers.get(i), "routers[" + i + "]: null, expected a router name"));
    }
    for (int i = 0; i < prompts.size(); i++) {
      req.addPrompts(textPrompt(Objects.requireNonNull(prompts.get(i), "prompts[" + i + "]: null, expected text")));
    }
    return req.build();
  }

  /** {@link #scoreAll(List, List, Duration)} with the builder's timeout for each call. */
  public ScoreResponse scoreAll(List<String> prompts, List<String> routers) {
    return scoreAll(prompts, routers, timeout);
  }

  /**
   * Scores {@code prompts} under {@code routers} (empty = every loaded router) in as many Score calls as the
   * server's limits need ({@link #limits()}: prompts per call, characters per call, and 0.9 x the smaller
   * of the server's {@code max_message_bytes} and this client's {@code maxMessageBytes}), one after
   * another, each with {@code timeout}. The results come in the order of {@code prompts}, each index (and
   * the "prompts[i]" of a failed item's message) that of {@code prompts}; the bundle version is the last
   * call's. A bad prompt fails alone, as in {@link #score}. A call that fails ends it with its error
   * (nothing of the calls before it is returned), as the Python Controller does: e.g. one prompt alone
   * over the server's max_request_chars ({@code INVALID_ARGUMENT REQUEST_TOO_LONG}). Every prompt is
   * checked before the first call; no prompts, no Score call.
   */
  public ScoreResponse scoreAll(List<String> prompts, List<String> routers, Duration timeout) {
    ScoreRequest all = scoreRequest(prompts, routers);
    Requests.requireText(all); // named by the place in prompts, not in a call
    ScoreResponse.Builder out = ScoreResponse.newBuilder();
    for (int[] span : ScoreCalls.of(limits(timeout), maxMessageBytes).split(prompts)) {
      ScoreRequest call = ScoreRequest.newBuilder().addAllRouters(all.getRoutersList())
          .addAllPrompts(all.getPromptsList().subList(span[0], span[1])).build();
      ScoreResponse resp = score(call, timeout);
      resp.getResultsList().forEach(r -> out.addResults(rebased(r, span[0])));
      out.setBundleVersion(resp.getBundleVersion());
    }
    return out.build();
  }

  /**
   * A result of a call whose first prompt is the caller's prompts[offset], moved to its place there: its
   * index, and the "prompts[j]: " its status message starts with (the server names a prompt by its place
   * in the call).
   */
  static PromptScores rebased(PromptScores r, int offset) {
    int j = r.getIndex();
    PromptScores.Builder b = r.toBuilder().setIndex(j + offset);
    String prefix = "prompts[" + j + "]: ";
    String message = r.getStatus().getMessage();
    if (offset > 0 && message.startsWith(prefix)) {
      ItemStatus st = r.getStatus().toBuilder()
          .setMessage("prompts[" + (j + offset) + "]: " + message.substring(prefix.length())).build();
      b.setStatus(st);
    }
    return b.build();
  }

  /**
   * The server's limits on one call ({@code ListRouters.limits}; 0 where it says none), asked once with the
   * builder's timeout and kept for the client's life.
   */
  public CallLimits limits() {
    return limits(timeout);
  }

  private CallLimits limits(Duration timeout) {
    CallLimits said = limits;
    if (said == null) { // two threads may both ask: the same answer, kept twice
      said = listRouters(timeout).getLimits();
      limits = said;
    }
    return said;
  }

  public ScoreResponse score(ScoreRequest request) {
    return score(request, timeout);
  }

  public ScoreResponse score(ScoreRequest request, Duration timeout) {
    return call("Score", request, timeout, d -> stub.withDeadline(d).score(request));
  }

  // ---- Route

  /** Strong when the router's score >= {@code threshold}. */
  public RouteResponse routeByThreshold(String prompt, String router, double threshold) {
    return route(RouteRequest.newBuilder().setPrompt(textPrompt(prompt)).setRouter(routerName(router))
        .setThreshold(threshold).build());
  }

  /** Sends about {@code strongShare} of traffic to the strong model (threshold from the bundle's calibration). */
  public RouteResponse routeByStrongShare(String prompt, String router, double strongShare) {
    return route(RouteRequest.newBuilder().setPrompt(textPrompt(prompt)).setRouter(routerName(router))
        .setStrongShare(strongShare).build());
  }

  /**
   * Chooses among {@code models} (at least two, each priced by the server's models file) by {@code rule}
   * ({@link #costWeight}, {@link #qualityMargin}, {@link #qualityFloor}; null: the caller's tenant's spend
   * target, held live by the server) with {@code router} ("": the bundle's default quality router). The
   * answer's {@code chosen} and {@code runner_up} give the predicted quality and expected cost.
   */
  public RouteResponse routeAmong(String prompt, String router, List<String> models, ModelPolicy rule) {
    return route(routeAmongRequest(prompt, router, models, rule));
  }

  /** The Route request of {@link #routeAmong}. */
  public static RouteRequest routeAmongRequest(String prompt, String router, List<String> models, ModelPolicy rule) {
    Objects.requireNonNull(models, "models: null, expected a list of model names");
    RouteRequest.Builder req = RouteRequest.newBuilder().setPrompt(textPrompt(prompt)).setRouter(routerName(router));
    for (String m : models) {
      req.addCandidates(Candidate.newBuilder().setModel(Objects.requireNonNull(m, "models: a null name")));
    }
    if (rule != null) {
      req.setModelPolicy(rule);
    }
    return req.build();
  }

  /** The model maximising predicted quality - {@code w} x the cost of 1,000 such requests in USD (w >= 0). */
  public static ModelPolicy costWeight(double w) {
    return ModelPolicy.newBuilder().setCostWeight(w).build();
  }

  /** The cheapest model predicted within {@code m} (in [0, 1]) of the best predicted one. */
  public static ModelPolicy qualityMargin(double m) {
    return ModelPolicy.newBuilder().setQualityMargin(m).build();
  }

  /** The cheapest model predicted at or above quality {@code q} (in [0, 1]), else the best predicted one. */
  public static ModelPolicy qualityFloor(double q) {
    return ModelPolicy.newBuilder().setQualityFloor(q).build();
  }

  private static String routerName(String router) {
    return Objects.requireNonNull(router, "router: null, expected a name (\"\": the bundle's default router)");
  }

  public RouteResponse route(RouteRequest request) {
    return route(request, timeout);
  }

  public RouteResponse route(RouteRequest request, Duration timeout) {
    return call("Route", request, timeout, d -> stub.withDeadline(d).route(request));
  }

  // ---- Describe

  /** Routers, models, encoder, calibration and bundle version. */
  public ListRoutersResponse listRouters() {
    return listRouters(timeout);
  }

  public ListRoutersResponse listRouters(Duration timeout) {
    ListRoutersRequest req = ListRoutersRequest.getDefaultInstance();
    return call("ListRouters", req, timeout, d -> stub.withDeadline(d).listRouters(req));
  }

  /** One router; {@code NOT_FOUND} (reason {@code ROUTER_NOT_FOUND}) when no router has that name. */
  public GetRouterResponse getRouter(String name) {
    return getRouter(name, timeout);
  }

  public GetRouterResponse getRouter(String name, Duration timeout) {
    GetRouterRequest req =
        GetRouterRequest.newBuilder().setName(Objects.requireNonNull(name, "name: null, expected a router name")).build();
    return call("GetRouter", req, timeout, d -> stub.withDeadline(d).getRouter(req));
  }

  // ---- Feedback

  /**
   * Reports outcomes of earlier decisions (by decision id) or prompts; one {@code ItemStatus} per outcome in
   * the response, in order (code 0: stored, or reason {@code DUPLICATE}: stored before with the same value).
   * The server records the caller's tenant as the outcomes' reporter.
   */
  public FeedbackResponse feedback(List<OutcomeReport> outcomes) {
    Objects.requireNonNull(outcomes, "outcomes: null, expected a list of OutcomeReport");
    FeedbackRequest.Builder req = FeedbackRequest.newBuilder();
    for (int i = 0; i < outcomes.size(); i++) {
      req.addOutcomes(Objects.requireNonNull(outcomes.get(i), "outcomes[" + i + "]: null, expected an OutcomeReport"));
    }
    return feedback(req.build(), timeout);
  }

  public FeedbackResponse feedback(FeedbackRequest request, Duration timeout) {
    return call("Feedback", request, timeout, d -> stub.withDeadline(d).feedback(request));
  }

  /** The quality in [0, 1] of the model decision {@code decisionId} chose, judged by {@code source}. */
  public static OutcomeReport singleOutcome(String decisionId, double quality, String source) {
    return OutcomeReport.newBuilder().setDecisionId(decisionId)
        .setSingle(SingleOutcome.newBuilder().setQuality(quality)).setSource(source).build();
  }

  /** Both models of the default pair judged on decision {@code decisionId}'s prompt. */
  public static OutcomeReport pairedOutcome(String decisionId, double strong, double weak, String source) {
    return OutcomeReport.newBuilder().setDecisionId(decisionId)
        .setPaired(PairedOutcome.newBuilder().setStrongQuality(strong).setWeakQuality(weak)).setSource(source)
        .build();
  }

  // ---- Targets (AdminService: a token bound to a tenant is refused)

  /**
   * Changes tenants' targets on the running server: {@code shares} maps a tenant to its strong-share target,
   * {@code spends} to its spend in USD per 1,000 requests, a null value removes the target (either map may
   * be empty). All changes are checked first and applied together, or none; the response lists the targets
   * held after.
   */
  public SetTargetsResponse setTargets(Map<String, Double> shares, Map<String, Double> spends) {
    return setTargets(setTargetsRequest(shares, spends), timeout);
  }

  public SetTargetsResponse setTargets(SetTargetsRequest request, Duration timeout) {
    return call("SetTargets", request, timeout, d -> admin.withDeadline(d).setTargets(request));
  }

  /** The request of {@link #setTargets(Map, Map)}: share changes, then spend changes, by tenant name. */
  public static SetTargetsRequest setTargetsRequest(Map<String, Double> shares, Map<String, Double> spends) {
    Objects.requireNonNull(shares, "shares: null, expected a map (empty: no change)");
    Objects.requireNonNull(spends, "spends: null, expected a map (empty: no change)");
    SetTargetsRequest.Builder req = SetTargetsRequest.newBuilder();
    new TreeMap<>(shares).forEach((tenant, v) -> req.addChanges(v == null
        ? TargetChange.newBuilder().setTenant(tenant).setRemoveStrongShare(true)
        : TargetChange.newBuilder().setTenant(tenant).setStrongShare(v)));
    new TreeMap<>(spends).forEach((tenant, v) -> req.addChanges(v == null
        ? TargetChange.newBuilder().setTenant(tenant).setRemoveSpend(true)
        : TargetChange.newBuilder().setTenant(tenant).setSpendPer1KUsd(v)));
    return req.build();
  }

  // ---- Bundle (AdminService)

  /** Which bundle serves, since when, its routers and the swaps so far. */
  public GetBundleResponse getBundle(Duration timeout) {
    GetBundleRequest req = GetBundleRequest.getDefaultInstance();
    return call("GetBundle", req, timeout, d -> admin.withDeadline(d).getBundle(req));
  }

  /**
   * Hot-swaps the server's bundle for the one at {@code path} on the server ("" = its serving path again)
   * without a failed call; {@code FAILED_PRECONDITION} when the candidate is refused (the old one serves).
   */
  public ReloadBundleResponse reloadBundle(String path, Duration timeout) {
    ReloadBundleRequest req = ReloadBundleRequest.newBuilder()
        .setPath(Objects.requireNonNull(path, "path: null, expected a path on the server (\"\": the serving one)")).build();
    return call("ReloadBundle", req, timeout, d -> admin.withDeadline(d).reloadBundle(req));
  }

  /** The tenants' strong-share targets and, per tenant and router, what their controllers realise. */
  public ListShareTargetsResponse listShareTargets(Duration timeout) {
    ListShareTargetsRequest req = ListShareTargetsRequest.getDefaultInstance();
    return call("ListShareTargets", req, timeout, d -> admin.withDeadline(d).listShareTargets(req));
  }

  /** The tenants' spend targets and, per tenant and router, what their controllers realise. */
  public ListSpendTargetsResponse listSpendTargets(Duration timeout) {
    ListSpendTargetsRequest req = ListSpendTargetsRequest.getDefaultInstance();
    return call("ListSpendTargets", req, timeout, d -> admin.withDeadline(d).listSpendTargets(req));
  }

  // ---- Decisions to judge (AdminService)

  /**
   * Up to {@code budget} of the latest 500 unjudged decisions most worth judging with both models of the
   * serving bundle's pair, from the server's outcome store ({@code FAILED_PRECONDITION} without one).
   */
  public DecisionsToJudgeResponse decisionsToJudge(int budget) {
    return decisionsToJudge(DecisionsToJudgeRequest.newBuilder().setBudget(budget).build(), timeout);
  }

  /**
   * The same with every field of the request: {@code window} (0: 500), {@code since_ms} (the previous
   * answer's {@code next_since_ms}), {@code callers}, {@code seed}.
   */
  public DecisionsToJudgeResponse decisionsToJudge(DecisionsToJudgeRequest request, Duration timeout) {
    return call("DecisionsToJudge", request, timeout, d -> admin.withDeadline(d).decisionsToJudge(request));
  }

  // ---- Health

  /** The server's overall health ({@code SERVING} once the bundle is loaded and warmed). */
  public ServingStatus health() {
    return health("", timeout);
  }

  /**
   * Health of one service, e.g. "lmroute.v1.RouterService"; {@code NOT_FOUND} for an unknown one. Not
   * retried (one attempt, whatever the retry policy): a probe wants the state now.
   */
  public ServingStatus health(String service, Duration timeout) {
    HealthCheckRequest req = HealthCheckRequest.newBuilder()
        .setService(Objects.requireNonNull(service, "service: null, expected a name (\"\": the whole server)")).build();
    Deadline deadline = checked("Health.Check", req, timeout);
    return health.withDeadline(deadline).check(req).getStatus();
  }

  /** The channel, e.g. to build other stubs on it. */
  public ManagedChannel channel() {
    return channel;
  }

  /**
   * Closes the client: every later call throws {@link IllegalStateException}; the channel is shut down (when
   * this client opened it), waiting up to 5 s for calls in flight. A second call does nothing.
   */
  @Override
  public void close() {
    if (!closed.compareAndSet(false, true) || !ownsChannel) {
      return;
    }
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  /** One call: the checks of {@link #checked}, then the attempts under the retry policy. */
  private <T> T call(String method, Message request, Duration timeout, Function<Deadline, T> attempt) {
    return retrier.call(method, checked(method, request, timeout), attempt);
  }

  /**
   * Refuses a call before anything is sent: after {@link #close()} ({@link IllegalStateException}), a bad
   * timeout, a string that is not text (an unpaired surrogate), a request over {@code maxMessageBytes}
   * ({@code RESOURCE_EXHAUSTED}); else the call's deadline.
   */
  private Deadline checked(String method, Message request, Duration timeout) {
    if (closed.get()) {
      throw new IllegalStateException("client is closed");
    }
    Deadline deadline = deadlineAfter(timeout);
    Objects.requireNonNull(request, "request");
    Requests.requireText(request);
    Requests.requireSize(method, request, maxMessageBytes);
    return deadline;
  }

  private static Deadline deadlineAfter(Duration timeout) {
    Objects.requireNonNull(timeout, "timeout");
    if (timeout.isNegative() || timeout.isZero()) {
      throw new IllegalArgumentException("timeout: must be > 0 (got " + timeout + ")");
    }
    return Deadline.after(timeout.toNanos(), TimeUnit.NANOSECONDS);
  }

  /** Settings of a {@link RouterClient}. */
  public static final class Builder {
    private final String target;
    private final ManagedChannel channel;
    private Duration timeout = Duration.ofSeconds(10);
    private RetryPolicy retryPolicy = RetryPolicy.defaults();
    private RetryListener retryListener = RetryListener.NONE;
    private int maxMessageBytes = 4 * 1024 * 1024;
    private ChannelCredentials credentials = InsecureChannelCredentials.create();
    private String token;
    private String tenant;

    private Builder(String target, ManagedChannel channel) {
      this.target = target;
      this.channel = channel;
    }

    /** Default deadline of every call, all attempts included (10 s). */
    public Builder timeout(Duration timeout) {
      this.timeout = Objects.requireNonNull(timeout, "timeout");
      return this;
    }

    /** Retries on UNAVAILABLE / RESOURCE_EXHAUSTED ({@link RetryPolicy#defaults()}); {@link RetryPolicy#none()} turns them off. */
    public Builder retryPolicy(RetryPolicy policy) {
      this.retryPolicy = Objects.requireNonNull(policy, "retryPolicy");
      return this;
    }

    /** Told before every retry (to log or count them); none by default. */
    public Builder retryListener(RetryListener listener) {
      this.retryListener = Objects.requireNonNull(listener, "retryListener");
      return this;
    }

    /**
     * Largest message sent or received (4 MiB, as the server's default). A request over it is refused before
     * it is sent: {@code RESOURCE_EXHAUSTED} "message larger than max", not retried.
     */
    public Builder maxMessageBytes(int bytes) {
      this.maxMessageBytes = bytes;
      return this;
    }

    /** Channel credentials (plain text by default); ignored for a caller-owned channel. */
    public Builder credentials(ChannelCredentials credentials) {
      this.credentials = Objects.requireNonNull(credentials, "credentials");
      return this;
    }

    /**
     * A bearer token sent with every RouterService call ({@code authorization: Bearer <token>}; the server's
     * {@code --auth-tokens-file} / {@code --auth-tokens-env}); none by default. Not with call credentials of
     * its own in {@link #credentials}.
     */
    public Builder token(String token) {
      this.token = CallHeaders.checked("token", token);
      return this;
    }

    /**
     * The caller's tenant, named in every RouterService call's {@code x-lmroute-tenant}: its share and spend
     * targets and its turn in the server's queue. A token bound to a tenant decides instead (the server
     * ignores the header then). None by default.
     */
    public Builder tenant(String tenant) {
      this.tenant = CallHeaders.checked("tenant", tenant);
      return this;
    }

    public RouterClient build() {
      if (timeout.isNegative() || timeout.isZero()) {
        throw new IllegalArgumentException("timeout: must be > 0 (got " + timeout + ")");
      }
      if (maxMessageBytes <= 0) {
        throw new IllegalArgumentException("maxMessageBytes: must be > 0 (got " + maxMessageBytes + ")");
      }
      if (channel != null) {
        return new RouterClient(this, channel, false);
      }
      ManagedChannel ch = Grpc.newChannelBuilder(target, credentials).maxInboundMessageSize(maxMessageBytes).build();
      return new RouterClient(this, ch, true);
    }
  }
}
