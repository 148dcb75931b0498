"""RouterClient and AsyncRouterClient: small typed clients for lmroute.v1.RouterService and AdminService
(users and tests), blocking and asyncio.

with RouterClient("127.0.0.1:50051") as c:
    c.health()                                   # "SERVING"
    r = c.score(["Prove Fermat's little theorem"], routers=["mf"])
    r = c.score_all(texts, routers=["mf"])       # any number: split by the server's limits (ListRouters)
    d = c.route("hi", router="mf", strong_share=0.3)
    d.chosen_model
    c.reload_bundle("/srv/bundles/next")         # AdminService: hot swap; c.get_bundle(): what serves

async with AsyncRouterClient("127.0.0.1:50051") as c:
    d = await c.route("hi", router="mf", strong_share=0.3)

Both retry a call the server refused for now (RESOURCE_EXHAUSTED, UNAVAILABLE) under `retry`
(lmroute.service.client_retry: 4 attempts, the server's retry delay honoured, never past the call's
timeout; `NO_RETRY` turns it off), as the Go and Java clients do.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import numbers
import os
import random
import re
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lmroute.outcomes.records import TENANT_RE
from lmroute.service.client_retry import DEFAULT_RETRY, MIN_ATTEMPT_S, NO_RETRY, RetryPolicy, error_reason
from lmroute.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc

__all__ = [
    "AsyncRouterClient",
    "NO_RETRY",
    "PromptLike",
    "RetryPolicy",
    "RouterClient",
    "add_connection_args",
    "connection_kwargs",
    "describe_error",
    "paired_outcome",
    "score_calls",
    "single_outcome",
    "to_prompt",
]

R = TypeVar("R")

# A prompt: plain text, a conversation as [{"role": "user", "content": "..."}, ...], or a wire Prompt.
PromptLike = str | Sequence[Mapping[str, str]] | router_pb2.Prompt


def to_prompt(prompt: PromptLike, *, all_user_turns: bool = False, name: str = "prompt") -> router_pb2.Prompt:
    """Build the wire Prompt for text or a list of {"role", "content"} turns (a Prompt is taken as it is);
    TypeError naming `name` (and the turn) for anything else."""
    if isinstance(prompt, router_pb2.Prompt):
        return prompt
    try:
        return _wire_prompt(prompt, all_user_turns, name)
    except UnicodeEncodeError as exc:  # protobuf takes only text that encodes as UTF-8
        bad = exc.object[exc.start : exc.end]
        raise ValueError(f"{name}: holds an unpaired surrogate ({bad!a}), not text") from None


def _wire_prompt(prompt: PromptLike, all_user_turns: bool, name: str) -> router_pb2.Prompt:
    if isinstance(prompt, str):
        return router_pb2.Prompt(text=prompt)
    if not isinstance(prompt, Sequence) or isinstance(prompt, bytes | bytearray):
        raise TypeError(
            f"{name}: expected text (str), a list of {{'role', 'content'}} turns or a Prompt, "
            f"got {type(prompt).__name__}"
        )
    messages = []
    for i, turn in enumerate(prompt):
        if not isinstance(turn, Mapping):
            raise TypeError(f"{name}[{i}]: expected a turn {{'role': str, 'content': str}}, got {type(turn).__name__}")
        for key in ("role", "content"):
            if not isinstance(turn.get(key), str):
                got = "nothing" if key not in turn else type(turn[key]).__name__
                raise TypeError(f"{name}[{i}][{key!r}]: expected a string, got {got}")
        messages.append(router_pb2.ChatMessage(role=turn["role"], content=turn["content"]))
    conv = router_pb2.Conversation(messages=messages)
    sel = router_pb2.TURN_SELECTION_ALL_USER if all_user_turns else router_pb2.TURN_SELECTION_LAST_USER
    return router_pb2.Prompt(conversation=conv, turn_selection=sel)


_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def add_connection_args(ap: argparse.ArgumentParser) -> None:
    """The flags of a command that calls a server: its token (read from a variable, never the command
    line) and TLS files; `connection_kwargs` turns them into RouterClient arguments. Make `ap` with
    allow_abbrev=False: else `--token SECRET` is taken as `--token-env SECRET`."""
    ap.add_argument(
        "--token-env",
        default=None,
        metavar="NAME",
        help="environment variable holding the bearer token, which must then be set (without the flag: "
        "LMROUTE_TOKEN when it is set, else no token)",
    )
    ap.add_argument("--ca", type=Path, default=None, help="TLS: trust this CA certificate (PEM)")
    ap.add_argument("--cert", type=Path, default=None, help="mTLS: this client certificate (PEM), with --key")
    ap.add_argument("--key", type=Path, default=None, help="mTLS: the client certificate's private key (PEM)")


def connection_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """RouterClient keyword arguments from `add_connection_args`' flags; ValueError naming a variable
    `--token-env` names that is unset or empty (a token meant to be sent would silently not be), or
    `--cert` / `--key` given without each other or without `--ca`."""
    if args.token_env and not _VARIABLE_NAME.fullmatch(args.token_env):  # a token typed in its place, say
        raise ValueError(
            "--token-env: takes the name of an environment variable, and what was given is not one (not shown: "
            "a token goes in a variable, never on the command line)"
        )
    token = os.environ.get(args.token_env or "LMROUTE_TOKEN") or None
    if args.token_env and token is None:
        raise ValueError(f"--token-env: environment variable {args.token_env} is not set")
    if (args.cert is None) != (args.key is None) or (args.cert is not None and args.ca is None):
        raise ValueError("--cert and --key go together, with --ca (mTLS)")
    return {
        "token": token,
        "tls_ca": args.ca,
        "tls_cert": args.cert,
        "tls_key": args.key,
    }


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def text_flag_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the first text flag of a parsed command line that holds bytes that are not
    UTF-8 (Python reads them as lone surrogates, which no call, manifest, store or JSON line can carry),
    naming the flag; None when there is none. Paths may hold such bytes and are not looked at."""
    for name, value in vars(args).items():
        texts = [value]
        while texts:
            text = texts.pop()
            if isinstance(text, list | tuple):  # append actions; values a flag's type split (TENANT=SHARE)
                texts.extend(text)
            elif isinstance(text, str) and _LONE_SURROGATE.search(text):
                return f"--{name.replace('_', '-')}: holds bytes that are not UTF-8 ({text!a})"
    return None


