"""Prometheus metrics on a separate HTTP port (`--metrics-port`): what an operator watches.

Per call (written by the interceptor, lmroute.service.interceptors):

    lmroute_calls_total{method, code}           RPCs answered, by method and status code
    lmroute_call_seconds{method}                handler time (histogram; a gRPC method's buckets 0.5 ms ..
                                                10 s, the OpenAI front's paths' 50 ms .. 600 s, as long as
                                                --upstream-max-s lets an LLM answer take)
    lmroute_in_flight_calls                     calls being handled now (the front's requests too)
    lmroute_refusals_total{method, reason}      calls refused or shed (RESOURCE_EXHAUSTED, UNAVAILABLE,
                                                DEADLINE_EXCEEDED, UNAUTHENTICATED), by reason; not what an
                                                upstream did (reasons UPSTREAM_*: an upstream's 401 is no
                                                caller's failed token), which lmroute_upstream_calls_total
                                                counts

Read at scrape time from the serving objects (nothing added to the request path):

    lmroute_queue_wait_seconds, lmroute_batch_size, lmroute_encoder_seconds, lmroute_score_seconds
                                                the scheduler's histograms (lmroute.service.stats)
    lmroute_scheduler_events_total{event}       admitted, refused, dropped, scored ... (SchedulerStats)
    lmroute_tenant_calls_total{tenant, event}   calls admitted / refused (overload, queue full, deadline)
                                                per tenant; at most --metrics-tenants tenants apart, the
                                                rest as "(other)", none named as "(none)"
                                                (lmroute.service.tenant_counts)
    lmroute_tenant_queued_prompts{tenant}       prompts queued now per tenant (the same labels)
    lmroute_tenant_queue_wait_seconds{tenant}   each prompt's wait from entering the queue to its batch
                                                leaving it, per tenant (the same labels; 0 for a call
                                                scored at once; coarse buckets, 500 us .. 10 s)
    lmroute_tenant_feedback_total{tenant, result}
                                                what became of each reported outcome (stored, duplicate,
                                                conflict, not_found, not_yet, no_model, other_tenant,
                                                invalid, refused)
                                                per reporting tenant (the same labels)
    lmroute_store_events_total{event}           the outcome store's writer: decisions and outcomes written
                                                (Feedback acknowledged), dropped, commits, failed commits
    lmroute_store_pending{kind}                 decisions / outcomes waiting for a commit
    lmroute_store_write_seconds                 how long the store write in progress has taken so far (0:
                                                none; a hung store grows it: alert on it)
    lmroute_bundle_info{version}                1 for the serving bundle
    lmroute_bundle_swaps_total{result}          hot swaps done (swapped) and candidates refused (refused)
    lmroute_bundle_watch_problem                1 while the watched bundle path cannot be read
    lmroute_tls_reloads_total{listener, result}, lmroute_tls_certificate_expiry_seconds{listener}
                                                certificate rotations taken (reloaded) or refused (failed)
                                                on the gRPC port and the OpenAI front, and the notAfter of
                                                the certificate each serves
    lmroute_auth_reloads_total{result}          changes of the tokens file taken (reloaded) or refused
                                                (failed: a bad file, the tokens in use kept)
    lmroute_streams_open, lmroute_streams_refused_total
                                                streaming calls (health Watch, reflection) open now, and
                                                refused at --max-streams (lmroute.service.stream_cap)
    lmroute_upstream_slots{upstream}, lmroute_upstream_requests{upstream, state}
                                                the OpenAI front's upstreams: slots, requests in flight
                                                and waiting for a slot (lmroute.service.tenant_slots)
    lmroute_upstream_fallbacks_total{upstream, why}, lmroute_upstream_skipped{upstream}
                                                requests an upstream set to fall back passed on (to the
                                                other side's, or the runner-up model's), it having failed
                                                them, being skipped, or left out of a choice among models
                                                while skipped; 1 while it is skipped
                                                (lmroute.service.circuit_breaker)
    lmroute_upstream_tokens_total{upstream, kind}
                                                tokens the upstreams reported using (prompt, completion)
    lmroute_upstream_calls_total{upstream, code}, lmroute_upstream_seconds{upstream}
                                                exchanges with each upstream by what they came to (its
                                                HTTP status, or unreachable, timeout, no_slot, cancelled:
                                                lmroute.service.upstream_client), and their time from the
                                                request sent to the answer's end (buckets 50 ms .. 600 s)
    lmroute_upstream_key_reloads_total{upstream, result}
                                                changes of an upstream's key file taken (reloaded) or
                                                refused (failed; the key in use kept)
    lmroute_share_target / _realised / _threshold{tenant, router}
    lmroute_spend_target_usd_per_1k / lmroute_spend_realised_usd_per_1k / lmroute_spend_cost_weight
                                                {tenant, router}: the tenants' controllers (docs/CONTROL.md,
                                                docs/MODELS.md)

Every server has its own registry, so two servers in one process (tests) do not mix their counts.

The endpoint renders one scrape at a time; a scrape that comes while another connection to the endpoint
is open is answered the last rendering if it is under SCRAPE_CACHE_S old (a render holds the interpreter
lock for its whole length: a storm of scrapers took that from serving, again and again),
while a lone scrape always gets a fresh one (so a scrape after a call's answer holds the call). A request
must be read whole within SCRAPE_READ_S, however slowly its bytes come.
"""

