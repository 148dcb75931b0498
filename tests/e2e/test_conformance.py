"""Cross-language conformance (clients/CONFORMANCE.md): the same cases through the Python client
(tests/e2e/py_conformance.py, over RouterClient) and through each client binary (Go, Java), against one
real server on 127.0.0.1 with a real bundle. Every client must give the same codes and reasons, the same
chosen model and tier, scores equal to 1e-6 and the same per-item codes.

Also: Route among priced models through each client (a second server, its bundle with a `quality`
router), a token bound to a tenant through each client (what it may and may not call), the clients' exit
status 2 on bad arguments, and the Go client's own unit tests (`go test ./...`).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lmroute.bundle.testing import synthetic_prompts
from lmroute.service.client import RouterClient
from lmroute.service.testing import ServerThread
from lmroute.v1 import router_pb2

REPO = Path(__file__).resolve().parents[2]
PY_CLIENT = Path(__file__).with_name("py_conformance.py")
ROUTERS = ["random", "mf", "sw_ranking", "bert"]
TOL = 1e-6
CLIENT_NAMES = ["go", "java"]


def run(
    cmd: list[str], *args: str, timeout_s: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s, env=env)


def build_cases() -> list[dict[str, Any]]:
    """The cases: every RPC, every router, each policy, per-item and whole-call errors."""
    p = synthetic_prompts(6, seed=7)
    unicode = "Erkläre Quantenverschränkung 量子 — mit Beispielen 🙂"
    long = " ".join(["tokenize this long prompt please"] * 70)  # > 256 tokens: truncated, < 4000 chars
    too_long = "x" * 4001  # > max_prompt_chars of the e2e server (4000)
    cases: list[dict[str, Any]] = [
        {"id": "list", "rpc": "ListRouters"},
        {"id": "health-server", "rpc": "Health", "service": ""},
        {"id": "health-router-service", "rpc": "Health", "service": "lmroute.v1.RouterService"},
        {"id": "health-unknown-service", "rpc": "Health", "service": "no.such.Service"},
        {"id": "score-all-routers", "rpc": "Score", "prompts": [p[0], p[1], unicode, long]},
        {"id": "score-two-routers-in-order", "rpc": "Score", "prompts": [p[2], p[3]], "routers": ["sw_ranking", "mf"]},
        {
            "id": "score-bad-items",
            "rpc": "Score",
            "prompts": [p[4], "", p[5], "   ", too_long],
            "routers": ["mf", "bert"],
            "timeout_ms": 20_000,
        },
        {"id": "score-no-prompts", "rpc": "Score", "prompts": []},
        {"id": "score-unknown-router", "rpc": "Score", "prompts": [p[0]], "routers": ["mf", "nope"]},
    ]
    cases += [{"id": f"score-{r}", "rpc": "Score", "prompts": p[:3], "routers": [r]} for r in ROUTERS]
    for r in ROUTERS:
        cases += [
            {"id": f"route-{r}-threshold", "rpc": "Route", "prompt": p[1], "router": r, "threshold": 0.5},
            {"id": f"route-{r}-share", "rpc": "Route", "prompt": unicode, "router": r, "strong_share": 0.3},
            {"id": f"route-{r}-default-policy", "rpc": "Route", "prompt": p[2], "router": r},
        ]
    cases += [
        {"id": "route-threshold-zero", "rpc": "Route", "prompt": p[3], "router": "mf", "threshold": 0.0},
        {"id": "route-threshold-one", "rpc": "Route", "prompt": p[3], "router": "mf", "threshold": 1.0},
        {"id": "route-share-zero", "rpc": "Route", "prompt": p[3], "router": "sw_ranking", "strong_share": 0.0},
        {"id": "route-long", "rpc": "Route", "prompt": long, "router": "bert", "strong_share": 0.5},
        {"id": "route-empty-prompt", "rpc": "Route", "prompt": "", "router": "mf", "threshold": 0.5},
        {"id": "route-unknown-router", "rpc": "Route", "prompt": p[0], "router": "nope", "threshold": 0.5},
        {"id": "route-default-router", "rpc": "Route", "prompt": p[1], "router": "", "threshold": 0.5},
        {"id": "route-threshold-above-one", "rpc": "Route", "prompt": p[0], "router": "mf", "threshold": 1.5},
        {"id": "route-threshold-negative", "rpc": "Route", "prompt": p[0], "router": "mf", "threshold": -0.25},
        {"id": "route-share-above-one", "rpc": "Route", "prompt": p[0], "router": "mf", "strong_share": 2.0},
    ]
    routed = "routed"  # the decision of the case's own Route call
    cases += [
        {
            "id": "feedback-after-route",
            "rpc": "Feedback",
            "prompt": p[0],
            "router": "mf",
            "threshold": 0.5,
            "outcomes": [
                {"decision_id": routed, "single": 1.0, "source": "thumbs"},
                {"decision_id": routed, "paired": [1.0, 0.25], "source": "judge"},
                {"decision_id": routed, "single": 0.3, "source": "thumbs"},
                {"decision_id": routed, "single": 1.5},
                {"decision_id": "0" * 32, "single": 1.0},
            ],
        },
        {"id": "feedback-no-outcomes", "rpc": "Feedback", "outcomes": []},
        {"id": "set-targets", "rpc": "SetTargets", "shares": {"conformance": 0.25}, "spends": {"conformance": 2.5}},
        {"id": "list-share-targets", "rpc": "ListShareTargets"},
        {"id": "list-spend-targets", "rpc": "ListSpendTargets"},
        {"id": "set-targets-bad-tenant", "rpc": "SetTargets", "shares": {"bad name": 0.1}},
        {"id": "set-targets-out-of-range", "rpc": "SetTargets", "shares": {"conformance": 1.5}},
        {"id": "set-targets-remove-missing", "rpc": "SetTargets", "spends": {"nobody": None}},
        {
            "id": "set-targets-remove",
            "rpc": "SetTargets",
            "shares": {"conformance": None},
            "spends": {"conformance": None},
        },
        # after feedback-after-route's acknowledgement every decision made before it is stored
        {"id": "to-judge-newest", "rpc": "DecisionsToJudge", "budget": 1, "window": 1},
        {"id": "to-judge-none-since", "rpc": "DecisionsToJudge", "budget": 5, "since_ms": 4_102_444_800_000},
        {"id": "to-judge-no-budget", "rpc": "DecisionsToJudge", "budget": 0},
        {"id": "get-bundle", "rpc": "GetBundle"},
        {"id": "reload-bundle-serving-path", "rpc": "ReloadBundle", "path": "", "timeout_ms": 120_000},
        {"id": "reload-bundle-missing", "rpc": "ReloadBundle", "path": "/nonexistent/lmroute-bundle"},
    ]
    return cases


# What the reference (Python) run must show, so that the comparison covers what it is meant to cover.
EXPECTED_ERRORS = {
    "health-unknown-service": ("NOT_FOUND", ""),
    "score-no-prompts": ("INVALID_ARGUMENT", "NO_PROMPTS"),
    "score-unknown-router": ("NOT_FOUND", "ROUTER_NOT_FOUND"),
    "route-empty-prompt": ("INVALID_ARGUMENT", "EMPTY_PROMPT"),
    "route-unknown-router": ("NOT_FOUND", "ROUTER_NOT_FOUND"),
    "route-threshold-above-one": ("INVALID_ARGUMENT", "OUT_OF_RANGE"),
    "route-threshold-negative": ("INVALID_ARGUMENT", "OUT_OF_RANGE"),
    "route-share-above-one": ("INVALID_ARGUMENT", "OUT_OF_RANGE"),
    "to-judge-no-budget": ("INVALID_ARGUMENT", "OUT_OF_RANGE"),
    **{f"route-{r}-default-policy": ("INVALID_ARGUMENT", "MISSING_POLICY") for r in ROUTERS},
    "feedback-no-outcomes": ("INVALID_ARGUMENT", "NO_OUTCOMES"),
    "set-targets-bad-tenant": ("INVALID_ARGUMENT", "INVALID_TENANT"),
    "set-targets-out-of-range": ("INVALID_ARGUMENT", "OUT_OF_RANGE"),
    "set-targets-remove-missing": ("NOT_FOUND", "NO_TARGET"),
    "reload-bundle-missing": ("FAILED_PRECONDITION", "BUNDLE_INVALID"),
}


@pytest.fixture(scope="module")
def cases_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("conformance") / "cases.json"
    path.write_text(json.dumps({"cases": build_cases()}, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(e2e_server: ServerThread, cases_file: Path) -> dict[str, dict[str, Any]]:
    """The Python client's results, by case id."""
    out = run([sys.executable, str(PY_CLIENT)], "conformance", "--addr", e2e_server.target, "--cases", str(cases_file))
    assert out.returncode == 0, f"python reference client failed:\n{out.stderr}"
    return _by_id(json.loads(out.stdout), "python")


