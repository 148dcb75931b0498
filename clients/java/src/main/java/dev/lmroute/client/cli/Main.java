package dev.lmroute.client.cli;

import dev.lmroute.client.RetryPolicy;
import dev.lmroute.client.RouterClient;
import dev.lmroute.client.RouterErrors;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckResponse.ServingStatus;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.Charset;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.stream.Collectors;
import javax.net.ssl.SSLException;
import lmroute.v1.Router.FeedbackResponse;
import lmroute.v1.Router.ItemStatus;
import lmroute.v1.Router.ModelPolicy;
import lmroute.v1.Router.OutcomeReport;
import lmroute.v1.Router.PromptScores;
import lmroute.v1.Router.RouteRequest;
import lmroute.v1.Router.RouteResponse;
import lmroute.v1.Router.RouterScore;
import lmroute.v1.Router.ScoreResponse;

/**
 * {@code java -jar lmroute-java-client.jar <route|score|health|feedback|conformance> [options]}.
 *
 * <p>Exit status: 0 success; 1 the call failed (or health is not SERVING); 2 bad arguments.
 */
public final class Main {

  static final int EXIT_OK = 0;
  static final int EXIT_FAILED = 1;
  static final int EXIT_USAGE = 2;

  private static final String DEFAULT_ADDR = "127.0.0.1:50051";
  private static final Set<String> CALL_OPTIONS = with(Credentials.OPTIONS, "addr", "timeout-ms", "max-attempts");

  private static final String USAGE = String.join("\n",
      "usage: java -jar lmroute-java-client.jar COMMAND [options]",
      "",
      "  route  [--router NAME] [--threshold X | --strong-share X] PROMPT decide strong vs weak for one prompt",
      "  route  --models A,B,... [--cost-weight W | --quality-margin M | --quality-floor Q] [--router NAME] PROMPT",
      "                                                                   choose among models (no rule: spend target)",
      "  score  [--router NAME]... PROMPT...                             scores of each prompt (all routers by default)",
      "  health [--service NAME]                                          grpc.health.v1 status (exit 1 unless SERVING)",
      "  feedback --decision-id ID (--quality Q | --strong Q --weak Q) [--source NAME]",
      "                                                                   an outcome of a decision (route prints its id)",
      "  conformance --addr HOST:PORT --cases FILE                        run clients/CONFORMANCE.md cases, print JSON",
      "",
      "common options (route, score, health, feedback):",
      "  --addr HOST:PORT      server address (default " + DEFAULT_ADDR + ")",
      "  --timeout-ms N        deadline of the call, retries included (default 10000)",
      "  --max-attempts N      attempts on UNAVAILABLE / RESOURCE_EXHAUSTED (default 4; 1 = no retry)",
      "  --ca FILE             connect over TLS, trusting this CA certificate (PEM; also for conformance)",
      "  --cert FILE --key FILE  mTLS: the client certificate chain and its PKCS#8 private key (PEM)",
      "  --token-env NAME      send the bearer token held by this environment variable (also for conformance)",
      "  --tenant NAME         name this tenant in every call (x-lmroute-tenant); route with no policy: its share target");

  private Main() {}

