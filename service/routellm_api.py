"""`lmroute.Controller`: RouteLLM's Python API (its `routellm.controller.Controller`) over this service.

RouteLLM's users write

    client = Controller(routers=["mf"], strong_model="gpt-4-1106-preview",
                        weak_model="anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1")
    response = client.chat.completions.create(model="router-mf-0.11593", messages=[...])

and the same lines run here with `from lmroute import Controller`. The routing decision is a gRPC `Route`
call to a running `lmroute-serve` (`target`, default the variable LMROUTE_TARGET or 127.0.0.1:50051; its
token from LMROUTE_TOKEN), so the router, calibration and decision records are the server's; or, with
`bundle=PATH`, made in this process from the bundle (no server: for notebooks and offline evaluation; no
decision ids, no live targets). The model call goes from this process straight to the chosen model's
OpenAI-compatible endpoint (`completion` with the standard library, `acompletion` with aiohttp on the
event loop; no `openai`, no `litellm` needed), following no redirect (a 3xx is an UpstreamError: the
request carries the caller's API key). Calls are sized by the server's limits (`ListRouters.limits`).

Where a model is sent (RouteLLM names models the way LiteLLM does):

    "<provider>/<name>"   provider one of PROVIDERS, or any with <PROVIDER>_BASE_URL set: <name> is sent
                          to <PROVIDER>_BASE_URL (else the provider's public endpoint) with <PROVIDER>_API_KEY
    anything else         sent as it is to OPENAI_BASE_URL (default https://api.openai.com/v1) with OPENAI_API_KEY

`api_base` / `api_key` given to the constructor replace both, for every model (RouteLLM passes them to
LiteLLM the same way). RouteLLM's `config` (checkpoint paths of its routers) is accepted and not read:
the server's bundle holds the routers (`lmroute-export import-routellm` makes one from RouteLLM's
checkpoints). Answers are ChatResponse objects: the upstream's JSON as a dict whose keys are also
attributes (`response.choices[0].message.content`), with `.routing` saying what was decided.

Differences from RouteLLM, on purpose: the prompt routed is the last *user* message (RouteLLM takes the
last message whatever its role); model names also take `router-<router>@<share>` (a calibrated share of
strong calls); `batch_calculate_win_rate` is `Score` calls of up to 128 prompts (fewer where the
server's limits say so), not a pandas apply; the
router `default` (unless a loaded router has that name) is the bundle's default router, which an
accepted adaptation makes its own (`Routing.router` names the router that decided). Beyond RouteLLM:
`client.feedback(response.routing, quality)` reports how the answer went, what adaptation learns from.
Keyword arguments that LiteLLM or the openai SDK take as the client's own settings (`timeout`, `api_key`,
`extra_headers`, `num_retries`, ...: `_CLIENT_SIDE_KWARGS`) are refused naming them, not sent on as
request fields (this Controller takes `api_base`, `api_key` and `timeout_s` at construction); the fields
of `extra_body` are merged into the request, as the SDK does. A key the endpoint left out of an answer
reads as None (`chunk.choices[0].delta.content` on a stream's last chunk), as with the SDK's objects.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import numbers
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import grpc

from lmroute.bundle.remote_encoder import RemoteEncoderError
from lmroute.service.client import RouterClient, paired_outcome, single_outcome
from lmroute.service.client_retry import error_reason
from lmroute.service.config import BatchPolicy
from lmroute.service.errors import InvalidArgument
from lmroute.service.front_requests import DEFAULT, ModelAsk, cut_middle, parse_model, prompt_of_messages
from lmroute.service.scheduler import prompt_problem
from lmroute.service.wire_status import code_name
from lmroute.v1 import router_pb2

__all__ = [
    "PROVIDERS",
    "ChatResponse",
    "Controller",
    "ModelPair",
    "RouterView",
    "Routing",
    "RoutingError",
    "UpstreamError",
]

PROVIDERS = {
    "openai": "https://api.openai.com/v1",
    "anyscale": "https://api.endpoints.anyscale.com/v1",
    "together_ai": "https://api.together.xyz/v1",
    "groq": "https://api.groq.com/openai/v1",
    "deepinfra": "https://api.deepinfra.com/v1/openai",
    "ollama": "http://localhost:11434/v1",
    "ollama_chat": "http://localhost:11434/v1",
}
"""LiteLLM-style provider prefixes and the OpenAI-compatible endpoint each defaults to."""

_NO_TURN_LIMIT = 1 << 30  # the server checks the conversation against its own max_turns


class RoutingError(Exception):
    """A request this API cannot route: a bad model name, router, threshold or prompt (RouteLLM's name),
    or the server's refusal: then `code` is its gRPC status code's name ("RESOURCE_EXHAUSTED",
    "UNAVAILABLE", ...) and `reason` its ErrorInfo reason ("QUEUE_FULL", "EMPTY_PROMPT", ...)."""

    def __init__(self, message: str, *, code: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def _refused(exc: grpc.RpcError, target: str) -> RoutingError:
    """The server's refusal `exc` as a RoutingError naming its code, reason and message; a server that
    could not be reached (UNAVAILABLE with no reason: the transport's) is said to be that, by `target`."""
    code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    reason = error_reason(exc)
    if code == "UNAVAILABLE" and not reason:
        return RoutingError(f"the server {target} cannot be reached: UNAVAILABLE: {details}", code=code)
    return RoutingError(
        f"the server {target} refused: {code}{' ' + reason if reason else ''}: {details}", code=code, reason=reason
    )


_MAX_PROMPT_CHARS = BatchPolicy().max_prompt_chars  # a server's default, held in process too


# Keyword arguments LiteLLM (RouteLLM's model call) or the openai SDK take as the client's own settings, not
# request fields: sent on as fields, an endpoint refuses them or, with api_key, receives a key in the body
_CLIENT_SIDE_KWARGS = frozenset(
    {
        "api_base",
        "api_key",
        "api_version",
        "base_url",
        "custom_llm_provider",
        "extra_headers",
        "extra_query",
        "max_retries",
        "num_retries",
        "request_timeout",
        "timeout",
    }
)


def _text(name: str, text: object) -> str:
    """`text`, once it is known to be text (a string holding an unpaired surrogate is not: no server and no
    model takes it); RoutingError naming it otherwise."""
    if not isinstance(text, str):
        raise RoutingError(f"{name}: expected a string, got {type(text).__name__}", reason="BAD_PROMPT")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise RoutingError(f"{name}: holds an unpaired surrogate ({bad!a}), not text", reason="BAD_PROMPT") from None
    return text


class UpstreamError(RoutingError):
    """The chosen model's endpoint failed: unreachable, or answered an HTTP error (`status`, `body`)."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True)
class ModelPair:
    strong: str
    weak: str


@dataclass(frozen=True)
class Routing:
    """What the service decided for one completion."""

    decision_id: str  # for Feedback (docs/OUTCOMES.md)
    router: str
    tier: str  # "strong" or "weak"
    model: str  # the model name called
    score: float
    threshold: float


class ChatResponse(dict[str, Any]):
    """An answer or stream chunk as the endpoint sent it: a dict whose keys are also attributes, nested
    alike; a key the endpoint left out reads as None, as an optional field of the openai SDK's and
    LiteLLM's objects does (a stream's last chunk has `"delta": {}`, so `chunk.choices[0].delta.content`
    is None there; `message.tool_calls` is None in an answer without tools). `routing` (not a key) says
    what the service decided."""

    routing: Routing | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name.startswith("model_"):  # Python's protocols; the SDK's methods
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (an answer's keys: {list(self)})")
        return self.get(name)

    def model_dump(self) -> dict[str, Any]:
        """The answer as plain dicts and lists (what the SDK's and LiteLLM's `model_dump()` give)."""
        plain: dict[str, Any] = json.loads(json.dumps(self))
        return plain

    def model_dump_json(self, *, indent: int | None = None) -> str:
        """The answer as JSON text (the SDK's and LiteLLM's `model_dump_json()`)."""
        return json.dumps(self, indent=indent, ensure_ascii=False)

    @classmethod
    def of(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return cls({k: cls.of(v) for k, v in value.items()})
        if isinstance(value, list):
            return [cls.of(v) for v in value]
        return value


def endpoint(
    model: str, api_base: str | None, api_key: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str, str, str]:
    """(base URL, key, model name to send) for a model name (module docstring)."""
    env = os.environ if environ is None else environ
    provider, slash, rest = model.partition("/")
    var = provider.upper().replace("-", "_")
    if slash and rest and (provider in PROVIDERS or f"{var}_BASE_URL" in env):
        name, default = rest, PROVIDERS.get(provider)
    else:
        name, var, default = model, "OPENAI", PROVIDERS["openai"]
    base = api_base or env.get(f"{var}_BASE_URL") or default
    if not base:
        raise RoutingError(f"model {model!r}: no endpoint; set api_base or {var}_BASE_URL")
    return base, api_key if api_key is not None else env.get(f"{var}_API_KEY", ""), name


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: a 3xx answer stays an HTTPError. Following it would send the request, the
    prompt and the `Authorization` header with the caller's API key, to wherever `Location` points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)
"""Opens model calls whose only bound is each socket operation's timeout (streams)."""


class _Watchdog:
    """The deadline of one model call, `seconds` after entry (a context manager: exit cancels it). At the
    deadline it shuts down the call's connections, so a blocked send or read ends at once; a connection
    waits for its connect at most the time left (for each address tried), and one made after the deadline
    is shut down at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = math.inf
        self._shut = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self.deadline = time.monotonic() + self.seconds
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    @property
    def fired(self) -> bool:
        """Whether the deadline has passed."""
        return self._shut or time.monotonic() >= self.deadline

    def left(self) -> float:
        """Seconds to the deadline; TimeoutError once it has passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        return left

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down at the deadline (at once when it has passed)."""
        with self._lock:
            self._socks.append(sock)
            if not self.fired:
                return
        _shut_down(sock)

    def _fire(self) -> None:
        with self._lock:
            self._shut = True
            socks = list(self._socks)
        for sock in socks:
            _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    """End both directions of `sock`, waking a thread blocked on it. The plain socket's shutdown, also for
    a TLS socket: an SSLSocket's own drops its TLS state under a reader in another thread."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # closed already
        pass


class _WatchedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket its call's watchdog shuts down at the deadline."""

    watchdog: _Watchdog

    def connect(self) -> None:
        self.timeout = self.watchdog.left()
        super().connect()
        self.watchdog.watch(self.sock)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, http.client.HTTPSConnection):
    """An HTTPS connection whose (TLS) socket its call's watchdog shuts down at the deadline."""