from __future__ import annotations

import dataclasses
import io
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from lmroute.service.stats import Histogram as StatsHistogram
from lmroute.service.tenant_counts import EVENTS

__all__ = ["LONG_SECONDS", "REFUSAL_CODES", "SCRAPE_CACHE_S", "SCRAPE_READ_S", "ServiceMetrics"]

REFUSAL_CODES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNAUTHENTICATED"})
_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
LONG_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Buckets of what waits on an LLM: the OpenAI front's calls, the upstream exchanges (--upstream-max-s
is 600 s by default)."""
SCRAPE_CACHE_S = 1.0
"""How old a rendering a scrape that overlaps another connection may be answered (module docstring)."""
SCRAPE_READ_S = 10.0
"""A scrape's request line and headers must be read within this: a per-receive timeout alone let a
connection that sends a header line every few seconds hold one of the 16 slots for ever."""
_CACHED_RENDERINGS = 8  # renderings kept (one per Accept / Accept-Encoding a scraper sends): then all dropped
_OVERLAPS = "lmroute.overlaps"  # WSGI environ key: another connection to the endpoint is open


class _DeadlineReader(io.RawIOBase):
    """A connection's bytes, each receive waiting at most what is left before `deadline` (monotonic
    seconds; None: the socket's own timeout alone)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self.deadline: float | None = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"request not read in {SCRAPE_READ_S:g} s")
            self._sock.settimeout(min(left, _ScrapeHandler.timeout))
        return self._sock.recv_into(buffer)


class _ScrapeHandler(WSGIRequestHandler):
    """One scrape; a connection that sends nothing for `timeout` seconds, or has not sent its whole
    request SCRAPE_READ_S after it was taken, is closed (it held a thread and one of the slots)."""

    timeout = 10.0
    server: _ScrapeServer

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain file setup made: replaced by one that keeps to the deadline
        self._reader = _DeadlineReader(self.connection, time.monotonic() + SCRAPE_READ_S)
        self.rfile = io.BufferedReader(self._reader)

    def parse_request(self) -> bool:
        ok = super().parse_request()  # reads the headers
        self._reader.deadline = None  # read: the answer's writes get the plain per-send timeout again
        self.connection.settimeout(self.timeout)
        return ok

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, ConnectionError):
            pass  # a slow or gone scraper: closed without a traceback on stderr (the JSON log)
        finally:
            self.server.answered(self.request)

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ[_OVERLAPS] = self.server.overlapping(self.request)
        return environ

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the server's own log is JSON lines; scrapes are not logged


