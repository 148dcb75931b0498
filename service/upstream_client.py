"""Forwarding a chat completion to an upstream endpoint (lmroute.service.upstreams) over HTTP.

One aiohttp session for the front's lifetime (keep-alive connections to each upstream). An exchange holds
one of its upstream's `max_concurrency` slots from the request until the answer is read or the stream
ends; when the slots are contended, each one that frees goes to the waiting tenant holding the fewest
(lmroute.service.tenant_slots), so one tenant's flood does not queue ahead of another tenant's request.
Failures become the front's errors, each naming the upstream by side and model (the server's log adds
its URL, which callers are not told): it cannot be reached, drops the connection, answers with a 5xx
or a redirect (3xx: never followed, so the prompt goes to no URL but the configured one) ->
UpstreamFailed (HTTP 502); its next bytes take longer than `timeout_s`, or no slot frees in that time ->
UpstreamTimeout (HTTP 504). A 4xx answer is the upstream's verdict on the request (a bad tool schema,
say) and is passed to the caller as it is, the upstream's API key replaced by *** wherever it appears.
The front bounds the whole exchange (`--upstream-max-s`) and its writes to the caller.

Each exchange is counted per upstream, by what it came to (`outcomes`, lmroute_upstream_calls_total:
the answer's HTTP status, `exchange_code`; or `unreachable`, `timeout`, `no_slot`, `cancelled`), and
timed from the request sent to the answer's end (`seconds`, lmroute_upstream_seconds). The request
carries the call's request id (`x-request-id`), and with tracing (lmroute.service.tracing) it is a
CLIENT span `lmroute.upstream <upstream>` whose W3C traceparent goes with it; without tracing no span
is made.
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from lmroute.service.circuit_breaker import CircuitBreaker
from lmroute.service.errors import ServiceError, UpstreamFailed, UpstreamTimeout
from lmroute.service.metrics import LONG_SECONDS
from lmroute.service.stats import Histogram
from lmroute.service.tenant_slots import TenantSlots
from lmroute.service.upstream_keys import KeyFile
from lmroute.service.upstreams import Upstream, redact

if TYPE_CHECKING:
    from lmroute.service.tracing import Tracing

__all__ = [
    "MAX_ANSWER_BYTES",
    "Exchange",
    "UpstreamClient",
    "exchange_code",
    "upstream_failed",
    "upstream_timeout",
    "usage_asked",
    "usage_of",
]

MAX_ANSWER_BYTES = 64 << 20
"""Most bytes of a non-streamed upstream answer the front reads (more: UpstreamFailed)."""
_ERROR_SNIPPET = 300  # characters of an upstream's 5xx error message quoted into the error
MAX_RETRY_AFTER_S = 3600  # an upstream's Retry-After passed on, at most this
_RETRY_HEADERS = ("Retry-After", "retry-after-ms")  # what an upstream's error answer says of when to retry
# the statuses an exchange is counted under as they are; any other under its class ("2xx" .. "5xx"), so the
# label takes a few values whatever an upstream answers
_COUNTED_STATUSES = frozenset({200, 400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504})


def exchange_code(status: int) -> str:
    """The `code` label an upstream answer of HTTP `status` is counted under (lmroute_upstream_calls_total)."""
    return str(status) if status in _COUNTED_STATUSES else f"{status // 100}xx"


class Exchange:
    """One forwarded request's answer: status, content type, and its body read whole or as chunks."""

    def __init__(self, upstream: Upstream, response: aiohttp.ClientResponse, key: str = "") -> None:
        self.upstream = upstream
        self.key = key  # the API key the request was sent with: what its answer must not show
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "application/json")

    def retry_headers(self) -> dict[str, str]:
        """The upstream's own Retry-After (and OpenAI's retry-after-ms) of an error answer, to pass on."""
        return {name: value for name in _RETRY_HEADERS if (value := self._response.headers.get(name)) is not None}

    async def read(self) -> bytes:
        """The whole answer; UpstreamFailed / UpstreamTimeout when it breaks off or is too long."""
        out = bytearray()
        async for chunk in self.chunks():
            out += chunk
            if len(out) > MAX_ANSWER_BYTES:
                raise upstream_failed(
                    self.upstream, f"answer longer than {MAX_ANSWER_BYTES} bytes", reason="ANSWER_TOO_LONG"
                )
        return bytes(out)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The answer's bytes as they arrive (a streamed answer's server-sent events)."""
        it = self._response.content.iter_any().__aiter__()
        while True:
            try:
                chunk = await it.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise upstream_timeout(
                    self.upstream, f"no data for {self.upstream.timeout_s:g} s while answering"
                ) from None
            except aiohttp.ClientError as exc:
                raise upstream_failed(self.upstream, f"answer broke off ({type(exc).__name__})") from None
            yield chunk


class UpstreamClient:
    """Sends chat completions to the upstreams; `start` and `close` bracket its use."""

    def __init__(self, upstreams: Mapping[str, Upstream], tracing: Tracing | None = None) -> None:
        self.upstreams = dict(upstreams)  # keyed by the operator's upstreams file: the metrics' few labels
        self.tracing = tracing  # None: no spans, no traceparent sent
        self.slots = {tier: TenantSlots(u.max_concurrency) for tier, u in self.upstreams.items()}
        self.breakers = {
            tier: CircuitBreaker(u.fallback_after, u.fallback_for_s) for tier, u in self.upstreams.items() if u.fallback
        }  # the sides that fall back: whether to skip their upstream for now
        self.fallbacks: collections.Counter[tuple[str, str]] = collections.Counter()  # (tier, why) -> requests
        self.tokens: collections.Counter[tuple[str, str]] = collections.Counter()  # (tier, prompt|completion)
        self.key_files = {
            tier: KeyFile(tier, Path(u.api_key_file), u.api_key) for tier, u in self.upstreams.items() if u.api_key_file
        }  # the upstreams whose key is read from a file, and again when it changes
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()  # (tier, exchange code)
        self.seconds = {tier: Histogram(LONG_SECONDS) for tier in self.upstreams}  # request sent .. answer's end
        self.seconds_lock = threading.Lock()  # the scrape's thread reads a histogram whole, not half observed
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # no pool-wide cap (each upstream has its slots); a compressed answer is decoded before it is passed on
        # (the front drops the upstream's Content-Encoding, so the caller gets plain bytes)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=True, trust_env=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def key(self, tier: str) -> str:
        """The API key to send the `tier` upstream now."""
        held = self.key_files.get(tier)
        return held.key if held is not None else self.upstreams[tier].api_key

    def count_usage(self, tier: str, usage: tuple[int, int] | None) -> None:
        """Count the tokens an answer of the `tier` upstream reported using (None: it reported none)."""
        if usage is not None:
            self.tokens[(tier, "prompt")] += usage[0]
            self.tokens[(tier, "completion")] += usage[1]

    def payload(self, tier: str, body: Mapping[str, Any]) -> bytes:
        """`body` as the `tier` upstream is sent it: JSON without spaces between items (about the size the
        caller sent; with them a body of many short items grew by up to a third), its model set to the
        upstream's; a stream sent to an upstream with `usage_in_streams` asks for its usage."""
        up = self.upstreams[tier]
        out = {**body, "model": up.model}
        options = body.get("stream_options")
        if up.usage_in_streams and body.get("stream") is True and not usage_asked(body):
            if options is None or isinstance(options, dict):  # anything else: the upstream's to refuse
                out["stream_options"] = {**(options or {}), "include_usage": True}
        return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @contextlib.asynccontextmanager
    async def exchange(
        self,
        tier: str,
        body: Mapping[str, Any] | bytes,
        tenant: str = "",
        *,
        request_id: str = "",
        fallback_for: str = "",
    ) -> AsyncIterator[Exchange]:
        """POST `body` (its model set to the upstream's; or bytes made by `payload`) to the `tier`
        upstream's /chat/completions for `tenant` (its turn at the upstream's slots); the answer as an
        Exchange once its status and headers are in. A 5xx or a 3xx is raised as UpstreamFailed.
        `request_id` (the front's call's) goes as `x-request-id`; `fallback_for`: the upstream this one
        answers for (its span says so). Counted in `outcomes` and `seconds` (module docstring)."""
        assert self._session is not None, "UpstreamClient.start was not called"
        up = self.upstreams[tier]
        slots = self.slots[tier]
        try:
            await slots.acquire(tenant, up.timeout_s)
        except TimeoutError:
            self.outcomes[(tier, "no_slot")] += 1
            why = f"no free slot in {up.timeout_s:g} s ({up.max_concurrency} requests in flight)"
            raise upstream_timeout(up, why) from None
        # what the exchange came to, for the metrics and the span: "cancelled" unless it gets further (the
        # front stopped waiting: its caller went away, or --upstream-max-s passed, before the answer began)
        outcome, status, error = "cancelled", None, ""
        t0 = time.perf_counter()
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if request_id:
            headers["x-request-id"] = request_id
        traced = (
            self.tracing.upstream(tier, _span_attributes(up, fallback_for), headers)
            if self.tracing is not None
            else contextlib.nullcontext()
        )
        try:
            with traced as span:
                try:
                    payload = body if isinstance(body, bytes) else self.payload(tier, body)
                    key = self.key(tier)
                    if key:
                        headers["Authorization"] = f"Bearer {key}"
                    timeout = aiohttp.ClientTimeout(
                        total=None, sock_connect=up.connect_timeout_s, sock_read=up.timeout_s
                    )
                    try:
                        response = await self._session.post(
                            up.completions_url, data=payload, headers=headers, timeout=timeout, allow_redirects=False
                        )
                    except TimeoutError:
                        outcome = "timeout"
                        raise upstream_timeout(up, f"no answer in {up.timeout_s:g} s") from None
                    except aiohttp.ClientError as exc:
                        outcome = "unreachable"
                        raise upstream_failed(up, f"cannot be reached ({type(exc).__name__})") from None
                    status, outcome = response.status, exchange_code(response.status)
                    try:
                        if 300 <= response.status < 400:  # the prompt goes to the configured URL or nowhere
                            raise upstream_failed(up, f"answered HTTP {response.status}, a redirect (not followed)")
                        if response.status >= 500:
                            quoted = error_message(redact(await Exchange(up, response).read(), key))
                            said = f"answered HTTP {response.status}"
                            raise UpstreamFailed(
                                f"{up.label}: {said}: {quoted}" if quoted else f"{up.label}: {said}",
                                logged=f"{up.describe()}: {said}"
                                + (" (its error message quoted to the caller)" if quoted else ""),
                                retry_after_ms=retry_after_ms(response.headers.get("Retry-After")),
                            )
                        yield Exchange(up, response, key)
                    finally:
                        response.release()
                except ServiceError as exc:  # here, or reading the answer (it broke off, went quiet)
                    error = exc.reason
                    raise
                finally:
                    if span is not None and self.tracing is not None:
                        self.tracing.upstream_ended(span, outcome, status, error)
        finally:
            slots.release(tenant)
            self.outcomes[(tier, outcome)] += 1
            with self.seconds_lock:
                self.seconds[tier].observe(time.perf_counter() - t0)


