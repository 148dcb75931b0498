"""`lmroute-export`: the offline pipeline's command line.

build      train every router from the vendored data and write a calibrated bundle (train + export +
           calibrate in one go; `train` is the same command)
export     export only the sentence encoder to ONNX (verified against PyTorch)
calibrate  recompute a bundle's threshold table on the vendored Arena prompts or on your own traffic
evaluate   score MT-Bench, MMLU and GSM8K with every router and write the report
contamination  near-duplicate check of training prompts against the eval sets
restamp    give a bundle whose manifest.json was edited on purpose the content version of its new content
keygen     make an Ed25519 key pair (PEM) for signing bundles
sign       sign a bundle's manifest.json (detached Ed25519 signature, manifest.json.sig)
verify     load and validate a bundle, and with --public-key check its signature
import-outcomes  outcomes from a JSONL file into an outcome store
copy-store       a whole outcome store into a new one (either backend)
erase            delete what an outcome store holds about prompts, decisions or a tenant, on request
adaptations      the adaptation runs a store recorded: when, from which bundle, the gate's verdict and why
adapt            learn from a store's outcomes: adapt a bundle, gate it, write it when the gate accepts
to-judge         which recent decisions to judge next with both models (the label budget)
import-routellm  a bundle from RouteLLM's released router checkpoints
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

from lmroute.bundle import kinds
from lmroute.export.calibrate import MIN_CALIBRATION_PROMPTS  # the fewest `calibrate --prompts` takes
from lmroute.export.dataclass_flags import add_flags, values_from
from lmroute.export.pipeline import ALL_ROUTERS, REPO_ROOT, BuildConfig
from lmroute.export.recipe import Recipe
from lmroute.outcomes.records import (
    UNNAMED_REPORTER,
    add_reporters_arg,
    report_json,
    reporters_named,
    tenant_filters,
)

PROG = "lmroute-export"
ENV_PREFIX = "LMROUTE_EXPORT_"


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name, default)


def _add_plugin(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin",
        action="append",
        default=_plugins_from_env(),
        metavar="MODULE",
        help="import MODULE first: it registers more router kinds (repeatable; env LMROUTE_PLUGINS, comma-separated)",
    )


def _plugins_from_env() -> list[str]:
    return [m.strip() for m in os.environ.get("LMROUTE_PLUGINS", "").split(",") if m.strip()]


def _load_plugins(args_list: Sequence[str]) -> None:
    """Import the --plugin modules before the parser lists the router kinds."""
    pre = argparse.ArgumentParser(add_help=False)
    _add_plugin(pre)
    known, _ = pre.parse_known_args(list(args_list))
    try:
        kinds.load_plugins(known.plugin)
    except ImportError as exc:
        raise SystemExit(f"{PROG}: --plugin: {exc}") from exc


def _add_build(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="train all routers and write a calibrated bundle",
        description="Train the routers and write a calibrated bundle. The training recipe's flags also read "
        f"{ENV_PREFIX}<NAME> (e.g. {ENV_PREFIX}MF_LR); a flag beats the variable, the variable the default.",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help=(
            "bundle directory (a bundle there is replaced: a manifest.json of a bundle and only the files it "
            "lists; any other directory holding files is refused)"
        ),
    )
    p.add_argument("--data-dir", type=Path, default=Path(_env("DATA_DIR", str(REPO_ROOT / "data"))))
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(_env("CACHE_DIR", str(REPO_ROOT / ".cache"))),
        help="exported encoders and prompt embeddings, reused across builds (default: the repository's .cache, "
        "wherever the command runs; LMROUTE_EXPORT_CACHE_DIR)",
    )
    # the adapted kinds are made from a deployment's outcomes (lmroute.adapt), never by a build
    buildable = [k for k in kinds.names() if not kinds.get(k).from_outcomes]
    p.add_argument("--routers", nargs="+", default=list(ALL_ROUTERS), choices=buildable)
    p.add_argument(
        "--default-router",
        default=_env("DEFAULT_ROUTER", "auto"),
        help="the router of Route calls that name none: one of --routers, 'none', or 'auto' (mf when built)",
    )
    p.add_argument(
        "--default-quality-router",
        default=_env("DEFAULT_QUALITY_ROUTER", "auto"),
        help="the router of Route calls among candidates that name none: as --default-router ('auto': quality)",
    )
    _add_plugin(p)
    p.add_argument(
        "--quick",
        action="store_true",
        default=_env("QUICK", "") == "1",
        help="CI mode: few rows per source, short training (numbers are not meaningful)",
    )
    p.add_argument("--report", type=Path, default=None, help="write the build report JSON here")
    add_flags(p.add_argument_group("training recipe (lmroute.export.recipe.Recipe)"), Recipe, env_prefix=ENV_PREFIX)


def build_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> BuildConfig:
    """The BuildConfig of parsed `build` flags; recipe knobs not given as flags come from LMROUTE_EXPORT_*
    variables, then from the Recipe's defaults. Raises ValueError naming a bad flag, variable or value."""
    recipe = Recipe(**values_from(args, Recipe, env_prefix=ENV_PREFIX, environ=environ))
    return BuildConfig(
        out_dir=args.out,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        routers=tuple(args.routers),
        default_router=args.default_router,
        default_quality_router=args.default_quality_router,
        quick=args.quick,
        recipe=recipe,
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (load --plugin modules first: `build --routers` lists the kinds)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_build(sub, "build")
    _add_build(sub, "train")

    p = sub.add_parser("export", help="export the sentence encoder to ONNX")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--max-tokens", type=int, default=Recipe().max_tokens)
    p.add_argument("--int8", action="store_true", help="per-channel dynamic int8 (measure before use)")

    p = sub.add_parser("calibrate", help="recompute a bundle's calibration table")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="your own traffic: a text file, one prompt per line, or JSONL with a 'prompt' field",
    )
    _add_plugin(p)

    p = sub.add_parser("evaluate", help="evaluate a bundle on MT-Bench, MMLU and GSM8K")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="see `lmroute-export evaluate --help`")

    p = sub.add_parser("contamination", help="near-duplicates of eval prompts among training prompts")
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    p.add_argument("--cache-dir", type=Path, default=REPO_ROOT / ".cache")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--out", type=Path, default=None, help="write the findings as JSON here")
    _add_integrity_commands(sub)
    _add_outcome_commands(sub)
    _add_copy_store_command(sub)
    _add_erase_command(sub)
    _add_adaptations_command(sub)
    _add_adapt_command(sub)
    _add_to_judge_command(sub)
    p = sub.add_parser(
        "import-routellm",
        help="make a bundle of RouteLLM's released mf, bert or sw_ranking router (its files; docs/OPENAI_FRONT.md)",
    )
    from lmroute.export.import_routellm import add_arguments as add_import_arguments

    add_import_arguments(p)
    return parser


