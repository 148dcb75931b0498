"""`lmroute-adapt`: the loop that closes the outcome loop on a schedule: store -> adapt -> gate -> swap.

Every `--interval-s` (or once, with `--once`), against one running server (`--server`):

1. ask the server which bundle it serves (AdminService.GetBundle: its resolved directory);
2. adapt that bundle from the outcome store (lmroute.adapt.from_store, or lmroute.adapt.quality_from_store
   with `--kind qualities`: the learner, the gate; every run
   recorded in the store's `adaptations` table), writing an accepted candidate to
   `<bundles-dir>/adapted-<UTC time>`;
3. if the gate accepted it, hot-swap it in (AdminService.ReloadBundle); the server validates and warms
   it and keeps the old bundle serving if it refuses it, or if another bundle serves by then (its
   `if_version`: two loops on one server, or an operator's swap meanwhile, are not undone: ABORTED,
   VERSION_MOVED in the round's line).

With `--for-tenant app,batch,(default)` a round adapts each in turn (the tenants' own routers, then the
bundle's default router: docs/ADAPTATION.md says why in that order), each adapting the bundle the one
before it left serving, one JSON line each.

A server with tokens takes an unbound one: `--token-env NAME` names the variable that holds it
(LMROUTE_TOKEN by default), `--ca` (with `--cert`, `--key`) its TLS files.

Or, for several replicas (`--bundle-link`): the bundle is the directory a symbolic link names, every
server serves the link and watches it (`lmroute-serve --bundle LINK --bundle-watch-s N`), and the round
adapts the bundle the link names and, when the gate accepts, points the link at the candidate
(atomically: a new link renamed over the old); each server then validates, warms and swaps it in on its
next poll, or keeps its bundle if it refuses it. One round at a time per link (a lock file beside it),
and a link re-pointed during a round is left as it is. No server is called, so the AdminService can stay on
loopback: the mode of a Kubernetes CronJob (`lmroute-adapt --once`) beside replicas that share the
outcome store (PostgreSQL) and a volume of bundles.

With `--judge-budget K` each iteration then also writes which decisions to judge with both models next
(lmroute.adapt.to_judge: the label budget over the serving bundle and the store's decisions made since
the previous list) to `--judge-dir` (default `<bundles-dir>/to-judge`) as `to_judge-<UTC time>.jsonl`,
for the deployment's judge, whose paired outcomes come back by decision id; lists beyond the newest
`--keep-judge-lists` (default 100; 0 keeps all) are deleted, as they hold prompt texts.

After each round the oldest `adapted-*` bundles in `--bundles-dir` beyond the newest `--keep-bundles`
(default 5; 0 keeps all) are deleted, never the one serving (or named by the link).

Each round prints one JSON line (what was adapted from, the gate's verdict, the version now serving; with
`--bundle-link`, the version the link names). The store must be one the loop can open too: the server's
SQLite file on the same host, or the shared PostgreSQL.

    lmroute-adapt --server 127.0.0.1:50051 --store sqlite:artifacts/outcomes.sqlite3 \\
        --bundles-dir artifacts/adapted --interval-s 3600
    lmroute-adapt --bundle-link /bundles/current --store postgresql://... --bundles-dir /bundles --once
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fcntl
import glob
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmroute.adapt.from_store import AdaptRun, adapt_from_store
from lmroute.adapt.quality_from_store import adapt_qualities_from_store
from lmroute.adapt.to_judge import write_judge_list
from lmroute.bundle.errors import BundleError
from lmroute.bundle.loader import read_manifest
from lmroute.outcomes.records import TenantFilters, add_reporters_arg, report_json, tenant_filters
from lmroute.outcomes.store import StoreError, open_store

__all__ = ["Round", "RoundSettings", "main", "point_link", "prune_bundles", "run_link_round", "run_round"]

KEEP_BUNDLES = 5
"""Adapted bundles kept in --bundles-dir by default (the newest; the serving one always)."""
KEEP_JUDGE_LISTS = 100
"""Judge lists kept in --judge-dir by default (the newest): a judge that falls this far behind has lost
the oldest; one that moves a list away once judged keeps every list it has not seen."""
MAX_INTERVAL_S = 1e7  # --interval-s: about 116 days (time.sleep refuses what the platform's time_t cannot hold)
MAX_WINDOW_DAYS = 36_500.0  # --window-days: a century (its milliseconds must fit the store's integers)


@dataclass(frozen=True)
class Round:
    """What one round did."""

    parent_version: str
    accepted: bool
    candidate: Path | None
    serving_version: str
    report: dict[str, Any]
    parent: Path | None = None  # the bundle directory adapted from
    swap_refused: dict[str, str] | None = None  # the server's refusal of the accepted candidate (code, reason, message)

    def to_json(self) -> str:
        line: dict[str, Any] = {
            "parent_version": self.parent_version,
            "accepted": self.accepted,
            "candidate": None if self.candidate is None else str(self.candidate),
            "serving_version": self.serving_version,
            "gate": self.report.get("gate", {}),
            "router": self.report.get("router"),
        }
        if self.swap_refused is not None:
            line["swap_refused"] = self.swap_refused
        return report_json(line, sort_keys=True)


@dataclass(frozen=True)
class RoundSettings:
    """What a round adapts with: the outcome kind, the base router (None: mf, or quality for qualities),
    the window of outcomes (ms back from now; 0 = all), the gate's splits, the paired learner, the
    reporters learnt from and those the gate judges by, the tenants whose calls it learns from, and the
    tenant whose own router it adapts ("" = the bundle's default router)."""

    kind: str = "paired"
    base_router: str | None = None
    window_ms: int = 0
    splits: str = "cross_fit"
    paired_learner: str = "kernel"
    reporters: frozenset[str] | None = None  # learn only from these tenants' outcomes; None = everyone's
    gate_reporters: frozenset[str] | None = None  # the gate judges by these tenants' outcomes alone
    callers: frozenset[str] | None = None  # only the outcomes of these tenants' calls; None = every call's
    tenant: str = ""  # the tenant whose own router is adapted; "" = the bundle's default router


def _adapt(
    parent: Path, store_dsn: str, bundles_dir: Path, settings: RoundSettings, sign_key: Path | None = None
) -> tuple[AdaptRun, Path]:
    """One adaptation of `parent` from the store: (its AdaptRun, where an accepted candidate is written,
    signed with `sign_key` when given, before the store records it accepted: servers with
    --bundle-public-key take only signed bundles)."""
    key = None
    if sign_key is not None:
        from lmroute.bundle.signing import load_private_key

        key = load_private_key(sign_key)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    out = bundles_dir / f"adapted-{stamp}"
    since = int(time.time() * 1000) - settings.window_ms if settings.window_ms else 0
    store = open_store(store_dsn, must_exist=True)  # a mistyped DSN is an error, not an empty store
    try:
        if settings.kind == "qualities":
            base = settings.base_router or "quality"
            run = adapt_qualities_from_store(
                parent,
                store,
                out,
                base_router=base,
                since_ms=since,
                reporters=settings.reporters,
                gate_reporters=settings.gate_reporters,
                callers=settings.callers,
                tenant=settings.tenant,
                splits=settings.splits,
                sign_key=key,
            )
        else:
            run = adapt_from_store(
                parent,
                store,
                out,
                kind=settings.kind,
                base_router=settings.base_router or "mf",
                since_ms=since,
                reporters=settings.reporters,
                gate_reporters=settings.gate_reporters,
                callers=settings.callers,
                tenant=settings.tenant,
                splits=settings.splits,
                paired_learner=settings.paired_learner,
                sign_key=key,
            )
        return run, out
    finally:
        store.close()


def run_round(
    server: str,
    store_dsn: str,
    bundles_dir: Path,
    settings: RoundSettings = RoundSettings(),
    *,
    timeout_s: float = 600.0,
    connect: Mapping[str, Any] | None = None,
    sign_key: Path | None = None,
) -> Round:
    """One store -> adapt -> gate -> swap round against the server at `server` (host:port); `connect`:
    more RouterClient arguments (its token, TLS files); `sign_key`: the private key candidates are signed
    with. A candidate the server refuses is named in the Round (`swap_refused`), the old bundle serving."""
    import grpc

    from lmroute.service.client import RouterClient
    from lmroute.service.client_retry import error_reason

    with RouterClient(server, timeout_s=timeout_s, **(connect or {})) as client:
        serving = client.get_bundle()
        parent = Path(serving.resolved_path)
        run, out = _adapt(parent, store_dsn, bundles_dir, settings, sign_key)
        version, refused = serving.bundle_version, None
        if run.accepted:
            try:
                # whole: the server resolves a relative path against its own working directory; only over
                # the bundle adapted from (another loop's swap since is not undone: ABORTED, VERSION_MOVED)
                version = client.reload_bundle(str(out.resolve()), if_version=serving.bundle_version).bundle_version
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED):
                    raise  # not a refusal of the bundle
                refused = {"code": exc.code().name, "reason": error_reason(exc), "message": exc.details() or ""}
                if refused["reason"] == "VERSION_MOVED":  # another swap came first: say what serves now
                    version = client.get_bundle().bundle_version
        candidate = out if run.accepted else None
        return Round(run.parent_version, run.accepted, candidate, version, run.report, parent, refused)


