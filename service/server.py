"""RouterServer: the gRPC server's lifecycle (bind, health, reflection, load + warm, drain, stop).

Order of start: bind and start the gRPC server with health NOT_SERVING (so probes get an answer while
the bundle loads), import the router kind plug-ins (`plugins`) and load the scorer in a thread, warm
it, start the scheduler, then flip health to SERVING and start the liveness watchdog (the overall
health, service "", turns NOT_SERVING while scoring makes no progress for `liveness_stall_s`;
lmroute.service.liveness). Stop: the watchdog stops, health NOT_SERVING, new RPCs refused
(DRAINING), in-flight RPCs get `grace_s`, then the scheduler finishes its queue and its threads stop;
`stopped` logs its counters and timings, and with `stats_path` the timings are also written there as
JSON every second and at stop (lmroute.service.stats).

Hot swap: once serving, a `BundleSwapper` (lmroute.service.bundle_swap) can replace the bundle with
another loaded by the same scorer factory, through AdminService (lmroute.service.admin, registered when
`admin_service` allows it) and, with `bundle_watch_s`, by watching the serving path; `scorer` is always
the one serving new calls. Stop ends the watching before the drain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import math
import resource
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lmroute.outcomes.store import open_store
from lmroute.outcomes.writer import StoreWriter
from lmroute.service.admin import ADMIN_SERVICE_NAME, AdminServicer
from lmroute.service.auth import Authenticator
from lmroute.service.bundle_swap import BundleSwapper
from lmroute.service.config import ServiceConfig
from lmroute.service.cpus import available_cpus, pin_current_thread
from lmroute.service.errors import ConfigError, NoBundleEncoder
from lmroute.service.exploration import Exploration
from lmroute.service.health_check import HealthServicer
from lmroute.service.interceptors import EarlyRefusals, RequestContextInterceptor
from lmroute.service.liveness import LivenessWatchdog
from lmroute.service.metrics import ServiceMetrics
from lmroute.service.model_prices import load_models_file
from lmroute.service.openai_front import OpenAIFront
from lmroute.service.scheduler import Scheduler
from lmroute.service.scorer_api import Catalog, Scorer
from lmroute.service.servicer import RouterServicer
from lmroute.service.stats import StatsFile
from lmroute.service.stream_cap import StreamSlots
from lmroute.service.target_sync import TargetSync
from lmroute.service.targets import DEFAULT_TENANT, TenantTargets, parse_share_targets
from lmroute.service.tls import CertificateFiles, FrontTLS, server_credentials
from lmroute.service.tracing import Tracing
from lmroute.service.transports import AioTransport, ThreadTransport, Transport
from lmroute.service.upstreams import load_upstreams
from lmroute.v1 import admin_pb2_grpc, router_pb2, router_pb2_grpc

if TYPE_CHECKING:
    from lmroute.adapt.to_judge import JudgePicks

DRAIN_NOTICE_S = 0.2
"""Seconds between refusing new calls (UNAVAILABLE, DRAINING) and stopping the gRPC server, at most the
grace period: a call that reaches a stopping gRPC core is cancelled, which clients do not retry."""

__all__ = [
    "RouterServer",
    "SERVICE_NAME",
    "ScorerFactory",
    "grpc_options",
    "import_plugins",
    "load_bundle_scorer",
    "reflection_pool",
    "transport_for",
]

SERVICE_NAME: str = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
FEEDBACK_METHOD = f"/{SERVICE_NAME}/Feedback"
_log = structlog.get_logger("lmroute.server")


class _MethodAwarePool:
    """The default descriptor pool for reflection, also resolving a method name ("pkg.Service.Method")
    to its file: protobuf's upb pool resolves services but not methods, and ghz asks for the method."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            parent, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(parent)
            except KeyError:
                service = None
            if service is None or method not in service.methods_by_name:
                raise
            return service.file