class _ScrapeServer(socketserver.ThreadingMixIn, WSGIServer):
    """The metrics endpoint: a thread per connection, at most MAX_SCRAPES at once (a connection beyond them
    is closed at once: a flood of idle connections costs neither threads nor file descriptors)."""

    daemon_threads = True
    MAX_SCRAPES = 16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.MAX_SCRAPES)
        self._open: set[Any] = set()  # connections taken and not yet answered
        self._open_lock = threading.Lock()

    def overlapping(self, request: Any) -> bool:
        """Whether a connection other than `request` is open and not yet answered."""
        with self._open_lock:
            return len(self._open - {request}) > 0

    def answered(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.answered(request)
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.answered(request)
            self._slots.release()


class _ScrapeServer6(_ScrapeServer):
    address_family = socket.AF_INET6


class _Renderings:
    """The endpoint's WSGI app: prometheus_client's, one render at a time, a scrape that overlaps another
    connection answered the last rendering for what it asks (its Accept and Accept-Encoding) while it is
    under SCRAPE_CACHE_S old; `renders` counts the renders."""

    def __init__(self, app: Callable[..., Iterable[bytes]], fresh_s: float = SCRAPE_CACHE_S) -> None:
        self._app = app
        self._fresh_s = fresh_s
        self._lock = threading.Lock()  # one render at a time: concurrent scrapers wait and take its result
        self._kept: dict[tuple[str, str], tuple[float, str, list[tuple[str, str]], bytes]] = {}
        self.renders = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        plain = environ.get("REQUEST_METHOD") == "GET" and not environ.get("QUERY_STRING")
        plain = plain and environ.get("PATH_INFO") != "/favicon.ico"
        key = (environ.get("HTTP_ACCEPT", ""), environ.get("HTTP_ACCEPT_ENCODING", ""))
        with self._lock:
            now = time.monotonic()
            kept = self._kept.get(key) if plain and environ.get(_OVERLAPS) else None
            if kept is None or now - kept[0] >= self._fresh_s:
                said: list[Any] = []
                body = b"".join(self._app(environ, lambda status, headers, *_: said.extend((status, headers))))
                self.renders += 1
                kept = (now, said[0], list(said[1]), body)  # as fresh as the scrape's arrival: rendered after it
                if plain:
                    if len(self._kept) >= _CACHED_RENDERINGS and key not in self._kept:
                        self._kept.clear()  # odd Accept headers cost renders, never memory
                    self._kept[key] = kept
        start_response(kept[1], kept[2])
        return [kept[3]]


class _CallSeconds(Collector):
    """lmroute_call_seconds{method}: each method's handler time in buckets of its own (a family may give
    its series different `le`s; prometheus_client's Histogram gives all of them one set): a gRPC call's
    _SECONDS, an OpenAI front request's LONG_SECONDS (its exchange with an LLM may take minutes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the thread transport's pool threads observe too
        self._by_method: dict[str, StatsHistogram] = {}

    def observe(self, method: str, seconds: float, long: bool) -> None:
        with self._lock:
            h = self._by_method.get(method)
            if h is None:
                h = self._by_method[method] = StatsHistogram(LONG_SECONDS if long else _SECONDS)
            h.observe(seconds)

    def describe(self) -> Iterator[Any]:
        yield HistogramMetricFamily("lmroute_call_seconds", "")

    def collect(self) -> Iterator[Any]:
        family = HistogramMetricFamily("lmroute_call_seconds", "RPC handler time", labels=["method"])
        with self._lock:
            held = [(method, _buckets(h, 1.0), h.total) for method, h in self._by_method.items()]
        for method, buckets, total in held:
            family.add_metric([method], buckets, sum_value=total)
        yield family


def _buckets(h: StatsHistogram, scale: float) -> list[tuple[str, float]]:
    """A histogram's cumulative Prometheus buckets, its bounds multiplied by `scale`."""
    buckets: list[tuple[str, float]] = []
    seen = 0
    for bound, count in zip(h.bounds, h.counts, strict=False):
        seen += count
        buckets.append((repr(float(f"{bound * scale:.9g}")), seen))  # 1e-05, not 9.999999999999999e-06
    buckets.append(("+Inf", h.count))
    return buckets


def _histogram(name: str, doc: str, h: StatsHistogram, scale: float) -> HistogramMetricFamily:
    """One of the scheduler's histograms as a Prometheus histogram, its values multiplied by `scale`."""
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], _buckets(h, scale), sum_value=h.total * scale)
    return family


