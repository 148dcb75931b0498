"""The Python side of the client conformance protocol (clients/CONFORMANCE.md), over RouterClient.

    python tests/e2e/py_conformance.py conformance --addr 127.0.0.1:PORT --cases cases.json

Runs every case with retries off (RouterClient(retry=NO_RETRY)) and prints {"results": [...]} on stdout;
exit 0 when every case ran, 2 on bad arguments or an unreadable cases file. It is the reference the Go and
Java clients are compared with in tests/e2e/test_conformance.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import grpc

from lmroute.service.client import NO_RETRY, RouterClient, paired_outcome, single_outcome
from lmroute.service.client_retry import error_reason
from lmroute.v1 import router_pb2

__all__ = ["run_case", "run_cases", "main"]

DEFAULT_TIMEOUT_MS = 30_000
RPCS = (
    "Score",
    "ScoreAll",
    "Route",
    "Health",
    "ListRouters",
    "Feedback",
    "SetTargets",
    "ListShareTargets",
    "ListSpendTargets",
    "GetBundle",
    "ReloadBundle",
    "DecisionsToJudge",
)
ROUTED = "routed"  # a Feedback outcome's decision_id meaning: the decision of the case's own Route call


def _item(r: router_pb2.PromptScores, index: int) -> dict[str, Any]:
    return {
        "index": index,
        "item_code": r.status.code,
        "item_reason": r.status.reason,
        "n_tokens": r.n_tokens,
        "truncated": r.truncated,
        "scores": {s.router: s.strong_win_probability for s in r.scores},
    }


def _score(client: RouterClient, case: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    # no "prompts": an empty list, as the Go and Java clients send it (the server: NO_PROMPTS)
    resp = client.score(case.get("prompts", []), case.get("routers", []), timeout_s=timeout_s)
    return {"bundle_version": resp.bundle_version, "results": [_item(r, r.index) for r in resp.results]}


def _score_all(client: RouterClient, case: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """The reference of the clients' ScoreAll (a Score split by the server's limits): every prompt scored in
    a call of its own, so that the split is checked against what no split can change. A failed call ends
    the case with its error, as ScoreAll ends; the bundle version is the last call's."""
    results, version = [], ""
    for i, prompt in enumerate(case.get("prompts", [])):
        resp = client.score([prompt], case.get("routers", []), timeout_s=timeout_s)
        results.append(_item(resp.results[0], i))
        version = resp.bundle_version
    return {"bundle_version": version, "results": results}


RULES = ("cost_weight", "quality_margin", "quality_floor")  # a Route among candidates: at most one


def _estimate(e: router_pb2.ModelEstimate) -> dict[str, Any]:
    return {"model": e.model, "predicted_quality": e.predicted_quality, "expected_cost_usd": e.expected_cost_usd}