def reflection_pool() -> Any:
    """The descriptor pool server reflection answers from (the default one, methods resolvable)."""
    return _MethodAwarePool(descriptor_pool.Default())


def grpc_options(cfg: ServiceConfig, max_connections: int | None = None) -> list[tuple[str, int]]:
    """The one list of channel options: message-size limits, the connection bounds and keepalive;
    `max_connections` overrides `cfg.grpc_max_connections` (what `ensure_open_files` leaves room for)."""
    return [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.max_allowed_incoming_connections", max_connections or cfg.grpc_max_connections),
        ("grpc.max_connection_idle_ms", round(cfg.grpc_idle_timeout_s * 1000)),
        ("grpc.max_connection_age_ms", round(cfg.grpc_max_connection_age_s * 1000)),
        # calls in progress on an aged connection finish (a ReloadBundle loading a large bundle: minutes)
        ("grpc.max_connection_age_grace_ms", 600_000),
        ("grpc.server_handshake_timeout_ms", round(cfg.grpc_handshake_timeout_s * 1000)),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]


def transport_for(bundle: Path, loopback: bool = True) -> str:
    """`--transport auto`: threads for a bundle whose manifest names a static encoder (its calls cost
    microseconds: the transport decides the rate) served on a loopback bind, else aio. Off loopback, aio:
    on threads a caller that opens calls and never sends their request holds a transport thread each
    until its deadline (gRPC's synchronous server waits for the message on the thread), so
    `--grpc-threads` such calls would keep every other caller out, health probes included; grpc.aio
    waits without a thread. A manifest that cannot be read gives aio; loading the bundle then says what
    is wrong with it."""
    from lmroute.bundle.loader import read_manifest

    try:
        static = read_manifest(bundle).encoder.kind == "static"
    except Exception:
        return "aio"
    return "threads" if static and loopback else "aio"


ScorerFactory = Callable[[ServiceConfig], Scorer[Any]]
"""Makes the scorer a server serves, from its config (run on a worker thread)."""


def import_plugins(modules: Sequence[str]) -> None:
    """Import the router kind plug-in modules (each registers its kinds; lmroute.bundle.kinds).
    A module that cannot be imported is a ConfigError: ``plugins: <the ImportError's text>``."""
    if not modules:
        return
    from lmroute.bundle.kinds import load_plugins

    try:
        load_plugins(modules)
    except ImportError as exc:
        raise ConfigError(f"plugins: {exc}") from exc


def load_bundle_scorer(cfg: ServiceConfig) -> Scorer[Any]:
    """Default scorer factory: load and validate cfg.bundle_path on cfg.device (signed by
    cfg.bundle_public_key when one is set)."""
    from lmroute.service.bundle_scorer import BundleScorer

    return BundleScorer.load(
        cfg.bundle_path,
        device=cfg.device,
        intra_op_threads=cfg.intra_op_threads,
        encoder_chunk_size=cfg.encoder_chunk_size,
        public_key=Path(cfg.bundle_public_key) if cfg.bundle_public_key else None,
        remote=cfg.remote_encoder,
    )


def check_target_tenants(
    config: ServiceConfig, shares: Iterable[str], spends: Iterable[str], bound_tenants: Iterable[str]
) -> None:
    """ConfigError for a share or spend target (`shares`, `spends`: their tenants) of a tenant no call can
    name (with --tenants: not listed, not a bound token's, not default), as SetTargets refuses one: the
    start's check, and `lmroute-serve --check`'s."""
    if not config.tenants:
        return
    honoured = {*config.tenants, DEFAULT_TENANT, *bound_tenants}
    for flag, table in (("share_targets", shares), ("spend_targets", spends)):
        if unknown := sorted(set(table) - honoured):
            raise ConfigError(
                f"{flag}: {', '.join(unknown)} is not one of the tenants this server honours (--tenants, the "
                f"tenants of bound tokens, {DEFAULT_TENANT}): no call could use the target"
            )