def _by_id(doc: dict[str, Any], who: str, cases: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    ids = [r["id"] for r in doc["results"]]
    want = [c["id"] for c in (build_cases() if cases is None else cases)]
    assert ids == want, f"{who}: results are not one per case in order: {ids}"
    return {r["id"]: r for r in doc["results"]}


def test_reference_run_covers_the_intended_outcomes(reference: dict[str, dict[str, Any]]) -> None:
    for cid, (code, reason) in EXPECTED_ERRORS.items():
        assert (reference[cid]["code"], reference[cid]["reason"]) == (code, reason), cid
    assert reference["list"]["routers"] == sorted(ROUTERS)
    assert reference["health-server"]["status"] == reference["health-router-service"]["status"] == "SERVING"
    bad = reference["score-bad-items"]["results"]
    assert [(r["item_code"], r["item_reason"]) for r in bad] == [
        (0, ""),
        (3, "EMPTY_PROMPT"),
        (0, ""),
        (3, "EMPTY_PROMPT"),
        (3, "PROMPT_TOO_LONG"),
    ]
    assert bad[1]["scores"] == {} and set(bad[0]["scores"]) == {"mf", "bert"}
    all_routers = reference["score-all-routers"]["results"]
    assert [set(r["scores"]) for r in all_routers] == [set(ROUTERS)] * 4
    assert [r["truncated"] for r in all_routers] == [False, False, False, True]
    named, unnamed = reference["route-mf-threshold"], reference["route-default-router"]  # the bundle's default: mf
    assert unnamed["router"] == "mf" and (unnamed["score"], unnamed["tier"]) == (named["score"], named["tier"])
    assert reference["route-threshold-zero"]["tier"] == "TIER_STRONG"
    assert reference["route-threshold-zero"]["threshold"] == 0.0
    for r in ROUTERS:
        d = reference[f"route-{r}-threshold"]
        assert d["code"] == "OK" and d["tier"] == ("TIER_STRONG" if d["score"] >= 0.5 else "TIER_WEAK"), d
    judged = reference["feedback-after-route"]
    assert judged["code"] == "OK" and judged["stored"] == 1 + 2  # single, then paired (one per model)
    assert [(r["item_code"], r["item_reason"]) for r in judged["results"]] == [
        (0, ""),
        (0, ""),
        (6, "OUTCOME_CONFLICT"),
        (3, "INVALID_OUTCOME"),
        (5, "DECISION_NOT_FOUND"),
    ]
    held = {"share_targets": {"conformance": 0.25}, "spend_targets": {"conformance": 2.5}}
    assert {k: reference["set-targets"][k] for k in held} == held
    assert reference["list-share-targets"]["targets"] == {"conformance": 0.25}
    assert reference["list-spend-targets"]["targets"] == {"conformance": 2.5}
    removed = reference["set-targets-remove"]
    assert (removed["code"], removed["share_targets"], removed["spend_targets"]) == ("OK", {}, {})
    newest, none = reference["to-judge-newest"], reference["to-judge-none-since"]
    assert (newest["code"], newest["picked"], newest["window"], newest["with_prompts"]) == ("OK", 1, 1, 1)
    assert newest["next_since_ms_moved"] and (none["picked"], none["window"], none["next_since_ms_moved"]) == (
        0,
        0,
        False,
    )
    serving = reference["get-bundle"]
    assert serving["code"] == "OK" and sorted(serving["routers"]) == sorted(ROUTERS)
    again = reference["reload-bundle-serving-path"]  # the same bundle again: the same version serves
    assert again["code"] == "OK" and again["bundle_version"] == again["previous_version"] == serving["bundle_version"]


def _close(a: Any, b: Any) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=0, abs_tol=TOL)