def _span_attributes(up: Upstream, fallback_for: str) -> dict[str, Any]:
    """An upstream exchange's span attributes: the upstream (its name in the upstreams file), its model,
    its host and port (not the URL: a path or query may hold what the operator keeps out of sight), and
    the upstream it answers for when it is a fallback."""
    url = urllib.parse.urlsplit(up.base_url)
    out: dict[str, Any] = {"lmroute.upstream": up.tier, "lmroute.model": up.model, "http.request.method": "POST"}
    if url.hostname:
        out["server.address"] = url.hostname
        out["server.port"] = url.port or (443 if url.scheme == "https" else 80)
    if fallback_for:
        out["lmroute.fallback"] = fallback_for
    return out


def usage_asked(body: Mapping[str, Any]) -> bool:
    """Whether a chat completion request asks for its stream's usage (`stream_options.include_usage`)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def usage_of(body: bytes) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) of the `usage` an OpenAI-shaped answer or stream chunk (its
    JSON) reports, or None where it reports none or something else than two counts."""
    at = body.rfind(b'"usage"')  # a key: in a string value its quotes would be escaped
    rest = body[at + len(b'"usage"') :].lstrip() if at >= 0 else b""
    if not rest.startswith(b":"):
        return None
    try:  # the object after the key alone (OpenAI sends it last): not the whole answer, which may be long
        usage, _ = json.JSONDecoder().raw_decode(rest[1:].decode("utf-8", "replace").lstrip())
    except (ValueError, RecursionError):
        return None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    for n in (prompt, completion):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return None
    assert isinstance(prompt, int) and isinstance(completion, int)
    return prompt, completion