_SCRAPE_TIME_FAMILIES: tuple[tuple[Callable[[str, str], Metric], str], ...] = (
    (HistogramMetricFamily, "lmroute_queue_wait_seconds"),
    (HistogramMetricFamily, "lmroute_batch_size"),
    (HistogramMetricFamily, "lmroute_encoder_seconds"),
    (HistogramMetricFamily, "lmroute_score_seconds"),
    (CounterMetricFamily, "lmroute_scheduler_events"),
    (CounterMetricFamily, "lmroute_store_events"),
    (GaugeMetricFamily, "lmroute_store_pending"),
    (GaugeMetricFamily, "lmroute_store_write_seconds"),
    (CounterMetricFamily, "lmroute_tenant_feedback"),
    (GaugeMetricFamily, "lmroute_bundle_info"),
    (CounterMetricFamily, "lmroute_bundle_swaps"),
    (GaugeMetricFamily, "lmroute_bundle_watch_problem"),
    (CounterMetricFamily, "lmroute_auth_reloads"),
    (CounterMetricFamily, "lmroute_tls_reloads"),
    (GaugeMetricFamily, "lmroute_tls_certificate_expiry_seconds"),
    (GaugeMetricFamily, "lmroute_streams_open"),
    (CounterMetricFamily, "lmroute_streams_refused"),
    (GaugeMetricFamily, "lmroute_upstream_slots"),
    (GaugeMetricFamily, "lmroute_upstream_requests"),
    (CounterMetricFamily, "lmroute_upstream_fallbacks"),
    (GaugeMetricFamily, "lmroute_upstream_skipped"),
    (CounterMetricFamily, "lmroute_upstream_key_reloads"),
    (CounterMetricFamily, "lmroute_upstream_tokens"),
    (CounterMetricFamily, "lmroute_upstream_calls"),
    (HistogramMetricFamily, "lmroute_upstream_seconds"),
    (CounterMetricFamily, "lmroute_tenant_calls"),
    (GaugeMetricFamily, "lmroute_tenant_queued_prompts"),
    (HistogramMetricFamily, "lmroute_tenant_queue_wait_seconds"),
    (GaugeMetricFamily, "lmroute_share_target"),
    (GaugeMetricFamily, "lmroute_share_realised"),
    (GaugeMetricFamily, "lmroute_share_threshold"),
    (GaugeMetricFamily, "lmroute_spend_target_usd_per_1k"),
    (GaugeMetricFamily, "lmroute_spend_realised_usd_per_1k"),
    (GaugeMetricFamily, "lmroute_spend_cost_weight"),
)
"""Every family `_ServingCollector.collect` may yield (its `describe`: the registry learns a collector's
names from it, and a scrape filtered by `name[]` asks for them; a test checks the list against collect)."""