def differences(ref: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """What differs between two results of one case (empty when they agree)."""
    cid = ref["id"]
    diff: list[str] = []

    def same(key: str, a: Any, b: Any) -> None:
        if a != b:
            diff.append(f"{cid}: {key}: python {a!r}, client {b!r}")

    same("code", ref["code"], got.get("code"))
    if ref["code"] != "OK" or got.get("code") != "OK":
        same("reason", ref.get("reason"), got.get("reason"))
        return diff
    if "stored" in ref:  # Feedback
        same("stored", ref["stored"], got.get("stored"))
        same("results", ref["results"], got.get("results"))
    elif "picked" in ref:  # DecisionsToJudge
        for key in ("picked", "window", "with_prompts", "next_since_ms_moved"):
            same(key, ref[key], got.get(key))
    elif "share_targets" in ref or "targets" in ref:  # SetTargets, ListShareTargets, ListSpendTargets
        for key in ("share_targets", "spend_targets", "targets"):
            same(key, ref.get(key), got.get(key))
    elif "bundle_version" in ref and "results" not in ref:  # GetBundle, ReloadBundle
        for key in ("bundle_version", "routers", "previous_version"):
            same(key, ref.get(key), got.get(key))
    elif "results" in ref:  # Score
        same("bundle_version", ref["bundle_version"], got.get("bundle_version"))
        got_items = got.get("results", [])
        same("number of results", len(ref["results"]), len(got_items))
        for i, (a, b) in enumerate(zip(ref["results"], got_items)):
            for key in ("index", "item_code", "item_reason", "n_tokens", "truncated"):
                same(f"results[{i}].{key}", a[key], b.get(key))
            same(f"results[{i}].scores routers", sorted(a["scores"]), sorted(b.get("scores", {})))
            got_scores = b.get("scores", {})
            for name, s in a["scores"].items():
                if not _close(s, got_scores.get(name)):
                    diff.append(f"{cid}: results[{i}].scores[{name}]: python {s!r}, client {got_scores.get(name)!r}")
    elif "chosen_model" in ref:  # Route (among candidates: no threshold, the estimates instead)
        for key in ("chosen_model", "tier", "router"):
            same(key, ref[key], got.get(key))
        for key in ("score", "threshold"):
            if key in ref and not _close(ref[key], got.get(key)):
                diff.append(f"{cid}: {key}: python {ref[key]!r}, client {got.get(key)!r}")
        for part in ("chosen", "runner_up"):
            if part not in ref:
                continue
            mine, theirs = ref[part], got.get(part) or {}
            same(f"{part}.model", mine.get("model"), theirs.get("model"))
            for key in ("predicted_quality", "expected_cost_usd"):
                if key in mine and not _close(mine[key], theirs.get(key)):
                    diff.append(f"{cid}: {part}.{key}: python {mine[key]!r}, client {theirs.get(key)!r}")
    elif "status" in ref:  # Health
        same("status", ref["status"], got.get("status"))
    else:  # ListRouters
        same("routers", ref["routers"], got.get("routers"))
    return diff


def test_the_comparison_catches_each_kind_of_difference(reference: dict[str, dict[str, Any]]) -> None:
    """differences() is empty for the reference itself and names the case for each perturbation."""
    assert not [d for ref in reference.values() for d in differences(ref, ref)]

    def perturbed(cid: str, change: Callable[[dict[str, Any]], None]) -> list[str]:
        got = json.loads(json.dumps(reference[cid]))
        change(got)
        return differences(reference[cid], got)

    route, score = "route-mf-threshold", "score-all-routers"
    changes: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
        (route, lambda g: g.update(score=g["score"] + 2 * TOL)),
        (route, lambda g: g.update(tier="TIER_UNSPECIFIED")),
        (route, lambda g: g.update(chosen_model="other")),
        (route, lambda g: g.update(code="UNAVAILABLE", reason="")),
        ("route-empty-prompt", lambda g: g.update(reason="")),
        ("score-unknown-router", lambda g: g.update(code="INVALID_ARGUMENT")),
        (score, lambda g: g["results"][0]["scores"].update(mf=g["results"][0]["scores"]["mf"] - 2 * TOL)),
        (score, lambda g: g["results"][1]["scores"].pop("bert")),
        (score, lambda g: g["results"].pop()),
        (score, lambda g: g["results"][3].update(truncated=False)),
        ("score-bad-items", lambda g: g["results"][1].update(item_code=0)),
        ("score-bad-items", lambda g: g["results"][4].update(item_reason="EMPTY_PROMPT")),
        ("health-server", lambda g: g.update(status="NOT_SERVING")),
        ("list", lambda g: g["routers"].reverse()),
        ("feedback-after-route", lambda g: g.update(stored=g["stored"] - 1)),
        ("feedback-after-route", lambda g: g["results"][2].update(item_reason="")),
        ("set-targets", lambda g: g["share_targets"].update(conformance=0.5)),
        ("list-spend-targets", lambda g: g["targets"].clear()),
        ("to-judge-newest", lambda g: g.update(with_prompts=0)),
        ("to-judge-none-since", lambda g: g.update(next_since_ms_moved=True)),
        ("get-bundle", lambda g: g["routers"].pop()),
        ("reload-bundle-serving-path", lambda g: g.update(previous_version="other")),
    ]
    for cid, change in changes:
        found = perturbed(cid, change)
        assert found and all(d.startswith(f"{cid}: ") for d in found), (cid, found)


