"""RESULTS.md and the PNG plots from one sweep's summary (run.py calls `write_report`).

.venv/bin/python benchmarks/ghz/report.py OUT      # rewrite OUT/RESULTS.md and plots from OUT/summary.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from statistics import median as _median
from typing import Any

from lmroute.service.config import SETTINGS
from lmroute.service.stats import Histogram, diff_snapshots

_DEFAULTS = {s.name: s.default for s in SETTINGS}  # the server runs with these

GIB = 2**30
QUEUE_TIMEOUT_MS = 1000  # the service default (ServiceConfig.queue_timeout_ms), used in the sweep


def f(x: float | None, nd: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{nd}f}"


def server_hists(row: dict[str, Any]) -> dict[str, Histogram] | None:
    if not row.get("server_before") or not row.get("server_after"):
        return None
    return diff_snapshots(row["server_before"], row["server_after"])


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def median(xs: list[float]) -> float:
    return _median(xs) if xs else float("nan")


def paired_c1(res: dict[str, Any]) -> dict[str, Any] | None:
    """The interleaved concurrency-1 phase: p50 of every service / empty-handler / raw-encoder call over
    all rounds, the median of per-call differences (service call k minus the encoder's run of the same
    prompt in the same round), and each round's p50s."""
    pc = res.get("c1_paired")
    if not pc or not pc.get("rounds"):
        return None
    svc, emp, enc, diffs, per_round = [], [], [], [], []
    for r in pc["rounds"]:
        s_ok = [x for x in r["service"] if x is not None]
        svc += s_ok
        emp += [x for x in r["empty"] if x is not None]
        enc += r["encoder"]
        diffs += [s - e for s, e in zip(r["service"], r["encoder"]) if s is not None]
        per_round.append((median(s_ok), median([x for x in r["empty"] if x is not None]), median(r["encoder"])))
    failed = sum(x is None for r in pc["rounds"] for x in r["service"])
    return {
        "svc_p50": median(svc),
        "empty_p50": median(emp),
        "enc_p50": median(enc),
        "paired_median": median(diffs),
        "n": len(svc),
        "rounds": len(pc["rounds"]),
        "per_round": per_round,
        "failed": failed,
    }


def key_numbers(res: dict[str, Any]) -> dict[str, Any]:
    runs = res["runs"]
    by = lambda phase: [r for r in runs if r["phase"] == phase]  # noqa: E731
    enc = [res[k] for k in ("encoder_before", "encoder_after") if k in res]
    bmax = str(res["meta"]["max_batch_size"])
    shapes = {"batch 1": mean([e["batch1"]["per_s"] for e in enc])}
    for shape in enc[0]["batched"] if enc else []:
        name = "all sorted" if shape == "global_sorted" else f"batches of {shape}"
        shapes[name] = mean([e["batched"][shape]["per_s"] for e in enc if shape in e["batched"]])
    best_shape = max(shapes, key=lambda s: shapes[s]) if shapes else ""
    k: dict[str, Any] = {
        "enc_b1_p50": mean([e["batch1"]["p50_ms"] for e in enc]),
        "enc_rate": shapes.get(best_shape, float("nan")),
        "enc_shape": best_shape,
        "enc_rate_service_shape": shapes.get(f"batches of {bmax}", float("nan")),
        "enc_b1_rate": shapes.get("batch 1", float("nan")),
    }
    route = by("service_route")
    k["svc_sat"] = max((r["ok_per_s"] for r in route), default=float("nan"))
    k["svc_sat_c"] = max(route, key=lambda r: r["ok_per_s"])["concurrency"] if route else None
    c1 = next((r for r in route if r["concurrency"] == 1), None)
    k["svc_c1_p50"] = c1["p50_ms"] if c1 else float("nan")
    c64 = next((r for r in route if r["concurrency"] == 64), None)
    k["svc_c64"] = c64["ok_per_s"] if c64 else float("nan")
    rl = res.get("routellm", {})
    mf64 = next((r for r in rl.get("runs", []) if r["router"] == "mf" and r["concurrency"] == 64), None)
    k["rl_mf_c64"] = mf64["per_s"] if mf64 else float("nan")
    opens = by("service_open")
    k["overload"] = max(opens, key=lambda r: r["offered_rps"]) if opens else None
    k["rss"] = res["server"].get("peak_rss_bytes")
    return k