class _ServingCollector(Collector):
    """Reads the scheduler, the bundle and the targets at scrape time."""

    def __init__(self, serving: Callable[[], Any]) -> None:
        self._serving = serving  # -> the RouterServer (its scheduler, servicer and targets)

    def describe(self) -> Iterator[Any]:
        for family, name in _SCRAPE_TIME_FAMILIES:
            yield family(name, "")

    def collect(self) -> Iterator[Any]:
        server = self._serving()
        scheduler = getattr(server, "scheduler", None)
        if scheduler is not None:
            t = scheduler.timings
            yield _histogram("lmroute_queue_wait_seconds", "Prompt wait in the queue", t.queue_wait_us, 1e-6)
            yield _histogram("lmroute_batch_size", "Prompts per scored batch", t.batch_size, 1.0)
            yield _histogram("lmroute_encoder_seconds", "Encoder time per batch", t.encoder_ms, 1e-3)
            yield _histogram("lmroute_score_seconds", "Scorer time per batch", t.score_ms, 1e-3)
            events = CounterMetricFamily("lmroute_scheduler_events", "Scheduler counters", labels=["event"])
            for f in dataclasses.fields(scheduler.stats):
                value = getattr(scheduler.stats, f.name)
                if isinstance(value, int) and f.name != "largest_batch":
                    events.add_metric([f.name], value)
            yield events
            yield from self._tenants(scheduler)
        writer = getattr(server, "store_writer", None)
        if writer is not None:
            store = CounterMetricFamily(
                "lmroute_store_events",
                "Outcome store writes: decisions and outcomes written or dropped, commits",
                labels=["event"],
            )
            for f in dataclasses.fields(writer.stats):
                store.add_metric([f.name], getattr(writer.stats, f.name))
            yield store
            pending = GaugeMetricFamily("lmroute_store_pending", "Waiting for a commit", labels=["kind"])
            decisions, outcomes = writer.pending
            pending.add_metric(["decisions"], decisions)
            pending.add_metric(["outcomes"], outcomes)
            yield pending
            writing = GaugeMetricFamily(
                "lmroute_store_write_seconds",
                "Seconds the outcome store's write in progress has taken so far (0 when none is): a hung store",
            )
            writing.add_metric([], writer.writing_s)
            yield writing
        counts = getattr(getattr(server, "servicer", None), "feedback_counts", None)
        if counts is not None:
            feedback = CounterMetricFamily(
                "lmroute_tenant_feedback",
                "Reported outcomes per reporting tenant, by what became of them",
                labels=["tenant", "result"],
            )
            for label, row in counts.snapshot():
                for result, value in zip(counts.events, row, strict=True):
                    feedback.add_metric([label, result], value)
            yield feedback
        catalog = getattr(getattr(server, "servicer", None), "catalog", None)
        if catalog is not None:
            info = GaugeMetricFamily("lmroute_bundle_info", "The serving bundle", labels=["version"])
            info.add_metric([catalog.version], 1.0)
            yield info
        swapper = getattr(server, "swapper", None)
        if swapper is not None:
            swaps = CounterMetricFamily(
                "lmroute_bundle_swaps", "Hot swaps of the bundle done, and candidates refused", labels=["result"]
            )
            swaps.add_metric(["swapped"], swapper.counters.swaps)
            swaps.add_metric(["refused"], swapper.counters.refused)
            yield swaps
            yield GaugeMetricFamily(
                "lmroute_bundle_watch_problem",
                "1 while the watched bundle path cannot be read (--bundle-watch-s; GetBundle says why)",
                value=1.0 if swapper.watch_problem else 0.0,
            )
        targets = getattr(getattr(server, "servicer", None), "targets", None)
        if targets is not None:
            yield from self._targets(targets)
        front = getattr(server, "front", None)
        if front is not None:
            yield from self._upstreams(front.client)
        yield from self._tls(getattr(server, "tls", None), getattr(server, "front_tls", None))
        auth = getattr(server, "auth", None)
        if auth is not None:
            reloads = CounterMetricFamily(
                "lmroute_auth_reloads", "Changes of the tokens file taken, or refused (tokens kept)", labels=["result"]
            )
            reloads.add_metric(["reloaded"], auth.reloads)
            reloads.add_metric(["failed"], auth.reload_failures)
            yield reloads
        streams = getattr(server, "streams", None)
        if streams is not None:
            yield GaugeMetricFamily("lmroute_streams_open", "Streaming calls open now", value=streams.open)
            yield CounterMetricFamily(
                "lmroute_streams_refused", "Streaming calls refused at max_streams", value=streams.refused
            )

    @staticmethod
    def _upstreams(client: Any) -> Iterator[Any]:
        slots = GaugeMetricFamily("lmroute_upstream_slots", "Requests an upstream takes at once", labels=["upstream"])
        requests = GaugeMetricFamily(
            "lmroute_upstream_requests",
            "Requests in flight to an upstream, and waiting for one of its slots",
            labels=["upstream", "state"],
        )
        fallbacks = CounterMetricFamily(
            "lmroute_upstream_fallbacks",
            "Requests passed on to another upstream (the other side's, the runner-up's), this one failing, skipped, "
            "or left out of a choice among models",
            labels=["upstream", "why"],
        )
        skipped = GaugeMetricFamily(
            "lmroute_upstream_skipped", "1 while requests skip this failing upstream", labels=["upstream"]
        )
        for tier, held in client.slots.items():
            slots.add_metric([tier], held.capacity)
            requests.add_metric([tier, "in_flight"], held.in_use)
            requests.add_metric([tier, "waiting"], held.waiting())
        for tier, breaker in client.breakers.items():
            for why in ("failed", "skipped", "left_out"):
                fallbacks.add_metric([tier, why], client.fallbacks[(tier, why)])
            skipped.add_metric([tier], 1.0 if breaker.is_open else 0.0)
        tokens = CounterMetricFamily(
            "lmroute_upstream_tokens",
            "Tokens an upstream reported using (its answers' usage), by kind: prompt, completion",
            labels=["upstream", "kind"],
        )
        for (tier, kind), n in sorted(client.tokens.items()):
            tokens.add_metric([tier, kind], n)
        key_reloads = CounterMetricFamily(
            "lmroute_upstream_key_reloads",
            "Changes of an upstream's key file taken, or refused (the key in use kept)",
            labels=["upstream", "result"],
        )
        for tier, held in client.key_files.items():
            key_reloads.add_metric([tier, "reloaded"], held.reloads)
            key_reloads.add_metric([tier, "failed"], held.reload_failures)
        calls = CounterMetricFamily(
            "lmroute_upstream_calls",
            "Exchanges with an upstream by what they came to: its answer's HTTP status (as it is, or its class), "
            "or unreachable, timeout, no_slot, cancelled",
            labels=["upstream", "code"],
        )
        for (tier, code), n in sorted(client.outcomes.items()):
            calls.add_metric([tier, code], n)
        seconds = HistogramMetricFamily(
            "lmroute_upstream_seconds",
            "Time of an exchange with an upstream, from the request sent to its answer's end",
            labels=["upstream"],
        )
        with client.seconds_lock:
            timed = [(tier, _buckets(h, 1.0), h.total) for tier, h in client.seconds.items()]
        for tier, buckets, total in timed:
            seconds.add_metric([tier], buckets, sum_value=total)
        yield slots
        yield requests
        yield fallbacks
        yield skipped
        yield tokens
        yield key_reloads
        yield calls
        yield seconds

    @staticmethod
    def _tls(grpc_files: Any, front: Any) -> Iterator[Any]:
        """Certificate rotations taken and refused per listener, and the notAfter of the certificate each
        serves (an alert before it expires: a rotation refused keeps the old one until then)."""
        listeners = [(name, held) for name, held in (("grpc", grpc_files), ("http", front)) if held is not None]
        if not listeners:
            return
        reloads = CounterMetricFamily(
            "lmroute_tls_reloads",
            "Changes of the certificate files taken (reloaded), or refused (failed: the certificate in use kept)",
            labels=["listener", "result"],
        )
        expiry = GaugeMetricFamily(
            "lmroute_tls_certificate_expiry_seconds",
            "notAfter of the certificate a listener serves, Unix seconds",
            labels=["listener"],
        )
        for name, held in listeners:
            reloads.add_metric([name, "reloaded"], held.reloads)
            reloads.add_metric([name, "failed"], held.reload_failures)
            if held.serving_until is not None:
                expiry.add_metric([name], held.serving_until.timestamp())
        yield reloads
        yield expiry

    @staticmethod
    def _tenants(scheduler: Any) -> Iterator[Any]:
        counts = scheduler.tenant_counts
        calls = CounterMetricFamily(
            "lmroute_tenant_calls", "Calls admitted or refused by the scheduler, per tenant", labels=["tenant", "event"]
        )
        for label, row in counts.snapshot():
            for event, value in zip(EVENTS, row, strict=True):
                calls.add_metric([label, event], value)
        yield calls
        queued: dict[str, int] = {}
        for tenant, n in scheduler.queued_by_tenant():
            label = counts.label(tenant)
            queued[label] = queued.get(label, 0) + n
        gauge = GaugeMetricFamily("lmroute_tenant_queued_prompts", "Prompts queued now, per tenant", labels=["tenant"])
        for label, n in queued.items():
            gauge.add_metric([label], n)
        yield gauge
        waits = HistogramMetricFamily(
            "lmroute_tenant_queue_wait_seconds", "Prompt wait in the queue, per tenant", labels=["tenant"]
        )
        for label, h in counts.wait_snapshot():
            waits.add_metric([label], _buckets(h, 1.0), sum_value=h.total)
        yield waits

    @staticmethod
    def _targets(targets: Any) -> Iterator[Any]:
        labels = ["tenant", "router"]
        share = {
            "target": GaugeMetricFamily("lmroute_share_target", "Tenant's strong-share target", labels=labels),
            "realised": GaugeMetricFamily(
                "lmroute_share_realised", "Strong share of the latest report_window decisions", labels=labels
            ),
            "threshold": GaugeMetricFamily("lmroute_share_threshold", "Threshold held now", labels=labels),
        }
        for held in targets.states():
            for key, family in share.items():
                family.add_metric([held.tenant, held.router], float(getattr(held.state, key)))
        spend = {
            "target_per_1k": GaugeMetricFamily(
                "lmroute_spend_target_usd_per_1k", "Tenant's spend target, USD per 1,000 requests", labels=labels
            ),
            "realised_per_1k": GaugeMetricFamily(
                "lmroute_spend_realised_usd_per_1k", "Expected spend of the latest decisions", labels=labels
            ),
            "cost_weight": GaugeMetricFamily("lmroute_spend_cost_weight", "Cost weight held now", labels=labels),
        }
        for tenant, router, state in targets.spend_states():
            for key, family in spend.items():
                family.add_metric([tenant, router], float(getattr(state, key)))
        yield from share.values()
        yield from spend.values()