@pytest.mark.parametrize("client", CLIENT_NAMES)
def test_client_answers_like_the_python_client(
    client: str,
    client_command: Callable[[str], list[str]],
    e2e_server: ServerThread,
    cases_file: Path,
    reference: dict[str, dict[str, Any]],
) -> None:
    cmd = client_command(client)
    out = run(cmd, "conformance", "--addr", e2e_server.target, "--cases", str(cases_file))
    assert out.returncode == 0, f"{client} conformance exited {out.returncode}:\n{out.stderr[-4000:]}"
    try:
        doc = json.loads(out.stdout)
    except json.JSONDecodeError as err:
        raise AssertionError(f"{client}: stdout is not one JSON object ({err}):\n{out.stdout[:2000]}") from err
    got = _by_id(doc, client)
    diff = [d for cid, ref in reference.items() for d in differences(ref, got[cid])]
    assert not diff, f"{client} differs from the Python client in {len(diff)} places:\n" + "\n".join(diff)


def build_among_cases(four: list[str]) -> list[dict[str, Any]]:
    """Route among `four` priced candidates: each rule, a named and the default quality router, and the
    refusals (model-99 is no model of the router; model-02 is one, without a price)."""
    p = synthetic_prompts(4, seed=11)

    def case(cid: str, prompt: str, models: list[str], router: str = "", **rule: float) -> dict[str, Any]:
        return {"id": cid, "rpc": "Route", "prompt": prompt, "router": router, "candidates": models, **rule}

    return [
        case("among-cost-0", p[0], four, cost_weight=0.0),
        case("among-cost-40", p[1], four, cost_weight=40.0),
        case("among-margin", p[2], four, router="quality", quality_margin=0.1),
        case("among-floor", p[3], four, quality_floor=0.5),
        case("among-two", p[0], four[:2], cost_weight=1.0),
        case("among-unknown-model", p[0], [four[0], "model-99"], cost_weight=0.0),
        case("among-one", p[0], four[:1], cost_weight=0.0),
        case("among-no-rule", p[0], four),
        case("among-unpriced", p[0], [four[0], "model-02"], cost_weight=0.0),
    ]


AMONG_ERRORS = {
    "among-unknown-model": ("INVALID_ARGUMENT", "UNKNOWN_MODEL"),
    "among-one": ("INVALID_ARGUMENT", "TOO_FEW_CANDIDATES"),
    "among-no-rule": ("INVALID_ARGUMENT", "MISSING_POLICY"),
    "among-unpriced": ("INVALID_ARGUMENT", "NO_PRICE"),
}


@pytest.mark.parametrize("client", CLIENT_NAMES)
def test_client_routes_among_candidates_like_the_python_client(
    client: str,
    client_command: Callable[[str], list[str]],
    e2e_models_server: tuple[ServerThread, list[str]],
    tmp_path: Path,
) -> None:
    """Route with candidates and a ModelPolicy rule through each client: the same chosen model, tier,
    estimates (chosen and runner-up) and refusals as the Python client's."""
    server, priced = e2e_models_server
    cases = build_among_cases(priced)
    path = tmp_path / "among.json"
    path.write_text(json.dumps({"cases": cases}))
    target = server.target
    py = run([sys.executable, str(PY_CLIENT)], "conformance", "--addr", target, "--cases", str(path))
    assert py.returncode == 0, py.stderr[-4000:]
    ref = _by_id(json.loads(py.stdout), "python", cases)
    for cid, (code, reason) in AMONG_ERRORS.items():
        assert (ref[cid]["code"], ref[cid]["reason"]) == (code, reason), ref[cid]
    ok = [ref[c["id"]] for c in cases if c["id"] not in AMONG_ERRORS]
    assert all(r["code"] == "OK" and r["chosen"]["model"] == r["chosen_model"] and r["runner_up"] for r in ok), ok
    assert ref["among-cost-0"]["router"] == "quality" and "threshold" not in ref["among-cost-0"]
    assert len({r["chosen_model"] for r in ok}) >= 2, ok  # the rules choose differently
    one = ref["among-margin"]  # the comparison sees each part of an answer among models
    for part, key, value in [("chosen", "model", "x"), ("runner_up", "predicted_quality", 2.0), ("chosen", "", 0)]:
        changed = json.loads(json.dumps(one))
        if key:
            changed[part][key] = value
        else:
            del changed[part]
        assert differences(one, changed), (part, key)
    out = run(client_command(client), "conformance", "--addr", target, "--cases", str(path))
    assert out.returncode == 0, f"{client} conformance exited {out.returncode}:\n{out.stderr[-4000:]}"
    got = _by_id(json.loads(out.stdout), client, cases)
    diff = [d for cid, r in ref.items() for d in differences(r, got[cid])]
    assert not diff, f"{client} differs from the Python client in {len(diff)} places:\n" + "\n".join(diff)


# A server with small limits on one call (its ListRouters.limits say them): max_prompt_chars 4000 (the e2e
# servers'), at most 5 prompts, 8000 characters and 16 KiB a call.
SMALL_LIMITS = {"max_prompts_per_request": 5, "max_request_chars": 8000, "max_message_bytes": 16384}


@pytest.fixture(scope="module")
def e2e_limits_server(e2e_bundle_dir: Path) -> Iterator[ServerThread]:
    from lmroute.service.config import BatchPolicy, ServiceConfig

    batch = BatchPolicy(max_wait_us=2000, max_batch_size=64, queue_timeout_ms=60_000, max_prompt_chars=4000)
    cfg = ServiceConfig(
        bundle_path=e2e_bundle_dir,
        host="127.0.0.1",
        port=0,
        batch=batch,
        log_level="warning",
        grace_s=0.0,
        **SMALL_LIMITS,
    )
    srv = ServerThread(cfg).start()
    yield srv
    srv.stop()