class LinkMoved(Exception):
    """The link no longer names the bundle a round adapted from: it was re-pointed meanwhile."""


def point_link(link: Path, target: Path, *, expected: Path | None = None) -> None:
    """Make the symbolic link `link` name `target`, relative to the link's folder (so the volume holding
    both may be mounted anywhere), atomically: a new link beside it renamed over it, so a reader sees the
    old or the new bundle, never neither. With `expected`: LinkMoved, the link left as it is, unless it
    names that bundle now (a candidate adapted from it does not replace one put there since)."""
    if expected is not None and (now := link.resolve()) != expected.resolve():
        raise LinkMoved(f"{link} was re-pointed to {now} during the round (it named {expected.resolve()})")
    target = target.resolve()
    folder = link.parent.resolve()
    name = os.path.relpath(target, folder)
    tmp = folder / f".{link.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.symlink(name, tmp)
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pair_problem(sign_key: Path | None, public_key: Path) -> str:
    """Why candidates signed with `sign_key` would not verify with `public_key` ("" when they would)."""
    from lmroute.bundle.signing import key_fingerprint, load_private_key, load_public_key

    try:
        public = load_public_key(public_key)
    except (OSError, ValueError) as exc:
        return f"--bundle-public-key: {exc}"
    if sign_key is None:
        return "--bundle-public-key: give --sign-key too: unsigned candidates would be refused by every server"
    private = load_private_key(sign_key)
    if key_fingerprint(private) != key_fingerprint(public):
        return (
            f"--sign-key: {sign_key} is not the pair of --bundle-public-key {public_key} (keys "
            f"{key_fingerprint(private)} and {key_fingerprint(public)}): every candidate would be refused"
        )
    return ""