def goals(res: dict[str, Any], k: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    ratio = k["svc_sat"] / k["enc_rate"]
    rows.append(
        (
            "service Route throughput at saturation (best closed-loop concurrency, here "
            f"{k['svc_sat_c']}) / raw encoder at its best shape (here {k['enc_shape']}; mean of before "
            "and after)",
            f"{f(k['svc_sat'])} / {f(k['enc_rate'])} = {ratio:.2f}x",
            ">= 0.9x",
            "PASS" if ratio >= 0.9 else "MISS",
        )
    )
    pc = paired_c1(res)
    d = k["svc_c1_p50"] - k["enc_b1_p50"]
    separate = (
        f"separate runs (closed-loop c=1 vs the encoder's before/after runs, minutes apart): "
        f"{f(k['svc_c1_p50'], 2)} - {f(k['enc_b1_p50'], 2)} = {d:+.2f} ms"
    )
    if pc:
        dp = pc["svc_p50"] - pc["enc_p50"]
        rows.append(
            (
                f"p50 at concurrency 1 minus encoder batch-1 p50, interleaved ({pc['rounds']} rounds x "
                f"{pc['n'] // pc['rounds']} calls, same prompts)",
                f"{f(pc['svc_p50'], 2)} - {f(pc['enc_p50'], 2)} = {dp:+.2f} ms (median per-call "
                f"difference {pc['paired_median']:+.2f} ms); {separate}",
                "<= 1 ms",
                "PASS" if dp <= 1.0 else "MISS",
            )
        )
    else:
        rows.append(
            ("p50 at concurrency 1 minus encoder batch-1 p50", separate, "<= 1 ms", "PASS" if d <= 1.0 else "MISS")
        )
    if math.isnan(k["rl_mf_c64"]):
        reason = res.get("routellm", {}).get("not_run", "not measured")
        rows.append(("service / RouteLLM mf path at concurrency 64", f"not run: {reason}", ">= 10x", "NOT RUN"))
    else:
        r = k["svc_c64"] / k["rl_mf_c64"]
        rows.append(
            (
                "service / RouteLLM mf path at concurrency 64",
                f"{f(k['svc_c64'])} / {f(k['rl_mf_c64'])} = {r:.1f}x",
                ">= 10x",
                "PASS" if r >= 10 else "MISS",
            )
        )
    ov = k["overload"]
    if ov:
        st = ov["status"]
        re_n = st.get("ResourceExhausted", 0)
        h = server_hists(ov)
        bound = QUEUE_TIMEOUT_MS + (h["score_ms"].quantile(0.99) if h and h["score_ms"].count else 0.0)
        ok = re_n > 0 and ov["p99_ms"] <= bound
        rows.append(
            (
                f"overload ({ov.get('load_fraction', 0):g}x capacity, {ov['offered_rps']} rps offered): "
                "RESOURCE_EXHAUSTED, accepted p99 bounded",
                f"statuses {st}; accepted p99 {f(ov['p99_ms'])} ms (bound {f(bound)} ms = queue timeout + p99 batch)",
                "RESOURCE_EXHAUSTED > 0, p99 <= bound",
                "PASS" if ok else "MISS",
            )
        )
    rss = k["rss"]
    rows.append(
        (
            "server peak RSS under load (VmHWM) vs artifacts loaded",
            f"{f(rss / GIB, 2) if rss else 'n/a'} GiB vs {f(res['meta']['bundle_bytes'] / 2**20)} MiB",
            "<= 1 GiB",
            "PASS" if rss and rss <= GIB else "MISS",
        )
    )
    return rows


def profile_lines(res: dict[str, Any], k: dict[str, Any]) -> list[str]:
    """Where the time goes, from the server's own timings, to explain the goals above."""
    runs = res["runs"]
    rows = [r for r in runs if r["phase"] in ("service_route", "batch1_route") and server_hists(r)]
    if not rows:
        return []
    out = [
        "",
        "## Where the time goes (the service's own timings)",
        "",
        "Per closed-loop Route run: the server-side window (stats snapshot before the run to the first idle "
        "one after it) split into the scoring thread's time inside the encoder (ONNX Runtime embed), inside "
        "the rest of the scorer (tokenising what the idle fast path sent uncounted, stacking the admitted tokens, router math) and idle (waiting for the event loop: "
        "gRPC, admission tokenising, batch forming; all on the server's cores).",
        "",
        "| run | conc. | OK/s | mean batch | encoder ms per prompt | encoder % | rest of scorer % | idle % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    enc_s = prompts = 0.0
    for r in rows:
        h = server_hists(r)
        assert h is not None
        w = r["server_after"]["written_at"] - r["server_before"]["written_at"]
        sc, en, n = h["score_ms"].total / 1e3, h["encoder_ms"].total / 1e3, h["batch_size"].total
        if r is max((x for x in rows if x["phase"] == "service_route"), key=lambda x: x["ok_per_s"], default=None):
            enc_s, prompts = en, n
        out.append(
            f"| {r['label']} | {r['concurrency']} | {f(r['ok_per_s'])} | {f(h['batch_size'].mean)} | "
            f"{f(en * 1e3 / n if n else float('nan'), 2)} | {en / w:.0%} | {(sc - en) / w:.0%} | "
            f"{(w - sc) / w:.0%} |"
        )
    out.append("")
    if not math.isnan(k["enc_rate"]) and prompts:
        enc_per_prompt = 1000.0 / k["enc_rate"]
        svc_enc_per_prompt = enc_s * 1000.0 / prompts
        out.append(
            f"Encoder time per prompt in the best service Route run (default batching): {f(svc_enc_per_prompt, 2)} ms vs "
            f"{f(enc_per_prompt, 2)} ms for the raw encoder at its best shape ({k['enc_shape']}) "
            "(tokenising included there); a gap here means smaller or worse-padded batches in the service."
        )
    tok = [
        res[w]["tokenize_ms_per_prompt"]
        for w in ("encoder_before", "encoder_after")
        if "tokenize_ms_per_prompt" in res.get(w, {})
    ]
    if tok:
        out.append(
            f"Tokenising alone costs {f(mean(tok), 3)} ms per prompt; the service tokenises every prompt "
            "once: at admission (on a helper thread, to count tokens for the padded-token budget; the scorer "
            "reuses those tokens), or, for a one-prompt call arriving while the service is idle, in the "
            "scorer itself (the idle fast path, one thread round trip fewer)."
        )
    ov = k["overload"]
    if ov and ov.get("server_before") and ov.get("server_after"):
        c0, c1 = ov["server_before"].get("counters", {}), ov["server_after"].get("counters", {})
        d = {
            n: c1.get(n, 0) - c0.get(n, 0)
            for n in ("admitted", "rejected_queue_full", "dropped_queue_timeout", "dropped_cancelled", "items_scored")
        }
        out.append(
            f"Overload run ({ov['offered_rps']} rps offered): {d['admitted']} prompts admitted, "
            f"{d['rejected_queue_full']} calls refused with RESOURCE_EXHAUSTED (queue full), "
            f"{d['dropped_queue_timeout']} prompts dropped at the queue timeout (UNAVAILABLE), "
            f"{d['dropped_cancelled']} cancelled by the client, {d['items_scored']} scored. The queue refuses "
            f"only when max_queue ({_DEFAULTS['max_queue']}) prompts are admitted at once; prompts waiting "
            f"longer than queue_timeout_ms ({_DEFAULTS['queue_timeout_ms']}) leave first (UNAVAILABLE)."
        )
    empty = [r for r in runs if r["phase"] == "empty_route" and r["concurrency"] == 1]
    if empty and empty[0]["ok_per_s"]:
        out.append(
            f"The empty handler answers {f(empty[0]['ok_per_s'])} calls/s at concurrency 1 "
            f"(p50 {f(empty[0]['p50_ms'], 2)} ms): the transport's own cost per call, on the same core "
            "as the server."
        )
    return out


def run_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| run | conc. | conns | offered rps | OK/s | p50 ms | p90 ms | p99 ms | statuses | mean batch "
        "| queue wait p50 / p99 ms | encoder ms / batch | rest of scorer ms / batch | scorer busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        h = server_hists(r)
        if h and h["batch_size"].count:
            window_s = r["server_after"]["written_at"] - r["server_before"]["written_at"]
            busy = h["score_ms"].total / 1000.0 / window_s
            srv = (
                f"{h['batch_size'].mean:.1f} | {f(h['queue_wait_us'].quantile(0.5) / 1e3, 2)} / "
                f"{f(h['queue_wait_us'].quantile(0.99) / 1e3, 1)} | {f(h['encoder_ms'].mean, 2)} | "
                f"{f(h['scorer_other_ms'].mean, 2)} | {busy:.0%}"
            )
        else:
            srv = " | | | | "
        st = ", ".join(f"{k} {v}" for k, v in sorted(r["status"].items()))
        out.append(
            f"| {r['label']} | {r['concurrency']} | {r['connections']} | {r['offered_rps'] or '-'} | "
            f"{f(r['ok_per_s'])} | {f(r['p50_ms'], 2)} | {f(r['p90_ms'], 2)} | {f(r['p99_ms'], 2)} | "
            f"{st} | {srv} |"
        )
    return out


def plots(res: dict[str, Any], out: Path, k: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    runs = res["runs"]
    opens = sorted((r for r in runs if r["phase"] == "service_open"), key=lambda r: r["offered_rps"])
    if opens:
        fig, ax = plt.subplots(figsize=(6, 4))
        for q in (50, 90, 99):
            ax.plot([r["offered_rps"] for r in opens], [r[f"p{q}_ms"] for r in opens], marker="o", label=f"p{q}")
        ax.axvline(res.get("capacity_route_per_s", 0), color="grey", ls="--", label="closed-loop capacity")
        ax.set(
            xlabel="offered load, Route calls/s (open loop)",
            ylabel="latency of OK calls, ms",
            yscale="log",
            title="Route latency vs offered load",
        )
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency_vs_load.png", dpi=110)
        names.append("latency_vs_load.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for phase, lab in (
        ("service_route", "service Route"),
        ("service_score", "service Score (calls)"),
        ("batch1_route", "service, batch size 1"),
        ("empty_route", "empty handler"),
    ):
        rs = sorted((r for r in runs if r["phase"] == phase), key=lambda r: r["concurrency"])
        if rs:
            ax.plot([r["concurrency"] for r in rs], [r["ok_per_s"] for r in rs], marker="o", label=lab)
    rl = [r for r in res.get("routellm", {}).get("runs", []) if r["router"] == "mf"]
    if rl:
        ax.plot([r["concurrency"] for r in rl], [r["per_s"] for r in rl], marker="s", label="RouteLLM mf path")
    ax.axhline(k["enc_rate"], color="grey", ls="--", label="raw encoder ceiling")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="concurrency (closed loop)",
        ylabel="OK calls/s",
        title="Throughput vs concurrency",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_concurrency.png", dpi=110)
    names.append("throughput_vs_concurrency.png")
    srv = res["server"]
    if srv.get("start") and srv.get("final"):
        h = diff_snapshots(srv["start"], srv["final"])["batch_size"]
        labels = [f"<={int(b)}" for b in h.bounds] + [f">{int(h.bounds[-1])}"]
        used = [i for i, c in enumerate(h.counts) if c]
        if used:
            sl = slice(0, used[-1] + 1)
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.bar(labels[sl], h.counts[sl])
            ax.set(
                xlabel="prompts per batch (bucket)",
                ylabel="batches",
                title="Batch sizes formed by the service (whole sweep)",
            )
            ax.tick_params(axis="x", labelrotation=45)
            fig.tight_layout()
            fig.savefig(out / "batch_size_histogram.png", dpi=110)
            names.append("batch_size_histogram.png")
    plt.close("all")
    return names


def loadavg(m: dict[str, Any]) -> str:
    a, b = m.get("loadavg_start"), m.get("loadavg_end")
    if not a or not b:
        return ""
    busy = " (the machine was not quiet)" if max(a[0], b[0]) > 1.5 else ""
    return (
        f"; load average (1/5/15 min) {'/'.join(f(x, 2) for x in a)} at the start, "
        f"{'/'.join(f(x, 2) for x in b)} at the end{busy}"
    )


def write_report(res: dict[str, Any], out: Path, plot_prefix: str = "") -> str:
    """Write OUT/RESULTS.md and the plots; return the Markdown. `plot_prefix` is where the PNGs are,
    relative to the Markdown file's directory (run.py --publish uses it for benchmarks/RESULTS.md)."""
    m = res["meta"]
    k = key_numbers(res)
    pngs = plots(res, out, k)
    final = (not m["quick"]) and "default" in m["bundle_label"].lower()
    L = ["# Benchmarks: ghz latency and throughput, the encoder ceiling, peers side by side", ""]
    if not final:
        L += [
            f"> **Development run, not the final numbers**: bundle `{m['bundle_label']}`"
            f"{' (quick mode)' if m['quick'] else ''}. The final table comes from the default bundle on a "
            "quiet machine (command below with `--bundle artifacts/default --label 'default bundle'`).",
            "",
        ]
    L += [
        "```bash",
        "scripts/install_ghz.sh && scripts/install_routellm.sh",
        m["command"],
        "```",
        "",
        f"- {m['date_utc']}; {m['cpu']}, {m['cpus']} CPUs, {f(m['memory_bytes'] / GIB, 1)} GiB; "
        f"Linux {m['kernel']}; wall time of the sweep {f(m['wall_s'] / 60, 1)} min{loadavg(m)}."
        + (f" Note: {m['note']}" if m.get("note") else ""),
        f"- Bundle: **{m['bundle_label']}** (`{m['bundle']}`, version `{m['bundle_version']}`, "
        f"{m['bundle_files']} files, {f(m['bundle_bytes'] / 2**20, 1)} MiB; routers {', '.join(map(str, m['routers']))}).",
        f"- Python {m['python']}, onnxruntime {m['onnxruntime']}, grpcio {m['grpcio']}, ghz {m['ghz']}"
        f"{', routellm ' + res['routellm']['routellm_version'] if 'routellm_version' in res.get('routellm', {}) else ''}.",
        f"- Pinning (taskset): servers, the raw encoder and RouteLLM on cores `{m['server_cores']}`; ghz on "
        f"cores `{m['client_cores']}`. Service defaults (`--max-batch-size {m['max_batch_size']}`, "
        f"`--encoder-chunk-size {m['encoder_chunk_size']}`, `--max-wait-us {_DEFAULTS['max_wait_us']}`, "
        f"`--max-queue {_DEFAULTS['max_queue']}`, `--queue-timeout-ms {_DEFAULTS['queue_timeout_ms']}`), `--intra-op-threads {m['intra_op_threads']}`, device {m['device']}.",
        "- Prompts: `benchmarks/ghz/prompts.json`, 48 short + 16 long real Arena prompts from the calibration "
        "data (3 short : 1 long). Route: one prompt per call, router mf, `strong_share` 0.5. Score: 4 prompts "
        "(3 short + 1 long) x routers mf and sw_ranking per call. ghz sends the requests round-robin.",
        "- Latency percentiles are over OK calls only; statuses count every call ghz finished in the window.",
        "",
        "## Goals (ratios from this one run)",
        "",
        "| goal | measured | target | |",
        "|---|---|---|---|",
    ]
    try:
        L += [f"| {a} | {b} | {c} | **{d}** |" for a, b, c, d in goals(res, k)]
    except (KeyError, ValueError, ZeroDivisionError, TypeError) as exc:
        L.append(f"| goals | not computable from this run ({type(exc).__name__}: {exc}) | | **NOT RUN** |")
    if res.get("failed"):
        L += ["", "**Phases that failed in this run** (the others ran):", ""]
        L += [f"- {name}: `{msg.splitlines()[0][:300]}`" for name, msg in res["failed"].items()]
    L += profile_lines(res, k)
    pc = paired_c1(res)
    if pc:
        L += [
            "",
            "## Concurrency 1, interleaved",
            "",
            "Round by round, back to back on the same cores: one ghz pass of Route calls over the 64 prompts "
            "against the service, one against the empty handler, one batch-1 pass of the raw encoder "
            "(tokenise + embed) over the same prompts. The machine drifts by about a millisecond at this "
            "latency between runs minutes apart (see the raw encoder's before/after rows), so the goal is "
            "judged on these side-by-side passes. Where a call's time goes beyond the encoder, stage by stage "
            "inside the server: `benchmarks/RESULTS_c1_trace.md` (`benchmarks/ghz/c1_trace.py`).",
            "",
            "| round | service p50 ms | empty handler p50 ms | raw encoder p50 ms | service - encoder ms |",
            "|---|---|---|---|---|",
        ]
        L += [
            f"| {i + 1} | {f(a, 2)} | {f(b, 2)} | {f(c, 2)} | {a - c:+.2f} |"
            for i, (a, b, c) in enumerate(pc["per_round"])
        ]
        L.append(
            f"| all ({pc['n']} calls each) | {f(pc['svc_p50'], 2)} | {f(pc['empty_p50'], 2)} | "
            f"{f(pc['enc_p50'], 2)} | {pc['svc_p50'] - pc['enc_p50']:+.2f} |"
        )
        if pc["failed"]:
            L.append(f"\n{pc['failed']} service calls failed in these rounds.")
    runs = res["runs"]
    L += [
        "",
        "## Closed loop (ghz -c N, fixed number of callers)",
        "",
        "Server columns come from the service's own timings (`--stats-path`): per batch, the scorer call "
        "split into the encoder (ONNX Runtime embed) and the rest (tokenising what the idle fast path sent uncounted, stacking the admitted tokens, router math); *scorer busy* is the share of the server-side window (stats snapshot "
        "before the run to the first idle one after it) that the scoring thread spent in the scorer "
        "(100 % = the encoder never waits for work).",
        "",
    ]
    L += run_table(
        [
            r
            for r in runs
            if r["phase"]
            in (
                "service_route",
                "service_score",
                "service_connections",
                "service_reflection",
                "batch1_route",
                "empty_route",
            )
        ]
    )
    opens = [r for r in runs if r["phase"] == "service_open"]
    if opens:
        L += [
            "",
            f"## Open loop (ghz --async --rps R; capacity = best closed-loop Route rate "
            f"{f(res.get('capacity_route_per_s'))}/s)",
            "",
        ]
        L += run_table(opens)
    L += [
        "",
        "## Raw encoder (ONNX Runtime alone, same prompts; before and after the service runs)",
        "",
        "| when | batch-1 p50 ms | batch-1 p99 ms | prompts/s, batch 1 | prompts/s, batches of 8 | prompts/s, batches of "
        f"{m['max_batch_size']} (the service's shape) | prompts/s, all sorted (best case) |",
        "|---|---|---|---|---|---|---|",
    ]
    for when in ("before", "after"):
        e = res.get(f"encoder_{when}")
        if e:
            b = e["batched"]
            L.append(
                f"| {when} | {f(e['batch1']['p50_ms'], 2)} | {f(e['batch1']['p99_ms'], 2)} | "
                f"{f(e['batch1']['per_s'])} | "
                f"{f(b.get('8', {}).get('per_s'))} | {f(b.get(str(m['max_batch_size']), {}).get('per_s'))} | "
                f"{f(b['global_sorted']['per_s'])} |"
            )
    rl = res.get("routellm", {})
    L += ["", "## RouteLLM's own path (routellm_driver.py)", ""]
    if "not_run" in rl:
        L.append(f"Not run: {rl['not_run']}")
    elif rl:
        L += [
            "Its router classes called one prompt per call from c Python threads, with our ONNX encoder in "
            "place of its OpenAI embedding call (no network). mf: its `MFModel` with **random weights** (the "
            "trained checkpoint is on a model hub the benchmark machine cannot reach; the cost per call is the same). "
            f"sw_ranking: {rl.get('battles', 0):,} synthetic battles (the 55k Arena set's size; RouteLLM's "
            "default table is larger, so this is a lower bound on its cost).",
            "",
            "| router | concurrency | calls/s | p50 ms | p99 ms |",
            "|---|---|---|---|---|",
        ]
        L += [
            f"| {r['router']} | {r['concurrency']} | {f(r['per_s'], 2)} | {f(r['p50_ms'])} | {f(r['p99_ms'])} |"
            for r in rl.get("runs", [])
        ]
        b1 = k["enc_b1_rate"]
        L += [
            "",
            f"With the embedding local, RouteLLM's mf path costs one batch-1 encoder run per prompt plus a "
            f"few torch ops, so its rate is about the raw encoder's at batch 1 ({f(b1)} prompts/s here) and the "
            f"service can beat it only by what batching gains the encoder: {f(k['enc_rate'])} / {f(b1)} = "
            f"{k['enc_rate'] / b1:.2f}x at the encoder's best shape in this run. The 10x goal assumes RouteLLM's "
            "real path, where the embedding is a network call to OpenAI per prompt (not measured here).",
        ]
    L += [
        "",
        "## Memory",
        "",
        f"Server peak RSS (VmHWM at stop, after the whole sweep with the open-loop overload): "
        f"**{f((k['rss'] or 0) / GIB, 2)} GiB**; artifacts loaded: {f(m['bundle_bytes'] / 2**20, 1)} MiB "
        f"({m['bundle_files']} files). `stopped` line of the service:",
        "",
        "```",
        res["server"].get("stopped_line", "")[:1500],
        "```",
        "",
    ]
    if pngs:
        L += ["## Plots", ""] + [f"![{p}]({plot_prefix}{p})" for p in pngs] + [""]
    md = "\n".join(L) + "\n"
    (out / "RESULTS.md").write_text(md)
    return md


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    res = json.loads((out / "summary.json").read_text())
    write_report(res, out)
    print(out / "RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