def describe_error(exc: BaseException, server: str) -> str:
    """A failed call to `server` in one line for a person: its status, reason and message, and what an
    UNIMPLEMENTED or UNAVAILABLE most likely means (not the error's multi-line repr)."""
    if not isinstance(exc, grpc.RpcError) or not isinstance(exc, grpc.Call):
        return f"{type(exc).__name__}: {exc}"
    code, reason = exc.code(), error_reason(exc)
    said = f"{server}: {code.name}{f' ({reason})' if reason else ''}: {exc.details()}"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        said += " (the server does not serve this call to this caller: AdminService is off there, or on loopback only)"
    elif code == grpc.StatusCode.UNAVAILABLE and not reason:
        said += " (the server cannot be reached)"
    return said


# -- requests (the same for both clients) ------------------------------------------------------------


def _as_list(value: Iterable[Any], what: str) -> list[Any]:
    """`value` as a list; TypeError when it is one string (whose characters would each be taken as one) or
    not a sequence at all."""
    if isinstance(value, str | bytes):
        raise TypeError(f"{what}: expected a sequence, got one {type(value).__name__} ({what}=[{value!r}]?)")
    if not isinstance(value, Iterable):
        raise TypeError(f"{what}: expected a sequence, got {type(value).__name__}")
    return list(value)


def _names(value: Iterable[str], what: str) -> list[str]:
    """`value` as a list of names (strings); TypeError naming the first that is not one."""
    names = _as_list(value, what)
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"{what}[{i}]: expected a name (str), got {type(name).__name__}")
        _text(f"{what}[{i}]", name)
    return names


def _router(router: object) -> str:
    """The router name `router` ("" or None: the default router); TypeError for anything else."""
    if router is None:
        return ""
    if not isinstance(router, str):
        raise TypeError(f"router: expected a router's name (str), got {type(router).__name__}")
    _text("router", router)
    return router


def _text(what: str, value: str) -> None:
    """ValueError naming `what` when `value` holds a lone surrogate (not text: protobuf cannot encode it)."""
    if _LONE_SURROGATE.search(value):
        raise ValueError(f"{what}: holds a lone surrogate ({value!a}), not text")


def _candidate(value: object, i: int) -> router_pb2.Candidate:
    """candidates[i]: a Candidate as given, or a model's name (priced by the server's models file)."""
    if isinstance(value, router_pb2.Candidate):
        return value
    if not isinstance(value, str):
        raise TypeError(f"candidates[{i}]: expected a model's name (str) or a Candidate, got {type(value).__name__}")
    return router_pb2.Candidate(model=value)


def _reports(outcomes: object) -> list[router_pb2.OutcomeReport]:
    """Feedback's outcomes as a list; TypeError naming the first that is not an OutcomeReport."""
    if isinstance(outcomes, router_pb2.OutcomeReport):
        raise TypeError("outcomes: expected a sequence of OutcomeReport, got one (outcomes=[report]?)")
    reports = _as_list(outcomes, "outcomes")  # type: ignore[arg-type]
    for i, report in enumerate(reports):
        if not isinstance(report, router_pb2.OutcomeReport):
            raise TypeError(f"outcomes[{i}]: expected an OutcomeReport, got {type(report).__name__}")
    return reports


