"""What TLS, token authentication and the metrics endpoint cost per Route call, side by side.

    .venv/bin/lmroute-export build --encoder static --routers random mf sw_ranking --out /tmp/drift/static
    .venv/bin/python benchmarks/ghz/security_cost.py --bundle /tmp/drift/static --out benchmarks/ghz/results/security

Two servers over the same bundle, both pinned to the server core (the first half of this process's CPUs;
ghz on the other half):

    plain     lmroute-serve as shipped (plaintext, no tokens, no metrics)
    secured   --tls-cert-file / --tls-key-file (a CA and certificate made here by trustme), --auth-tokens-file
              (one token, sent by ghz as `authorization: Bearer ...`), --metrics-port 0

ghz runs Route (route.json / route_tls.json: the 64 prompts of prompts.json, router mf, strong_share 0.5)
at concurrency 1 and 16 on one connection, each server in turn, `--rounds` times, so a ratio compares runs
made seconds apart. A static-encoder bundle makes the call itself cheap (about a millisecond), so the
share the security layers take is as large as it gets; with the fp32 encoder it is ~30x smaller.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import trustme
from loadgen import GhzRun, ghz_version, run_ghz
from procs import ChildServer, default_cores, service_cmd

from lmroute.service.server import transport_for

TOKEN = "bench-token-0123456789abcdef"


def certificates(root: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(root / "server.key"))
    (root / "server.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    (root / "tokens").write_text(TOKEN + "\n")
    return {"cert": root / "server.pem", "key": root / "server.key", "ca": root / "ca.pem", "tokens": root / "tokens"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    server_cores, ghz_cores = default_cores()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        files = certificates(Path(tmp))
        plain = service_cmd(args.bundle)
        secured = service_cmd(
            args.bundle,
            tls_cert_file=files["cert"],
            tls_key_file=files["key"],
            auth_tokens_file=files["tokens"],
            metrics_port=0,
        )
        tls_args = [
            "--cacert",
            str(files["ca"]),
            "--cname",
            "127.0.0.1",
            "-m",
            json.dumps({"authorization": f"Bearer {TOKEN}"}),
        ]
        with ChildServer(plain, server_cores, stats=False) as a, ChildServer(secured, server_cores, stats=False) as b:
            for rnd in range(args.rounds):
                for c in (1, 16):
                    for name, srv, config, extra in (
                        ("plain", a, "route.json", []),
                        ("secured", b, "route_tls.json", tls_args),
                    ):
                        run = GhzRun(config, c, 1, args.seconds, label=f"{name}-c{c}-r{rnd}", extra=extra)
                        s = run_ghz(run, srv.target, ghz_cores, Path(tmp) / "ghz")
                        rows.append({"server": name, "concurrency": c, "round": rnd, **s})
                        print(
                            f"round {rnd} c={c} {name}: {s['ok_per_s']:.0f} OK/s p50 {s['p50_ms']:.2f} ms",
                            file=sys.stderr,
                        )
    table = [
        "| concurrency | server | OK calls/s (median of rounds) | p50 ms | p99 ms | non-OK |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    summary: dict[str, Any] = {}
    for c in (1, 16):
        for name in ("plain", "secured"):
            mine = [r for r in rows if r["server"] == name and r["concurrency"] == c]
            med = {k: statistics.median(r[k] for r in mine) for k in ("ok_per_s", "p50_ms", "p99_ms")}
            bad = sum(sum(n for st, n in r["status"].items() if st != "OK") for r in mine)
            summary[f"{name}-c{c}"] = {**med, "not_ok": bad}
            table.append(
                f"| {c} | {name} | {med['ok_per_s']:.0f} | {med['p50_ms']:.2f} | {med['p99_ms']:.2f} | {bad} |"
            )
        ratio = summary[f"secured-c{c}"]["ok_per_s"] / summary[f"plain-c{c}"]["ok_per_s"]
        summary[f"ratio-c{c}"] = ratio
        table.append(f"| {c} | secured / plain | {ratio:.2f} | | | |")
    command = ".venv/bin/python benchmarks/ghz/security_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = "\n".join(
        [
            "# The cost of TLS + token authentication + metrics",
            "",
            f"Command: `{command}`",
            "",
            f"{platform.machine()} CPU, 2 cores, no GPU; server on CPU {server_cores}, ghz on CPU {ghz_cores}; "
            f"{ghz_version()}; {args.rounds} rounds of {args.seconds:g} s per server and concurrency, interleaved; "
            f"both servers on the `{transport_for(args.bundle)}` transport (`--transport auto` for this bundle).",
            "",
            *table,
        ]
    )
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "RESULTS.md").write_text(md + "\n")
        (args.out / "summary.json").write_text(
            json.dumps({"command": command, "summary": summary, "runs": rows}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