class ServiceMetrics:
    """The metrics of one server and the HTTP endpoint that serves them."""

    def __init__(self, serving: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter("lmroute_calls", "RPCs answered", ["method", "code"], registry=self.registry)
        self.seconds = _CallSeconds()
        self.registry.register(self.seconds)
        self.in_flight = Gauge("lmroute_in_flight_calls", "Calls being handled", registry=self.registry)
        self.refusals = Counter(
            "lmroute_refusals", "Calls refused or shed", ["method", "reason"], registry=self.registry
        )
        self.registry.register(_ServingCollector(serving))
        self.renderings = _Renderings(make_wsgi_app(self.registry))
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def observe(self, method: str, code: str, reason: str, seconds: float, *, front: bool = False) -> None:
        """One answered call (the interceptor calls this once per call; the OpenAI front once per request,
        with `front`: its time goes in buckets up to minutes)."""
        self.calls.labels(method, code).inc()
        self.seconds.observe(method, seconds, long=front)
        if code in REFUSAL_CODES and not reason.startswith("UPSTREAM_"):
            self.refusals.labels(method, reason or code).inc()

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (`/metrics`) on host:port (0: a free port); the bound port."""
        kind = _ScrapeServer6 if ":" in host else _ScrapeServer
        server = make_server(host, port, self.renderings, kind, handler_class=_ScrapeHandler)
        thread = threading.Thread(target=server.serve_forever, name="lmroute-metrics", daemon=True)
        thread.start()
        self._http = (server, thread)
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = None