def _number(name: str, value: object) -> None:
    """TypeError naming `name` unless `value` is a real number (a NumPy one too; not a bool: True is no
    threshold); the server checks its range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} ({value!r})")
    try:
        float(value)
    except OverflowError:  # an int past a double's range (10**400): the message would name nothing
        raise ValueError(f"{name}: {value!r:.40}... is past a double's range") from None


def score_request(prompts: Iterable[PromptLike], routers: Iterable[str] = ()) -> router_pb2.ScoreRequest:
    given = _as_list(prompts, "prompts")
    return router_pb2.ScoreRequest(
        prompts=[to_prompt(p, name=f"prompts[{i}]") for i, p in enumerate(given)], routers=_names(routers, "routers")
    )


SCORE_BATCH = 128
"""The most prompts a split Score call carries whatever the server takes: a call's answer waits for its
slowest prompt."""
_SERVER_REQUEST_CHARS = 1_000_000  # lmroute-serve's defaults, for a server that says no limits (an older one)
_SERVER_MESSAGE_BYTES = 4 * 1024 * 1024


def score_calls(texts: Sequence[str], limits: router_pb2.CallLimits, client_bytes: int) -> list[tuple[int, int]]:
    """[start, stop) of each Score call over `texts` that the server takes, by its `limits` (ListRouters;
    0 fields: its defaults) and this end's message limit `client_bytes`: at most SCORE_BATCH and its prompts
    per call, its characters per call, and 0.9 x the smaller of the two message limits of prompt bytes (16
    a prompt for its framing); at least one prompt a call, so that a prompt over a limit alone goes alone
    and the server answers for it. The rule of every client (Go ScoreAll, Java scoreAll)."""
    most = min(SCORE_BATCH, limits.max_prompts_per_request or SCORE_BATCH)
    most_chars = limits.max_request_chars or _SERVER_REQUEST_CHARS
    most_bytes = int(0.9 * min(limits.max_message_bytes or _SERVER_MESSAGE_BYTES, client_bytes))
    calls, start = [], 0
    while start < len(texts):
        stop, chars, size = start, 0, 0
        while stop < len(texts) and stop - start < most:
            n = len(texts[stop])
            b = len(texts[stop].encode("utf-8", "surrogatepass")) + 16
            if stop > start and (chars + n > most_chars or size + b > most_bytes):
                break
            chars, size, stop = chars + n, size + b, stop + 1
        calls.append((start, stop))
        start = stop
    return calls


def _rebased(resp: router_pb2.ScoreResponse, offset: int, out: router_pb2.ScoreResponse) -> None:
    """Append the results of a call whose first prompt is the `offset`-th of all to `out`: each index, and
    the `prompts[j]: ` a failed one's message starts with, made the place among all."""
    for r in resp.results:
        if offset:
            j = r.index
            r.index = j + offset
            if r.status.message.startswith(f"prompts[{j}]: "):
                r.status.message = f"prompts[{j + offset}]: " + r.status.message.removeprefix(f"prompts[{j}]: ")
        out.results.append(r)
    out.bundle_version = resp.bundle_version


def route_request(
    prompt: PromptLike, router: str = "", threshold: float | None = None, strong_share: float | None = None
) -> router_pb2.RouteRequest:
    if threshold is not None and strong_share is not None:  # one oneof on the wire: the last set would win
        raise ValueError("route: give at most one of threshold and strong_share")
    req = router_pb2.RouteRequest(prompt=to_prompt(prompt), router=_router(router))
    if threshold is not None:
        _number("threshold", threshold)
        req.threshold = threshold
    if strong_share is not None:
        _number("strong_share", strong_share)
        req.strong_share = strong_share
    return req


def route_among_request(
    prompt: PromptLike,
    candidates: Sequence[str | router_pb2.Candidate],
    router: str = "",
    **rules: float | None,
) -> router_pb2.RouteRequest:
    """`rules`: cost_weight, quality_margin, quality_floor, at most one not None."""
    given = [rule for rule, value in rules.items() if value is not None]
    if len(given) > 1:  # one oneof on the wire: the last set would win
        raise ValueError(
            f"route_among: give at most one of cost_weight, quality_margin, quality_floor (got {', '.join(given)})"
        )
    for rule, value in rules.items():
        if value is not None:
            _number(rule, value)
    req = router_pb2.RouteRequest(
        prompt=to_prompt(prompt),
        router=_router(router),
        candidates=[_candidate(c, i) for i, c in enumerate(_as_list(candidates, "candidates"))],
    )
    for rule, value in rules.items():
        if value is not None:
            setattr(req.model_policy, rule, value)
    return req