def _route(client: RouterClient, case: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    if "candidates" in case:  # among models: the threshold is NaN, so not printed
        rules = {rule: case[rule] for rule in RULES if rule in case}
        d = client.route_among(
            case.get("prompt", ""), case["candidates"], router=case.get("router", ""), timeout_s=timeout_s, **rules
        )
        return {
            "chosen_model": d.chosen_model,
            "tier": router_pb2.Tier.Name(d.tier),
            "score": d.score,
            "router": d.router,
            "chosen": _estimate(d.chosen),
            "runner_up": _estimate(d.runner_up) if d.HasField("runner_up") else {},
        }
    if "prompt" in case:
        d = client.route(
            case["prompt"],
            router=case.get("router", ""),
            threshold=case.get("threshold"),
            strong_share=case.get("strong_share"),
            timeout_s=timeout_s,
        )
    else:  # no prompt at all: RouterClient always sets one, so build the request by hand
        req = router_pb2.RouteRequest(router=case.get("router", ""))
        if "threshold" in case:
            req.threshold = case["threshold"]
        if "strong_share" in case:
            req.strong_share = case["strong_share"]
        d = client.stub.Route(req, timeout=timeout_s)
    return {
        "chosen_model": d.chosen_model,
        "tier": router_pb2.Tier.Name(d.tier),
        "score": d.score,
        "threshold": d.threshold,
        "router": d.router,
    }


def _feedback(client: RouterClient, case: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    routed = _route_decision(client, case, timeout_s) if "prompt" in case else ""
    reports = []
    for o in case["outcomes"]:
        decision, source = routed if o["decision_id"] == ROUTED else o["decision_id"], o.get("source", "")
        if "single" in o:
            reports.append(single_outcome(decision, o["single"], source))
        else:
            reports.append(paired_outcome(decision, *o["paired"], source))
    resp = client.feedback(reports, timeout_s=timeout_s)
    return {
        "stored": resp.stored,
        "results": [{"item_code": r.code, "item_reason": r.reason} for r in resp.results],
    }


def _route_decision(client: RouterClient, case: dict[str, Any], timeout_s: float) -> str:
    d = client.route(
        case["prompt"], router=case.get("router", ""), threshold=case.get("threshold"), timeout_s=timeout_s
    )
    return d.decision_id


def _targets(resp: Any) -> dict[str, Any]:
    return {
        "share_targets": {t.tenant: t.strong_share for t in resp.share_targets},
        "spend_targets": {t.tenant: t.spend_per_1k_usd for t in resp.spend_targets},
    }


def _call(client: RouterClient, case: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    rpc = case["rpc"]
    if rpc == "Score":
        return _score(client, case, timeout_s)
    if rpc == "ScoreAll":
        return _score_all(client, case, timeout_s)
    if rpc == "Route":
        return _route(client, case, timeout_s)
    if rpc == "Health":
        return {"status": client.health(case.get("service", ""), timeout_s=timeout_s)}
    if rpc == "ListRouters":
        return {"routers": sorted(r.name for r in client.list_routers(timeout_s=timeout_s).routers)}
    if rpc == "Feedback":
        return _feedback(client, case, timeout_s)
    if rpc == "SetTargets":
        return _targets(client.set_targets(case.get("shares"), case.get("spends"), timeout_s=timeout_s))
    if rpc == "GetBundle":
        b = client.get_bundle(timeout_s=timeout_s)
        return {"bundle_version": b.bundle_version, "routers": list(b.routers)}
    if rpc == "ReloadBundle":
        r = client.reload_bundle(case.get("path", ""), timeout_s=timeout_s)
        return {"bundle_version": r.bundle_version, "previous_version": r.previous_version}
    if rpc == "DecisionsToJudge":  # as counts: which decisions depends on the store, which every run changes
        since = case.get("since_ms", 0)
        got = client.decisions_to_judge(
            case.get("budget", 0), window=case.get("window", 0), since_ms=since, timeout_s=timeout_s
        )
        return {
            "picked": len(got.decisions),
            "window": got.window,
            "with_prompts": sum(bool(d.prompt) and len(d.decision_id) == 32 for d in got.decisions),
            "next_since_ms_moved": got.next_since_ms != since,
        }
    if rpc == "ListShareTargets":
        return {"targets": {t.tenant: t.strong_share for t in client.list_share_targets(timeout_s=timeout_s).targets}}
    listed = client.list_spend_targets(timeout_s=timeout_s).targets
    return {"targets": {t.tenant: t.spend_per_1k_usd for t in listed}}


def run_case(client: RouterClient, case: dict[str, Any]) -> dict[str, Any]:
    """One case's result object; a gRPC error becomes {"id", "code", "reason"}, and a request the client
    refuses before sending (RouterClient's ValueError: a lone surrogate) {"id", "code": "INVALID_ARGUMENT",
    "reason": "", "client_error"}."""
    timeout_s = case.get("timeout_ms", DEFAULT_TIMEOUT_MS) / 1000.0
    try:
        body = _call(client, case, timeout_s)
    except grpc.RpcError as err:
        return {"id": case["id"], "code": err.code().name, "reason": error_reason(err)}  # type: ignore[attr-defined]
    except ValueError as err:
        return {"id": case["id"], "code": "INVALID_ARGUMENT", "reason": "", "client_error": str(err)}
    return {"id": case["id"], "code": "OK", **body}


def _check(cases: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(cases, dict) or not isinstance(cases.get("cases"), list):
        raise ValueError(f'{path}: not a cases file (want {{"cases": [...]}})')
    for i, case in enumerate(cases["cases"]):
        if not isinstance(case, dict) or not case.get("id"):
            raise ValueError(f"{path}: cases[{i}]: missing id")
        if case.get("rpc") not in RPCS:
            raise ValueError(f"{path}: cases[{i}] ({case['id']}): unknown rpc {case.get('rpc')!r}")
        if "threshold" in case and "strong_share" in case:
            raise ValueError(f"{path}: cases[{i}] ({case['id']}): threshold and strong_share both set")
        if sum(rule in case for rule in RULES) > 1:
            raise ValueError(f"{path}: cases[{i}] ({case['id']}): more than one of {', '.join(RULES)}")
    return cases["cases"]


def run_cases(
    target: str,
    cases: list[dict[str, Any]],
    ca: str | None = None,
    token: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Every case against `target`, in order (over TLS trusting `ca`, with a client certificate, and with
    `token`, when given)."""
    with RouterClient(
        target,
        timeout_s=DEFAULT_TIMEOUT_MS / 1000.0,
        tls_ca=ca,
        token=token,
        tls_cert=cert,
        tls_key=key,
        retry=NO_RETRY,
    ) as client:
        return {"results": [run_case(client, c) for c in cases]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="py_conformance", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conf = sub.add_parser("conformance", help="run a cases file")
    conf.add_argument("--addr", required=True, help="server HOST:PORT")
    conf.add_argument("--cases", required=True, help="cases file (JSON)")
    conf.add_argument("--ca", help="TLS: trust this CA certificate (PEM)")
    conf.add_argument("--cert", help="mTLS: the client certificate chain (PEM)")
    conf.add_argument("--key", help="mTLS: the client private key (PEM)")
    conf.add_argument("--token-env", help="send the bearer token held by this environment variable")
    args = parser.parse_args(argv)  # exits 2 on bad arguments
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            print(f"py_conformance: environment variable {args.token_env} is not set", file=sys.stderr)
            return 2
    try:
        with open(args.cases, encoding="utf-8") as fh:
            cases = _check(json.load(fh), args.cases)
    except (OSError, ValueError) as err:
        print(f"py_conformance: {err}", file=sys.stderr)
        return 2
    json.dump(run_cases(args.addr, cases, args.ca, token, args.cert, args.key), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
