package dev.lmroute.client.cli;

import com.google.gson.JsonArray;
import dev.lmroute.client.RouterClient;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;
import com.google.gson.JsonPrimitive;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import lmroute.v1.Router.ModelPolicy;

/**
 * One case of a conformance cases.json (clients/CONFORMANCE.md), checked field by field when read.
 *
 * @param id the case id, echoed in the output
 * @param rpc one of {@link #RPCS}
 * @param timeout the call's deadline ({@code timeout_ms}, default 30000)
 * @param prompts Score, ScoreAll: the prompt texts (absent = empty, as the other clients send it)
 * @param routers Score, ScoreAll: router names (absent = empty)
 * @param prompt Route: the prompt text, or null (absent: the request's prompt unset, as the other clients send it)
 * @param router Route: the router name (absent = "")
 * @param threshold Route: explicit threshold, or null
 * @param strongShare Route: target strong share, or null
 * @param service Health: the service name ("" = the server as a whole)
 * @param outcomes Feedback: the outcomes to report (after a Route call of {@code prompt}, when given)
 * @param shares SetTargets: tenant to strong-share target, null to remove it
 * @param spends SetTargets: tenant to spend target, null to remove it
 * @param path ReloadBundle: the bundle directory on the server ("" = its serving path)
 * @param judge DecisionsToJudge: what to ask for
 * @param candidates Route among models: the candidates' names, or null (a Route between the pair)
 * @param rule Route among models: the ModelPolicy rule, or null (the tenant's spend target)
 */