class RouterServer:
    """One serving process: `await start()`, then `await stop()` (or `serve_until(event)`)."""

    def __init__(self, config: ServiceConfig, scorer_factory: ScorerFactory = load_bundle_scorer) -> None:
        self.config = config
        self._factory = scorer_factory
        self.tracing = Tracing(config.tracing) if config.tracing != "off" else None
        # a call with more prompts than the queue admits could never be admitted: refuse it as too large
        self.servicer = RouterServicer(
            max_prompts_per_request=min(config.max_prompts_per_request, config.batch.max_queue),
            max_turns=config.max_turns,
            max_request_chars=config.max_request_chars,
            max_router_names=config.max_router_names,
            max_feedback_items=config.max_feedback_items,
            feedback_rate=config.feedback_rate,
            exploration=Exploration(config.explore_rate),
            targets=TenantTargets(  # those of the settings; AdminService.SetTargets changes them live
                parse_share_targets(config.share_targets),
                config.control,
                spends=parse_share_targets(config.spend_targets, high=math.inf),
                spend_settings=config.spend_control,
            ),
            binding_targets=config.binding_targets,
            tenant_header=config.tenant_header,
            tenants=config.tenants,
            max_message_bytes=config.max_message_bytes,
            prices=load_models_file(Path(config.models_file)) if config.models_file else None,
            expected_output_tokens=config.expected_output_tokens,
            tracing=self.tracing,
            metrics_tenants=config.batch.metrics_tenants,
        )
        self.metrics = ServiceMetrics(lambda: self) if config.metrics_port >= 0 else None
        self.metrics_port: int | None = None
        self.front: OpenAIFront | None = None  # the OpenAI-compatible HTTP front, when http_port >= 0
        self.http_port: int | None = None
        self.tls: CertificateFiles | None = None  # the certificate files, when the port speaks TLS
        self.front_tls: FrontTLS | None = None  # the OpenAI front's TLS over them
        self.auth = Authenticator(config.auth_tokens_file, config.auth_tokens_env) if config.auth_enabled else None
        self.health = HealthServicer()
        self.liveness: LivenessWatchdog | None = None
        self.streams: StreamSlots | None = None  # the streaming calls open (set at bind)
        self.feedback_refusals: EarlyRefusals | None = None  # Feedback refused on the pool threads (threads)
        self.scheduler: Scheduler[Any] | None = None
        self.admin = AdminServicer(
            targets=self.servicer.targets,
            max_message_bytes=config.max_message_bytes,
            tenants=config.tenants,
            bound_tenants=self.auth.bound_tenants if self.auth is not None else frozenset,
        )
        self.swapper: BundleSwapper | None = None
        self.port: int | None = None
        self._server: Transport | None = None
        self.transport = ""  # the transport bind chose: threads or aio
        self._stats_file: StatsFile | None = None
        self.store_writer: StoreWriter | None = None
        self.target_sync: TargetSync | None = None  # live target changes kept in the store (store_targets)

    @property
    def scorer(self) -> Scorer[Any] | None:
        """The scorer serving new calls (a hot swap replaces it); None before the first load."""
        return None if self.scheduler is None else self.scheduler.scorer

    async def start(self) -> int:
        """Bind, serve NOT_SERVING, load + warm the scorer, then SERVING. Returns the bound port.

        Raises whatever loading raises (BundleError, ConfigError: a plug-in that cannot be imported, a
        device that is not there) after stopping the server.
        """
        port = await self.bind()
        await self.load()
        return port

    def _check_target_tenants(self) -> None:
        """`check_target_tenants` of this server's targets and its bound tokens' tenants."""
        targets = self.servicer.targets
        if targets is not None:
            bound = self.auth.bound_tenants() if self.auth else frozenset()
            check_target_tenants(self.config, targets.targets, targets.spends, bound)

    async def bind(self) -> int:
        """Build the gRPC server (health NOT_SERVING, reflection unless turned off, TLS when configured),
        bind and start it, and the metrics endpoint; the port."""
        self._check_target_tenants()
        cfg = self.config
        grpc_connections = ensure_open_files(cfg)
        if cfg.scoring_cpu_set:  # the event loop (this thread) and the threads started from now on (the
            # transport's, the loading ones) keep the other CPUs; the scheduler pins its scoring thread
            rest = (available_cpus() or frozenset()) - cfg.scoring_cpu_set
            pin_current_thread(rest)
            _log.info("cpus pinned", scoring=sorted(cfg.scoring_cpu_set), event_loop=sorted(rest))
        self.streams = StreamSlots(cfg.max_streams)
        interceptor = RequestContextInterceptor(
            auth=self.auth,
            metrics=self.metrics,
            tracing=self.tracing,
            streams=self.streams,
            sample_all=cfg.access_log == "sampled",
        )
        self.transport = cfg.transport if cfg.transport != "auto" else transport_for(cfg.bundle_path, cfg.loopback_bind)
        loop = asyncio.get_running_loop()
        # on threads a Feedback call past its tenant's rate is refused before it crosses to the loop (a
        # flood of them, crossing, slowed other tenants' Route calls); not with tracing (no span then)
        self.feedback_refusals = (
            interceptor.early_refusals(FEEDBACK_METHOD, self.servicer.early_feedback_refusal, loop)
            if self.transport == "threads" and cfg.feedback_rate > 0 and cfg.store and self.tracing is None
            else None
        )
        server: Transport = (
            ThreadTransport(
                grpc_options(cfg, grpc_connections),
                cfg.grpc_threads,
                interceptor.wrap,
                loop,
                self.streams,
                gates={FEEDBACK_METHOD: self.feedback_refusals} if self.feedback_refusals is not None else None,
            )
            if self.transport == "threads"
            else AioTransport(grpc_options(cfg, grpc_connections), interceptor)
        )
        server.add_servicer(router_pb2_grpc.add_RouterServiceServicer_to_server, self.servicer)
        server.add_servicer(health_pb2_grpc.add_HealthServicer_to_server, self.health)
        admin = (ADMIN_SERVICE_NAME,) if cfg.admin_enabled else ()
        if admin:
            server.add_servicer(admin_pb2_grpc.add_AdminServiceServicer_to_server, self.admin)
        if cfg.reflection_enabled:
            server.enable_reflection(
                (SERVICE_NAME, *admin, health.SERVICE_NAME, reflection.SERVICE_NAME), reflection_pool()
            )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        credentials = None
        self.tls = certificate_files(cfg)
        if self.tls is not None:
            credentials = server_credentials(self.tls)
        _check_port_free(cfg.host, cfg.port)
        if not cfg.loopback_bind and (self.auth is None or credentials is None):
            _log.warning(  # reachable from other hosts: every caller is let in, or tokens cross the wire in clear
                "open_bind",
                host=cfg.host,
                tokens=self.auth is not None,
                tls=credentials is not None,
                hint="off a loopback host, serve with --auth-tokens-file and --tls-cert-file (docs/SECURITY.md)",
            )
            if cfg.admin_enabled and self.auth is None:
                _log.warning(  # not refused: --admin-service on off loopback was asked for by name
                    "admin_open",
                    host=cfg.host,
                    detail="AdminService (ReloadBundle, SetTargets, DecisionsToJudge) answers any caller that "
                    "reaches this address: no tokens are configured",
                )
        try:  # gRPC raises RuntimeError when it cannot bind (a port in use), or answers port 0
            self.port = server.add_port(cfg.address(cfg.port), credentials)
        except RuntimeError as exc:
            raise ConfigError(f"port: cannot listen on {cfg.address(cfg.port)} ({exc})") from None
        if self.port == 0:
            why = "in use, or not an address of this host"
            raise ConfigError(f"port: cannot listen on {cfg.address(cfg.port)} ({why})")
        if cfg.http_port >= 0:
            self.front = OpenAIFront(
                self.servicer,
                load_upstreams(Path(cfg.upstreams_file)),
                auth=self.auth,
                metrics=self.metrics,
                max_body_bytes=cfg.front_max_body_bytes,
                grace_s=cfg.grace_s,
                tracing=self.tracing,
                fair_slots=cfg.batch.tenant_fair_share,
                sample_all=cfg.access_log == "sampled",
                upstream_max_s=cfg.upstream_max_s,
                write_timeout_s=cfg.front_write_timeout_s,
                max_stream_bytes=cfg.front_max_stream_bytes,
                max_connections=cfg.front_max_connections,
                body_timeout_s=cfg.front_body_timeout_s,
                idle_timeout_s=cfg.front_idle_timeout_s,
            )
            self.front_tls = FrontTLS(self.tls) if self.tls is not None else None
            try:
                self.http_port = await self.front.start(cfg.host, cfg.http_port, self.front_tls)
            except OSError as exc:
                await self.front.stop()
                why = f"cannot listen on {cfg.address(cfg.http_port)} ({exc.strerror or exc})"
                raise ConfigError(f"http_port: {why}") from None
        await server.start()
        self._server = server
        if self.metrics is not None:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics_bind_host, cfg.metrics_port)
            except OSError as exc:
                await server.stop(0)
                self._server = None
                if self.front is not None:
                    await self.front.stop()
                where = cfg.address(cfg.metrics_port, cfg.metrics_bind_host)
                raise ConfigError(f"metrics_port: cannot listen on {where} ({exc.strerror or exc})") from None
        _log.info(
            "listening",
            host=cfg.host,
            port=self.port,
            metrics_port=self.metrics_port,
            metrics_host=cfg.metrics_bind_host,
            http_port=self.http_port,
            transport=self.transport,
            auth=self.auth is not None,
            tls=self.tls is not None,
            mtls=bool(cfg.tls_client_ca_file),
            config=cfg.redacted(),
        )
        return self.port

    async def load(self) -> None:
        """Load + warm the scorer, start the scheduler, flip health to SERVING.

        On failure the gRPC server is stopped and the error re-raised (health never says SERVING).
        """
        try:
            await self._load()
        except BaseException:
            if self._server is not None:
                await self._server.stop(0)
            if self.front is not None:
                await self.front.stop()
            if self.metrics is not None:
                self.metrics.close()
            raise

    def _make_scorer(self) -> Scorer[Any]:
        import_plugins(self.config.plugins)
        return self._factory(self.config)

    def _scorer_at(self, path: Path) -> Scorer[Any]:
        """A hot swap's candidate: the bundle at `path` loaded with the serving settings."""
        return self._factory(dataclasses.replace(self.config, bundle_path=path))

    def _start_store(self) -> StoreWriter:
        """Open (and migrate) the outcome store and start its writer thread; StoreError names the store."""
        cfg = self.config
        writer = StoreWriter(
            lambda: open_store(cfg.store, store_prompts=cfg.store_prompts),
            retention_ms=int(cfg.store_retention_days * 86_400_000),
            max_decisions=cfg.store_max_decisions,
            max_pending_bytes=cfg.store_max_pending_mib << 20,
            prune_interval_s=cfg.store_prune_interval_s,
            decision_linger_s=cfg.store_linger_ms / 1000,
            own_decisions_only=cfg.feedback_own_decisions,
        )
        writer.start()
        return writer

    def _decisions_to_judge(
        self, budget: int, window: int, since_ms: int, callers: Sequence[str], tenant_view: bool, seed: int
    ) -> tuple[JudgePicks, str]:
        """AdminService.DecisionsToJudge's picks: the label budget over the store (a connection of its own)
        with the serving bundle's encoder and pair (`tenant_view`: a tenant's call, judged = its own
        decisions' outcomes only); NoBundleEncoder when the scorer serving is not a bundle's."""
        from lmroute.adapt.to_judge import decisions_to_judge
        from lmroute.service.bundle_scorer import BundleScorer

        scorer = self.scorer
        if not isinstance(scorer, BundleScorer):
            raise NoBundleEncoder("the serving scorer is not a bundle's: no encoder to pick decisions to judge with")
        cfg = self.config
        store = open_store(cfg.store, store_prompts=cfg.store_prompts)
        try:
            picks = decisions_to_judge(
                scorer.bundle,
                store,
                budget,
                window=window,
                since_ms=since_ms,
                callers=callers or None,
                judged_of_callers=tenant_view,
                seed=seed,
            )
        finally:
            store.close()
        return picks, scorer.version

    def _restore_targets(self, catalog: Catalog) -> int:
        """Replay the share and spend controllers' latest decisions from the store (a connection of its own,
        read only, closed after): a restarted server goes on from the windows, deficits and realised values
        it had."""
        targets = self.servicer.targets
        assert targets is not None
        store = open_store(self.config.store, store_prompts=self.config.store_prompts)
        try:
            n = targets.restore(catalog.routers, catalog.version, store.target_decisions, store.spend_decisions)
        finally:
            store.close()
        _log.info("targets restored", decisions=n, shares=sorted(targets.targets), spends=sorted(targets.spends))
        return n

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        scorer = await loop.run_in_executor(None, self._make_scorer)
        if self.config.warmup:
            await loop.run_in_executor(None, scorer.warmup)
        if self.config.store:
            self.store_writer = await loop.run_in_executor(None, self._start_store)
            self.servicer.attach_store(self.store_writer)
            self.admin.judge = self._decisions_to_judge
            targets = self.servicer.targets
            if targets is not None and self.config.store_targets:
                cfg = self.config
                self.target_sync = TargetSync(
                    lambda: open_store(cfg.store, store_prompts=cfg.store_prompts), targets, self.admin.honours
                )
                applied = await self.target_sync.catch_up()  # before the controllers replay their decisions
                _log.info("stored target changes applied", changed=applied, last_id=self.target_sync.last_id)
            if targets is not None and (targets.targets or targets.spends):
                # the replay walks the controllers on another thread: nothing changes them meanwhile (the
                # watch starts after it; SetTargets waits for the bundle)
                self.admin.restored = await loop.run_in_executor(None, self._restore_targets, scorer.catalog())
            if self.target_sync is not None:
                await self.target_sync.catch_up()  # what other replicas stored during the replay
                self.target_sync.watch(self.config.targets_watch_s)
                self.admin.target_sync = self.target_sync
        scoring_cpus = self.config.scoring_cpu_set
        if self.config.switch_interval_us:  # process-wide, as the interpreter lock is
            sys.setswitchinterval(self.config.switch_interval_us / 1e6)
            _log.info("switch interval set", us=self.config.switch_interval_us)
        scheduler = Scheduler(
            scorer,
            self.config.batch,
            scoring_cpus=scoring_cpus,
            tenant_labels=self.servicer.feedback_counts.labels,  # one label per tenant in every family
        )
        scheduler.start()
        if self.config.stats_path:
            self._stats_file = StatsFile(Path(self.config.stats_path), lambda: _stats_snapshot(scheduler))
            try:
                self._stats_file.start()
            except OSError as exc:
                self._stats_file = None
                raise ConfigError(f"stats_path: cannot write {self.config.stats_path!r} ({exc})") from None
        self.scheduler = scheduler
        self.servicer.attach(scheduler, scorer.catalog())
        self.swapper = BundleSwapper(
            scheduler,
            self.servicer,
            self._scorer_at,
            BundleSwapper.serving_now(scorer, self.config.bundle_path),
            warmup=self.config.warmup,
            low_priority=self.config.device == "cpu" and self.config.intra_op_threads == 1,
        )
        self.admin.attach(self.swapper)
        self.swapper.watch(self.config.bundle_watch_s)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.config.liveness_stall_s > 0:
            self.liveness = LivenessWatchdog(scheduler, self.health, self.config.liveness_stall_s)
            self.liveness.start()
        _log.info("serving", version=scorer.version, routers=list(scorer.router_names))

    async def announce_shutdown(self) -> None:
        """Health NOT_SERVING for good (open Watch streams see it and end) while calls are still answered:
        how a shutdown delay (--shutdown-delay-s) starts, so load balancers stop sending before the drain."""
        _log.info("shutting_down", health="NOT_SERVING", delay_s=self.config.shutdown_delay_s)
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new calls, give in-flight calls `grace_s`, stop the scheduler."""
        grace = self.config.grace_s if grace_s is None else grace_s
        _log.info("draining", grace_s=grace)
        if self.liveness is not None:
            await self.liveness.close()
        if self.swapper is not None:
            await self.swapper.close()
        self.admin.close()
        await self.health.enter_graceful_shutdown()
        self.servicer.draining = True
        stopping: list[Any] = []
        if self._server is not None:
            # a short notice first: calls arriving now are answered UNAVAILABLE (DRAINING) by the servicer,
            # which clients retry elsewhere, where the stopping gRPC core would cancel them (CANCELLED)
            await asyncio.sleep(min(grace, DRAIN_NOTICE_S))
            stopping.append(self._server.stop(grace))
        if self.front is not None:  # the same grace for its requests (an answer still streaming)
            stopping.append(self.front.stop())
        await asyncio.gather(*stopping)
        stats: dict[str, object] = {}
        if self.scheduler is not None:
            await self.scheduler.close()
            st = self.scheduler.stats
            stats = {
                "batches": st.batches,
                "items_scored": st.items_scored,
                "mean_batch": round(st.items_scored / st.batches, 2) if st.batches else 0.0,
                "rejected_queue_full": st.rejected_queue_full,
                "dropped_cancelled": st.dropped_cancelled,
                "dropped_queue_timeout": st.dropped_queue_timeout,
                "dropped_deadline": st.dropped_deadline,
                **self.scheduler.timings.summary(),
            }
        if self.target_sync is not None:
            await self.target_sync.close()
        if self.store_writer is not None:  # after the scheduler: the last answers' decisions are queued
            writer = self.store_writer
            await asyncio.get_running_loop().run_in_executor(None, writer.close)
            stats.update({"store_" + k: v for k, v in dataclasses.asdict(writer.stats).items()})
        if self._stats_file is not None:
            await self._stats_file.close()
        if self.metrics is not None:
            self.metrics.close()
        _log.info("stopped", **stats)

    async def wait(self) -> None:
        """Wait until the gRPC server terminates."""
        if self._server is not None:
            await self._server.wait()


MIN_GRPC_CONNECTIONS = 64
"""The fewest connections `ensure_open_files` lowers the gRPC port's cap to, to fit the open-file limit."""