def single_outcome(decision_id: str, quality: float, source: str = "") -> router_pb2.OutcomeReport:
    """The quality in [0, 1] of the model decision `decision_id` chose (a Route answer's), judged by
    `source` ("thumbs", "judge:gpt-4", ...), for `feedback`."""
    _number("quality", quality)
    return router_pb2.OutcomeReport(
        decision_id=decision_id, single=router_pb2.SingleOutcome(quality=quality), source=source
    )


def paired_outcome(decision_id: str, strong: float, weak: float, source: str = "") -> router_pb2.OutcomeReport:
    """Both models of the default pair judged on decision `decision_id`'s prompt, for `feedback`."""
    _number("strong", strong)
    _number("weak", weak)
    return router_pb2.OutcomeReport(
        decision_id=decision_id,
        paired=router_pb2.PairedOutcome(strong_quality=strong, weak_quality=weak),
        source=source,
    )


def set_targets_request(
    shares: Mapping[str, float | None] | None = None, spends: Mapping[str, float | None] | None = None
) -> admin_pb2.SetTargetsRequest:
    """Tenants' new targets (None: remove it), strong shares then spends; TypeError naming the first
    argument that is not a mapping of tenant names to numbers or None (True is no target)."""
    for what, given in (("shares", shares), ("spends", spends)):
        if given is not None and not isinstance(given, Mapping):
            raise TypeError(f"{what}: expected a mapping of tenant -> target (or None), got {type(given).__name__}")
        for tenant, value in (given or {}).items():
            if not isinstance(tenant, str):
                raise TypeError(f"{what}: a tenant is a name (str), got {type(tenant).__name__} ({tenant!r})")
            if value is not None:
                _number(f"{what}[{tenant!r}]", value)
    changes = [
        admin_pb2.TargetChange(tenant=t, remove_strong_share=True)
        if v is None
        else admin_pb2.TargetChange(tenant=t, strong_share=v)
        for t, v in (shares or {}).items()
    ] + [
        admin_pb2.TargetChange(tenant=t, remove_spend=True)
        if v is None
        else admin_pb2.TargetChange(tenant=t, spend_per_1k_usd=v)
        for t, v in (spends or {}).items()
    ]
    return admin_pb2.SetTargetsRequest(changes=changes)


_HEADER_NAME = re.compile(r"^[0-9a-z_.-]+$")  # a gRPC metadata key (lowercase; -bin keys carry bytes)
_HEADER_VALUE = re.compile(r"^[\x20-\x7e]*$")  # a gRPC metadata value: printable ASCII


def _check_arguments(
    *,
    target: object,
    timeout_s: object,
    tenant: str | None,
    tenant_header: object,
    token: object,
    request_id: object,
    tls: tuple[object, object, object],
    retry: object,
    max_message_bytes: object = 4 * 1024 * 1024,
) -> None:
    """TypeError / ValueError naming the first constructor argument gRPC would take badly: at the first
    call ("Invalid metadata"), in the C core (a certificate without its key aborts the process), or not at
    all (a client certificate without `tls_ca` would connect in plaintext)."""
    if not isinstance(target, str) or not target:
        raise TypeError(f"target: expected 'host:port' (a non-empty str), got {target!r}")
    _check_timeout(timeout_s)
    if tenant is not None and not isinstance(tenant, str):
        raise TypeError(f"tenant: expected a name (str) or None, got {type(tenant).__name__}")
    if tenant is not None and not TENANT_RE.match(tenant):
        raise ValueError(f"tenant: {tenant!r} is not 1-64 of [A-Za-z0-9._-] (the server refuses it: INVALID_TENANT)")
    if not isinstance(tenant_header, str) or not _HEADER_NAME.match(tenant_header) or tenant_header.endswith("-bin"):
        raise ValueError(f"tenant_header: {tenant_header!r} is not a gRPC metadata key (lowercase [0-9a-z_.-])")
    for name, value in (("token", token), ("request_id", request_id)):
        if value is not None and (not isinstance(value, str) or not _HEADER_VALUE.match(value)):
            raise ValueError(f"{name}: must be printable ASCII text (a gRPC metadata value)")
    tls_ca, tls_cert, tls_key = tls
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key: give both (mTLS: the client certificate and its key) or neither")
    if tls_cert is not None and tls_ca is None:
        raise ValueError("tls_cert, tls_key: mTLS needs tls_ca too (without it the channel is plaintext)")
    if token and tls_ca is None and not _local(str(target)):
        warnings.warn(
            f"token: sent in plain text to {target} (no tls_ca): anyone on the way can read it; give tls_ca "
            "(gRPC's own call credentials refuse this)",
            stacklevel=3,  # the line that made the client
        )
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry: expected a RetryPolicy or None, got {type(retry).__name__}")
    if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int):
        raise TypeError(f"max_message_bytes: expected an int, got {type(max_message_bytes).__name__}")
    if not 1024 <= max_message_bytes <= 2**31 - 1:  # a gRPC channel option is an int32
        raise ValueError(f"max_message_bytes: must be in [1024, 2147483647] (got {max_message_bytes})")