  public static void main(String[] argv) {
    // UTF-8 whatever the locale: the conformance JSON and the names in it must reach the caller intact.
    PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);
    PrintStream err = new PrintStream(new FileOutputStream(FileDescriptor.err), true, StandardCharsets.UTF_8);
    int status = run(argv, out, err);
    out.flush();
    err.flush();
    System.exit(status);
  }

  /** Runs one command; returns the exit status. */
  static int run(String[] argv, PrintStream out, PrintStream err) {
    return run(argv, out, err, System.getProperty("sun.jnu.encoding", "UTF-8"));
  }

  /**
   * Runs one command whose arguments the JVM decoded with the charset named {@code argEncoding} (its
   * {@code sun.jnu.encoding}, from the locale); returns the exit status.
   */
  static int run(String[] argv, PrintStream out, PrintStream err, String argEncoding) {
    try {
      requireTypedText(argv, argEncoding);
    } catch (Args.UsageError e) {
      err.println("error: " + e.getMessage());
      return EXIT_USAGE;
    }
    if (argv.length == 0 || argv[0].equals("-h") || argv[0].equals("--help") || argv[0].equals("help")) {
      (argv.length == 0 ? err : out).println(USAGE);
      return argv.length == 0 ? EXIT_USAGE : EXIT_OK;
    }
    if (asksForHelp(argv)) { // "route --help": the usage, not "--help: missing value"
      out.println(USAGE);
      return EXIT_OK;
    }
    try {
      switch (argv[0]) {
        case "conformance":
          return Conformance.run(Args.parse(argv, 1, Conformance.OPTIONS), out, err);
        case "route":
          return route(Args.parse(argv, 1, with(CALL_OPTIONS, "router", "threshold", "strong-share", "models",
              "cost-weight", "quality-margin", "quality-floor")), out, err);
        case "score":
          return score(Args.parse(argv, 1, with(CALL_OPTIONS, "router")), out, err);
        case "health":
          return health(Args.parse(argv, 1, with(CALL_OPTIONS, "service")), out, err);
        case "feedback":
          return feedback(
              Args.parse(argv, 1, with(CALL_OPTIONS, "decision-id", "quality", "strong", "weak", "source")), out, err);
        default:
          throw new Args.UsageError(
              "unknown command \"" + argv[0] + "\" (route, score, health, feedback, conformance)");
      }
    } catch (Args.UsageError e) {
      err.println("error: " + e.getMessage());
      err.println(USAGE);
      return EXIT_USAGE;
    } catch (IllegalArgumentException e) { // e.g. an --addr gRPC cannot parse, a bad retry setting
      err.println("error: " + e.getMessage());
      return EXIT_USAGE;
    } catch (StatusRuntimeException e) {
      err.println("error: " + describe(e) + ": " + detail(e.getStatus()));
      return EXIT_FAILED;
    }
  }

  /**
   * Refuses an argument that may not be the text the user typed, so that a different prompt (or router,
   * decision id, ...) is never sent: one holding U+FFFD, which the JVM puts where the bytes it was given
   * are not text in {@code argEncoding} (bytes that are not UTF-8; under LC_ALL=C every non-ASCII byte);
   * and, when {@code argEncoding} is not UTF-8, a non-ASCII one that the charset cannot give back as it
   * came (unmappable) or whose bytes read as UTF-8 (typed in UTF-8, decoded as another charset: "café"
   * would become "cafÃ©"). Non-ASCII text typed in the locale's own charset (bytes that are not UTF-8) is
   * taken as decoded. Arguments are numbered from 1, the command being argument 1.
   */
  static void requireTypedText(String[] argv, String argEncoding) throws Args.UsageError {
    Charset charset = charset(argEncoding);
    boolean utf8 = StandardCharsets.UTF_8.equals(charset);
    String locale = utf8 ? "" : "; the JVM decodes arguments as " + argEncoding
        + " (sun.jnu.encoding, from the locale), not UTF-8: run it under a UTF-8 locale, e.g. LANG=C.UTF-8"
        + " (with LC_ALL unset or a UTF-8 locale too)";
    for (int i = 0; i < argv.length; i++) {
      String a = argv[i];
      if (a.indexOf('\uFFFD') >= 0) {
        throw new Args.UsageError("argument " + (i + 1) + " (" + quoted(a) + ") is not UTF-8 text" + locale);
      }
      if (!utf8 && !a.chars().allMatch(c -> c < 0x80) && !decodedAsTyped(a, charset)) {
        throw new Args.UsageError("argument " + (i + 1) + " (" + quoted(a)
            + ") may not be the text typed: it is not ASCII and not known to be UTF-8 text" + locale);
      }
    }
  }

  private static Charset charset(String name) {
    try {
      return Charset.forName(name);
    } catch (IllegalArgumentException e) { // unknown or unsupported: nothing known to be faithful
      return null;
    }
  }

  /** Whether {@code arg}, decoded from {@code charset}, encodes back to bytes that are not UTF-8 text. */
  private static boolean decodedAsTyped(String arg, Charset charset) {
    if (charset == null || !charset.canEncode()) {
      return false;
    }
    ByteBuffer bytes;
    try {
      bytes = charset.newEncoder().onMalformedInput(CodingErrorAction.REPORT)
          .onUnmappableCharacter(CodingErrorAction.REPORT).encode(CharBuffer.wrap(arg));
    } catch (CharacterCodingException e) {
      return false;
    }
    try {
      StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
          .onUnmappableCharacter(CodingErrorAction.REPORT).decode(bytes);
      return false; // valid UTF-8 that is not ASCII: typed in UTF-8, read as another charset
    } catch (CharacterCodingException e) {
      return true;
    }
  }

  /** {@code s} in double quotes, every character outside printable ASCII as {@code \}{@code uXXXX}. */
  static String quoted(String s) {
    StringBuilder b = new StringBuilder("\"");
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      if (c == '"' || c == '\\') {
        b.append('\\').append(c);
      } else if (c >= 0x20 && c < 0x7f) {
        b.append(c);
      } else {
        b.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
      }
    }
    return b.append('"').toString();
  }

  /** Whether an option before any "--" is -h or --help (an option value never starts a word with it). */
  private static boolean asksForHelp(String[] argv) {
    for (int i = 1; i < argv.length && !argv[i].equals("--"); i++) {
      if (argv[i].equals("-h") || argv[i].equals("--help")) {
        return true;
      }
    }
    return false;
  }

  /**
   * The status's description, with its cause's message where gRPC's own is only a category (a refused
   * connection reads "io exception"; its cause says "Connection refused: /127.0.0.1:50051"). For a TLS
   * failure (an SSLException or a certificate error in the cause chain) the innermost message of the chain
   * that says something (a hostname the certificate does not name, a CA not trusted), not the wrapper's
   * "General OpenSslEngine problem"; Netty's "Channel Pipeline: [...]" line is left out.
   */
  static String detail(Status status) {
    String description = Optional.ofNullable(status.getDescription()).orElse("").lines()
        .filter(line -> !line.startsWith("Channel Pipeline:")).collect(Collectors.joining("; ")).trim();
    List<Throwable> chain = causes(status.getCause());
    String said = null;
    int tls = -1;
    for (int i = 0; i < chain.size() && tls < 0; i++) {
      if (chain.get(i) instanceof SSLException || chain.get(i) instanceof GeneralSecurityException) {
        tls = i;
      }
    }
    if (tls >= 0) {
      for (Throwable t : chain.subList(tls, chain.size())) {
        String m = t.getMessage();
        if (m != null && !m.isBlank() && !GENERIC_TLS_MESSAGES.contains(m.trim())) {
          said = m.trim(); // the innermost one wins
        }
      }
      said = "TLS handshake failed: " + Optional.ofNullable(said).orElse(chain.get(tls).toString());
      if (said.contains("unable to find valid certification path")) {
        said += " (the server's certificate is not signed by the CA given: --ca)";
      }
    } else {
      for (Throwable t : chain) {
        if (t.getMessage() != null) {
          said = t.getMessage();
          break;
        }
      }
    }
    if (said == null || description.contains(said)) {
      return description;
    }
    return description.isEmpty() ? said : description + " (" + said + ")";
  }

  /** Messages of TLS exceptions that only wrap the one that says what went wrong. */
  private static final Set<String> GENERIC_TLS_MESSAGES =
      Set.of("General OpenSslEngine problem", "General SSLEngine problem");

  /** {@code t} and its causes, outermost first (a cycle ends the list). */
  private static List<Throwable> causes(Throwable t) {
    List<Throwable> chain = new ArrayList<>();
    Set<Throwable> seen = java.util.Collections.newSetFromMap(new IdentityHashMap<>());
    for (; t != null && seen.add(t); t = t.getCause()) {
      chain.add(t);
    }
    return chain;
  }

  /** "CODE" or "CODE REASON". */
  private static String describe(StatusRuntimeException e) {
    String reason = RouterErrors.reason(e);
    return e.getStatus().getCode() + (reason.isEmpty() ? "" : " " + reason);
  }

  static Set<String> with(Set<String> base, String... more) {
    java.util.HashSet<String> s = new java.util.HashSet<>(base);
    s.addAll(List.of(more));
    return Set.copyOf(s);
  }

  /**
   * Refuses an --addr that is not HOST:PORT with a port in 1-65535 (gRPC would dial port 80 for a missing
   * one, or fail an unusable one only at the deadline).
   */
  static void checkAddr(String addr) throws Args.UsageError {
    int colon = addr.lastIndexOf(':');
    String host = colon < 0 ? "" : addr.substring(0, colon);
    String port = colon < 0 ? "" : addr.substring(colon + 1);
    boolean ok = !host.isEmpty() && port.matches("[0-9]{1,5}") && Integer.parseInt(port) >= 1
        && Integer.parseInt(port) <= 65535 && (!host.contains(":") || host.startsWith("[") && host.endsWith("]"));
    if (!ok) {
      throw new Args.UsageError("--addr '" + addr + "': expected HOST:PORT with a port in 1-65535");
    }
  }

  private static RouterClient client(Args a, PrintStream err) throws Args.UsageError {
    int timeoutMs = a.getInt("timeout-ms", 10_000, 1);
    int attempts = a.getInt("max-attempts", RetryPolicy.defaults().maxAttempts(), 1);
    String addr = a.get("addr").orElse(DEFAULT_ADDR);
    checkAddr(addr);
    return Credentials.configure(RouterClient.newBuilder(addr), a, System.getenv())
        .timeout(Duration.ofMillis(timeoutMs))
        .retryPolicy(RetryPolicy.newBuilder().maxAttempts(attempts).build())
        .retryListener((method, failed, e, wait) -> err.printf(Locale.ROOT, "retry: %s attempt %d failed with %s; waiting %d ms%n",
            method, failed, describe(e), wait.toMillis()))
        .build();
  }

  private static int route(Args a, PrintStream out, PrintStream err) throws Args.UsageError {
    String router = a.get("router").orElse(""); // empty: the bundle's default router
    Optional<Double> threshold = a.getDouble("threshold");
    Optional<Double> share = a.getDouble("strong-share");
    if (threshold.isPresent() && share.isPresent()) {
      throw new Args.UsageError("give at most one of --threshold and --strong-share");
    }
    if (a.positionals().size() != 1) {
      throw new Args.UsageError("route takes exactly one PROMPT (got " + a.positionals().size() + ")");
    }
    Optional<String> models = a.get("models");
    Map<String, Optional<Double>> rules = new LinkedHashMap<>();
    for (String rule : List.of("cost-weight", "quality-margin", "quality-floor")) {
      rules.put(rule, a.getDouble(rule));
    }
    long givenRules = rules.values().stream().filter(Optional::isPresent).count();
    if (models.isEmpty() && givenRules > 0) {
      throw new Args.UsageError("--cost-weight, --quality-margin and --quality-floor need --models");
    }
    if (models.isPresent()) {
      if (threshold.isPresent() || share.isPresent() || givenRules > 1) {
        throw new Args.UsageError("with --models give at most one of --cost-weight, --quality-margin, --quality-floor");
      }
      ModelPolicy rule = null; // none: the caller's tenant's spend target
      if (rules.get("cost-weight").isPresent()) {
        rule = RouterClient.costWeight(rules.get("cost-weight").get());
      } else if (rules.get("quality-margin").isPresent()) {
        rule = RouterClient.qualityMargin(rules.get("quality-margin").get());
      } else if (rules.get("quality-floor").isPresent()) {
        rule = RouterClient.qualityFloor(rules.get("quality-floor").get());
      }
      List<String> names = List.of(models.get().split(",", -1));
      for (int i = 0; i < names.size(); i++) {
        if (names.get(i).isEmpty()) {
          throw new Args.UsageError("--models: name " + (i + 1) + " is empty ('" + models.get() + "')");
        }
      }
      try (RouterClient c = client(a, err)) {
        RouteResponse r = c.routeAmong(a.positionals().get(0), router, names, rule);
        out.printf(Locale.ROOT, "chosen_model       %s%npredicted_quality  %.6f%nexpected_cost_usd  %.6g%n"
                + "runner_up          %s%npropensity         %.6f%nrouter             %s%nbundle             %s%n"
                + "decision_id        %s%n",
            r.getChosenModel(), r.getChosen().getPredictedQuality(), r.getChosen().getExpectedCostUsd(),
            r.getRunnerUp().getModel(), r.getPropensity(), r.getRouter(), r.getBundleVersion(), r.getDecisionId());
      }
      return EXIT_OK;
    }
    RouteRequest.Builder req =
        RouteRequest.newBuilder().setPrompt(RouterClient.textPrompt(a.positionals().get(0))).setRouter(router);
    threshold.ifPresent(req::setThreshold);
    share.ifPresent(req::setStrongShare);
    try (RouterClient c = client(a, err)) {
      RouteResponse r = c.route(req.build());
      // propensity: 1 when the policy decided, below 1 for an exploring decision (what an outcome of it is
      // weighted by)
      out.printf(Locale.ROOT, "chosen_model  %s%ntier          %s%nscore         %.6f%nthreshold     %.6f%n"
              + "propensity    %.6f%nrouter        %s%nbundle        %s%nn_tokens      %d%s%ndecision_id   %s%n",
          r.getChosenModel(), r.getTier(), r.getScore(), r.getThreshold(), r.getPropensity(), r.getRouter(),
          r.getBundleVersion(), r.getNTokens(), r.getTruncated() ? " (truncated)" : "", r.getDecisionId());
    }
    return EXIT_OK;
  }

  private static int score(Args a, PrintStream out, PrintStream err) throws Args.UsageError {
    List<String> prompts = a.positionals();
    if (prompts.isEmpty()) {
      throw new Args.UsageError("score needs at least one PROMPT");
    }
    try (RouterClient c = client(a, err)) {
      ScoreResponse resp = c.score(prompts, a.all("router"));
      out.println("bundle " + resp.getBundleVersion());
      for (PromptScores ps : resp.getResultsList()) {
        StringBuilder line = new StringBuilder("[" + ps.getIndex() + "] ");
        if (ps.getStatus().getCode() != 0) {
          line.append("error ").append(ps.getStatus().getReason()).append(": ").append(ps.getStatus().getMessage());
        } else {
          line.append("n_tokens=").append(ps.getNTokens()).append(ps.getTruncated() ? " (truncated)" : "");
          for (RouterScore s : ps.getScoresList()) {
            line.append(String.format(Locale.ROOT, "  %s=%.6f", s.getRouter(), s.getStrongWinProbability()));
          }
        }
        out.println(line);
      }
    }
    return EXIT_OK;
  }

  private static int feedback(Args a, PrintStream out, PrintStream err) throws Args.UsageError {
    if (!a.positionals().isEmpty()) {
      throw new Args.UsageError("feedback takes no positional argument (got " + a.positionals() + ")");
    }
    String id = a.require("decision-id");
    Optional<Double> quality = a.getDouble("quality");
    Optional<Double> strong = a.getDouble("strong");
    Optional<Double> weak = a.getDouble("weak");
    if (quality.isPresent() == (strong.isPresent() || weak.isPresent()) || strong.isPresent() != weak.isPresent()) {
      throw new Args.UsageError("give --quality, or --strong and --weak");
    }
    String source = a.get("source").orElse("");
    OutcomeReport report = quality.isPresent()
        ? RouterClient.singleOutcome(id, quality.get(), source)
        : RouterClient.pairedOutcome(id, strong.get(), weak.get(), source);
    try (RouterClient c = client(a, err)) {
      FeedbackResponse resp = c.feedback(List.of(report));
      if (resp.getResultsCount() != 1) { // one outcome sent: one status owed (a server answering otherwise is broken)
        err.println("error: the server answered " + resp.getResultsCount() + " statuses for the 1 outcome sent (stored "
            + resp.getStored() + ")");
        return EXIT_FAILED;
      }
      ItemStatus st = resp.getResults(0);
      if (st.getCode() != 0) {
        err.println("error: " + Status.fromCodeValue(st.getCode()).getCode() + " " + st.getReason() + ": "
            + st.getMessage());
        return EXIT_FAILED;
      }
      out.println("stored " + resp.getStored() + (st.getReason().isEmpty() ? "" : " (" + st.getReason() + ")"));
    }
    return EXIT_OK;
  }

  private static int health(Args a, PrintStream out, PrintStream err) throws Args.UsageError {
    if (!a.positionals().isEmpty()) {
      throw new Args.UsageError("health takes no PROMPT (got " + a.positionals() + ")");
    }
    int timeoutMs = a.getInt("timeout-ms", 10_000, 1);
    try (RouterClient c = client(a, err)) {
      ServingStatus s = c.health(a.get("service").orElse(""), Duration.ofMillis(timeoutMs));
      out.println(s.name());
      return s == ServingStatus.SERVING ? EXIT_OK : EXIT_FAILED;
    }
  }
}