def _add_integrity_commands(sub: argparse._SubParsersAction) -> None:
    """restamp, keygen, sign, verify (docs/BUNDLE.md, "Integrity and signing")."""
    p = sub.add_parser("restamp", help="re-stamp a bundle whose manifest.json was edited on purpose")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--label", default=None, help="set the bundle's free-text label ('' removes it)")
    p.add_argument(
        "--default-router",
        default=None,
        help="set the router of Route calls that name none ('' removes it: such calls are then refused)",
    )
    p.add_argument(
        "--default-quality-router",
        default=None,
        help="set the router of Route calls among candidates that name none ('' removes it)",
    )
    p.add_argument(
        "--tenant-router",
        action="append",
        default=[],
        metavar="TENANT=ROUTER",
        help="set a tenant's own router, what its Route calls naming none get (TENANT= removes it: the "
        "bundle's default again); repeatable",
    )
    p.add_argument(
        "--tenant-quality-router",
        action="append",
        default=[],
        metavar="TENANT=ROUTER",
        help="the same for a tenant's Route calls among candidates; repeatable",
    )
    _add_plugin(p)

    p = sub.add_parser("keygen", help="make an Ed25519 key pair (PEM) for signing bundles")
    p.add_argument(
        "--out",
        type=str,  # as given: a trailing slash (a directory meant) is refused, not dropped
        required=True,
        metavar="PREFIX",
        help="writes PREFIX.key (private, mode 0600) and PREFIX.pub (public); never overwrites",
    )

    p = sub.add_parser("sign", help="sign a bundle's manifest.json (writes manifest.json.sig)")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True, help="private key PEM (lmroute-export keygen)")
    _add_plugin(p)

    p = sub.add_parser("verify", help="load and validate a bundle; with --public-key also its signature")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--public-key", type=Path, default=None, help="public key PEM the signature must verify with")
    _add_plugin(p)


def _add_outcome_commands(sub: argparse._SubParsersAction) -> None:
    """import-outcomes (docs/OUTCOMES.md)."""
    p = sub.add_parser("import-outcomes", help="import outcomes from a JSONL file into an outcome store")
    p.add_argument("file", type=Path, help="JSONL outcomes (format: lmroute.outcomes.jsonl, docs/OUTCOMES.md)")
    p.add_argument("--store", required=True, metavar="DSN", help="sqlite:PATH or postgresql://...")
    p.add_argument("--bundle", type=Path, default=None, help="take the strong/weak pair from this bundle")
    p.add_argument("--strong", default=None, help="strong model of paired / preference outcomes")
    p.add_argument("--weak", default=None, help="weak model of paired / preference outcomes")
    texts = p.add_mutually_exclusive_group()
    texts.add_argument(
        "--no-store-prompts", action="store_true", help="keep only prompt hashes, never texts (the privacy switch)"
    )
    texts.add_argument(
        "--store-prompts",
        action="store_true",
        help="store the prompts' texts even into a store whose decisions hold none (its server runs "
        "--store-prompts false): without it that is refused",
    )
    p.add_argument(
        "--reporter",
        default=UNNAMED_REPORTER,
        help=f"the tenant the outcomes are recorded as reported by (adapt --reporters; default {UNNAMED_REPORTER}, "
        "as a caller naming no tenant)",
    )


def _add_copy_store_command(sub: argparse._SubParsersAction) -> None:
    """copy-store (docs/OUTCOMES.md)."""
    p = sub.add_parser(
        "copy-store", help="copy an outcome store into a new one (e.g. the embedded SQLite into PostgreSQL)"
    )
    p.add_argument("--from", dest="source", required=True, metavar="DSN", help="the store to copy")
    p.add_argument("--to", dest="target", required=True, metavar="DSN", help="an empty store (created if new)")


