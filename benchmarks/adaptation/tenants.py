"""Two tenants, one server: a router adapted to each tenant's own calls against one shared by both.

The adaptation protocol (docs/ADAPTATION.md) with two tenants: MMLU's traffic comes from tenant `mmlu`, GSM8K's
from tenant `gsm8k` (both decontaminated by `load_eval`, split by the sha256 of each prompt; only the
stream halves are trained on, the test halves only reported). One `lmroute-serve` child process with an
SQLite outcome store records every stream prompt once through `Score`, called as its tenant (interleaved
in a seeded random order, so its decisions record their caller); another child per bundle compared
(with a store of its own) routes the test halves. Per seed (which N outcomes of each tenant's stream
arrive):

1. the N outcomes of each tenant's sampled stream decisions are sent with `Feedback` (paired: both models'
   correctness);
2. shared: `lmroute-export adapt` of the base bundle from both tenants' outcomes (the bundle's `adapted`
   router, its default for every caller);
3. own: `lmroute-export adapt --for-tenant mmlu` of the base bundle, then `--for-tenant gsm8k` of its
   result (each tenant's `adapted-<tenant>`, learnt from and calibrated on its calls alone; a refused one
   leaves the tenant on the bundle's default `mf`); own then shared: the shared adaptation of that result
   (each tenant with an accepted router of its own keeps it, the others get the shared `adapted`);
4. each bundle as gated (a refused adaptation leaves its parent) is served by a routing server, and
   each tenant's test half is routed through `Route` as that tenant, naming no router, at strong
   share 0.5: APGR of the scores (the paper's deciles) and the share of calls sent to the strong model.

Zero-shot: the base bundle's default `mf` routed the same way. MMLU's test half is subsampled with
`--test-limit` (a fixed, seeded sample).

    .venv/bin/lmroute-export build --encoder static --routers random mf sw_ranking --out /tmp/drift/static
    .venv/bin/python benchmarks/adaptation/tenants.py --bundle /tmp/drift/static --out benchmarks/adaptation

(about 3 minutes on 2 cores with that bundle).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replay import (
    adapt,
    add_common_args,
    apgr,
    cpu_model,
    finish,
    load_protocol_set,
    send_outcomes,
    start_server,
    summary,
)

from lmroute.service.client import RouterClient
from lmroute.v1 import router_pb2

TENANTS = ("mmlu", "gsm8k")
CONFIGS = ("zero_shot", "shared", "own", "own_then_shared")


def record_streams(target: str, data: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Every stream prompt scored once by `mf` through Score as its tenant, the tenants interleaved in a
    seeded random order (chunks of 32); the decision ids by tenant, in stream order."""
    chunks = [(t, start) for t, d in data.items() for start in range(0, d["stream"].size, 32)]  # (tenant, first)
    order = np.random.default_rng(7).permutation(len(chunks))
    ids: dict[str, list[str]] = {t: [""] * d["stream"].size for t, d in data.items()}
    clients = {t: RouterClient(target, tenant=t, timeout_s=600) for t in data}
    try:
        for k in order:
            t, start = chunks[k]
            d = data[t]
            part = d["stream"][start : start + 32]
            resp = clients[t].score([d["texts"][i] for i in part], routers=["mf"], timeout_s=600)
            for r in resp.results:
                if r.status.code != 0:
                    raise RuntimeError(f"{t} stream prompt {start + r.index}: {r.status.reason} {r.status.message}")
                ids[t][start + r.index] = r.decision_id
    finally:
        for c in clients.values():
            c.close()
    return ids


def route_tests(bundle: Path, data: dict[str, dict[str, Any]], work: Path) -> dict[str, dict[str, Any]]:
    """Each tenant's test half routed by a server of `bundle` (`route_test`)."""
    proc, target = start_server(bundle, f"sqlite:{work / 'routing.sqlite3'}", work / "route.log")
    try:
        return {t: route_test(target, t, d) for t, d in data.items()}
    finally:
        proc.terminate()
        proc.wait(60)


def route_test(target: str, tenant: str, d: dict[str, Any]) -> dict[str, Any]:
    """The tenant's test half routed as that tenant, no router named, strong share 0.5."""
    scores, strong, routers = [], 0, set()
    with RouterClient(target, tenant=tenant, timeout_s=600) as client:
        for i in d["test"]:
            r = client.route(d["texts"][i], strong_share=0.5, timeout_s=60)
            scores.append(r.score)
            strong += r.tier == router_pb2.TIER_STRONG
            routers.add(r.router)
    s = np.asarray(scores)
    return {
        "apgr": apgr(s, d["sq"][d["test"]], d["wq"][d["test"]]),
        "strong_share": strong / len(scores),
        "routers": sorted(routers),
    }


def run_seed(
    seed: int,
    args: argparse.Namespace,
    data: dict[str, dict[str, Any]],
    ids: dict[str, list[str]],
    store: str,
    work: Path,
) -> dict[str, Any]:
    since = int(time.time() * 1000)
    with RouterClient(args.record_target, timeout_s=600) as client:
        for t, d in data.items():
            n = min(args.n[t], d["stream"].size)
            idx = np.random.default_rng(1000 * seed + TENANTS.index(t)).permutation(d["stream"].size)[:n]
            rows = d["stream"][idx]
            send_outcomes(client, [ids[t][i] for i in idx], d["sq"][rows], d["wq"][rows], f"tenants-{seed}")
    shared_out = work / f"shared-{seed}"
    shared = adapt(args.bundle, store, shared_out, since)
    reports: dict[str, Any] = {"shared": shared}
    bundles = {"shared": shared_out if shared["accepted"] else args.bundle}
    parent = args.bundle
    for t in TENANTS:
        out = work / f"own-{seed}-{t}"
        reports[f"own_{t}"] = adapt(parent, store, out, since, ["--for-tenant", t])
        if reports[f"own_{t}"]["accepted"]:
            parent = out
    bundles["own"] = parent
    out = work / f"own_then_shared-{seed}"
    reports["own_then_shared"] = adapt(parent, store, out, since)
    bundles["own_then_shared"] = out if reports["own_then_shared"]["accepted"] else parent
    keys = ("accepted", "n_outcomes", "champion", "gate", "adapt_s")
    result: dict[str, Any] = {"adapt": {name: {k: r.get(k) for k in keys} for name, r in reports.items()}}
    for config, bundle in bundles.items():
        result[config] = route_tests(bundle, data, work)
        print(
            f"seed {seed} {config}: " + ", ".join(f"{t} {v['apgr']:.3f}" for t, v in result[config].items()),
            flush=True,
        )
    return result