FILES_BESIDE_CONNECTIONS = 256
"""Open files a server keeps besides its callers' connections (the gRPC port's and the OpenAI front's):
the listening sockets, the store, the bundle's files, the logs (`ensure_open_files`)."""


def ensure_open_files(cfg: ServiceConfig) -> int:
    """Raise this process's soft open-file limit to what the server may need at once when it is lower and
    the hard limit allows; the gRPC port's connection cap to serve with. The need: the gRPC port's
    connections (`grpc_max_connections`), the OpenAI front's when it is on (each of its connections and
    the upstream connection its request holds), the embedding endpoint's, and FILES_BESIDE_CONNECTIONS.
    Where the hard limit is lower, the gRPC cap is lowered to what it leaves (logged), and ConfigError
    names the flag to lower when that is under MIN_GRPC_CONNECTIONS or the front alone does not fit. Out of
    files, asyncio's listener retries every accept in a loop (a core spun and the log filled with its
    tracebacks) and the store cannot open its files, where a refusal at startup names what to change."""
    beside = cfg.embeddings_max_concurrency + FILES_BESIDE_CONNECTIONS
    front = 2 * cfg.front_max_connections if cfg.http_port >= 0 else 0
    cap = cfg.grpc_max_connections
    need = cap + front + beside
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return cap
    if hard != resource.RLIM_INFINITY and hard < need:
        room = hard - front - beside
        if room < MIN_GRPC_CONNECTIONS:
            what = ""
            if front:
                what = f"the OpenAI front's {cfg.front_max_connections} connections with their upstreams' and "
            raise ConfigError(
                f"{'front_max_connections' if front else 'grpc_max_connections'}: this process may open {hard} "
                f"files (ulimit -n, hard limit), and {what}{beside} files for the rest of the server leave fewer "
                f"than {MIN_GRPC_CONNECTIONS} for the gRPC port's connections: "
                f"{'lower --front-max-connections or ' if front else ''}raise the limit"
            )
        _log.warning("grpc_connections_lowered", was=cap, now=room, open_file_limit=hard)
        cap, need = room, hard
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        _log.info("open_file_limit_raised", was=soft, now=need)
    return cap


