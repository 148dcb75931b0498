package dev.lmroute.client.cli;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;
import com.google.gson.JsonPrimitive;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;

/**
 * One case of a conformance cases.json (clients/CONFORMANCE.md), checked field by field when read.
 *
 * @param id the case id, echoed in the output
 * @param rpc Score, Route, Health or ListRouters
 * @param timeout the call's deadline ({@code timeout_ms}, default 30000)
 * @param prompts Score: the prompt texts
 * @param routers Score: router names (absent = empty)
 * @param prompt Route: the prompt text
 * @param router Route: the router name
 * @param threshold Route: explicit threshold, or null
 * @param strongShare Route: target strong share, or null
 * @param service Health: the service name ("" = the server as a whole)
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
    String service) {

  static final Set<String> RPCS = Set.of("Score", "Route", "Health", "ListRouters");
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
      throw new CasesError(where + ".rpc: unknown rpc \"" + rpc + "\" (known: Health, ListRouters, Route, Score)");
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
        return new ConformanceCase(id, rpc, timeout, strings(c, "prompts", where, true),
            strings(c, "routers", where, false), null, null, null, null, null);
      case "Route": {
        Double threshold = c.has("threshold") ? number(c, "threshold", where) : null;
        Double share = c.has("strong_share") ? number(c, "strong_share", where) : null;
        if (threshold != null && share != null) {
          throw new CasesError(where + ": threshold and strong_share are both given; give at most one");
        }
        return new ConformanceCase(id, rpc, timeout, null, null, string(c, "prompt", where, null),
            string(c, "router", where, null), threshold, share, null);
      }
      case "Health":
        return new ConformanceCase(id, rpc, timeout, null, null, null, null, null, null,
            string(c, "service", where, ""));
      default:
        return new ConformanceCase(id, rpc, timeout, null, null, null, null, null, null, null);
    }
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

  private static boolean isString(JsonElement e) {
    return e instanceof JsonPrimitive p && p.isString();
  }
}