def _add_erase_command(sub: argparse._SubParsersAction) -> None:
    """erase (docs/OUTCOMES.md)."""
    p = sub.add_parser(
        "erase",
        help="delete what an outcome store holds about prompts, decisions or tenants (decisions and outcomes)",
    )
    p.add_argument("--store", required=True, metavar="DSN", help="sqlite:PATH or postgresql://...")
    p.add_argument(
        "--prompts-file",
        type=Path,
        default=None,
        help="prompts to erase wherever they are: one a line, or JSONL objects with a 'prompt' field",
    )
    p.add_argument(
        "--prompt-sha256", action="append", default=[], metavar="HEX", help="a prompt by the SHA-256 of its text"
    )
    p.add_argument("--decision-id", action="append", default=[], metavar="ID", help="one decision")
    p.add_argument(
        "--callers",
        action="append",
        default=None,
        metavar="NAMES",
        help=f"the decisions these tenants' calls made and the outcomes they reported (comma-separated; "
        f"{UNNAMED_REPORTER} = calls naming none)",
    )
    p.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _erase(args: argparse.Namespace) -> int:
    """Delete (or with --dry-run count) what the store holds about the named prompts, decisions and
    tenants; {"decisions": n, "outcomes": n, "dry_run": ...} on stdout."""
    from lmroute.outcomes.records import prompt_sha256
    from lmroute.outcomes.store import open_store
    from lmroute.service.decisions import decision_id_time_ms

    try:
        callers = reporters_named(args.callers, "callers") or frozenset()
        hashes = [h.lower() for h in args.prompt_sha256]
        bad = next((h for h in hashes if not _SHA256_HEX.fullmatch(h)), None)
        if bad is not None:
            raise ValueError(f"--prompt-sha256: {bad!r} is not 64 hex digits")
        for did in args.decision_id:
            try:
                decision_id_time_ms(did)
            except ValueError:
                raise ValueError(
                    f"--decision-id: {did[:40]!r} is not a decision id (32 lowercase hex digits)"
                ) from None
        if args.prompts_file is not None:
            try:
                hashes += [prompt_sha256(p) for p in _read_prompts(args.prompts_file)]
            except SystemExit as exc:  # the file named, and its bad line
                raise ValueError(str(exc)) from None
        if not (hashes or args.decision_id or callers):
            raise ValueError("name what to erase: --prompts-file, --prompt-sha256, --decision-id or --callers")
    except (ValueError, OSError) as exc:
        print(f"{PROG} erase: {exc}", file=sys.stderr)
        return 2
    store = open_store(args.store, must_exist=True)  # a StoreError is printed by main, exit 1
    try:
        named = {"decision_ids": args.decision_id, "prompt_sha256s": hashes, "callers": callers}
        unmatched = store.unmatched(**named)  # before: what the erasure will find nothing for
        erased = store.erase(**named, dry_run=args.dry_run)
    except ValueError as exc:
        print(f"{PROG} erase: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if not erased.log_emptied:
        print(
            f"{PROG} erase: a reader kept the store's write-ahead log from being emptied; it may still hold "
            "erased rows: run the same command again",
            file=sys.stderr,
        )
    found_nothing = {**unmatched, "callers": [c or UNNAMED_REPORTER for c in unmatched["callers"]]}
    answer = {"decisions": erased.decisions, "outcomes": erased.outcomes, "dry_run": args.dry_run}
    print(json.dumps({**answer, "found_nothing_for": found_nothing}))
    return 0 if erased.log_emptied else 3


def _add_adaptations_command(sub: argparse._SubParsersAction) -> None:
    """adaptations (docs/ADAPTATION.md)."""
    p = sub.add_parser("adaptations", help="the adaptation runs an outcome store recorded, newest last")
    p.add_argument("--store", required=True, metavar="DSN", help="sqlite:PATH or postgresql://...")
    p.add_argument("--last", type=int, default=10, help="the newest N runs (default 10; 0: all)")
    p.add_argument("--full", action="store_true", help="each run's whole report, not its summary")


def _adaptations(args: argparse.Namespace) -> int:
    """One JSON line per recorded adaptation run: when, from which bundle, the verdict and why."""
    if args.last < 0:
        print(f"{PROG} adaptations: --last must be >= 0 (got {args.last})", file=sys.stderr)
        return 2
    from lmroute.outcomes.store import open_store

    store = open_store(args.store, must_exist=True, writable=False)  # a StoreError is printed by main, exit 1
    try:
        runs = store.adaptations()
    finally:
        store.close()
    try:
        for run in runs[-args.last :] if args.last else runs:
            report = run.pop("report")
            if args.full:
                run["report"] = report
            else:
                run["reason"] = _run_reason(report)
                run["reporters"] = report.get("reporters")
                run["callers"] = report.get("callers")
                run["router"] = report.get("router")
            print(report_json(run, sort_keys=True))  # a report stored before NaN was written as null
        sys.stdout.flush()
    except BrokenPipeError:  # the reader closed early (`| head`): no traceback, nothing more to write
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _run_reason(report: Mapping[str, object]) -> str:
    """Why a recorded run ended as it did: the gate's reason, after the write's error when the gate
    accepted a candidate that could not be written (the run is then recorded as not adapted)."""
    gate = report.get("gate")
    reason = str(gate.get("reason", "")) if isinstance(gate, Mapping) else ""
    error = report.get("error")
    return f"{error} (the gate: {reason})" if error else reason


# The last millisecond of year 9999, the latest time datetime (and so a report's ISO-8601 times) can say.
_MAX_EPOCH_MS = 253_402_300_799_999


def _epoch_ms(value: str) -> int:
    """A --since-ms value: an integer number of ms since the epoch in [0, the end of year 9999]."""
    try:
        ms = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer (ms since the epoch), got {value!r}") from None
    if not 0 <= ms <= _MAX_EPOCH_MS:
        raise argparse.ArgumentTypeError(f"{value} is not a time in ms since the epoch (0 to {_MAX_EPOCH_MS})")
    return ms


def _add_to_judge_command(sub: argparse._SubParsersAction) -> None:
    """to-judge (docs/ADAPTATION.md, label budget)."""
    p = sub.add_parser(
        "to-judge",
        help="which recent decisions to judge next with both models (the label budget): one JSON line each",
    )
    p.add_argument("--bundle", type=Path, required=True, help="the bundle serving now (its pair and encoder)")
    p.add_argument("--store", required=True, metavar="DSN", help="sqlite:PATH or postgresql://...")
    p.add_argument("--budget", type=int, required=True, help="how many decisions to judge")
    p.add_argument("--window", type=int, default=500, help="chosen among this many latest unjudged decisions")
    p.add_argument(
        "--since-ms",
        type=_epoch_ms,
        default=0,
        help="only decisions made at or after this time (ms since the epoch)",
    )
    p.add_argument(
        "--callers",
        action="append",
        default=None,
        metavar="NAMES",
        help=f"only decisions of these tenants' calls (comma-separated; {UNNAMED_REPORTER} = calls naming none)",
    )
    p.add_argument("--seed", type=int, default=0, help="the budget's random draw")


def _to_judge(args: argparse.Namespace) -> int:
    """One JSON line per decision to judge, newest first; a summary on stderr with the next --since-ms."""
    from lmroute.adapt.to_judge import decisions_to_judge, judge_line
    from lmroute.bundle.errors import BundleError
    from lmroute.outcomes.store import open_store

    try:
        callers = reporters_named(args.callers, "callers")
    except ValueError as exc:
        print(f"{PROG} to-judge: {exc}", file=sys.stderr)
        return 2
    store = open_store(args.store, must_exist=True, writable=False)  # a StoreError is printed by main, exit 1
    try:
        picks = decisions_to_judge(
            args.bundle,
            store,
            args.budget,
            window=args.window,
            since_ms=args.since_ms,
            callers=callers,
            seed=args.seed,
        )
    except ValueError as exc:  # a bad or tampered bundle is 1, as adapt says it; a bad argument 2
        print(f"{PROG} to-judge: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, BundleError) else 2
    finally:
        store.close()
    for d in picks.decisions:
        print(judge_line(d))
    summary = {
        "picked": len(picks.decisions),
        "window": picks.window,
        "skipped": picks.skipped,
        "judged": picks.judged,
        "next_since_ms": args.since_ms if picks.newest_ms is None else picks.newest_ms + 1,
    }
    print(json.dumps(summary), file=sys.stderr)
    return 0


def _copy_store(args: argparse.Namespace) -> int:
    """Copy every row of --from into --to, all or nothing; rows per table on stdout (a StoreError is printed
    by main, exit 1)."""
    from lmroute.outcomes.store import open_store

    source = open_store(args.source, must_exist=True, writable=False)
    try:
        target = open_store(args.target)
        try:
            copied = source.copy_to(target)
        finally:
            target.close()
    finally:
        source.close()
    print(json.dumps(copied, sort_keys=True))
    return 0


def _add_adapt_command(sub: argparse._SubParsersAction) -> None:
    """adapt (docs/ADAPTATION.md)."""
    p = sub.add_parser(
        "adapt", help="learn from an outcome store: adapt a bundle, gate it, write it when the gate accepts"
    )
    p.add_argument("--bundle", type=Path, required=True, help="the bundle serving now (the champion)")
    p.add_argument("--store", required=True, metavar="DSN", help="sqlite:PATH or postgresql://...")
    p.add_argument("--out", type=Path, required=True, help="where the adapted bundle is written (if accepted)")
    p.add_argument(
        "--kind",
        choices=("paired", "single", "qualities"),
        default="paired",
        help="which outcomes to learn from: the default pair's (paired, single) or any models' (qualities: "
        "per-model heads for routing among N models)",
    )
    p.add_argument(
        "--base-router",
        default=None,
        help="the trained router the head is blended with (default mf) or, for qualities, corrected (default quality)",
    )
    p.add_argument("--since-ms", type=_epoch_ms, default=0, help="only outcomes received from this Unix time (ms) on")
    add_reporters_arg(p)
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        help="gate margin: in APGR for paired and single (default 0.01), in mean squared error for qualities "
        "(default 0)",
    )
    p.add_argument(
        "--order-margin",
        type=float,
        default=None,
        help="qualities only: how much worse than the champion's the candidate's order of the held-out prompts "
        "per model may be, as a share of the oracle's order (default 0.01)",
    )
    p.add_argument(
        "--routing-margin",
        type=float,
        default=None,
        help="qualities only: how much lower than the champion's the candidate's routing AIQ, estimated off-policy "
        "from the logged choices of Route among candidates, may be (default 0.01)",
    )
    p.add_argument(
        "--gate-splits",
        choices=("cross_fit", "forward"),
        default="cross_fit",
        help="how the gate holds outcomes out: 10 random folds, or 5 forward-chaining time blocks",
    )
    p.add_argument(
        "--paired-learner",
        choices=("kernel", "ridge"),
        default="kernel",
        help="paired outcomes: kernel ridge (router kind adapted_kernel) or linear ridge (adapted)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it is a bundle (a directory holding other files is refused)",
    )
    _add_plugin(p)


def _adapt(args: argparse.Namespace) -> int:
    """Run one adaptation; exit 0 when a candidate was accepted and written, 4 when the gate refused it."""
    from lmroute.adapt.from_store import adapt_from_store
    from lmroute.adapt.quality_from_store import adapt_qualities_from_store
    from lmroute.outcomes.store import StoreError, open_store

    for flag in ("margin", "order_margin", "routing_margin"):  # before the store is read
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value >= 0):
            print(f"{PROG} adapt: --{flag.replace('_', '-')}: must be a number >= 0 (got {value})", file=sys.stderr)
            return 2
    from lmroute.bundle.writer import not_replaceable, out_dir_problem

    out_problem = out_dir_problem(args.out) or not_replaceable(args.out)
    if not out_problem and args.bundle.resolve() in args.out.resolve().parents:
        out_problem = f"{args.out} is inside --bundle {args.bundle} (a bundle's files are its manifest's alone)"
    if out_problem:
        print(f"{PROG} adapt: --out: {out_problem}", file=sys.stderr)
        return 2
    try:
        tenants = tenant_filters(args)
        store = open_store(args.store, must_exist=True)
    except (StoreError, ValueError) as exc:  # OutcomeError is a ValueError
        print(f"{PROG} adapt: {exc}", file=sys.stderr)
        return 1
    if args.out.exists() and not args.overwrite:  # said before the fit, not after it
        store.close()
        print(f"{PROG} adapt: --out: {args.out} exists (give --overwrite to replace it)", file=sys.stderr)
        return 2
    try:
        if args.kind == "qualities":
            run = adapt_qualities_from_store(
                args.bundle,
                store,
                args.out,
                base_router=args.base_router or "quality",
                since_ms=args.since_ms,
                reporters=tenants.reporters,
                gate_reporters=tenants.gate_reporters,
                callers=tenants.callers,
                tenant=tenants.tenant,
                margin=args.margin,
                order_margin=args.order_margin,
                routing_margin=args.routing_margin,
                splits=args.gate_splits,
                seed=args.seed,
                overwrite=args.overwrite,
            )
        else:
            run = adapt_from_store(
                args.bundle,
                store,
                args.out,
                kind=args.kind,
                base_router=args.base_router or "mf",
                since_ms=args.since_ms,
                reporters=tenants.reporters,
                gate_reporters=tenants.gate_reporters,
                callers=tenants.callers,
                tenant=tenants.tenant,
                margin=args.margin,
                splits=args.gate_splits,
                paired_learner=args.paired_learner,
                seed=args.seed,
                overwrite=args.overwrite,
            )
    except (ValueError, OSError) as exc:  # BundleError is a ValueError
        print(f"{PROG} adapt: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(report_json(run.report, indent=2, sort_keys=True))  # stdout: the report alone, JSON
    if run.accepted:
        print(
            f"accepted: bundle {run.candidate_version} written to {args.out} ({run.n_outcomes} outcomes)",
            file=sys.stderr,
        )
        return 0
    print(f"refused by the gate: {run.report['gate'].get('reason', '')} (nothing written)", file=sys.stderr)
    return 4


def _build_flag_problem(args: argparse.Namespace, cfg: BuildConfig) -> str:
    """Why `build` cannot run with these flags, as "--flag: why" ("" when it can): an --out or --report
    it cannot write, a --data-dir or --encoder-model-dir that is not a directory, a --cache-dir it cannot
    make or write, a --report or --cache-dir inside --out (the bundle replaces that folder), a --max-tokens
    (or --bert-max-tokens) beyond the encoder model's positions, a --static-dim beyond its hidden size. Said
    before any work (each would otherwise fail mid-build, some only after the training)."""
    from lmroute.bundle.writer import not_replaceable, out_dir_problem

    if problem := out_dir_problem(args.out) or not_replaceable(args.out) or _cannot_make_dir_in(args.out.parent):
        return f"--out: {problem}"
    if args.report is not None:
        if _is_within(args.report, args.out):
            return f"--report: {args.report} is inside --out {args.out} (the bundle replaces that folder whole)"
        if args.report.is_dir():
            return f"--report: {args.report} is a directory (name the JSON file to write)"
        if not args.report.parent.is_dir():
            return f"--report: {args.report.parent} is not a directory"
        if not os.access(args.report.parent, os.W_OK) or (args.report.exists() and not os.access(args.report, os.W_OK)):
            return f"--report: {args.report} cannot be written (permission denied)"
    if not args.data_dir.is_dir():
        return f"--data-dir: {args.data_dir} is not a directory"
    if _is_within(args.cache_dir, args.out):
        return f"--cache-dir: {args.cache_dir} is inside --out {args.out} (the bundle replaces that folder whole)"
    if args.cache_dir.exists() and not args.cache_dir.is_dir():
        return f"--cache-dir: {args.cache_dir} exists and is not a directory"
    if problem := _cannot_make_dir_in(args.cache_dir):
        return f"--cache-dir: {problem}"
    return _encoder_model_problem(cfg)


def _is_within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it (symbolic links followed, as far as they exist)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _cannot_make_dir_in(folder: Path) -> str:
    """Why no directory can be made in `folder`, or in the nearest folder above it that exists when it does
    not ("" when one can): tried by making and removing an empty temporary directory there."""
    import tempfile

    above = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if above is None:
        return ""
    if not above.is_dir():
        return f"{above} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lmroute-probe-", dir=above))
    except OSError as exc:
        return f"{above}: no directory can be made there ({exc.strerror or exc})"
    return ""