record ConformanceCase(
    String id,
    String rpc,
    Duration timeout,
    List<String> prompts,
    List<String> routers,
    String prompt,
    String router,
    Double threshold,
    Double strongShare,
    String service,
    List<Outcome> outcomes,
    Map<String, Double> shares,
    Map<String, Double> spends,
    String path,
    JudgeAsk judge,
    List<String> candidates,
    ModelPolicy rule) {

  static final Set<String> RPCS = Set.of("Score", "ScoreAll", "Route", "Health", "ListRouters", "Feedback", "SetTargets",
      "ListShareTargets", "ListSpendTargets", "GetBundle", "ReloadBundle", "DecisionsToJudge");

  /**
   * A DecisionsToJudge case's request.
   *
   * @param budget how many to pick
   * @param window among how many of the latest unjudged decisions (0: the server's 500)
   * @param sinceMs only decisions made at or after this Unix time in milliseconds
   */
  record JudgeAsk(int budget, int window, long sinceMs) {}

  /** The decision_id of a Feedback outcome that names the decision of the case's own Route call. */
  static final String ROUTED = "routed";

  /**
   * One outcome of a Feedback case.
   *
   * @param decisionId the decision it is about ({@link #ROUTED}: the case's own)
   * @param single the answering model's quality, or null
   * @param paired the strong and weak model's qualities, or null (exactly one of the two is set)
   * @param source who judged
   */
  record Outcome(String decisionId, Double single, double[] paired, String source) {}
  static final long DEFAULT_TIMEOUT_MS = 30_000;

  /** A cases file that cannot be used; the message names the file and the field. Exit status 2. */
  static final class CasesError extends Exception {
    private static final long serialVersionUID = 1L;

    CasesError(String message) {
      super(message);
    }
  }

  /** Parses the text of a cases.json; {@code source} names it in messages. */
  static List<ConformanceCase> parseAll(String json, String source) throws CasesError {
    JsonElement root;
    try {
      root = JsonParser.parseString(json);
    } catch (JsonParseException e) {
      throw new CasesError(source + ": not valid JSON: " + e.getMessage());
    }
    if (!root.isJsonObject() || !root.getAsJsonObject().has("cases")
        || !root.getAsJsonObject().get("cases").isJsonArray()) {
      throw new CasesError(source + ": expected an object {\"cases\": [...]}");
    }
    JsonArray cases = root.getAsJsonObject().getAsJsonArray("cases");
    List<ConformanceCase> out = new ArrayList<>(cases.size());
    for (int i = 0; i < cases.size(); i++) {
      String where = source + ": cases[" + i + "]";
      if (!cases.get(i).isJsonObject()) {
        throw new CasesError(where + ": expected an object");
      }
      out.add(parseOne(cases.get(i).getAsJsonObject(), where));
    }
    return out;
  }

  private static ConformanceCase parseOne(JsonObject c, String where) throws CasesError {
    String id = string(c, "id", where, null);
    String rpc = string(c, "rpc", where, null);
    if (!RPCS.contains(rpc)) {
      throw new CasesError(
          where + ".rpc: unknown rpc \"" + rpc + "\" (known: " + String.join(", ", sorted(RPCS)) + ")");
    }
    long timeoutMs = DEFAULT_TIMEOUT_MS;
    if (c.has("timeout_ms")) {
      double t = number(c, "timeout_ms", where);
      if (!(t > 0) || t != Math.rint(t) || t > Long.MAX_VALUE / 1_000_000) {
        throw new CasesError(where + ".timeout_ms: must be a positive integer (got " + c.get("timeout_ms") + ")");
      }
      timeoutMs = (long) t;
    }
    Duration timeout = Duration.ofMillis(timeoutMs);
    switch (rpc) {
      case "Score":
      case "ScoreAll":
        return new ConformanceCase(id, rpc, timeout, strings(c, "prompts", where, false),
            strings(c, "routers", where, false), null, null, null, null, null, null, null, null, null, null, null,
            null);
      case "Route": {
        Double threshold = c.has("threshold") ? number(c, "threshold", where) : null;
        Double share = c.has("strong_share") ? number(c, "strong_share", where) : null;
        if (threshold != null && share != null) {
          throw new CasesError(where + ": threshold and strong_share are both given; give at most one");
        }
        List<String> candidates = c.has("candidates") ? strings(c, "candidates", where, true) : null;
        String prompt = given(c, "prompt") ? string(c, "prompt", where, null) : null;
        return new ConformanceCase(id, rpc, timeout, null, null, prompt,
            string(c, "router", where, ""), threshold, share, null, null, null, null, null, null, candidates,
            rule(c, where));
      }
      case "Health":
        return new ConformanceCase(id, rpc, timeout, null, null, null, null, null, null,
            string(c, "service", where, ""), null, null, null, null, null, null, null);
      case "Feedback": {
        String prompt = c.has("prompt") ? string(c, "prompt", where, null) : null;
        Double threshold = c.has("threshold") ? number(c, "threshold", where) : null;
        return new ConformanceCase(id, rpc, timeout, null, null, prompt, string(c, "router", where, ""),
            threshold, null, null, outcomes(c, where), null, null, null, null, null, null);
      }
      case "SetTargets":
        return new ConformanceCase(id, rpc, timeout, null, null, null, null, null, null, null, null,
            targets(c, "shares", where), targets(c, "spends", where), null, null, null, null);
      case "ReloadBundle":
        return new ConformanceCase(id, rpc, timeout, null, null, null, null, null, null, null, null, null, null,
            string(c, "path", where, ""), null, null, null);
      case "DecisionsToJudge":
        return new ConformanceCase(id, rpc, timeout, null, null, null, null, null, null, null, null, null, null, null,
            new JudgeAsk((int) integer(c, "budget", where, Integer.MIN_VALUE, Integer.MAX_VALUE),
                (int) integer(c, "window", where, Integer.MIN_VALUE, Integer.MAX_VALUE),
                integer(c, "since_ms", where, Long.MIN_VALUE, Long.MAX_VALUE)), null, null);
      default:
        return new ConformanceCase(
            id, rpc, timeout, null, null, null, null, null, null, null, null, null, null, null, null, null, null);
    }
  }

  private static List<String> sorted(Set<String> names) {
    List<String> out = new ArrayList<>(names);
    out.sort(null);
    return out;
  }

  private static List<Outcome> outcomes(JsonObject c, String where) throws CasesError {
    JsonElement e = c.get("outcomes");
    if (e == null || !e.isJsonArray()) {
      throw new CasesError(where + ".outcomes: expected a list of outcomes (got " + e + ")");
    }
    List<Outcome> out = new ArrayList<>();
    JsonArray a = e.getAsJsonArray();
    for (int i = 0; i < a.size(); i++) {
      String at = where + ".outcomes[" + i + "]";
      if (!a.get(i).isJsonObject()) {
        throw new CasesError(at + ": expected an object");
      }
      JsonObject o = a.get(i).getAsJsonObject();
      Double single = o.has("single") ? number(o, "single", at) : null;
      double[] paired = null;
      if (o.has("paired")) {
        JsonElement p = o.get("paired");
        if (!p.isJsonArray() || p.getAsJsonArray().size() != 2) {
          throw new CasesError(at + ".paired: expected [strong, weak] (got " + p + ")");
        }
        JsonObject pair = new JsonObject();
        pair.add("strong", p.getAsJsonArray().get(0));
        pair.add("weak", p.getAsJsonArray().get(1));
        paired = new double[] {number(pair, "strong", at + ".paired"), number(pair, "weak", at + ".paired")};
      }
      if ((single == null) == (paired == null)) {
        throw new CasesError(at + ": give one of single and paired");
      }
      out.add(new Outcome(string(o, "decision_id", at, null), single, paired, string(o, "source", at, "")));
    }
    return out;
  }

  /** A Route case's ModelPolicy rule: at most one of cost_weight, quality_margin, quality_floor; null for none. */
  private static ModelPolicy rule(JsonObject c, String where) throws CasesError {
    List<String> given = new ArrayList<>();
    for (String field : List.of("cost_weight", "quality_margin", "quality_floor")) {
      if (c.has(field)) {
        given.add(field);
      }
    }
    if (given.size() > 1) {
      throw new CasesError(where + ": " + String.join(" and ", given) + " are both given; give at most one");
    }
    if (given.isEmpty()) {
      return null;
    }
    double value = number(c, given.get(0), where);
    return switch (given.get(0)) {
      case "cost_weight" -> RouterClient.costWeight(value);
      case "quality_margin" -> RouterClient.qualityMargin(value);
      default -> RouterClient.qualityFloor(value);
    };
  }

  private static Map<String, Double> targets(JsonObject c, String field, String where) throws CasesError {
    JsonElement e = c.get(field);
    Map<String, Double> out = new LinkedHashMap<>();
    if (e == null || e.isJsonNull()) {
      return out;
    }
    if (!e.isJsonObject()) {
      throw new CasesError(where + "." + field + ": expected an object {tenant: value or null}");
    }
    for (Map.Entry<String, JsonElement> t : e.getAsJsonObject().entrySet()) {
      JsonObject all = e.getAsJsonObject();
      out.put(t.getKey(), t.getValue().isJsonNull() ? null : number(all, t.getKey(), where + "." + field));
    }
    return out;
  }

  private static String string(JsonObject c, String field, String where, String fallback) throws CasesError {
    JsonElement e = c.get(field);
    if (e == null || e.isJsonNull()) {
      if (fallback != null) {
        return fallback;
      }
      throw new CasesError(where + "." + field + ": required");
    }
    if (!isString(e)) {
      throw new CasesError(where + "." + field + ": expected a string (got " + e + ")");
    }
    return e.getAsString();
  }

  private static double number(JsonObject c, String field, String where) throws CasesError {
    JsonElement e = c.get(field);
    if (!(e instanceof JsonPrimitive p) || !p.isNumber()) {
      throw new CasesError(where + "." + field + ": expected a number (got " + e + ")");
    }
    return p.getAsDouble();
  }

  /** An integer field in [low, high]; 0 when absent (a proto3 default). */
  private static long integer(JsonObject c, String field, String where, long low, long high) throws CasesError {
    if (!c.has(field)) {
      return 0;
    }
    double v = number(c, field, where);
    if (v != Math.rint(v) || v < low || v > high) {
      throw new CasesError(where + "." + field + ": expected an integer in [" + low + ", " + high + "] (got "
          + c.get(field) + ")");
    }
    return (long) v;
  }

  private static List<String> strings(JsonObject c, String field, String where, boolean required)
      throws CasesError {
    JsonElement e = c.get(field);
    if (e == null || e.isJsonNull()) {
      if (required) {
        throw new CasesError(where + "." + field + ": required");
      }
      return List.of();
    }
    if (!e.isJsonArray()) {
      throw new CasesError(where + "." + field + ": expected a list of strings (got " + e + ")");
    }
    List<String> out = new ArrayList<>();
    JsonArray a = e.getAsJsonArray();
    for (int i = 0; i < a.size(); i++) {
      if (!isString(a.get(i))) {
        throw new CasesError(where + "." + field + "[" + i + "]: expected a string (got " + a.get(i) + ")");
      }
      out.add(a.get(i).getAsString());
    }
    return out;
  }

  /** Whether {@code field} is present and not null (null is absent, as the Go client reads it). */
  private static boolean given(JsonObject c, String field) {
    return c.has(field) && !c.get(field).isJsonNull();
  }

  private static boolean isString(JsonElement e) {
    return e instanceof JsonPrimitive p && p.isString();
  }
}
