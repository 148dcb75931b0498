"""`lmroute-admin`: operate a running server from the command line through its AdminService.

    lmroute-admin [--server HOST:PORT] [--token-env NAME] [--ca PEM [--cert PEM --key PEM]] COMMAND

    bundle                      the serving bundle, the swap in progress, the swap counters
    reload [PATH] [--allow-dropped-routers] [--if-version V]
                                hot-swap the bundle at PATH on the server ("": its serving path again);
                                --allow-dropped-routers: even one lacking routers served now (a rollback);
                                --if-version: only if version V serves (else ABORTED, VERSION_MOVED)
    targets                     the tenants' share and spend targets and their controllers
    set-targets [--share TENANT=SHARE] [--spend TENANT=USD] [--remove-share TENANT] [--remove-spend TENANT]
                                change targets live (each flag repeatable; all applied or none)
    to-judge --budget K [--window N] [--since-ms MS] [--callers A,B] [--seed S] [--jsonl]
                                the recent decisions most worth judging with both models (their
                                prompts), and the next call's --since-ms (next_since_ms); --jsonl:
                                one line per decision as `lmroute-export to-judge` prints them, the
                                rest of the answer on stderr

The server is --server, else the variable LMROUTE_TARGET, else 127.0.0.1:50051; the bearer token is read
from the variable --token-env names (LMROUTE_TOKEN by default), never from the command line: with tokens
configured AdminService takes an unbound one (docs/SECURITY.md). Each command prints the answer as one
JSON object on stdout and exits 0; a refused call prints its status, reason and message on stderr and
exits 1; bad arguments exit 2. Calls the server refuses for now are retried (lmroute.service.client).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from lmroute.service.client import (
    RouterClient,
    add_connection_args,
    connection_kwargs,
    describe_error,
    text_flag_problem,
)

__all__ = ["main"]


def _assignment(text: str) -> tuple[str, float]:
    """`TENANT=VALUE` -> (tenant, value); argparse reports the ValueError as a bad argument."""
    tenant, sep, value = text.partition("=")
    if not sep or not tenant:
        raise argparse.ArgumentTypeError(f"expected TENANT=VALUE (got {text!r})")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be finite")
    return tenant, number


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (the server checks the narrower ranges it allows)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in [{low}, {high}]")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lmroute-admin", description=(__doc__ or "").split("\n\n")[0], allow_abbrev=False)
    ap.add_argument(
        "--server",
        default=os.environ.get("LMROUTE_TARGET") or "127.0.0.1:50051",
        help="host:port (default: the variable LMROUTE_TARGET when set and not empty, else 127.0.0.1:50051)",
    )
    ap.add_argument("--timeout-s", type=float, default=600.0, help="each call's timeout (a reload loads and warms)")
    add_connection_args(ap)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("bundle", help="the serving bundle and the swap counters")
    reload = sub.add_parser("reload", help="hot-swap the bundle at PATH on the server")
    reload.add_argument(
        "path",
        nargs="?",
        default="",
        help="bundle directory on the server (relative: to the server's working directory; default: its own)",
    )
    reload.add_argument(
        "--allow-dropped-routers",
        action="store_true",
        help="swap in a bundle lacking routers served now (calls naming them get NOT_FOUND): a rollback of an "
        "accepted adaptation to its parent",
    )
    reload.add_argument(
        "--if-version",
        default="",
        metavar="V",
        help="swap only if bundle_version V serves (the one the candidate was made from): refused with ABORTED "
        "(VERSION_MOVED) once another swap came first",
    )
    sub.add_parser("targets", help="the tenants' share and spend targets and their controllers")
    setter = sub.add_parser("set-targets", help="change tenants' targets live (all applied or none)")
    setter.add_argument("--share", type=_assignment, action="append", default=[], metavar="TENANT=SHARE")
    setter.add_argument("--spend", type=_assignment, action="append", default=[], metavar="TENANT=USD_PER_1K")
    setter.add_argument("--remove-share", action="append", default=[], metavar="TENANT")
    setter.add_argument("--remove-spend", action="append", default=[], metavar="TENANT")
    judge = sub.add_parser("to-judge", help="the recent decisions most worth judging with both models")
    int32, int64 = _int_in(0, 2**31 - 1), _int_in(0, 2**63 - 1)
    judge.add_argument(
        "--budget", type=_int_in(1, 2**31 - 1), required=True, help="decisions to pick (the server takes 1-1,000)"
    )
    judge.add_argument("--window", type=int32, default=0, help="among this many latest unjudged ones (0: 500)")
    judge.add_argument("--since-ms", type=int64, default=0, help="only decisions made at or after this Unix ms time")
    judge.add_argument("--callers", default="", help="only these callers' decisions (tenant names, comma separated)")
    judge.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0, help="seed of the picks' random share")
    judge.add_argument("--jsonl", action="store_true", help="a line per decision (`lmroute-export to-judge`'s)")
    return ap


_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _as_dict(message: Message) -> dict[str, Any]:
    """`message` as JSON-ready data: proto field names, every field, and 64-bit integers as numbers
    (protobuf's JSON mapping writes them as strings)."""
    out = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _int64_as_numbers(message, out)
    return out


def _int64_as_numbers(message: Message, out: dict[str, Any]) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.name not in out:
            continue
        repeated = field.is_repeated
        if field.message_type is not None and field.message_type.GetOptions().map_entry:  # map<K, V>
            value = field.message_type.fields_by_name["value"]
            entries = getattr(message, field.name)
            if value.message_type is not None:
                for key, sub in entries.items():
                    _int64_as_numbers(sub, out[field.name][str(key)])
            elif value.type in _INT64:
                out[field.name] = {k: int(v) for k, v in out[field.name].items()}
        elif field.message_type is not None:
            values = getattr(message, field.name)
            for sub, data in zip(values, out[field.name]) if repeated else [(values, out[field.name])]:
                _int64_as_numbers(sub, data)
        elif field.type in _INT64:
            out[field.name] = [int(v) for v in out[field.name]] if repeated else int(out[field.name])


def _run(client: RouterClient, args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "bundle":
        return _as_dict(client.get_bundle())
    if args.command == "reload":
        return _as_dict(
            client.reload_bundle(
                args.path, allow_dropped_routers=args.allow_dropped_routers, if_version=args.if_version
            )
        )
    if args.command == "to-judge":
        callers = [c for c in args.callers.split(",") if c]
        return _as_dict(
            client.decisions_to_judge(
                args.budget, window=args.window, since_ms=args.since_ms, callers=callers, seed=args.seed
            )
        )
    if args.command == "targets":
        return {"share": _as_dict(client.list_share_targets()), "spend": _as_dict(client.list_spend_targets())}
    shares: dict[str, float | None] = {**dict(args.share), **dict.fromkeys(args.remove_share)}
    spends: dict[str, float | None] = {**dict(args.spend), **dict.fromkeys(args.remove_spend)}
    return _as_dict(client.set_targets(shares=shares, spends=spends))


def _judge_lines(answer: dict[str, Any], out: Callable[[str], None]) -> None:
    """A DecisionsToJudge answer as `lmroute-export to-judge` gives it: a line per decision to `out`, the
    rest of the answer (next_since_ms included) as one JSON line on stderr."""
    from lmroute.outcomes.jsonl import to_judge_line

    picks = answer.pop("decisions")
    for d in picks:
        out(to_judge_line(d["decision_id"], d["time_ms"], d["prompt"] or None, d["strong_model"], d["weak_model"]))
    print(json.dumps({"picked": len(picks), **answer}, sort_keys=True), file=sys.stderr)


def _check_tls_files(args: argparse.Namespace) -> None:
    """ValueError naming the flag of a --ca, --cert or --key file that cannot be read (the client reads
    them as it makes its channel, where the error would name no flag)."""
    for flag in ("ca", "cert", "key"):
        path = getattr(args, flag)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"--{flag}: {path}: cannot be read ({exc.strerror or exc})") from None


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    """Entry point of `lmroute-admin` (see the module docstring); `out` takes the JSON answer."""
    ap = _parser()
    args = ap.parse_args(argv)
    if (problem := text_flag_problem(args)) is not None:
        ap.error(f"{args.command} {problem}")
    if args.command == "set-targets":
        if not (args.share or args.spend or args.remove_share or args.remove_spend):
            ap.error("set-targets: give at least one of --share, --spend, --remove-share, --remove-spend")
        for kind in ("share", "spend"):  # each tenant once per kind: which of two values was meant is unknown
            named = [t for t, _ in getattr(args, kind)] + list(getattr(args, f"remove_{kind}"))
            if twice := sorted({t for t in named if named.count(t) > 1}):
                ap.error(f"set-targets: tenant {twice[0]!r} is named twice among --{kind} and --remove-{kind}")
    try:
        connect = connection_kwargs(args)
        _check_tls_files(args)
    except ValueError as exc:
        ap.error(str(exc))
    try:
        client = RouterClient(args.server, timeout_s=args.timeout_s, **connect)
    except (ValueError, TypeError) as exc:  # e.g. --timeout-s 0
        ap.error(str(exc))
    try:
        with client:
            answer = _run(client, args)
    except grpc.RpcError as err:
        print(f"lmroute-admin: {describe_error(err, args.server)}", file=sys.stderr)
        return 1
    except OSError as exc:  # an unreadable TLS file
        print(f"lmroute-admin: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "to-judge" and args.jsonl:
            _judge_lines(answer, out)
        else:
            out(json.dumps(answer, indent=2, sort_keys=True))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader closed early (`| head`): no traceback, nothing more to write
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