def _encoder_model_problem(cfg: BuildConfig) -> str:
    """Why the build's encoder model (--encoder-model-dir, or the packaged one) cannot take the recipe's
    token limits or static dimension ("" when it can): no config.json, --max-tokens / --bert-max-tokens
    (bert built) above its max_position_embeddings, or --static-dim (static encoder) above its hidden_size."""
    from lmroute.export.encoder_export import default_model_dir

    recipe = cfg.recipe
    model_dir = recipe.encoder_model_dir
    config = (default_model_dir() if model_dir is None else model_dir) / "config.json"
    if model_dir is not None and not model_dir.is_dir():
        return f"--encoder-model-dir: {model_dir} is not a directory"
    if model_dir is not None and not config.is_file():
        return f"--encoder-model-dir: {model_dir} is not a Hugging Face model directory (no config.json)"
    try:
        model_config = json.loads(config.read_text(encoding="utf-8"))
        positions, hidden = model_config.get("max_position_embeddings"), model_config.get("hidden_size")
    except (OSError, ValueError, AttributeError):
        return ""  # the export says what is wrong with it
    limits = [("--max-tokens", recipe.max_tokens, positions, "positions", "max_position_embeddings")]
    if "bert" in cfg.routers:
        limits.append(("--bert-max-tokens", recipe.bert_max_tokens, positions, "positions", "max_position_embeddings"))
    if recipe.encoder == "static":  # its table holds principal components of the model's embeddings
        limits.append(("--static-dim", recipe.static_dim, hidden, "dimensions", "hidden_size"))
    for flag, value, limit, what, key in limits:
        if isinstance(limit, int) and not isinstance(limit, bool) and value > limit:
            return f"{flag}: {value} is more than the encoder model's {limit} {what} ({key} in {config})"
    return ""