def _local(target: str) -> bool:
    """Whether `target` (host:port, or a unix: address) is this host: loopback or a socket file."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):  # gRPC's target forms
        target = target.removeprefix(scheme)
    return loopback_host(target.rsplit(":", 1)[0])


def loopback_host(host: str) -> bool:
    """Whether `host` (an address, bracketed or not, or a name) is a loopback address of this host
    (127.0.0.0/8, ::1, localhost); another name is not known to be (where it leads is not known here)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


MAX_TIMEOUT_S = 1e9
"""The longest timeout_s a client takes (about 31 years): gRPC's deadline, in nanoseconds since the epoch,
overflows past about 7.4e9 s, and every call then fails at once with DEADLINE_EXCEEDED. None: no deadline."""


def _check_timeout(timeout_s: object) -> None:
    """ValueError naming `timeout_s` unless it is seconds in (0, MAX_TIMEOUT_S] (a number) or None."""
    if timeout_s is not None and (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, numbers.Real)
        or not 0 < float(timeout_s) <= MAX_TIMEOUT_S
    ):
        raise ValueError(f"timeout_s: expected seconds in (0, {MAX_TIMEOUT_S:g}] or None, got {timeout_s!r}")


class _ClientBase:
    """What both clients share: the channel (grpc, or grpc.aio for `_aio` clients) and its stubs, the
    call metadata (request id, tenant, token), timeouts and retries."""

    _aio = False

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float | None = 10.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        request_id: str | None = None,
        tenant: str | None = None,
        tenant_header: str = "x-lmroute-tenant",
        token: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
    ) -> None:
        _check_arguments(
            target=target,
            timeout_s=timeout_s,
            tenant=tenant,
            tenant_header=tenant_header,
            token=token,
            request_id=request_id,
            tls=(tls_ca, tls_cert, tls_key),
            retry=retry,
            max_message_bytes=max_message_bytes,
        )
        self._loop = _running_loop(type(self).__name__) if self._aio else None  # grpc.aio binds the channel to it
        self.timeout_s = timeout_s
        self.request_id = request_id
        self.tenant = tenant  # named in every call's metadata (`tenant_header`) when set
        self.tenant_header = tenant_header
        self.token = token  # sent as `authorization: Bearer <token>` when set (lmroute.service.auth)
        self.retry = retry or NO_RETRY
        self._rng = random.Random()
        self._closed = False
        self.max_message_bytes = max_message_bytes
        self._limits: router_pb2.CallLimits | None = None  # the server's (`limits`), once asked
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        channels: Any = grpc.aio if self._aio else grpc
        if tls_ca is None:  # plaintext (loopback, a sidecar); with tls_ca: TLS, plus a client cert for mTLS
            self.channel = channels.insecure_channel(target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes(),
                private_key=Path(tls_key).read_bytes() if tls_key else None,
                certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
            )
            self.channel = channels.secure_channel(target, creds, options=options)
        self.stub = router_pb2_grpc.RouterServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    @property
    def closed(self) -> bool:
        """Whether `close()` was called (calls are then refused)."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{type(self).__name__}: closed (close() was called); make a new client")

    def _kw(self, timeout_s: float | None) -> dict[str, Any]:
        """A call's keyword arguments: its timeout (`timeout_s`, else the client's) and metadata."""
        _check_timeout(timeout_s)
        kw: dict[str, Any] = {"timeout": timeout_s if timeout_s is not None else self.timeout_s}
        metadata = []
        if self.request_id:
            metadata.append(("x-request-id", self.request_id))
        if self.tenant:
            metadata.append((self.tenant_header, self.tenant))
        if self.token:
            metadata.append(("authorization", f"Bearer {self.token}"))
        if metadata:
            kw["metadata"] = tuple(metadata)
        return kw

    def _next_delay(self, n: int, err: grpc.RpcError, deadline: float | None) -> float | None:
        remaining = None if deadline is None else deadline - time.monotonic()
        return self.retry.next_delay_s(n, err, self._rng.random(), remaining)


def _running_loop(client: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{client}: make it inside a coroutine on the event loop that will use it (grpc.aio binds its "
            f"channel to that loop): async with {client}(target) as c: ..."
        ) from None


def _deadline(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else time.monotonic() + timeout_s


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def _too_late(deadline: float | None) -> bool:
    """Whether too little is left before `deadline` to begin a retry (MIN_ATTEMPT_S)."""
    return deadline is not None and deadline - time.monotonic() < MIN_ATTEMPT_S


class RouterClient(_ClientBase):
    """Blocking client over one channel; every call takes an optional timeout (seconds, retries
    included).

    Arguments: `timeout_s` each call's default timeout; `max_message_bytes`; `request_id` sent as
    x-request-id; `tenant` named in `tenant_header`; `token` sent as a bearer token; `tls_ca` (with
    `tls_cert`, `tls_key` for mTLS) for TLS; `retry` the RetryPolicy (default DEFAULT_RETRY; NO_RETRY
    or None: one attempt)."""

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls after it raise ValueError saying so. Closing again does nothing."""
        self._closed = True
        self.channel.close()

    def _call(self, method: Callable[..., R], request: Any, timeout_s: float | None) -> R:
        """`method(request)` with this client's metadata, retried under its policy within the timeout."""
        self._check_open()
        kw = self._kw(timeout_s)
        deadline = _deadline(kw["timeout"])
        for n in range(1, self.retry.max_attempts + 1):
            try:
                return method(request, **{**kw, "timeout": _left(deadline)})
            except grpc.RpcError as err:
                delay = self._next_delay(n, err, deadline)
                if delay is None:
                    raise
                time.sleep(delay)
                if _too_late(deadline):  # the sleep overran: the last refusal says more than DEADLINE_EXCEEDED
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def score(
        self, prompts: Sequence[PromptLike], routers: Sequence[str] = (), *, timeout_s: float | None = None
    ) -> router_pb2.ScoreResponse:
        """Scores of every prompt under `routers` (empty = all); per-prompt status in each result."""
        resp: router_pb2.ScoreResponse = self._call(self.stub.Score, score_request(prompts, routers), timeout_s)
        return resp

    def limits(self, *, timeout_s: float | None = None) -> router_pb2.CallLimits:
        """The server's limits on one call (ListRouters.limits), asked once and kept."""
        if self._limits is None:
            self._limits = self.list_routers(timeout_s=timeout_s).limits
        return self._limits

    def score_all(
        self, texts: Sequence[str], routers: Sequence[str] = (), *, timeout_s: float | None = None
    ) -> router_pb2.ScoreResponse:
        """`score` of any number of texts, in as many calls as the server's limits need (`score_calls`), one
        after another (each with `timeout_s`): the results in the order of `texts`, each index and failed
        prompt's message that of `texts`; bundle_version the last call's. A call refused whole (a text
        alone over the server's max_request_chars) raises its error."""
        out = router_pb2.ScoreResponse()
        for start, stop in score_calls(texts, self.limits(timeout_s=timeout_s), self.max_message_bytes):
            _rebased(self.score(texts[start:stop], routers, timeout_s=timeout_s), start, out)
        return out

    def route(
        self,
        prompt: PromptLike,
        *,
        router: str = "",
        threshold: float | None = None,
        strong_share: float | None = None,
        timeout_s: float | None = None,
    ) -> router_pb2.RouteResponse:
        """Decide strong vs weak for one prompt with `router` ("": the serving bundle's default router, which
        follows each accepted adaptation); give at most one of threshold / strong_share (neither: the
        client's tenant's share target, held live by the server)."""
        resp: router_pb2.RouteResponse = self._call(
            self.stub.Route, route_request(prompt, router, threshold, strong_share), timeout_s
        )
        return resp

    def route_among(
        self,
        prompt: PromptLike,
        candidates: Sequence[str | router_pb2.Candidate],
        *,
        router: str = "",
        cost_weight: float | None = None,
        quality_margin: float | None = None,
        quality_floor: float | None = None,
        timeout_s: float | None = None,
    ) -> router_pb2.RouteResponse:
        """Choose among candidate models (names, or Candidates with prices) with `router` ("": the serving
        bundle's default quality router, which follows each accepted N-model adaptation) by at most one
        rule (none: the client's tenant's spend target, held live by the server)."""
        req = route_among_request(
            prompt,
            candidates,
            router,
            cost_weight=cost_weight,
            quality_margin=quality_margin,
            quality_floor=quality_floor,
        )
        resp: router_pb2.RouteResponse = self._call(self.stub.Route, req, timeout_s)
        return resp

    def list_routers(self, *, timeout_s: float | None = None) -> router_pb2.ListRoutersResponse:
        """What is loaded: routers, models, encoder, calibration, bundle version."""
        resp: router_pb2.ListRoutersResponse = self._call(
            self.stub.ListRouters, router_pb2.ListRoutersRequest(), timeout_s
        )
        return resp

    def get_router(self, name: str, *, timeout_s: float | None = None) -> router_pb2.GetRouterResponse:
        """One router's description (NOT_FOUND when unknown)."""
        resp: router_pb2.GetRouterResponse = self._call(
            self.stub.GetRouter, router_pb2.GetRouterRequest(name=_router(name)), timeout_s
        )
        return resp

    def feedback(
        self, outcomes: Sequence[router_pb2.OutcomeReport], *, timeout_s: float | None = None
    ) -> router_pb2.FeedbackResponse:
        """Report outcomes (see router.proto's OutcomeReport); one ItemStatus per outcome."""
        resp: router_pb2.FeedbackResponse = self._call(
            self.stub.Feedback, router_pb2.FeedbackRequest(outcomes=_reports(outcomes)), timeout_s
        )
        return resp

    def reload_bundle(
        self,
        path: str = "",
        *,
        allow_dropped_routers: bool = False,
        if_version: str = "",
        timeout_s: float | None = None,
    ) -> admin_pb2.ReloadBundleResponse:
        """Hot-swap the server's bundle for the one at `path` on the server ("" = its serving path again);
        FAILED_PRECONDITION when the candidate is refused (the old bundle keeps serving), e.g. when it
        lacks a router served now, unless `allow_dropped_routers` (a rollback); ABORTED (VERSION_MOVED)
        when `if_version` is given and another version serves."""
        request = admin_pb2.ReloadBundleRequest(
            path=path, allow_dropped_routers=allow_dropped_routers, if_version=if_version
        )
        resp: admin_pb2.ReloadBundleResponse = self._call(self.admin.ReloadBundle, request, timeout_s)
        return resp

    def get_bundle(self, *, timeout_s: float | None = None) -> admin_pb2.GetBundleResponse:
        """The serving bundle (version, path, when loaded), the swap in progress and the swap counters."""
        resp: admin_pb2.GetBundleResponse = self._call(self.admin.GetBundle, admin_pb2.GetBundleRequest(), timeout_s)
        return resp

    def list_share_targets(self, *, timeout_s: float | None = None) -> admin_pb2.ListShareTargetsResponse:
        """The tenants' strong-share targets and, per tenant and router, the realised share and threshold."""
        resp: admin_pb2.ListShareTargetsResponse = self._call(
            self.admin.ListShareTargets, admin_pb2.ListShareTargetsRequest(), timeout_s
        )
        return resp

    def list_spend_targets(self, *, timeout_s: float | None = None) -> admin_pb2.ListSpendTargetsResponse:
        """The tenants' spend targets and, per tenant and router, the realised spend and cost weight."""
        resp: admin_pb2.ListSpendTargetsResponse = self._call(
            self.admin.ListSpendTargets, admin_pb2.ListSpendTargetsRequest(), timeout_s
        )
        return resp

    def set_targets(
        self,
        shares: Mapping[str, float | None] | None = None,
        spends: Mapping[str, float | None] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> admin_pb2.SetTargetsResponse:
        """Change tenants' targets on the running server: `shares` (strong share) and `spends` (USD per
        1,000 requests) map a tenant to its new target, or to None to remove it; all applied or none. The
        response lists the targets held after."""
        resp: admin_pb2.SetTargetsResponse = self._call(
            self.admin.SetTargets, set_targets_request(shares, spends), timeout_s
        )
        return resp

    def decisions_to_judge(
        self,
        budget: int,
        *,
        window: int = 0,
        since_ms: int = 0,
        callers: Sequence[str] = (),
        seed: int = 0,
        timeout_s: float | None = None,
    ) -> admin_pb2.DecisionsToJudgeResponse:
        """Up to `budget` of the latest `window` (0: the server's 500) unjudged decisions made at or after
        `since_ms` (of `callers` only, when given) most worth judging with both models; pass the answer's
        next_since_ms as the next call's `since_ms`."""
        request = admin_pb2.DecisionsToJudgeRequest(
            budget=budget, window=window, since_ms=since_ms, callers=_names(callers, "callers"), seed=seed
        )
        resp: admin_pb2.DecisionsToJudgeResponse = self._call(self.admin.DecisionsToJudge, request, timeout_s)
        return resp

    def health(self, service: str = "", *, timeout_s: float | None = None) -> str:
        """grpc.health.v1 status name: "SERVING", "NOT_SERVING", ... (NOT_FOUND raises RpcError)."""
        self._check_open()
        resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), **self._kw(timeout_s))
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        return name


