package dev.lmroute.client.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;

class ConformanceCaseTest {

  /** The example of clients/CONFORMANCE.md. */
  private static final String EXAMPLE = """
      {"cases": [
        {"id": "score-1", "rpc": "Score", "prompts": ["text", "..."], "routers": ["mf", "sw_ranking"]},
        {"id": "route-1", "rpc": "Route", "prompt": "text", "router": "mf", "threshold": 0.4},
        {"id": "route-2", "rpc": "Route", "prompt": "text", "router": "mf", "strong_share": 0.5},
        {"id": "route-3", "rpc": "Route", "prompt": "text", "router": "mf", "timeout_ms": 250},
        {"id": "health-1", "rpc": "Health", "service": ""},
        {"id": "list-1", "rpc": "ListRouters"},
        {"id": "score-2", "rpc": "Score", "prompts": ["x"]}
      ]}
      """;

  @Test
  void readsTheDocumentedExample() throws Exception {
    List<ConformanceCase> cases = ConformanceCase.parseAll(EXAMPLE, "cases.json");
    assertEquals(7, cases.size());
    ConformanceCase score = cases.get(0);
    assertEquals(List.of("text", "..."), score.prompts());
    assertEquals(List.of("mf", "sw_ranking"), score.routers());
    assertEquals(Duration.ofMillis(30_000), score.timeout());
    assertEquals(0.4, cases.get(1).threshold());
    assertNull(cases.get(1).strongShare());
    assertEquals(0.5, cases.get(2).strongShare());
    assertNull(cases.get(3).threshold());
    assertNull(cases.get(3).strongShare());
    assertEquals(Duration.ofMillis(250), cases.get(3).timeout());
    assertEquals("", cases.get(4).service());
    assertEquals("ListRouters", cases.get(5).rpc());
    assertEquals(List.of(), cases.get(6).routers());
  }

  @Test
  void readsFeedbackAndTargetCases() throws Exception {
    List<ConformanceCase> cases = ConformanceCase.parseAll("""
        {"cases": [
          {"id": "f", "rpc": "Feedback", "prompt": "p", "router": "mf", "threshold": 0.5, "outcomes": [
            {"decision_id": "routed", "single": 1.0, "source": "thumbs"},
            {"decision_id": "routed", "paired": [1.0, 0.25]}]},
          {"id": "t", "rpc": "SetTargets", "shares": {"a": 0.25, "b": null}},
          {"id": "j", "rpc": "DecisionsToJudge", "budget": 5, "since_ms": 1733000000000}
        ]}
        """, "c.json");
    ConformanceCase f = cases.get(0);
    assertEquals("p", f.prompt());
    assertEquals(0.5, f.threshold());
    assertEquals(1.0, f.outcomes().get(0).single());
    assertEquals("thumbs", f.outcomes().get(0).source());
    assertEquals(0.25, f.outcomes().get(1).paired()[1]);
    assertNull(f.outcomes().get(1).single());
    ConformanceCase t = cases.get(1);
    assertEquals(0.25, t.shares().get("a"));
    assertTrue(t.shares().containsKey("b") && t.shares().get("b") == null);
    assertTrue(t.spends().isEmpty());
    assertEquals(new ConformanceCase.JudgeAsk(5, 0, 1_733_000_000_000L), cases.get(2).judge());
  }

  @Test
  void fieldsTheOtherClientsSendUnsetMayBeAbsent() throws Exception {
    List<ConformanceCase> cases = ConformanceCase.parseAll("""
        {"cases": [
          {"id": "r", "rpc": "Route", "threshold": 0.5},
          {"id": "n", "rpc": "Route", "prompt": null, "router": "mf"},
          {"id": "s", "rpc": "Score"},
          {"id": "a", "rpc": "ScoreAll", "prompts": ["x", "y"], "routers": ["mf"]}
        ]}""", "c.json");
    assertNull(cases.get(0).prompt()); // sent unset, as Python and Go send it (the server: MISSING_PROMPT)
    assertEquals("", cases.get(0).router());
    assertNull(cases.get(1).prompt());
    assertEquals(List.of(), cases.get(2).prompts()); // an empty list: NO_PROMPTS from the server
    assertEquals(List.of("x", "y"), cases.get(3).prompts());
    assertEquals(List.of("mf"), cases.get(3).routers());
  }

  private static String errorOf(String json) {
    return assertThrows(ConformanceCase.CasesError.class, () -> ConformanceCase.parseAll(json, "c.json")).getMessage();
  }

  @Test
  void badCasesNameTheField() {
    assertEquals("c.json: cases[0]: threshold and strong_share are both given; give at most one",
        errorOf("{\"cases\": [{\"id\": \"r\", \"rpc\": \"Route\", \"prompt\": \"p\", \"router\": \"mf\","
            + " \"threshold\": 0.1, \"strong_share\": 0.2}]}"));
    assertEquals("c.json: cases[1].rpc: unknown rpc \"GetRouter\" (known: DecisionsToJudge, Feedback, GetBundle, "
        + "Health, ListRouters, ListShareTargets, ListSpendTargets, ReloadBundle, Route, Score, ScoreAll, SetTargets)",
        errorOf("{\"cases\": [{\"id\": \"a\", \"rpc\": \"ListRouters\"}, {\"id\": \"b\", \"rpc\": \"GetRouter\"}]}"));
    assertEquals("c.json: cases[0].id: required", errorOf("{\"cases\": [{\"rpc\": \"ListRouters\"}]}"));
    assertEquals("c.json: cases[0].prompts[1]: expected a string (got 3)",
        errorOf("{\"cases\": [{\"id\": \"s\", \"rpc\": \"Score\", \"prompts\": [\"a\", 3]}]}"));
    assertEquals("c.json: cases[0].timeout_ms: must be a positive integer (got 0)",
        errorOf("{\"cases\": [{\"id\": \"s\", \"rpc\": \"ListRouters\", \"timeout_ms\": 0}]}"));
    assertEquals("c.json: expected an object {\"cases\": [...]}", errorOf("[]"));
    assertEquals("c.json: cases[0].outcomes[0]: give one of single and paired",
        errorOf("{\"cases\": [{\"id\": \"f\", \"rpc\": \"Feedback\", \"outcomes\": [{\"decision_id\": \"x\"}]}]}"));
    assertEquals("c.json: cases[0].budget: expected an integer in [-2147483648, 2147483647] (got 1.5)",
        errorOf("{\"cases\": [{\"id\": \"j\", \"rpc\": \"DecisionsToJudge\", \"budget\": 1.5}]}"));
    String invalid = errorOf("{\"cases\": [");
    assertTrue(invalid.startsWith("c.json: not valid JSON: "), invalid);
  }
}