def build_limits_cases() -> list[dict[str, Any]]:
    """Score calls over SMALL_LIMITS: each too big for one call (refused whole), then the same prompts
    through ScoreAll (split by the server's limits; the Python reference scores them one by one)."""
    p = synthetic_prompts(10, seed=13)
    many = [*p[:7], "", *p[7:], "x" * 4001]  # 12 prompts; an empty one and one over max_prompt_chars fail alone
    wide = [(f"{p[i]} " * 200)[:3000] for i in range(3)]  # 3 x 3000 characters: over 8000 in all
    heavy = ["量" * 3000, "語" * 3000]  # 6000 characters, but 2 x 9000 bytes: over 16 KiB in one message
    routers = ["mf", "bert"]
    return [
        {"id": "list", "rpc": "ListRouters"},
        {"id": "score-one-call-too-many", "rpc": "Score", "prompts": many, "routers": routers},
        {"id": "score-one-call-too-long", "rpc": "Score", "prompts": wide, "routers": routers},
        {"id": "score-one-call-too-large", "rpc": "Score", "prompts": heavy, "routers": routers},
        {"id": "score-all-by-prompts", "rpc": "ScoreAll", "prompts": many, "routers": routers},
        {"id": "score-all-by-characters", "rpc": "ScoreAll", "prompts": wide, "routers": routers},
        {"id": "score-all-by-bytes", "rpc": "ScoreAll", "prompts": heavy},
        # alone over max_request_chars: its call is refused, and that ends ScoreAll (the Python Controller's way)
        {"id": "score-all-alone-too-long", "rpc": "ScoreAll", "prompts": ["a", "y" * 8001, "b"]},
        {"id": "score-all-none", "rpc": "ScoreAll", "prompts": []},
    ]


LIMITS_ERRORS = {
    "score-one-call-too-many": ("INVALID_ARGUMENT", "TOO_MANY_PROMPTS"),
    "score-one-call-too-long": ("INVALID_ARGUMENT", "REQUEST_TOO_LONG"),
    "score-one-call-too-large": ("RESOURCE_EXHAUSTED", ""),  # gRPC's: over the server's max_message_bytes
    "score-all-alone-too-long": ("INVALID_ARGUMENT", "REQUEST_TOO_LONG"),
}


@pytest.mark.parametrize("client", CLIENT_NAMES)
def test_client_score_all_splits_by_the_servers_limits(
    client: str, client_command: Callable[[str], list[str]], e2e_limits_server: ServerThread, tmp_path: Path
) -> None:
    """ScoreAll (Go Client.ScoreAll, Java RouterClient.scoreAll) of prompts no one Score call may carry
    (too many, too many characters, too many bytes) splits them by the server's ListRouters.limits and
    answers as scoring them one by one does: every result in the input order, indexed there, a bad prompt
    failing alone."""
    cases = build_limits_cases()
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"cases": cases}, ensure_ascii=False), encoding="utf-8")
    target = e2e_limits_server.target
    py = run([sys.executable, str(PY_CLIENT)], "conformance", "--addr", target, "--cases", str(path))
    assert py.returncode == 0, py.stderr[-4000:]
    ref = _by_id(json.loads(py.stdout), "python", cases)
    for cid, (code, reason) in LIMITS_ERRORS.items():
        assert (ref[cid]["code"], ref[cid]["reason"]) == (code, reason), ref[cid]
    by_prompts = ref["score-all-by-prompts"]["results"]
    assert [r["index"] for r in by_prompts] == list(range(12))
    assert [(r["item_code"], r["item_reason"]) for r in by_prompts if r["item_code"]] == [
        (3, "EMPTY_PROMPT"),
        (3, "PROMPT_TOO_LONG"),
    ]
    assert by_prompts[7]["item_reason"] == "EMPTY_PROMPT" and set(by_prompts[0]["scores"]) == {"mf", "bert"}
    for cid in ("score-all-by-characters", "score-all-by-bytes"):
        assert ref[cid]["code"] == "OK" and all(r["item_code"] == 0 for r in ref[cid]["results"]), ref[cid]
    assert (ref["score-all-none"]["code"], ref["score-all-none"]["results"]) == ("OK", [])
    out = run(client_command(client), "conformance", "--addr", target, "--cases", str(path))
    assert out.returncode == 0, f"{client} conformance exited {out.returncode}:\n{out.stderr[-4000:]}"
    got = _by_id(json.loads(out.stdout), client, cases)
    diff = [d for cid, r in ref.items() for d in differences(r, got[cid])]
    assert not diff, f"{client} differs from the Python client in {len(diff)} places:\n" + "\n".join(diff)


def _assert_same_as_reference(
    out: subprocess.CompletedProcess[str], who: str, reference: dict[str, dict[str, Any]]
) -> None:
    """A conformance run exited 0 and every answer equals the plaintext Python reference's."""
    assert out.returncode == 0, f"{who}: conformance exited {out.returncode}:\n{out.stderr[-4000:]}"
    got = _by_id(json.loads(out.stdout), who)
    diff = [d for cid, ref in reference.items() for d in differences(ref, got[cid])]
    assert not diff, f"{who} differs from the reference in {len(diff)} places:\n" + "\n".join(diff)


@pytest.mark.parametrize("client", ["python", *CLIENT_NAMES])
def test_client_answers_the_same_over_tls_with_a_token(
    client: str,
    client_command: Callable[[str], list[str]],
    e2e_tls_server: Any,  # conftest.TlsServer
    cases_file: Path,
    reference: dict[str, dict[str, Any]],
) -> None:
    """The same cases through a server that speaks TLS and wants a token: with the CA and the token every
    answer equals the plaintext reference; without the token every call but health is UNAUTHENTICATED."""
    cmd = [sys.executable, str(PY_CLIENT)] if client == "python" else client_command(client)
    target, ca = e2e_tls_server.server.target, str(e2e_tls_server.ca)
    common = ("conformance", "--addr", target, "--cases", str(cases_file), "--ca", ca)
    out = run(cmd, *common, "--token-env", "LMROUTE_E2E_TOKEN", env=e2e_tls_server.token_env)
    _assert_same_as_reference(out, f"{client} over TLS", reference)
    bare = run(cmd, *common)
    assert bare.returncode == 0, bare.stderr[-4000:]
    codes = {r["id"]: r["code"] for r in json.loads(bare.stdout)["results"]}
    assert {c for cid, c in codes.items() if not cid.startswith("health")} == {"UNAUTHENTICATED"}
    assert all(c == reference[cid]["code"] for cid, c in codes.items() if cid.startswith("health"))  # open