def _sqlite_file(dsn: str) -> Path | None:
    """The file of a `sqlite:PATH` store as `open_store` reads the DSN; None for another backend."""
    return Path(dsn.removeprefix("sqlite:").removeprefix("//")) if dsn.startswith("sqlite:") else None


def _import_outcomes(args: argparse.Namespace) -> int:
    """Import a JSONL outcome file whole (or nothing, listing its bad lines); counts per verdict."""
    from lmroute.bundle.loader import read_manifest
    from lmroute.outcomes.jsonl import read_outcome_lines
    from lmroute.outcomes.store import StoreError, open_store

    strong, weak = args.strong, args.weak
    try:
        if args.bundle is not None:  # its manifest checked as at load (an edited one is refused): the pair
            pair = read_manifest(args.bundle).default_pair
            strong, weak = strong or pair.strong, weak or pair.weak
        if not strong or not weak:
            raise ValueError("give --bundle or both --strong and --weak (the pair paired outcomes are about)")
        if strong == weak:
            raise ValueError(f"--strong and --weak: one model ({strong!r}); paired outcomes compare two")
        named = reporters_named([args.reporter]) or frozenset()
        if len(named) != 1:
            raise ValueError(f"--reporter: one tenant name (got {args.reporter!r})")
        [reporter] = named
        lines = read_outcome_lines(args.file, strong=strong, weak=weak)
        if not lines:  # a truncated or wrong file, not a success
            raise ValueError(f"{args.file}: no outcomes (an empty file, or blank lines only)")
        outcomes = [dataclasses.replace(o, reporter=reporter) for _, o in lines]
        sqlite_file = _sqlite_file(args.store)
        new = sqlite_file is not None and not sqlite_file.exists()
        store = open_store(args.store, store_prompts=not args.no_store_prompts)
        if new:  # a deployment's first outcomes, or a mistyped path: said, either way
            print(f"{PROG} import-outcomes: {store.name}: no store there, a new one was created", file=sys.stderr)
        texts = any(o.prompt_text for o in outcomes)
        if texts and not (args.no_store_prompts or args.store_prompts) and store.keeps_no_prompt_text():
            store.close()
            raise ValueError(
                f"{store.name}: its decisions hold no prompt text (its server runs --store-prompts false) and "
                f"{args.file} names prompts by text: give --no-store-prompts to keep only their hashes, or "
                "--store-prompts to store the texts anyway"
            )
    except (ValueError, OSError, StoreError) as exc:  # OutcomeFileError and BundleError are ValueErrors
        print(f"{PROG} import-outcomes: {exc}", file=sys.stderr)
        return 1
    counts: dict[str, int] = {}
    refusals: list[str] = []
    done = 0  # outcomes committed
    try:
        for start, stop in _whole_lines(lines, 1000):  # a line's outcomes (a paired one's two) in one commit
            verdicts = store.write([], outcomes[start:stop])
            done = stop
            for (line, outcome), verdict in zip(lines[start:stop], verdicts, strict=True):
                counts[verdict.value] = counts.get(verdict.value, 0) + 1
                if verdict.value not in ("stored", "duplicate"):
                    model = f" (model {outcome.model})" if outcome.model else ""
                    refusals.append(f"{args.file}:{line}: {verdict.value}{model}")
    except (KeyboardInterrupt, StoreError) as exc:
        last = f" (lines 1-{lines[done - 1][0]})" if done else ""
        print(
            f"{PROG} import-outcomes: stopped ({exc or type(exc).__name__}): {done} of {len(outcomes)} outcomes of "
            f"{args.file} committed{last}; import the file again to complete it (those come back as duplicates)",
            file=sys.stderr,
        )
        if isinstance(exc, KeyboardInterrupt):
            raise
        return 1
    finally:
        store.close()
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{len(outcomes)} outcomes from {args.file} into {store.name}: {summary}")
    for said in refusals[:20]:  # which lines were refused, and why
        print(said, file=sys.stderr)
    if len(refusals) > 20:
        print(f"... and {len(refusals) - 20} more refused", file=sys.stderr)
    return 0 if not refusals else 3