def run_link_round(
    link: Path,
    store_dsn: str,
    bundles_dir: Path,
    settings: RoundSettings = RoundSettings(),
    sign_key: Path | None = None,
    public_key: Path | None = None,
) -> Round:
    """One store -> adapt -> gate -> re-point round on the bundle the symbolic link `link` names (module
    docstring); the servers watching the link swap the candidate in themselves. One round at a time per
    link (a lock file beside it; another round's is a ValueError). A link re-pointed during the round (an
    operator's rollback) is left as it is: the Round names the refusal and the candidate stays on disk; so
    is a candidate that does not verify with `public_key` (the servers' --bundle-public-key)."""
    if not link.is_symlink():
        raise ValueError(f"--bundle-link: {link} is not a symbolic link (point it at the serving bundle first)")
    with _round_lock(link):
        _remove_staged_links(link)
        parent = link.resolve()
        run, out = _adapt(parent, store_dsn, bundles_dir, settings, sign_key)
        version, refused = run.parent_version, None
        if run.accepted and run.candidate_version is not None:
            try:
                if public_key is not None:  # what the servers will check, checked before they are pointed at it
                    from lmroute.bundle.signing import load_public_key

                    read_manifest(out, public_key=load_public_key(public_key))
                point_link(link, out, expected=parent)
                version = run.candidate_version
            except BundleError as exc:
                refused = {
                    "code": "FAILED_PRECONDITION",
                    "reason": "BUNDLE_INVALID",
                    "message": f"{exc}; the link is not re-pointed",
                }
            except LinkMoved as exc:
                refused = {"code": "ABORTED", "reason": "LINK_MOVED", "message": f"{exc}; the candidate is not served"}
                with contextlib.suppress(OSError, ValueError):  # what the link names now, as the servers read it
                    version = read_manifest(link).bundle_version
        return Round(
            run.parent_version, run.accepted, out if run.accepted else None, version, run.report, parent, refused
        )