def tenant_cases(tenant: str) -> list[dict[str, Any]]:
    """What a token bound to a tenant may and may not do (docs/SECURITY.md): route and report on its own
    decisions, ask for its own judge list; no other AdminService call."""
    p = synthetic_prompts(2, seed=11)
    return [
        {"id": "tenant-route", "rpc": "Route", "prompt": p[0], "router": "mf", "threshold": 0.5},
        {
            "id": "tenant-feedback",
            "rpc": "Feedback",
            "prompt": p[1],
            "router": "mf",
            "threshold": 0.5,
            "outcomes": [{"decision_id": "routed", "single": 0.75, "source": "thumbs"}],
        },
        {"id": "tenant-to-judge", "rpc": "DecisionsToJudge", "budget": 1, "window": 1},
        {"id": "tenant-get-bundle", "rpc": "GetBundle"},
        {"id": "tenant-reload-bundle", "rpc": "ReloadBundle", "path": ""},
        {"id": "tenant-set-targets", "rpc": "SetTargets", "shares": {tenant: 0.2}},
        {"id": "tenant-list-share-targets", "rpc": "ListShareTargets"},
        {"id": "tenant-list-spend-targets", "rpc": "ListSpendTargets"},
    ]


@pytest.mark.parametrize("client", CLIENT_NAMES)
def test_client_answers_like_the_python_client_with_a_tenant_token(
    client: str, client_command: Callable[[str], list[str]], e2e_tls_server: Any, tmp_path: Path
) -> None:
    """With a token bound to a tenant, each client gets what the Python client gets: its Route, Feedback and
    judge list answered, every other AdminService call PERMISSION_DENIED."""
    cases = tenant_cases(e2e_tls_server.tenant)
    path = tmp_path / "tenant_cases.json"
    path.write_text(json.dumps({"cases": cases}), encoding="utf-8")
    common = ("conformance", "--addr", e2e_tls_server.server.target, "--cases", str(path))
    common += ("--ca", str(e2e_tls_server.ca), "--token-env", "LMROUTE_E2E_TOKEN")

    def answers(cmd: list[str], who: str) -> dict[str, dict[str, Any]]:
        out = run(cmd, *common, env=e2e_tls_server.tenant_token_env)
        assert out.returncode == 0, f"{who}: conformance exited {out.returncode}:\n{out.stderr[-4000:]}"
        return _by_id(json.loads(out.stdout), who, cases)

    ref = answers([sys.executable, str(PY_CLIENT)], "python")
    assert [ref[c]["code"] for c in ("tenant-route", "tenant-feedback", "tenant-to-judge")] == ["OK"] * 3, ref
    assert ref["tenant-feedback"]["stored"] == 1
    assert ref["tenant-to-judge"]["window"] == 1  # its newest decision, the one tenant-feedback judged
    refused = [c["id"] for c in cases[3:]]
    assert {(ref[c]["code"], ref[c]["reason"]) for c in refused} == {("PERMISSION_DENIED", "PERMISSION_DENIED")}
    got = answers(client_command(client), client)
    diff = [d for cid, r in ref.items() for d in differences(r, got[cid])]
    assert not diff, f"{client} differs from the Python client in {len(diff)} places:\n" + "\n".join(diff)


@pytest.mark.parametrize("client", ["python", *CLIENT_NAMES])
def test_client_answers_the_same_over_mtls(
    client: str,
    client_command: Callable[[str], list[str]],
    e2e_mtls_server: Any,  # conftest.MtlsServer
    cases_file: Path,
    reference: dict[str, dict[str, Any]],
) -> None:
    """The same cases through a server that requires a client certificate: with one every answer equals
    the plaintext reference; without it no call gets through (the handshake fails: UNAVAILABLE)."""
    cmd = [sys.executable, str(PY_CLIENT)] if client == "python" else client_command(client)
    srv = e2e_mtls_server
    common = ("conformance", "--addr", srv.server.target, "--cases", str(cases_file), "--ca", str(srv.ca))
    out = run(cmd, *common, "--cert", str(srv.cert), "--key", str(srv.key))
    _assert_same_as_reference(out, f"{client} over mTLS", reference)
    bare = run(cmd, *common)
    assert bare.returncode == 0, bare.stderr[-4000:]
    assert {r["code"] for r in json.loads(bare.stdout)["results"]} == {"UNAVAILABLE"}


@pytest.mark.parametrize("client", CLIENT_NAMES)
def test_client_exits_2_on_bad_arguments(
    client: str, client_command: Callable[[str], list[str]], tmp_path: Path
) -> None:
    cmd = client_command(client)
    unknown_rpc = tmp_path / "unknown_rpc.json"
    unknown_rpc.write_text(json.dumps({"cases": [{"id": "x", "rpc": "Explode"}]}))
    not_json = tmp_path / "not_json.json"
    not_json.write_text("{cases: nope")
    for args in (
        ["conformance", "--addr", "127.0.0.1:1", "--cases", str(tmp_path / "missing.json")],
        ["conformance", "--addr", "127.0.0.1:1", "--cases", str(not_json)],
        ["conformance", "--addr", "127.0.0.1:1", "--cases", str(unknown_rpc)],
        ["conformance", "--addr", "127.0.0.1:1"],
        # an address that is no HOST:PORT: named at once (it was retried, or dialled on a default port)
        ["health", "--addr", "127.0.0.1:99999"],
        ["health", "--addr", ""],
        ["health", "--addr", "127.0.0.1"],
        # an empty model name among --models (Java dropped a trailing one, Go sent it)
        ["route", "--addr", "127.0.0.1:1", "--models", "a,b,", "--cost-weight", "1", "hi"],
        ["route", "--addr", "127.0.0.1:1", "--models", "a,,b", "--cost-weight", "1", "hi"],
    ):
        out = run(cmd, *args, timeout_s=60)
        assert out.returncode == 2, f"{client} {' '.join(args)}: exit {out.returncode}, want 2\n{out.stderr}"
        assert out.stdout.strip() == "", f"{client} {' '.join(args)} wrote to stdout: {out.stdout[:500]}"
        if args[0] != "conformance":
            assert "--addr" in out.stderr or "--models" in out.stderr, (client, args, out.stderr)