def error_message(body: bytes) -> str:
    """The message of an OpenAI-shaped error body (`{"error": {"message": ...}}` or `{"error": "..."}`),
    at most _ERROR_SNIPPET characters; "" for anything else (a proxy's HTML page may name internal hosts)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    error = doc.get("error") if isinstance(doc, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return message[:_ERROR_SNIPPET] if isinstance(message, str) else ""


def retry_after_ms(value: str | None) -> int | None:
    """An upstream's Retry-After in whole seconds (its date form is not read) as milliseconds, at most
    MAX_RETRY_AFTER_S; None when it gives none."""
    if value is None or not value.strip().isascii() or not value.strip().isdigit():
        return None
    return min(int(value.strip()), MAX_RETRY_AFTER_S) * 1000 or None


def upstream_failed(up: Upstream, what: str, **kw: Any) -> UpstreamFailed:
    """UpstreamFailed saying `what` of `up`: to the caller by side and model, in the log with its URL."""
    return UpstreamFailed(f"{up.label}: {what}", logged=f"{up.describe()}: {what}", **kw)


def upstream_timeout(up: Upstream, what: str, **kw: Any) -> UpstreamTimeout:
    """UpstreamTimeout saying `what` of `up`, as `upstream_failed` names it."""
    return UpstreamTimeout(f"{up.label}: {what}", logged=f"{up.describe()}: {what}", **kw)