def _remove_staged_links(link: Path) -> None:
    """Remove the new links `point_link` stages beside `link` that a killed round left (SIGKILL between
    making one and renaming it over the link). Only under the round lock: no other round stages one now."""
    for p in link.parent.glob(f".{glob.escape(link.name)}.tmp-*"):
        if p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


@contextlib.contextmanager
def _round_lock(link: Path) -> Iterator[None]:
    """The link's round lock (`.<link name>.lock` beside it, an advisory flock the round holds): two rounds at
    once would both adapt the same parent, and the last to re-point the link would win."""
    lock = link.parent / f".{link.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"--bundle-link: another lmroute-adapt round is running on {link} (it holds {lock}); this round "
                "is skipped"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would let two rounds lock two files)


STALE_STAGING_S = 6 * 3600.0
"""A bundle directory being written (`.adapted-*.tmp-*`), or one being replaced (`.adapted-*.old-*`, when
a round writes a name that exists), untouched this long was left by a round that was killed mid-write
(an evicted CronJob): `prune_bundles` deletes it."""


def prune_bundles(bundles_dir: Path, keep: int, serving: Path, *, now: float | None = None) -> list[Path]:
    """Delete the `adapted-*` bundles of `bundles_dir` older than its newest `keep` (their names carry the
    UTC time they were written), never `serving` (resolved); keep 0 deletes none of them. Staged
    directories older than STALE_STAGING_S are deleted whatever `keep` says. Returns those deleted."""
    if not bundles_dir.is_dir():
        return []
    now = time.time() if now is None else now
    stale = [
        p
        for p in bundles_dir.iterdir()
        if p.name.startswith(".adapted-") and (".tmp-" in p.name or ".old-" in p.name)
        if p.is_dir() and not p.is_symlink()
        if now - p.stat().st_mtime > STALE_STAGING_S
    ]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    if keep <= 0:
        return stale
    written = sorted(
        p for p in bundles_dir.iterdir() if p.name.startswith("adapted-") and p.is_dir() and not p.is_symlink()
    )
    serving = serving.resolve()
    old = [p for p in written[: max(len(written) - keep, 0)] if p.resolve() != serving]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return stale + old