class AsyncRouterClient(_ClientBase):
    """The RouterService calls of RouterClient (route, route_among, score, list_routers, get_router,
    feedback) and health for asyncio code (grpc.aio), over one channel made in the running event loop:
    `async with AsyncRouterClient(target) as c: await c.route(...)`. Arguments as RouterClient's. The
    AdminService calls are RouterClient's only (an operator's, not a request path's)."""

    _aio = True

    async def __aenter__(self) -> AsyncRouterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel (on the loop it was made on); calls after it raise ValueError saying so.
        Closing again does nothing."""
        self._closed = True
        await self.channel.close()

    def _check_loop(self) -> None:
        """RuntimeError on an event loop other than the client's; ValueError once it is closed."""
        self._check_open()
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(
                "AsyncRouterClient: used on an event loop other than the one it was made on (each asyncio.run "
                "is a new loop): make the client inside the coroutine that uses it"
            )

    async def _call(self, method: Callable[..., Awaitable[R]], request: Any, timeout_s: float | None) -> R:
        """`await method(request)` with this client's metadata, retried under its policy within the timeout."""
        self._check_loop()
        kw = self._kw(timeout_s)
        deadline = _deadline(kw["timeout"])
        for n in range(1, self.retry.max_attempts + 1):
            try:
                return await method(request, **{**kw, "timeout": _left(deadline)})
            except grpc.RpcError as err:
                delay = self._next_delay(n, err, deadline)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                if _too_late(deadline):
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    async def score(
        self, prompts: Sequence[PromptLike], routers: Sequence[str] = (), *, timeout_s: float | None = None
    ) -> router_pb2.ScoreResponse:
        """Scores of every prompt under `routers` (empty = all); per-prompt status in each result."""
        resp: router_pb2.ScoreResponse = await self._call(self.stub.Score, score_request(prompts, routers), timeout_s)
        return resp

    async def limits(self, *, timeout_s: float | None = None) -> router_pb2.CallLimits:
        """RouterClient.limits."""
        if self._limits is None:
            self._limits = (await self.list_routers(timeout_s=timeout_s)).limits
        return self._limits

    async def score_all(
        self, texts: Sequence[str], routers: Sequence[str] = (), *, timeout_s: float | None = None
    ) -> router_pb2.ScoreResponse:
        """RouterClient.score_all."""
        out = router_pb2.ScoreResponse()
        for start, stop in score_calls(texts, await self.limits(timeout_s=timeout_s), self.max_message_bytes):
            _rebased(await self.score(texts[start:stop], routers, timeout_s=timeout_s), start, out)
        return out

    async def route(
        self,
        prompt: PromptLike,
        *,
        router: str = "",
        threshold: float | None = None,
        strong_share: float | None = None,
        timeout_s: float | None = None,
    ) -> router_pb2.RouteResponse:
        """RouterClient.route."""
        resp: router_pb2.RouteResponse = await self._call(
            self.stub.Route, route_request(prompt, router, threshold, strong_share), timeout_s
        )
        return resp

    async def route_among(
        self,
        prompt: PromptLike,
        candidates: Sequence[str | router_pb2.Candidate],
        *,
        router: str = "",
        cost_weight: float | None = None,
        quality_margin: float | None = None,
        quality_floor: float | None = None,
        timeout_s: float | None = None,
    ) -> router_pb2.RouteResponse:
        """RouterClient.route_among."""
        req = route_among_request(
            prompt,
            candidates,
            router,
            cost_weight=cost_weight,
            quality_margin=quality_margin,
            quality_floor=quality_floor,
        )
        resp: router_pb2.RouteResponse = await self._call(self.stub.Route, req, timeout_s)
        return resp

    async def list_routers(self, *, timeout_s: float | None = None) -> router_pb2.ListRoutersResponse:
        """What is loaded: routers, models, encoder, calibration, bundle version."""
        resp: router_pb2.ListRoutersResponse = await self._call(
            self.stub.ListRouters, router_pb2.ListRoutersRequest(), timeout_s
        )
        return resp

    async def get_router(self, name: str, *, timeout_s: float | None = None) -> router_pb2.GetRouterResponse:
        """RouterClient.get_router."""
        resp: router_pb2.GetRouterResponse = await self._call(
            self.stub.GetRouter, router_pb2.GetRouterRequest(name=_router(name)), timeout_s
        )
        return resp

    async def feedback(
        self, outcomes: Sequence[router_pb2.OutcomeReport], *, timeout_s: float | None = None
    ) -> router_pb2.FeedbackResponse:
        """Report outcomes (see router.proto's OutcomeReport); one ItemStatus per outcome."""
        resp: router_pb2.FeedbackResponse = await self._call(
            self.stub.Feedback, router_pb2.FeedbackRequest(outcomes=_reports(outcomes)), timeout_s
        )
        return resp

    async def health(self, service: str = "", *, timeout_s: float | None = None) -> str:
        """grpc.health.v1 status name: "SERVING", "NOT_SERVING", ... (NOT_FOUND raises RpcError)."""
        req = health_pb2.HealthCheckRequest(service=service)
        self._check_loop()
        resp = await self._health.Check(req, **self._kw(timeout_s))
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        return name