def _stats_snapshot(scheduler: Scheduler[Any]) -> dict[str, Any]:
    """The scheduler's timings and counters, for the stats file."""
    counters = {k: v for k, v in dataclasses.asdict(scheduler.stats).items() if isinstance(v, int)}
    extra = {"counters": counters, "in_flight": scheduler.in_flight, "rate_prompts_per_s": scheduler.rate.prompts_per_s}
    return scheduler.timings.snapshot(extra)


def certificate_files(cfg: ServiceConfig) -> CertificateFiles | None:
    """The server's TLS files, read and checked (ConfigError naming the file), or None without TLS."""
    if not cfg.tls_cert_file:
        return None
    try:
        return CertificateFiles(
            Path(cfg.tls_cert_file),
            Path(cfg.tls_key_file),
            Path(cfg.tls_client_ca_file) if cfg.tls_client_ca_file else None,
        )
    except (OSError, ValueError) as exc:  # the message names the file
        raise ConfigError(f"tls: {exc}") from None


def check_ports_free(cfg: ServiceConfig) -> None:
    """ConfigError naming the setting when another process listens on a port the server would bind (the
    gRPC port, and the OpenAI front's and the metrics' when they are on and not 0): `lmroute-serve
    --check`, before a bundle is built or loaded."""
    _check_port_free(cfg.host, cfg.port)
    if cfg.http_port > 0:
        _check_port_free(cfg.host, cfg.http_port, "http_port")
    if cfg.metrics_port > 0:
        _check_port_free(cfg.metrics_bind_host, cfg.metrics_port, "metrics_port", cfg.metrics_host and "metrics_host")


def _check_port_free(host: str, port: int, setting: str = "port", host_setting: str = "host") -> None:
    """ConfigError when another process listens on `port` at any address `host` names. gRPC binds every
    address a name resolves to and succeeds when one of them binds: on `localhost` a second server took
    ::1 beside a first one on 127.0.0.1, and callers split between the two."""
    names = [host, "127.0.0.1", "::1"] if host == "localhost" else [host]  # gRPC takes localhost as both
    addresses = []
    for name in names:
        try:
            addresses += socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            if name == host:
                raise ConfigError(
                    f"{host_setting}: {host!r} is no address of this host or name that resolves ({exc})"
                ) from None
    if port == 0:
        return
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is no owner
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    why = f"port {port} of {address[0]} is in use"
                    raise ConfigError(f"{setting}: cannot listen on {host}:{port} ({why})") from None