def _unwritable(folder: Path) -> str:
    """Why lists could not be written to `folder`, made now when missing ("" when they could): a usage
    error at startup, not an error line after every round."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{folder} cannot be made: {exc.strerror or exc}"
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not a folder this user can write to"
    return ""


def _judge_list(serving: Path, args: argparse.Namespace, judge_dir: Path) -> dict[str, Any]:
    """This iteration's list of decisions to judge, from the bundle serving now (module docstring)."""
    store = open_store(args.store, must_exist=True, writable=False)
    try:
        return write_judge_list(
            serving.resolve(),
            store,
            judge_dir,
            args.judge_budget,
            window=args.judge_window,
            keep=args.keep_judge_lists,
        )
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lmroute-adapt` (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="lmroute-adapt", description=(__doc__ or "").split("\n\n")[0], allow_abbrev=False)
    where = ap.add_mutually_exclusive_group()
    where.add_argument(
        "--server",
        default=os.environ.get("LMROUTE_TARGET") or "127.0.0.1:50051",
        help="host:port of the server (its AdminService; default: the variable LMROUTE_TARGET, else 127.0.0.1:50051)",
    )
    where.add_argument(
        "--bundle-link",
        type=Path,
        default=None,
        help="instead of a server: the symbolic link the servers serve and watch (--bundle-watch-s); re-pointed",
    )
    ap.add_argument("--store", required=True, metavar="DSN", help="the server's outcome store")
    ap.add_argument("--bundles-dir", type=Path, required=True, help="where accepted bundles are written")
    ap.add_argument("--kind", choices=("paired", "single", "qualities"), default="paired")
    ap.add_argument("--base-router", default=None, help="default: mf (paired, single), quality (qualities)")
    ap.add_argument("--gate-splits", choices=("cross_fit", "forward"), default="cross_fit")
    ap.add_argument("--paired-learner", choices=("kernel", "ridge"), default="kernel", help="paired: the learner")
    ap.add_argument("--window-days", type=float, default=0.0, help="learn from outcomes of the last N days; 0 = all")
    add_reporters_arg(ap)
    ap.add_argument("--interval-s", type=float, default=3600.0, help="seconds between rounds (default %(default)g)")
    ap.add_argument("--once", action="store_true", help="one round, then exit (a CronJob's mode)")
    ap.add_argument(
        "--judge-budget", type=int, default=0, help="decisions to judge written each iteration (0: no list)"
    )
    ap.add_argument(
        "--judge-window",
        type=int,
        default=500,
        help="chosen among this many latest unjudged decisions (default %(default)s)",
    )
    ap.add_argument("--judge-dir", type=Path, default=None, help="where the lists go (default <bundles-dir>/to-judge)")
    ap.add_argument(
        "--keep-judge-lists",
        type=int,
        default=KEEP_JUDGE_LISTS,
        help="lists kept in --judge-dir: the newest N, older ones deleted (they hold prompt texts; 0: all; "
        "default %(default)s)",
    )
    ap.add_argument(
        "--keep-bundles",
        type=int,
        default=KEEP_BUNDLES,
        help="adapted bundles kept in --bundles-dir: the newest N and the serving one (0: all; default %(default)s)",
    )
    ap.add_argument(
        "--sign-key",
        type=Path,
        default=None,
        metavar="PEM",
        help="sign each accepted candidate with this Ed25519 private key (servers run with --bundle-public-key "
        "take only signed bundles; lmroute-export keygen makes a pair)",
    )
    ap.add_argument(
        "--bundle-public-key",
        type=Path,
        default=None,
        metavar="PEM",
        help="the servers' --bundle-public-key: a candidate is re-pointed to (--bundle-link) only once it "
        "verifies with it, and --sign-key must be its pair (else every candidate would be refused, and a new "
        "replica could not start on the link)",
    )
    from lmroute.service.client import add_connection_args, connection_kwargs, text_flag_problem

    add_connection_args(ap)  # --server: the token and TLS files its calls need
    args = ap.parse_args(argv)
    if (problem := text_flag_problem(args)) is not None:
        ap.error(problem)
    for flag, least, most in (
        ("interval_s", 0, MAX_INTERVAL_S),
        ("window_days", 0, MAX_WINDOW_DAYS),
        ("judge_budget", 0, math.inf),
        ("judge_window", 1, math.inf),
        ("keep_bundles", 0, math.inf),
        ("keep_judge_lists", 0, math.inf),
    ):
        value = getattr(args, flag)
        if not (math.isfinite(value) and least <= value <= most):
            bound = f"a number >= {least}" if most == math.inf else f"a number in [{least}, {most:g}]"
            ap.error(f"--{flag.replace('_', '-')}: must be {bound} (got {value})")
    if args.interval_s <= 0 and not args.once:
        ap.error(f"--interval-s: must be > 0 between rounds (got {args.interval_s}); --once runs one round")
    if args.sign_key is not None:
        from lmroute.bundle.signing import load_private_key

        try:
            load_private_key(args.sign_key)  # a bad key is a usage error now, not a failed round later
        except (OSError, ValueError) as exc:
            ap.error(f"--sign-key: {exc}")
    if args.bundle_public_key is not None:
        if problem := _key_pair_problem(args.sign_key, args.bundle_public_key):
            ap.error(problem)
    if args.judge_budget > 0 and (problem := _unwritable(args.judge_dir or args.bundles_dir / "to-judge")):
        ap.error(f"--judge-dir: {problem}")
    try:
        tenants = tenant_filters(args, several=True)
        connect = connection_kwargs(args)
    except ValueError as exc:
        ap.error(str(exc))
    settings = RoundSettings(
        kind=args.kind,
        base_router=args.base_router,
        window_ms=int(args.window_days * 86_400_000),
        splits=args.gate_splits,
        paired_learner=args.paired_learner,
        reporters=tenants.reporters,
        gate_reporters=tenants.gate_reporters,
        callers=tenants.callers,
    )
    # SIGTERM (a CronJob's deadline, an eviction) unwinds like Ctrl-C: a bundle being written is removed
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return _rounds(args, settings, tenants, connect)
    except KeyboardInterrupt:  # Ctrl-C: one line, as lmroute-export says it, not a traceback
        print(f"{ap.prog}: interrupted", file=sys.stderr)
        return 130


def _rounds(args: argparse.Namespace, settings: RoundSettings, tenants: TenantFilters, connect: dict[str, Any]) -> int:
    """The loop's rounds, one every `--interval-s` (one with `--once`: its exit status)."""
    from lmroute.service.client import describe_error

    while True:
        failed = False
        try:
            for tenant in tenants.tenants:  # in turn: each adapts the bundle the one before it left serving
                one = dataclasses.replace(settings, tenant=tenant)
                if args.bundle_link is not None:
                    r = run_link_round(
                        args.bundle_link, args.store, args.bundles_dir, one, args.sign_key, args.bundle_public_key
                    )
                    serving = args.bundle_link
                else:
                    r = run_round(
                        args.server, args.store, args.bundles_dir, one, connect=connect, sign_key=args.sign_key
                    )
                    serving = r.parent if r.swap_refused else r.candidate or r.parent or args.bundles_dir
                print(r.to_json(), flush=True)
                failed = failed or r.swap_refused is not None
                prune_bundles(args.bundles_dir, args.keep_bundles, serving)
            if args.judge_budget > 0:
                judge_dir = args.judge_dir or args.bundles_dir / "to-judge"
                print(json.dumps({"to_judge": _judge_list(serving, args, judge_dir)}), flush=True)
        except (StoreError, ValueError, OSError) as exc:
            print(json.dumps({"error": str(exc)}), flush=True)
            failed = True
        except Exception as exc:  # a server that cannot be reached: the next round retries
            print(json.dumps({"error": describe_error(exc, args.server)}), flush=True)
            failed = True
        if args.once:
            return 1 if failed else 0
        time.sleep(args.interval_s)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    print("lmroute-adapt: terminated (SIGTERM)", file=sys.stderr, flush=True)  # a CronJob's log says why
    raise SystemExit(128 + signum)