def markdown(results: dict[str, Any], command: str) -> str:
    n = results["seeds"]
    out = [
        "# Two tenants, one server: each tenant's own adapted router vs one shared",
        "",
        f"Command: `{command}`  ",
        f"CPU: {results['cpu']}; `lmroute-serve` child processes (one recording, with the SQLite store; one "
        f"routing per bundle compared); Python {platform.python_version()}; wall time {results['wall_min']:.0f} min.  ",
        f"Bundle: `{results['bundle_version']}` ({results['encoder']} encoder; its `mf` is the zero-shot default); "
        f"seeds {n}; outcomes per seed: "
        + ", ".join(f"{t} {k}" for t, k in results["n"].items())
        + ". Each tenant's test half routed through `Route` as that tenant, naming no router, at strong share "
        "0.5: APGR (the paper's deciles, `lmroute.export.metrics`) and the share of calls sent to the strong "
        "model, mean +- sd over seeds. Bundles: shared = `lmroute-export adapt` from both tenants' outcomes "
        "(`adapted`, every caller's default router); own = `--for-tenant` for each tenant on the base bundle "
        "(`adapted-<tenant>`, learnt from and calibrated on its calls alone; the default stays `mf`); own then "
        "shared = the shared adaptation of the own bundle (a tenant whose own router was accepted keeps it, the "
        "others get `adapted`). Each candidate is gated against the router its tenant's calls get now (`mf`); a "
        "refused adaptation leaves its parent serving; accepted counts the seeds whose bundle gave the tenant "
        "a router adapted for it (own) or any adapted router (own then shared).",
        "",
        "| tenant | test prompts | config | APGR | - shared (paired) | strong share at 0.5 | accepted |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for t, r in results["tenants"].items():
        z = r["zero_shot"]
        out.append(
            f"| {t} | {r['test_scored']} of {r['test_half']} | zero-shot `mf` | {z['apgr']:.3f} | | "
            f"{z['strong_share']:.3f} | |"
        )
        for c in CONFIGS[1:]:
            a, sh, d = r[c]["apgr"], r[c]["strong_share"], r[c]["minus_shared"]
            diff = "" if c == "shared" else f"{d['mean']:+.3f} +- {d['sd']:.3f}"
            out.append(
                f"| {t} | | {c.replace('_', ' ')} | {a['mean']:.3f} +- {a['sd']:.3f} | {diff} "
                f"| {sh['mean']:.3f} +- {sh['sd']:.3f} | {r[c]['accepted']}/{n} |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--n", default="mmlu=1000,gsm8k=500", help="paired outcomes per seed, per tenant")
    args = ap.parse_args(argv)
    args.n = {k: int(v) for k, v in (part.split("=") for part in args.n.split(","))}
    if sorted(args.n) != sorted(TENANTS):
        ap.error(f"--n: one count for each of {', '.join(TENANTS)}")
    args.bundle = args.bundle.resolve()
    work = args.work or Path(tempfile.mkdtemp(prefix="lmroute-tenants-"))
    work.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:{work / 'outcomes.sqlite3'}"
    data = {t: load_protocol_set(t, args.test_limit) for t in TENANTS}
    t0 = time.perf_counter()
    rec, args.record_target = start_server(args.bundle, store, work / "record.log")
    try:
        with RouterClient(args.record_target, timeout_s=600) as client:
            listed = client.list_routers()
        ids = record_streams(args.record_target, data)
        zero = route_tests(args.bundle, data, work)
        seeds = [run_seed(s, args, data, ids, store, work) for s in range(args.seeds)]
    finally:
        rec.terminate()
        rec.wait(60)
    tenants: dict[str, Any] = {}
    for t, d in data.items():
        tenants[t] = {
            "test_scored": int(d["test"].size),
            "test_half": d["test_half"],
            "stream": int(d["stream"].size),
            "zero_shot": zero[t],
        }
        for c in CONFIGS[1:]:
            routed = [s[c][t]["routers"] for s in seeds]
            tenants[t][c] = {
                "apgr": summary([s[c][t]["apgr"] for s in seeds]),
                "strong_share": summary([s[c][t]["strong_share"] for s in seeds]),
                "minus_shared": summary([s[c][t]["apgr"] - s["shared"][t]["apgr"] for s in seeds]),
                "routers": sorted({r for s in seeds for r in s[c][t]["routers"]}),
                "accepted": sum(any(r.startswith("adapted") for r in rs) for rs in routed),
            }
    results = {
        "bundle_version": listed.bundle_version,
        "encoder": listed.encoder.kind,
        "cpu": cpu_model(),
        "seeds": args.seeds,
        "n": args.n,
        "wall_min": (time.perf_counter() - t0) / 60,
        "tenants": tenants,
        "per_seed": seeds,
    }
    return finish("tenants", results, markdown, args, work, argv)


if __name__ == "__main__":
    sys.exit(main())