def test_python_reference_exits_2_on_bad_arguments(tmp_path: Path) -> None:
    py = [sys.executable, str(PY_CLIENT)]
    assert run(py, "conformance", "--addr", "127.0.0.1:1", "--cases", str(tmp_path / "missing.json")).returncode == 2
    assert run(py, "conformance", "--addr", "127.0.0.1:1").returncode == 2


def test_go_client_unit_tests(client_command: Callable[[str], list[str]]) -> None:
    """`go vet` and `go test ./...` in clients/go (backoff, RetryInfo, deadlines; needs the built stubs)."""
    client_command("go")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    vet = subprocess.run(
        ["nice", "-n", "10", "go", "vet", "./..."],
        cwd=REPO / "clients" / "go",
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert vet.returncode == 0, f"go vet failed:\n{vet.stdout[-4000:]}\n{vet.stderr[-4000:]}"
    out = subprocess.run(
        ["nice", "-n", "10", "go", "test", "-count=1", "./..."],
        cwd=REPO / "clients" / "go",
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, f"go test failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    assert "ok  \tlmroute/clients/go/lmroute" in out.stdout, out.stdout


def test_go_readme_example_runs_against_the_server(
    client_command: Callable[[str], list[str]], e2e_server: ServerThread, tmp_path: Path
) -> None:
    """clients/go/examples/route (the README's example) builds, and decides as the Python client does."""
    client_command("go")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    exe = tmp_path / "route-example"
    build = subprocess.run(
        ["nice", "-n", "10", "go", "build", "-o", str(exe), "./examples/route"],
        cwd=REPO / "clients" / "go",
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert build.returncode == 0, build.stderr
    out = run([str(exe), e2e_server.target], timeout_s=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    model, tier, score, threshold = lines[0].split()
    with RouterClient(e2e_server.target, timeout_s=30) as py:
        want = py.route("Prove that sqrt(2) is irrational.", router="mf", strong_share=0.3)
        scored = py.score(["hi", "Write a B-tree in Rust"], routers=["mf", "sw_ranking"])
    assert (model, tier) == (want.chosen_model, router_pb2.Tier.Name(want.tier))
    assert abs(float(score) - want.score) <= TOL and abs(float(threshold) - want.threshold) <= TOL
    assert len(lines) == 1 + len(scored.results) and all(line.split()[1] == "0" for line in lines[1:])


def test_go_human_commands(client_command: Callable[[str], list[str]], e2e_server: ServerThread) -> None:
    """route / score / health for people: readable lines, exit 0, 1 on a failed call, 2 on bad flags."""
    go = client_command("go")
    addr = ["--addr", e2e_server.target]
    health = run(go, "health", *addr)
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr
    unknown = run(go, "health", *addr, "--service", "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr, unknown.stderr
    with RouterClient(e2e_server.target, timeout_s=30) as py:
        want = py.route("hello there", router="sw_ranking", threshold=0.5)
    route = run(go, "route", *addr, "--router", "sw_ranking", "--threshold", "0.5", "hello there")
    assert route.returncode == 0, route.stderr
    assert route.stdout.split()[:2] == [want.chosen_model, router_pb2.Tier.Name(want.tier)], route.stdout
    score = run(go, "score", *addr, "--routers", "mf,bert", "first prompt", "")
    lines = score.stdout.splitlines()
    assert score.returncode == 0 and len(lines) == 2, score.stdout + score.stderr
    assert "mf=" in lines[0] and "bert=" in lines[0] and "EMPTY_PROMPT" in lines[1], score.stdout
    bad = run(go, "route", *addr, "--attempts", "1", "--router", "nope", "--strong-share", "0.5", "hi")
    assert bad.returncode == 1 and "NOT_FOUND (ROUTER_NOT_FOUND)" in bad.stderr, bad.stderr
    no_policy = run(go, "route", *addr, "--attempts", "1", "--router", "mf", "hi")  # no targets held here
    assert no_policy.returncode == 1 and "the server holds no share targets" in no_policy.stderr, no_policy.stderr
    assert (
        run(go, "route", *addr, "--router", "mf", "--threshold", "0.1", "--strong-share", "0.1", "hi").returncode == 2
    )
    # -1 is a value like any other (it was taken as "not given"): the server refuses it
    minus = run(go, "route", *addr, "--attempts", "1", "--router", "mf", "--threshold", "-1", "hi")
    assert minus.returncode == 1 and "INVALID_ARGUMENT (OUT_OF_RANGE)" in minus.stderr, minus.stderr
    # a flag after a prompt is refused, not scored as one more prompt
    late = run(go, "score", *addr, "hi", "--routers", "mf")
    assert late.returncode == 2 and "--routers comes after an argument" in late.stderr and not late.stdout
    typo = run(go, "score", *addr, "hi", "--router", "mf")  # a flag score does not have: not two more prompts
    assert typo.returncode == 2 and "--router comes after an argument" in typo.stderr and not typo.stdout
    dashed = run(go, "score", *addr, "--routers", "mf", "--", "--routers")  # after --: a prompt
    assert dashed.returncode == 0 and len(dashed.stdout.splitlines()) == 1, dashed.stderr
    tenant = run(go, "route", *addr, "--tenant", "a\nb", "--threshold", "0.5", "hi")
    assert tenant.returncode == 2 and "--tenant: only printable ASCII may be sent (character 2 is not)" in tenant.stderr
    # a prompt that is not UTF-8 is a bad argument, named (it failed as an INTERNAL marshaling error)
    not_text = subprocess.run([*go, "score", *addr, "fine", b"hello \xff there"], capture_output=True, timeout=60)
    assert not_text.returncode == 2 and b"argument 2" in not_text.stderr and b"is not UTF-8 text" in not_text.stderr
    after_dashes = subprocess.run([*go, "score", *addr, "--", b"ab\xff"], capture_output=True, timeout=60)
    assert after_dashes.returncode == 2 and b"is not UTF-8 text" in after_dashes.stderr, after_dashes.stderr


def test_go_route_among_models_command(
    client_command: Callable[[str], list[str]], e2e_models_server: tuple[ServerThread, list[str]]
) -> None:
    """`route --models a,b,... --quality-margin m` prints the model the Python client's call chooses, its
    estimate and the runner-up; a rule without --models, or two rules, are bad flags (2)."""
    server, priced = e2e_models_server
    go, addr = client_command("go"), ["--addr", server.target]
    with RouterClient(server.target, timeout_s=30) as py:
        want = py.route_among("Explain quicksort.", priced, quality_margin=0.1)
    got = run(go, "route", *addr, "--models", ",".join(priced), "--quality-margin", "0.1", "Explain quicksort.")
    assert got.returncode == 0, got.stderr
    chosen, rest = got.stdout.split("\t", 1)
    assert chosen == want.chosen_model, got.stdout
    assert (
        f"predicted_quality={want.chosen.predicted_quality:.4f}" in rest and f"runner_up={want.runner_up.model}" in rest
    )
    no_rule = run(go, "route", *addr, "--attempts", "1", "--models", ",".join(priced), "hi")  # no spend targets here
    assert no_rule.returncode == 1 and "MISSING_POLICY" in no_rule.stderr, no_rule.stderr
    assert run(go, "route", *addr, "--quality-margin", "0.1", "hi").returncode == 2
    two = run(go, "route", *addr, "--models", "a,b", "--cost-weight", "1", "--quality-floor", "0.5", "hi")
    assert two.returncode == 2 and "at most one of --cost-weight" in two.stderr, two.stderr


def test_java_route_among_models_command(
    client_command: Callable[[str], list[str]], e2e_models_server: tuple[ServerThread, list[str]]
) -> None:
    """The Java client's `route --models ... --cost-weight w` prints the Python client's choice, its
    estimate and the runner-up; a rule without --models is a bad flag (2)."""
    server, priced = e2e_models_server
    java, addr = client_command("java"), ["--addr", server.target]
    with RouterClient(server.target, timeout_s=30) as py:
        want = py.route_among("Explain quicksort.", priced, cost_weight=40.0)
    got = run(java, "route", *addr, "--models", ",".join(priced), "--cost-weight", "40", "Explain quicksort.")
    assert got.returncode == 0, got.stderr
    lines = dict(line.split(None, 1) for line in got.stdout.splitlines())
    assert lines["chosen_model"] == want.chosen_model and lines["runner_up"] == want.runner_up.model, got.stdout
    assert float(lines["predicted_quality"]) == pytest.approx(want.chosen.predicted_quality, abs=1e-6)
    assert run(java, "route", *addr, "--quality-floor", "0.5", "hi").returncode == 2


@pytest.mark.parametrize("name", CLIENT_NAMES)
def test_client_names_its_tenant(
    name: str, client_command: Callable[[str], list[str]], e2e_tenant_server: ServerThread
) -> None:
    """`--tenant` reaches the server: with a share target for tenant `batch` only, a Route call that sets
    no policy is decided by that target when the client names `batch`, and refused naming the missing
    target for another tenant or none."""
    attempts = "--attempts" if name == "go" else "--max-attempts"
    cmd = client_command(name)
    addr = ["--addr", e2e_tenant_server.target, attempts, "1", "--router", "mf"]
    named = run(cmd, "route", *addr, "--tenant", "batch", "route me by my tenant's target")
    assert named.returncode == 0, named.stderr
    assert "mf" in named.stdout and "threshold" in named.stdout, named.stdout
    for other, says in ((["--tenant", "interactive"], "for tenant 'interactive'"), ([], "for a call naming no tenant")):
        refused = run(cmd, "route", *addr, *other, "hi")
        assert refused.returncode == 1 and f"no share target {says}" in refused.stderr, refused.stderr


@pytest.mark.parametrize("name", CLIENT_NAMES)
def test_client_reports_an_outcome_of_the_decision_it_printed(
    name: str, client_command: Callable[[str], list[str]], e2e_server: ServerThread
) -> None:
    """`route` prints the decision id; `feedback --decision-id ID` reports an outcome of it: stored, then a
    duplicate, both models judged, a quality out of range refused (exit 1), bad flags exit 2."""
    attempts = "--attempts" if name == "go" else "--max-attempts"
    cmd = client_command(name)
    addr = ["--addr", e2e_server.target, attempts, "1"]
    routed = run(cmd, "route", *addr, "--router", "mf", "--threshold", "0.5", f"judge me ({name})")
    assert routed.returncode == 0, routed.stderr
    ids = re.findall(r"\b[0-9a-f]{32}\b", routed.stdout)
    assert len(ids) == 1, routed.stdout
    fb = ["feedback", *addr, "--decision-id", ids[0], "--source", f"{name}-cli"]
    for extra, want in [
        (["--quality", "1"], "stored 1"),
        (["--quality", "1"], "stored 0 (DUPLICATE)"),
        (["--strong", "1", "--weak", "0.5"], "stored 2"),
    ]:
        out = run(cmd, *fb, *extra)
        assert (out.returncode, out.stdout.strip()) == (0, want), out.stderr
    refused = run(cmd, *fb, "--quality", "1.5")
    assert refused.returncode == 1 and "INVALID_OUTCOME" in refused.stderr, refused.stderr
    for extra in (["--quality", "1", "--strong", "1", "--weak", "0"], ["--strong", "1"], []):
        assert run(cmd, *fb, *extra).returncode == 2, extra