def _whole_lines(lines: Sequence[tuple[int, object]], size: int) -> Iterator[tuple[int, int]]:
    """[start, stop) spans of `lines` (one (line number, outcome) per outcome, a line's in a row) of about
    `size` outcomes each, never splitting a line's outcomes between two spans."""
    start = 0
    while start < len(lines):
        stop = min(start + size, len(lines))
        while stop < len(lines) and lines[stop][0] == lines[stop - 1][0]:
            stop += 1
        yield start, stop
        start = stop


def _assignments(values: Sequence[str], flag: str) -> dict[str, str]:
    """`TENANT=ROUTER` values as {tenant: router} ("" for `TENANT=`); ValueError naming the flag."""
    out: dict[str, str] = {}
    for value in values:
        tenant, sep, router = value.partition("=")
        if not sep or not tenant:
            raise ValueError(f"{flag}: expected TENANT=ROUTER (TENANT= to remove), got {value!r}")
        if tenant in out:
            raise ValueError(f"{flag}: tenant {tenant!r} named twice")
        out[tenant] = router
    return out


def _integrity_command(args: argparse.Namespace) -> int:
    """Run restamp, keygen, sign or verify; a refusal is one line on stderr and exit status 1."""
    from lmroute.bundle.errors import BundleError
    from lmroute.bundle.loader import load_bundle
    from lmroute.bundle.signing import (
        generate_key_pair,
        key_fingerprint,
        load_private_key,
        load_public_key,
        sign_bundle,
    )
    from lmroute.bundle.writer import restamp_bundle

    try:
        if args.cmd == "restamp":
            if not args.bundle.is_dir():
                raise BundleError(str(args.bundle), "bundle directory does not exist")
            signed = (args.bundle / "manifest.json.sig").exists()
            manifest = restamp_bundle(
                args.bundle,
                label=args.label,
                default_router=args.default_router,
                default_quality_router=args.default_quality_router,
                tenant_routers=_assignments(args.tenant_router, "--tenant-router"),
                tenant_quality_routers=_assignments(args.tenant_quality_router, "--tenant-quality-router"),
            )
            print(f"bundle {args.bundle} re-stamped: bundle_version {manifest.bundle_version}")
            if signed:
                print("its signature (manifest.json.sig) no longer matches: sign the bundle again")
        elif args.cmd == "keygen":
            private, public = generate_key_pair(args.out)
            fingerprint = key_fingerprint(load_public_key(public))
            print(f"key {fingerprint}: private {private} (keep it secret), public {public}")
        elif args.cmd == "sign":
            key = load_private_key(args.key)
            bundle = load_bundle(args.bundle, require_calibration=False)  # only a valid bundle is signed
            signature = sign_bundle(args.bundle, key)
            print(f"bundle {args.bundle} ({bundle.version}) signed with key {key_fingerprint(key)}: {signature}")
        else:
            public_key = None if args.public_key is None else load_public_key(args.public_key)
            bundle = load_bundle(args.bundle, public_key=public_key)
            signed = "" if public_key is None else f", signed with key {key_fingerprint(public_key)}"
            print(f"bundle {args.bundle} ({bundle.version}) is valid{signed}")
    except (ValueError, OSError) as exc:  # BundleError is a ValueError; a key file that exists, an unreadable path
        print(f"{PROG} {args.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is (`_interrupt_on_sigterm`)."""


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (a service manager's stop, `kill`) taken as Ctrl-C: a KeyboardInterrupt, so that what an
    interrupted command cleans up on the way out (a build's or an adaptation's staging directory, an open
    transaction) is cleaned up for it too."""
    raise Terminated(f"signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM is `_interrupt_on_sigterm`; a handler set already (or SIGTERM ignored)
    is left as it is, and so is any handler off the main thread, where none can be set."""
    settable = threading.current_thread() is threading.main_thread()
    if not settable or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lmroute-export` (the module docstring): one command, SIGTERM taken as Ctrl-C; an
    interrupted command says so in one line (what it was writing is cleaned up on the way out) and exits
    128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
    try:
        with _sigterm_as_interrupt():
            return _run_command(argv)
    except KeyboardInterrupt as exc:
        print(f"{PROG}: interrupted ({exc or 'Ctrl-C'})", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def _run_command(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _load_plugins(args_list)
    parser = build_parser()
    if args_list[:1] == ["evaluate"]:
        from lmroute.export.evaluate import main as evaluate_main

        return evaluate_main(args_list[1:], prog=f"{PROG} evaluate")
    args = parser.parse_args(args_list)
    from lmroute.service.client import text_flag_problem

    if (problem := text_flag_problem(args)) is not None:
        parser.error(f"{args.cmd} {problem}")

    if args.cmd in ("build", "train"):
        from lmroute.export.data import DataError
        from lmroute.export.pipeline import build_bundle

        try:
            cfg = build_config(args)
        except ValueError as exc:  # a recipe value out of range: one line naming its flag (or variable)
            print(f"{PROG} {args.cmd}: {_naming_the_flag(args, _one_line(exc))}", file=sys.stderr)
            return 2
        if problem := _build_flag_problem(args, cfg):  # before the build, not after it
            print(f"{PROG} {args.cmd}: {problem}", file=sys.stderr)
            return 2
        from lmroute.export.embed_cache import EmbedCacheError
        from lmroute.export.encoder_export import EncoderExportError

        t0 = time.perf_counter()
        try:
            report = build_bundle(cfg)
        # each names what cannot be used (a data file, an encoder model, an embedding-cache shard)
        except (DataError, ValueError, OSError, EncoderExportError, EmbedCacheError) as exc:
            print(f"{PROG} {args.cmd}: {_one_line(exc)}", file=sys.stderr)
            return 1
        print(report.elo_table)
        print(json.dumps(report.seconds, indent=2))
        print(f"bundle {report.bundle_version} written to {args.out} in {time.perf_counter() - t0:.0f} s")
        if args.report:
            try:
                args.report.write_text(report.to_json())
            except OSError as exc:
                print(f"{PROG} {args.cmd}: --report: {_one_line(exc)} (the bundle was written)", file=sys.stderr)
                return 1
        return 0
    if args.cmd == "export":
        from lmroute.export.encoder_export import EncoderExportError, export_encoder

        try:
            res = export_encoder(
                args.model_dir, args.out, max_tokens=args.max_tokens, quantize="int8" if args.int8 else None
            )
        except (ValueError, OSError, EncoderExportError) as exc:
            print(f"{PROG} export: {_one_line(exc)}", file=sys.stderr)
            return 1
        print(f"encoder written to {res.model_path} (dim {res.dim}); min cosine vs PyTorch {res.min_cosine:.6f}")
        return 0
    if args.cmd == "calibrate":
        from lmroute.export.embed_cache import EmbedCacheError
        from lmroute.export.pipeline import calibrate_bundle

        prompts = _read_prompts(args.prompts) if args.prompts else None
        n_distinct = len(set(prompts)) if prompts is not None else 0
        if prompts is not None and n_distinct < MIN_CALIBRATION_PROMPTS:
            print(
                f"{PROG} calibrate: --prompts: {args.prompts} holds {n_distinct} distinct prompts "
                f"({len(prompts)} in all); a calibration table needs at least {MIN_CALIBRATION_PROMPTS} distinct "
                "ones (one per step of its strong-share grid)",
                file=sys.stderr,
            )
            return 1
        signed = (args.bundle / "manifest.json.sig").exists()
        try:
            before = (args.bundle / "manifest.json").read_bytes() if signed else b""
            calibrate_bundle(args.bundle, args.data_dir, prompts=prompts)
            changed = signed and (args.bundle / "manifest.json").read_bytes() != before
        except (
            ValueError,
            OSError,
            EmbedCacheError,
        ) as exc:  # BundleError is a ValueError: a bundle or data dir it cannot use
            print(f"{PROG} calibrate: {exc}", file=sys.stderr)
            return 1
        print(f"calibration table of {args.bundle} updated")
        if changed:
            print("its signature (manifest.json.sig) no longer matches: sign the bundle again")
        return 0
    if args.cmd == "contamination":
        from lmroute.export.contamination import main as contamination_main
        from lmroute.export.embed_cache import EmbedCacheError

        try:
            return contamination_main(args)
        except EmbedCacheError as exc:
            print(f"{PROG} contamination: {exc}", file=sys.stderr)
            return 1
    if args.cmd in ("restamp", "keygen", "sign", "verify"):
        return _integrity_command(args)
    store_commands = {
        "import-outcomes": _import_outcomes,
        "copy-store": _copy_store,
        "erase": _erase,
        "adaptations": _adaptations,
        "adapt": _adapt,
        "to-judge": _to_judge,
    }
    if args.cmd in store_commands:
        from lmroute.outcomes.store import StoreError

        try:
            return store_commands[args.cmd](args)
        except StoreError as exc:  # a store that fails while in use (opening is checked where it is opened)
            print(f"{PROG} {args.cmd}: {exc}", file=sys.stderr)
            return 1
    if args.cmd == "import-routellm":
        from lmroute.export.import_routellm import main as import_routellm_main

        return import_routellm_main(args)
    parser.error(f"unknown command {args.cmd}")
    return 2


def _naming_the_flag(args: argparse.Namespace, message: str) -> str:
    """A Recipe error ("max_tokens: must be ...") with its field named as what gave the value: the flag
    (--max-tokens) or the LMROUTE_EXPORT_ variable; other messages as they are."""
    from lmroute.export.dataclass_flags import flags_of

    field, sep, rest = message.partition(": ")
    for flag in flags_of(Recipe, env_prefix=ENV_PREFIX):
        if sep and flag.name == field:
            given = getattr(args, flag.name, None) is not None or not flag.env or flag.env not in os.environ
            return f"{flag.flag if given else flag.env}: {rest}"
    return message


def _one_line(exc: BaseException) -> str:
    """An error's message on one line (a multi-line message joined with " | ")."""
    return " | ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__


def _read_prompts(path: Path) -> list[str]:
    """The prompts of a file: JSONL objects with a string 'prompt' when its first non-blank line starts with
    '{' (then every non-blank line must be one: a line that does not parse is an error, not a prompt),
    else one prompt a line, as it is. Blank lines, and JSONL prompts that are blank, are skipped. SystemExit
    naming the file, and the line of a bad one."""
    from lmroute.outcomes.jsonl import numbered_lines

    prompts: list[str] = []
    jsonl: bool | None = None  # decided by the first non-blank line
    try:
        for lineno, line in numbered_lines(path):
            if isinstance(line, UnicodeDecodeError):
                raise SystemExit(
                    f"{path}:{lineno}: not UTF-8 text ({line.reason} at byte {line.start + 1} of the line)"
                )
            if lineno == 1 and line.startswith("\ufeff"):  # import-outcomes refuses it too (not JSON)
                raise SystemExit(f"{path}:1: starts with a UTF-8 byte order mark (save the file without one)")
            if not line.strip():
                continue
            if jsonl is None:
                jsonl = line.lstrip().startswith("{")
            if not jsonl:
                prompts.append(line)
                continue
            try:
                record = _json_object(line)
            except RecursionError:
                raise SystemExit(f"{path}:{lineno}: nested too deeply") from None
            except ValueError as exc:
                raise SystemExit(
                    f"{path}:{lineno}: {exc}; the file's first non-blank line starts with '{{', so it is JSONL"
                ) from None
            if isinstance(record.get("prompt"), str):
                if str(record["prompt"]).strip():  # a blank prompt is skipped, as a blank line is
                    prompts.append(str(record["prompt"]))
            else:
                got = (
                    "no 'prompt' field" if "prompt" not in record else f"'prompt' is {type(record['prompt']).__name__}"
                )
                raise SystemExit(f"{path}:{lineno}: a JSON object whose 'prompt' is not a string ({got})")
    except OSError as exc:
        raise SystemExit(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not prompts:
        raise SystemExit(f"{path}: no prompts")
    return prompts


def _json_object(line: str) -> dict[str, object]:
    """`line` as a JSON object; ValueError saying why when it is not one; RecursionError when it is one
    nested past the parser's depth."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object (a JSON {type(record).__name__})")
    return record


if __name__ == "__main__":
    sys.exit(main())