_WATCHED: dict[Any, type[_WatchedHTTPConnection]] = {
    http.client.HTTPConnection: _WatchedHTTPConnection,
    http.client.HTTPSConnection: _WatchedHTTPSConnection,
}


class _WatchedHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Opens http and https URLs over connections `watchdog` shuts down at its deadline."""

    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self.watchdog = watchdog

    def do_open(self, http_class: Any, req: urllib.request.Request, **http_conn_args: Any) -> Any:
        watched = _WATCHED[http_class]

        def connection(host: str, **kwargs: Any) -> _WatchedHTTPConnection:
            conn = watched(host, **kwargs)
            conn.watchdog = self.watchdog
            return conn

        return super().do_open(connection, req, **http_conn_args)


@dataclass(frozen=True)
class Decision:
    strong: bool
    score: float
    threshold: float
    decision_id: str  # "" in process
    router: str  # the router that decided (the default router's name for a call that named none)


class _Served:
    """Decisions by a running server (gRPC Route / Score)."""

    def __init__(self, target: str, token: str | None, tls_ca: str | None, tenant: str | None) -> None:
        self.where = f"served at {target}"
        self.target = target
        if "://" in target:  # gRPC says only "Misformatted domain name"
            raise RoutingError(f"target: expected host:port of the server, not a URL (got {target!r})")
        try:
            self.client = RouterClient(target, token=token, tls_ca=tls_ca, tenant=tenant)
        except (ValueError, TypeError) as exc:  # a tenant or token gRPC cannot send, ...
            raise RoutingError(str(exc)) from None
        try:
            listed = self.client.list_routers()
        except grpc.RpcError as exc:  # unreachable, unauthenticated, not ready
            self.client.close()
            raise _refused(exc, self.target) from None
        self.routers = tuple(r.name for r in listed.routers)
        self.default_router = listed.default_router  # when the Controller was made; the server resolves ""
        said = listed.limits  # the server's own (all 0 from a server that says none: its defaults then)
        self.max_prompt_chars = said.max_prompt_chars or _MAX_PROMPT_CHARS

    def _open(self) -> RouterClient:
        """The client; RoutingError once the Controller has closed it."""
        if self.client.closed:
            raise RoutingError(f"this Controller is closed: close() ended its connection to the server {self.target}")
        return self.client

    def decide(self, ask: ModelAsk, prompt: router_pb2.Prompt | str) -> Decision:
        client = self._open()
        try:
            r = client.route(prompt, router=ask.router, threshold=ask.threshold, strong_share=ask.share)
        except grpc.RpcError as exc:
            raise _refused(exc, self.target) from None
        return Decision(r.tier == router_pb2.TIER_STRONG, r.score, r.threshold, r.decision_id, r.router)

    def scores(self, texts: list[str], router: str) -> list[float]:
        out: list[float] = []
        client = self._open()
        try:
            router = router or client.list_routers().default_router  # "": the default the server has now
            # in as many calls as the server's limits need (RouterClient.score_all: the rule of every client)
            for res in client.score_all(texts, [router]).results:
                if res.status.code != 0:  # its message names the prompt by its place in `texts`
                    raise RoutingError(res.status.message, code=code_name(res.status.code), reason=res.status.reason)
                out.append(res.scores[0].strong_win_probability)
        except grpc.RpcError as exc:
            raise _refused(exc, self.target) from None
        return out

    def feedback(self, report: router_pb2.OutcomeReport) -> router_pb2.ItemStatus:
        client = self._open()
        try:
            [status] = client.feedback([report]).results
        except grpc.RpcError as exc:
            raise _refused(exc, self.target) from None
        return status

    def close(self) -> None:
        self.client.close()


class _InProcess:
    """Decisions made here from a bundle (`lmroute.bundle.load_bundle`; a remote encoder embeds through
    OPENAI_BASE_URL / OPENAI_API_KEY, as RouteLLM's routers do)."""

    def __init__(self, path: Path) -> None:
        from lmroute.bundle.loader import load_bundle

        self.where = f"in the bundle {path}"
        try:
            self.bundle = load_bundle(path)
        except (ValueError, OSError) as exc:  # BundleError is a ValueError: the file and what is wrong
            raise RoutingError(f"bundle {path}: {exc}", reason="BUNDLE_INVALID") from None
        self.routers = tuple(self.bundle.routers)
        self.default_router = self.bundle.manifest.default_router
        self.max_prompt_chars = _MAX_PROMPT_CHARS  # a server's default, held in process too

    def decide(self, ask: ModelAsk, prompt: router_pb2.Prompt | str) -> Decision:
        from lmroute.service.prompts import prompt_text

        name = "prompt" if isinstance(prompt, str) else "messages"
        text = prompt if isinstance(prompt, str) else prompt_text(prompt, name)
        if not isinstance(text, str):
            raise RoutingError(str(text), reason=text.reason)
        router = ask.router or self.default_router
        [score] = self._scores([text], router, [name])
        if ask.threshold is not None:
            threshold = ask.threshold
        elif ask.share is not None:
            threshold = float(self.bundle.threshold_for_share(router, ask.share))
        else:
            raise RoutingError(f"router-{router}: a live share target needs a server (give a threshold or @share)")
        return Decision(score >= threshold, score, threshold, "", router)

    def scores(self, texts: list[str], router: str) -> list[float]:
        return self._scores(texts, router, [f"prompts[{i}]" for i in range(len(texts))])

    def _scores(self, texts: list[str], router: str, names: list[str]) -> list[float]:
        """As the server scores them, refusing what it refuses (an empty prompt, one over its default
        limit of characters), each prompt named as `names` says."""
        for name, text in zip(names, texts, strict=True):
            if (problem := prompt_problem(name, text, self.max_prompt_chars)) is not None:
                raise RoutingError(str(problem), reason=problem.reason)
        router = router or self.default_router
        try:
            batch = self.bundle.prompt_batch(texts)
        except RemoteEncoderError as exc:  # the embeddings endpoint: as a server would say it
            raise RoutingError(f"the bundle's embeddings endpoint failed: {exc}", code="UNAVAILABLE") from None
        return [float(x) for x in self.bundle.routers[router].score(batch)]

    def feedback(self, report: router_pb2.OutcomeReport) -> router_pb2.ItemStatus:
        raise RoutingError("feedback needs a server (its decisions and outcome store); this Controller is in process")

    def close(self) -> None:
        pass


class RouterView:
    """One of a Controller's routers, as RouteLLM's `Controller.routers[name]` is one: its
    `calculate_strong_win_rate(prompt)` (the router's score, P(strong wins)) and `route(prompt, threshold,
    routed_pair)` (routed_pair.strong when the score reaches the threshold, else routed_pair.weak), each a
    call of the Controller's (`batch_calculate_win_rate` of one prompt)."""

    NO_PARALLEL = False  # RouteLLM's flag: the server scores prompts in parallel whatever the router

    def __init__(self, controller: Controller, name: str) -> None:
        self._controller = controller
        self.name = name

    def calculate_strong_win_rate(self, prompt: str) -> float:
        [score] = self._controller.batch_calculate_win_rate([prompt], self.name)
        return float(score)

    def route(self, prompt: str, threshold: float, routed_pair: Any) -> Any:
        return routed_pair.strong if self.calculate_strong_win_rate(prompt) >= threshold else routed_pair.weak

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"RouterView({self.name!r})"


class Controller:
    """RouteLLM's Controller, routed by a running lmroute-serve or a bundle in process.

    `Controller(routers, strong_model, weak_model, config=None, api_base=None, api_key=None,
    progress_bar=False, *, target=None, token=None, tls_ca=None, tenant=None, timeout_s=600.0,
    bundle=None)`: `routers` the router names calls may use (each served, or `default`); the two models
    the answer goes to (LiteLLM-style names: `<provider>/<name>` or an OpenAI model); `api_base` /
    `api_key` for every model call (else each provider's variables); `target` the server (default
    LMROUTE_TARGET, else 127.0.0.1:50051), `token` its bearer token (default LMROUTE_TOKEN), `tls_ca` its
    CA certificate, `tenant` the tenant named in every call; `timeout_s` the model calls' timeout in
    seconds: a whole (non-streamed) answer comes within it of the model call's start (connecting,
    sending, the answer's headers and body), while a stream waits at most that long for its connection
    and then for each of its next bytes (it may last longer in all); `bundle` a bundle directory to
    decide in this process instead of a server. `config` and `progress_bar` are RouteLLM's, accepted
    and not used. `routers` is, as RouteLLM's, a dict of each router name given to a router
    (`RouterView`: `calculate_strong_win_rate(prompt)`, `route(prompt, threshold, routed_pair)`).

    Calls: `chat.completions.create(model="router-mf-0.116", messages=[...])` (or `completion`),
    `acreate` / `acompletion`, `route(prompt, router, threshold)`, `batch_calculate_win_rate(prompts,
    router)`, `feedback(routing, quality)`, `model_counts`; `close()`, or use it in a `with` block.
    Errors: RoutingError (`code`, `reason` when the server refused; also any call after `close()` of a
    Controller with a server), UpstreamError for the model's endpoint (which is never redirected: a 3xx
    answer is an UpstreamError). The module docstring says where each model is sent and what differs
    from RouteLLM."""

    def __init__(
        self,
        routers: list[str],
        strong_model: str,
        weak_model: str,
        config: dict[str, dict[str, Any]] | None = None,
        api_base: str | None = None,
        api_key: str | None = None,
        progress_bar: bool = False,
        *,
        target: str | None = None,
        token: str | None = None,
        tls_ca: str | None = None,
        tenant: str | None = None,
        timeout_s: float = 600.0,
        bundle: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(routers, str):  # each character would be taken as a router's name
            raise RoutingError(f"routers: expected a list of router names, got one string (routers=[{routers!r}]?)")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s < math.inf:
            raise RoutingError(f"timeout_s: expected seconds > 0 for each model call, got {timeout_s!r}")
        self.model_pair = ModelPair(strong=strong_model, weak=weak_model)
        self.api_base = api_base
        self.api_key = api_key
        self.config = config  # accepted for RouteLLM's signature; the server's bundle holds the routers
        self.timeout_s = timeout_s
        self.model_counts: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._backend: _Served | _InProcess
        if bundle is not None:
            self._backend = _InProcess(Path(bundle))
        else:
            target = target or os.environ.get("LMROUTE_TARGET") or "127.0.0.1:50051"
            token = token or os.environ.get("LMROUTE_TOKEN") or None
            self._backend = _Served(target, token, tls_ca, tenant)
        loaded = self._backend.routers
        default = DEFAULT not in loaded and bool(self._backend.default_router)  # `default` names it
        for router in routers:
            if router not in loaded and not (router == DEFAULT and default):
                where = self._backend.where
                raise RoutingError(f"router {router!r} is not {where} (loaded: {', '.join(loaded)})")
        self.progress_bar = progress_bar  # RouteLLM's; nothing here shows one
        # name -> a router with RouteLLM's `calculate_strong_win_rate` and `route`, as RouteLLM's dict holds
        self.routers: dict[str, RouterView] = {name: RouterView(self, name) for name in routers}
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.completion, acreate=self.acompletion))

    def close(self) -> None:
        """Close the connection to the server: later calls that need it raise RoutingError (in process,
        nothing to close)."""
        self._backend.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- routing -------------------------------------------------------------------------------------

    def _ask(self, model: str | None, router: str | None, threshold: float | None) -> ModelAsk:
        if model is not None:
            try:
                ask = parse_model(model, self._backend.routers, self._backend.default_router)
            except InvalidArgument as exc:
                said = exc.message
                if exc.reason == "ROUTER_NOT_FOUND":  # the routers this Controller takes, not all served
                    said = f"{said.rsplit(' (loaded: ', 1)[0]} (this Controller's routers: {', '.join(self.routers)})"
                raise RoutingError(said, reason=exc.reason) from None
            if (ask.router or DEFAULT) not in self.routers:  # "": the default router, asked as `default`
                raise RoutingError(
                    f"Invalid router {ask.router or DEFAULT}. Available routers are {list(self.routers)}."
                )
            return ask
        if router is None or threshold is None:
            raise RoutingError("Router or threshold unspecified.")
        if router not in self.routers:
            raise RoutingError(f"Invalid router {router}. Available routers are {list(self.routers)}.")
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= threshold <= 1.0:
            raise RoutingError(
                f"Invalid threshold {threshold!r} ({type(threshold).__name__}). Threshold must be a float between "
                "0.0 and 1.0."
            )
        by_default = router == DEFAULT and DEFAULT not in self._backend.routers
        return ModelAsk("" if by_default else router, threshold=float(threshold))

    def _decide(self, ask: ModelAsk, prompt: router_pb2.Prompt | str) -> Routing:
        d = self._backend.decide(ask, prompt)
        model = self.model_pair.strong if d.strong else self.model_pair.weak
        return Routing(d.decision_id, d.router, "strong" if d.strong else "weak", model, d.score, d.threshold)

    def route(self, prompt: str, router: str, threshold: float) -> str:
        """The model `router` sends `prompt` to at `threshold` (RouteLLM's `route`; not counted in
        `model_counts`, which counts completions, as RouteLLM's does). A prompt over the server's default
        limit of characters is routed on its head and tail, as a completion's is."""
        text = cut_middle(_text("prompt", prompt), self._backend.max_prompt_chars)
        return self._decide(self._ask(None, router, threshold), text).model

    def batch_calculate_win_rate(self, prompts: Iterable[str], router: str) -> Any:
        """The router's score (P(strong wins)) of each prompt; a pandas Series with the input's index when
        given one, else a list."""
        if isinstance(prompts, str):  # each character would be scored as a prompt
            raise RoutingError("prompts: expected prompts (a list or a pandas Series), got one string")
        ask = self._ask(None, router, 0.0)
        limit = self._backend.max_prompt_chars
        texts = [cut_middle(_text(f"prompts[{i}]", p), limit) for i, p in enumerate(prompts)]
        scores = self._backend.scores(texts, ask.router)
        if type(prompts).__module__.startswith("pandas"):  # a Series in, a Series out (RouteLLM's type)
            import pandas as pd  # type: ignore[import-untyped]

            return pd.Series(scores, index=getattr(prompts, "index", None))
        return scores

    def feedback(
        self,
        routing: Routing | str,
        quality: float | None = None,
        *,
        strong: float | None = None,
        weak: float | None = None,
        source: str = "",
    ) -> router_pb2.ItemStatus:
        """Report how a routed completion went (`response.routing`, or its decision id): `quality` in
        [0, 1] of the model that answered, or `strong` and `weak`: both models judged on the prompt. The
        server's status of the outcome (code 0: stored, or reason DUPLICATE); an outcome it refuses
        raises RoutingError naming why. Needs a server (docs/OUTCOMES.md)."""
        decision_id = routing.decision_id if isinstance(routing, Routing) else routing
        if (quality is None) == (strong is None and weak is None) or (strong is None) != (weak is None):
            raise RoutingError("feedback: give quality, or strong and weak")
        if quality is not None:
            report = single_outcome(decision_id, quality, source)
        else:
            assert strong is not None and weak is not None
            report = paired_outcome(decision_id, strong, weak, source)
        status = self._backend.feedback(report)
        if status.code != 0:
            raise RoutingError(
                f"feedback: {status.reason}: {status.message}", code=code_name(status.code), reason=status.reason
            )
        return status

    # -- completions ---------------------------------------------------------------------------------

    def completion(self, *, router: str | None = None, threshold: float | None = None, **kwargs: Any) -> Any:
        """Route `messages`, then call the chosen model with the rest of `kwargs` (OpenAI's chat completion
        fields). A ChatResponse, or with `stream=True` an iterator of ChatResponse chunks."""
        routing, base, key, body = self._routed(router, threshold, kwargs)
        if body.get("stream") is True:
            return self._stream(base, key, body, routing)
        out = ChatResponse.of(self._answer(base, key, body))
        out.routing = routing
        return out

    async def acompletion(self, *, router: str | None = None, threshold: float | None = None, **kwargs: Any) -> Any:
        """`completion` without blocking the event loop; with `stream=True` an async iterator of chunks.
        The model call is the event loop's own (aiohttp): any number run at once, and a call cancelled
        (its task, or `aclose` of its stream) closes its connection at once. The routing decision, a call
        of a few milliseconds (or the bundle's scoring, in process), runs on a worker thread."""
        routing, base, key, body = await asyncio.to_thread(self._routed, router, threshold, kwargs)
        if body.get("stream") is True:
            return await self._astream(base, key, body, routing)
        out = ChatResponse.of(await self._aanswer(base, key, body))
        out.routing = routing
        return out

    def _routed(
        self, router: str | None, threshold: float | None, kwargs: Mapping[str, Any]
    ) -> tuple[Routing, str, str, dict[str, Any]]:
        """A completion's routing decision (counted in `model_counts`), the chosen model's endpoint and key,
        and the request body it is sent; RoutingError for arguments that cannot be sent."""
        if unsent := sorted(_CLIENT_SIDE_KWARGS.intersection(kwargs)):
            raise RoutingError(
                f"{', '.join(unsent)}: the client's settings, not fields of the request; this Controller sends "
                "no such field to the model (give api_base, api_key and timeout_s to the Controller)",
                reason="BAD_ARGUMENT",
            )
        if not isinstance(kwargs.get("extra_body", {}), dict):
            raise RoutingError("extra_body: expected a dict of fields to add to the request", reason="BAD_ARGUMENT")
        ask = self._ask(kwargs.get("model"), router, threshold)
        try:
            messages = kwargs.get("messages")
            # a last user turn over the server's prompt limit is routed on its head and tail, as the front does
            listed = list(messages) if isinstance(messages, tuple) else messages
            prompt = prompt_of_messages(listed, _NO_TURN_LIMIT, self._backend.max_prompt_chars)
        except InvalidArgument as exc:
            raise RoutingError(str(exc), reason=exc.reason) from None
        routing = self._decide(ask, prompt)
        self.model_counts[routing.router][routing.model] += 1
        base, key, name = endpoint(routing.model, self.api_base, self.api_key)
        fields = {k: v for k, v in kwargs.items() if k != "extra_body"}
        extra = kwargs.get("extra_body") or {}  # the SDK's way to add fields: merged, as it does
        return routing, base, key, {**fields, **extra, "model": name}

    def _answer(self, base: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        """The endpoint's whole (non-streamed) answer, a JSON object, within `timeout_s` of the call's start
        (connecting, sending, the answer's headers and body); past it, UpstreamError naming the timeout,
        whatever the call was doing then."""
        url = base.rstrip("/") + "/chat/completions"
        with _Watchdog(self.timeout_s) as watchdog:
            opener = urllib.request.build_opener(_NoRedirect, _WatchedHandler(watchdog))
            try:
                with self._post(base, key, body, opener) as resp:
                    answer = _json_object(resp, url)
            except Exception:
                if watchdog.fired:  # what broke is the connection the deadline shut down
                    raise self._timed_out(url) from None
                raise
            if watchdog.fired:  # an answer cut at the deadline may look whole (one framed by the close)
                raise self._timed_out(url)
        return answer

    def _timed_out(self, url: str) -> UpstreamError:
        return UpstreamError(f"{url}: no whole answer within timeout_s={self.timeout_s:g} s")

    def _post(self, base: str, key: str, body: dict[str, Any], opener: urllib.request.OpenerDirector) -> Any:
        """The endpoint's response to `body`, opened by `opener` (which follows no redirect); UpstreamError
        for an endpoint that cannot be reached or answers an HTTP error or a redirect."""
        url = base.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
        try:
            return opener.open(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:  # its Location and body are not repeated: they may carry credentials
                exc.close()
                raise UpstreamError(f"{url}: HTTP {exc.code}, a redirect (not followed)", exc.code) from None
            text = exc.read().decode("utf-8", "replace")
            raise UpstreamError(f"{url}: HTTP {exc.code}: {text[:300]}", exc.code, text) from None
        except (urllib.error.URLError, OSError) as exc:
            raise UpstreamError(f"{url}: cannot be reached ({exc})") from None

    def _stream(self, base: str, key: str, body: dict[str, Any], routing: Routing) -> Iterator[Any]:
        resp = self._post(base, key, body, _OPENER)

        def chunks() -> Iterator[Any]:
            events = _EventParser(base, routing)
            with resp:
                try:
                    for raw in resp:
                        event = events.line(raw)
                        if event is _DONE:
                            return
                        if event is not None:
                            yield event
                except (OSError, http.client.HTTPException, UnicodeDecodeError) as exc:
                    raise UpstreamError(f"{base}: the stream broke off ({type(exc).__name__}: {exc})") from None
            events.ended()

        return chunks()

    async def _aanswer(self, base: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        """`_answer` on the event loop: the whole answer within `timeout_s` of the call's start."""
        url = base.rstrip("/") + "/chat/completions"
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                resp = await self._apost(session, url, key, body)
                async with resp:
                    try:
                        data = await resp.read()
                    except (aiohttp.ClientError, OSError) as exc:  # the connection broke mid-answer
                        raise UpstreamError(f"{url}: the answer broke off ({type(exc).__name__}: {exc})") from None
                    return _json_answer(data, resp.status, url)
        except TimeoutError:
            raise self._timed_out(url) from None

    async def _astream(self, base: str, key: str, body: dict[str, Any], routing: Routing) -> AsyncIterator[Any]:
        """`_stream` on the event loop: the response opened now (an HTTP error raised here, as `_stream`
        raises it), its chunks as an async iterator that closes the connection when it ends, breaks or is
        closed. A stream waits at most `timeout_s` to connect and then for each of its next bytes."""
        url = base.rstrip("/") + "/chat/completions"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
        session = aiohttp.ClientSession(timeout=timeout)
        try:
            resp = await self._apost(session, url, key, body)
        except BaseException:
            await session.close()
            raise

        async def chunks() -> AsyncIterator[Any]:
            events = _EventParser(base, routing)
            try:
                async for raw in resp.content:
                    event = events.line(raw)
                    if event is _DONE:
                        return
                    if event is not None:
                        yield event
            except (aiohttp.ClientError, OSError, TimeoutError, UnicodeDecodeError) as exc:
                raise UpstreamError(f"{base}: the stream broke off ({type(exc).__name__}: {exc})") from None
            finally:
                resp.release()
                await session.close()
            events.ended()

        return chunks()

    async def _apost(
        self, session: aiohttp.ClientSession, url: str, key: str, body: dict[str, Any]
    ) -> aiohttp.ClientResponse:
        """`_post` on the event loop: the endpoint's response to `body` (no redirect followed);
        UpstreamError for an endpoint that cannot be reached or answers an HTTP error or a redirect."""
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            resp = await session.post(
                url, data=json.dumps(body).encode("utf-8"), headers=headers, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"{url}: cannot be reached ({exc})") from None
        if 300 <= resp.status < 400:  # its Location and body are not repeated: they may carry credentials
            resp.release()
            raise UpstreamError(f"{url}: HTTP {resp.status}, a redirect (not followed)", resp.status)
        if resp.status >= 400:
            async with resp:
                text = (await resp.read()).decode("utf-8", "replace")
            raise UpstreamError(f"{url}: HTTP {resp.status}: {text[:300]}", resp.status, text)
        return resp


_DONE = object()  # a stream's `data: [DONE]`


class _EventParser:
    """A chat completion stream's server-sent events, line by line, as ChatResponse chunks carrying
    `routing`; `ended` raises UpstreamError for a stream that stopped before any finish_reason or
    `data: [DONE]` (cut off, or never a stream)."""

    def __init__(self, base: str, routing: Routing) -> None:
        self.base = base
        self.routing = routing
        self.finished = False  # a choice said its finish_reason: an end without [DONE] is then whole

    def line(self, raw: bytes) -> Any:
        """The chunk of one line (None for a line that carries none, _DONE at `data: [DONE]`)."""
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            return _DONE
        try:
            event = json.loads(data)
        except json.JSONDecodeError as exc:
            raise UpstreamError(f"{self.base}: a stream event is not JSON ({exc})", None, data) from None
        if isinstance(event, dict) and "error" in event:
            raise UpstreamError(f"{self.base}: stream failed: {event['error']}", None, data)
        self.finished = self.finished or _finish_reason(event)
        chunk = ChatResponse.of(event)
        chunk.routing = self.routing
        return chunk

    def ended(self) -> None:
        if not self.finished:
            raise UpstreamError(f"{self.base}: the stream ended before any finish_reason or data: [DONE] (cut off?)")


def _json_answer(data: bytes, status: int, url: str) -> dict[str, Any]:
    """The JSON object an answer's bytes hold; UpstreamError when they are not one."""
    try:
        answer = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UpstreamError(f"{url}: the answer is not JSON ({exc})", status) from None
    if not isinstance(answer, dict):
        raise UpstreamError(f"{url}: the answer is not a JSON object (got {type(answer).__name__})", status)
    return answer


def _json_object(resp: Any, url: str) -> dict[str, Any]:
    """The JSON object the response `resp` from `url` holds; UpstreamError when its body breaks off or is
    not a JSON object."""
    try:
        data = resp.read()
    except (OSError, http.client.HTTPException) as exc:  # the connection broke mid-answer
        raise UpstreamError(f"{url}: the answer broke off ({type(exc).__name__}: {exc})") from None
    return _json_answer(data, resp.status, url)


def _finish_reason(event: object) -> bool:
    """Whether a stream event says a choice finished (OpenAI's `choices[i].finish_reason`)."""
    choices = event.get("choices") if isinstance(event, dict) else None
    return isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
