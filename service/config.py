"""Service configuration: frozen, keyword-only dataclasses, built from CLI flags and LMROUTE_* env vars.

`ServiceConfig` holds the settings of the serving process; the admission, queue and batch limits are a
`BatchPolicy` nested in it as `ServiceConfig.batch` (the scheduler takes that part alone). Every leaf
setting is a CLI flag (`--max-batch-size`) and an environment variable (`LMROUTE_MAX_BATCH_SIZE`); the
nesting shows in neither. A flag beats the variable, the variable beats the default. `SETTINGS` lists
the leaves with their flag, variable, type and default. Values are validated at construction and a bad
value raises `ConfigError` with an exact message naming the setting, e.g.
``max_batch_size: must be >= 1 (got 0)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import math
import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmroute.bundle.remote_encoder import RemoteSettings
from lmroute.outcomes.store import NOT_YET_MS, redact_dsn
from lmroute.service.auth import load_tokens
from lmroute.service.cpus import available_cpus, parse_cpu_list
from lmroute.service.errors import ConfigError
from lmroute.service.model_prices import MAX_OUTPUT_TOKENS, load_models_file
from lmroute.service.share_control import ControlSettings
from lmroute.service.spend_control import SPEND_REPAY
from lmroute.service.targets import TENANT_RE, parse_share_targets
from lmroute.service.tracing import MODES as TRACING_MODES
from lmroute.service.upstreams import load_upstreams

__all__ = [
    "ENV_PREFIX",
    "SETTINGS",
    "BatchPolicy",
    "ServiceConfig",
    "Setting",
    "build_arg_parser",
    "config_from_args",
    "config_from_cli",
]

ENV_PREFIX = "LMROUTE_"
_DEVICES = ("cpu", "cuda")
_TRANSPORTS = ("auto", "threads", "aio")
_LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_RETENTION_DAYS = 1_000_000  # a cutoff in Unix ms that SQLite and PostgreSQL integers hold
MAX_STORE_DECISIONS = 10**12  # an OFFSET that SQLite and PostgreSQL integers hold, far past any disk
MIN_PRUNE_INTERVAL_S, MAX_PRUNE_INTERVAL_S = 1.0, 31_536_000.0  # a second to a year
MAX_SHUTDOWN_DELAY_S = 3600.0
# A batch takes its prompts from the queue: at most max_queue of them (1024 by default) are admitted at once,
# and a Score call brings at most max_prompts_per_request (256). 65,536 is 64 default queues, far past any
# batch that fills, and keeps a call's quantum (a quarter of it) a count of prompts, not of loop steps.
MAX_BATCH_SIZE = 65_536
MAX_GRACE_S = 3600.0  # an hour: gRPC's stop and the front's shutdown take it as a timeout, which must fit a C long
MAX_GRPC_TIMEOUT_S = 2_000_000.0  # about 23 days: gRPC takes its connection timeouts as int32 milliseconds
_ADMIN_MODES = ("loopback", "on", "off")
_METADATA_KEY_RE = re.compile(r"^[a-z0-9._-]{1,64}$")


def _doc(text: str, *, flag: str | None = None, env: str | None = None, metavar: str | None = None) -> dict[str, str]:
    """Field metadata: the help text, and the flag, variable or metavar where they are not derived from the name."""
    meta = {"help": text}
    for key, value in (("flag", flag), ("env", env), ("metavar", metavar)):
        if value is not None:
            meta[key] = value
    return meta


@dataclass(frozen=True, kw_only=True)
class BatchPolicy:
    """Admission, queue and batch limits: what the scheduler reads (units in the names)."""

    max_batch_size: int = field(
        default=-1,
        metadata=_doc(
            "most prompts in one batch, at most 65536 (CPU: larger batches add latency, not throughput); -1 = 64 "
            "for a bundle whose encoder is static (a 64-prompt Score call is one batch), else 16"
        ),
    )
    max_batch_ms: int = field(
        default=250,
        metadata=_doc(
            "a batch holds at most what the scorer scores in this long at its measured rate (at least one "
            "prompt, at most max_batch_size): a batch's time is part of every queued prompt's wait, so it "
            "stays well inside queue_timeout_ms when prompts or routers are costly; 0 = max_batch_size only"
        ),
    )
    max_wait_us: int = field(
        default=0,
        metadata=_doc(
            "longest a batch waits to fill, microseconds, below queue_timeout_ms; 0 = it leaves as soon as the "
            "scorer is free, so prompts only accumulate while a batch is being scored"
        ),
    )
    max_batch_tokens: int = field(
        default=16384, metadata=_doc("padded-token budget of a batch (longest prompt x prompts)")
    )
    max_queue: int = field(
        default=1024,
        metadata=_doc(
            "most prompts admitted and unanswered at once (the memory bound); beyond it RESOURCE_EXHAUSTED "
            "(QUEUE_FULL); a Score call holds at most this many. How many are let into the queue at once "
            "follows the measured rate (admit_wait_ms)"
        ),
    )
    queue_timeout_ms: int = field(
        default=1000,
        metadata=_doc(
            "longest a prompt may wait in the queue before UNAVAILABLE, counted from when it enters the "
            "queue (a call's prompts enter a quarter batch at a time, as its earlier ones leave)"
        ),
    )
    admit_wait_ms: int = field(
        default=800,
        metadata=_doc(
            "admission keeps the work ahead of a new prompt (at the measured cost) within this, never less "
            "than two batches; beyond it RESOURCE_EXHAUSTED (OVERLOADED) with a retry delay, so overload is "
            "refused at once instead of timing out in the queue. Keep it under queue_timeout_ms"
        ),
    )
    tenant_fair_share: bool = field(
        default=True,
        metadata=_doc(
            "the queue takes the tenants of queued calls in turn, each tenant's visit the same work (a quarter "
            "batch of average prompts, over its calls in turn), and admission charges a call the visits before "
            "its turn, so a tenant flooding the queue is refused while another still enters and waits one visit "
            "of each other tenant; likewise the OpenAI front's contended upstream slots go to the waiting "
            "tenant holding the fewest. A caller's tenant is its token's, else the one it names "
            "(tenant_header). false = one round over all calls, first come at the upstreams"
        ),
    )
    metrics_tenants: int = field(
        default=64,
        metadata=_doc(
            "tenants counted apart in the per-tenant metrics (lmroute_tenant_calls_total, "
            "lmroute_tenant_queued_prompts, lmroute_tenant_queue_wait_seconds), the first ones seen; further "
            "tenants' calls are counted as (other), so tenants named in metadata cannot grow them without bound"
        ),
    )
    max_prompt_chars: int = field(default=20000, metadata=_doc("longer prompts are refused with INVALID_ARGUMENT"))
    inline_us: int = field(
        default=-1,
        metadata=_doc(
            "a call's tokenising or a batch's scoring expected to take at most this many microseconds (at "
            "the scorer's measured cost) runs on the event loop instead of a helper thread, saving the two "
            "thread switches, and a call finding nothing queued and the scorer idle is scored at once, "
            "without the queue, when its prompts fit one such batch; for scorers whose cost is microseconds "
            "(a static encoder; an inline step's cost is measured in the loop thread's CPU time, so a scorer "
            "that waits on I/O must not run inline): while it runs no other call is served. 0 = always on the "
            "helper threads; "
            "-1 = 5000 for a bundle whose encoder is static, else 0"
        ),
    )

    def __post_init__(self) -> None:
        if self.max_batch_size != -1:  # -1: auto, by the scorer's encoder (lmroute.service.scheduler)
            _at_least("max_batch_size", self.max_batch_size, 1)
            if self.max_batch_size > MAX_BATCH_SIZE:
                raise ConfigError(f"max_batch_size: must be <= {MAX_BATCH_SIZE} (got {self.max_batch_size})")
        for name in (
            "max_batch_tokens",
            "max_queue",
            "queue_timeout_ms",
            "admit_wait_ms",
            "metrics_tenants",
            "max_prompt_chars",
        ):
            _at_least(name, getattr(self, name), 1)
        _at_least("max_wait_us", self.max_wait_us, 0)
        if self.max_wait_us >= self.queue_timeout_ms * 1000:
            raise ConfigError(
                f"max_wait_us: must be below queue_timeout_ms ({self.queue_timeout_ms} ms): a lone prompt waits "
                "max_wait_us for its batch to fill, and one queued that long fails UNAVAILABLE "
                f"(got {self.max_wait_us})"
            )
        _at_least("max_batch_ms", self.max_batch_ms, 0)
        _at_least("inline_us", self.inline_us, -1)


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """All settings of the serving process (units in the names); the batch limits are `batch`."""

    bundle_path: Path = field(
        metadata=_doc("router bundle directory (manifest.json inside)", flag="--bundle", env=ENV_PREFIX + "BUNDLE")
    )
    bundle_public_key: str = field(
        default="",
        metadata=_doc(
            "Ed25519 public key (PEM file) the bundle must be signed with: a bundle whose manifest.json.sig is "
            "missing or does not verify is refused at load (lmroute-export keygen / sign); empty = not required",
            metavar="PEM",
        ),
    )
    host: str = field(default="127.0.0.1", metadata=_doc("address to bind"))
    port: int = field(default=50051, metadata=_doc("TCP port; 0 picks a free one"))
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    max_prompts_per_request: int = field(default=256, metadata=_doc("most prompts in one Score call"))
    max_turns: int = field(
        default=256,
        metadata=_doc(
            "most turns in one conversation; a call holding a longer one is refused whole "
            "(INVALID_ARGUMENT) before any turn is read"
        ),
    )
    max_request_chars: int = field(
        default=1_000_000,
        metadata=_doc(
            "most characters in all the prompts of one call (texts and turn contents), checked before any "
            "prompt is extracted or queued; at least max_prompt_chars. max_prompts_per_request prompts of "
            "max_prompt_chars each (5.1M characters by default) would not fit one max_message_bytes message "
            "anyway; 1M lets a full Score call of 256 prompts average 3,900 characters, or 50 prompts reach "
            "the 20,000-character maximum"
        ),
    )
    max_router_names: int = field(
        default=64,
        metadata=_doc(
            "most router names in one Score call (repeats included; a bundle holds a handful of routers); "
            "a call naming more is refused whole (INVALID_ARGUMENT) before any name is looked up"
        ),
    )
    max_message_bytes: int = field(
        default=4 * 1024 * 1024, metadata=_doc("largest gRPC message received or sent, bytes")
    )
    transport: str = field(
        default="auto",
        metadata=_doc(
            "how the gRPC port is served: threads (a synchronous gRPC server whose pool threads hand each "
            "call to the event loop: about 1.5x the Route calls per core of aio on a static-encoder bundle), "
            "aio (grpc.aio on the event loop: a lower latency at concurrency 1, and more of an ONNX bundle's "
            "calls answered under a storm of re-sent refusals), or auto: threads for a static-encoder bundle "
            "on a loopback --host, else aio (lmroute.service.transports)"
        ),
    )
    grpc_threads: int = field(
        default=256,
        metadata=_doc(
            "transport threads: calls open at once (each holds a pool thread until answered); one more is "
            "refused RESOURCE_EXHAUSTED by gRPC at once, without a retry delay"
        ),
    )
    max_streams: int = field(
        default=64,
        metadata=_doc(
            "streaming calls open at once (health Watch, server reflection); one more is refused "
            "RESOURCE_EXHAUSTED (TOO_MANY_STREAMS). Under --transport threads each open stream holds a "
            "transport thread, so this must be below grpc_threads: the threads above it stay for unary calls"
        ),
    )
    grpc_max_connections: int = field(
        default=1024,
        metadata=_doc(
            "most connections open to the gRPC port at once, counted from TCP accept (before the TLS and "
            "HTTP/2 handshakes); one more is closed by gRPC as soon as it is accepted, so the caller sees "
            "UNAVAILABLE and reconnects with backoff. Keeps a peer's connections from taking the process's "
            "open files (the store and the OpenAI front need them too); lowered at start to what the open-file "
            "hard limit leaves (a warning)"
        ),
    )
    grpc_idle_timeout_s: float = field(
        default=600.0,
        metadata=_doc(
            "seconds a gRPC connection may stay open with no call in progress; then gRPC sends it GOAWAY and "
            "closes it (a client reconnects on its next call); keepalive pings do not count as calls"
        ),
    )
    grpc_max_connection_age_s: float = field(
        default=3600.0,
        metadata=_doc(
            "seconds a gRPC connection may stay open however busy; then gRPC sends it GOAWAY (calls in progress "
            "get up to 600 s more to finish, new ones go on a new connection) and the client reconnects, its "
            "certificate and token checked afresh: a client whose CA was removed from the client CA file (mTLS) "
            "keeps no connection past it"
        ),
    )
    grpc_handshake_timeout_s: float = field(
        default=20.0,
        metadata=_doc(
            "seconds a new gRPC connection has to finish its TLS and HTTP/2 handshakes; then gRPC closes it "
            "(gRPC's own default is 120)"
        ),
    )
    intra_op_threads: int = field(
        default=1, metadata=_doc("ONNX Runtime intra-op threads, and NumPy's BLAS threads in lmroute-serve")
    )
    scoring_cpus: str = field(
        default="",
        metadata=_doc(
            "CPUs (a Linux list, e.g. 0 or 2-3) the scoring thread is pinned to; the event loop and the threads "
            "it starts keep the process's other CPUs, so receiving and refusing calls never takes the scorer's "
            "core (Linux; for CPUs the process has to itself, e.g. Kubernetes' static CPU manager); empty = no "
            "pinning",
            metavar="CPUS",
        ),
    )
    switch_interval_us: int = field(
        default=0,
        metadata=_doc(
            "the interpreter's thread switch interval (sys.setswitchinterval), microseconds: how long a busy "
            "thread keeps the interpreter lock while another waits for it; 0 = Python's default (5,000). With "
            "scoring_cpus, 500 lets the scoring thread take it back sooner from a busy event loop"
        ),
    )
    encoder_chunk_size: int = field(
        default=8, metadata=_doc("prompts per encoder run inside a batch (length-sorted chunks)")
    )
    embeddings_base_url: str = field(
        default="",
        metadata=_doc(
            "OpenAI-compatible embeddings endpoint of a bundle whose encoder is remote (an import of RouteLLM's "
            "mf or sw_ranking: text-embedding-3-small), e.g. http://127.0.0.1:8080/v1; empty = OPENAI_BASE_URL, "
            "else https://api.openai.com/v1",
            metavar="URL",
        ),
    )
    embeddings_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata=_doc("name of the environment variable holding the embeddings endpoint's key", metavar="NAME"),
    )
    embeddings_timeout_s: float = field(
        default=10.0, metadata=_doc("most seconds one embeddings request may take before it is retried")
    )
    embeddings_retries: int = field(
        default=2,
        metadata=_doc("retries of an embeddings request that timed out or got 429/5xx (backoff 0.25 s, doubling)"),
    )
    embeddings_max_concurrency: int = field(
        default=8, metadata=_doc("embeddings requests in flight at once from this server")
    )
    device: str = field(default="cpu", metadata=_doc("cpu or cuda"))
    grace_s: float = field(default=10.0, metadata=_doc("graceful-shutdown grace period, seconds, at most 3600"))
    shutdown_delay_s: float = field(
        default=0.0,
        metadata=_doc(
            "seconds after SIGTERM or SIGINT during which the server goes on answering calls with its health "
            "NOT_SERVING, before it drains, so that load balancers and health-checking clients stop sending "
            "first (Kubernetes: at least the readiness probe's period x failureThreshold); 0 = drain at once"
        ),
    )
    liveness_stall_s: float = field(
        default=30.0,
        metadata=_doc(
            "liveness: the overall health (grpc.health.v1 service '', what a liveness probe asks) turns "
            "NOT_SERVING when prompts have been in flight this long, seconds, without a batch finishing, "
            "and SERVING again once one finishes; 0 = never"
        ),
    )
    warmup: bool = field(default=True, metadata=_doc("score a few prompts before reporting SERVING"))
    log_level: str = field(
        default="info",
        metadata=_doc("debug (also what each call decided, and a line per scored batch), info, warning or error"),
    )
    access_log: str = field(
        default="all",
        metadata=_doc(
            "access lines (`rpc`, at info): all (one per call) or sampled (at most one per method, code and "
            "reason a second, with the count of those left out; the lines of calls shed under load, "
            "RESOURCE_EXHAUSTED and UNAVAILABLE, are sampled so under `all` too): for thousands of calls a "
            "second, where a line per call floods the log"
        ),
    )
    stats_path: str = field(
        default="",
        metadata=_doc("write server timings (JSON histograms) here every second and at stop; empty = off"),
    )
    store: str = field(
        default="",
        metadata=_doc(
            "outcome store: sqlite:PATH (embedded, WAL) or postgresql://... (shared by replicas; needs the "
            "postgres extra). Every decision is recorded there (written behind the answer) and Feedback "
            "stores outcomes there; empty = no store (decisions not recorded, Feedback FAILED_PRECONDITION)",
            metavar="DSN",
        ),
    )
    store_prompts: bool = field(
        default=True,
        metadata=_doc(
            "keep prompt texts in the outcome store; false (the privacy switch) keeps only each prompt's "
            "SHA-256 and its embedding"
        ),
    )
    store_retention_days: float = field(
        default=0.0,
        metadata=_doc("delete decisions and outcomes older than this many days from the store; 0 = keep all"),
    )
    store_max_decisions: int = field(
        default=0,
        metadata=_doc(
            "keep about this many of the latest decisions in the store: each prune deletes the decisions, and "
            "the outcomes received, before the time of the Nth newest decision (with a retention too: the "
            "later cutoff); 0 = no cap"
        ),
    )
    store_max_pending_mib: int = field(
        default=256,
        metadata=_doc(
            "with a store: most MiB the decisions waiting for it may hold in memory (prompt texts, embeddings; "
            "past it new decisions are dropped and counted), and as much again the outcomes waiting (past "
            "it Feedback answers UNAVAILABLE, store busy; a tenant's at most half)"
        ),
    )
    store_prune_interval_s: float = field(
        default=3600.0,
        metadata=_doc("seconds between prunes of the store by --store-retention-days and --store-max-decisions"),
    )
    store_linger_ms: float = field(
        default=50.0,
        metadata=_doc(
            "with a store: milliseconds a recorded decision may wait for others to share its commit (a "
            "commit costs the process many times a row); Feedback's outcomes are committed at once, taking "
            "the waiting decisions with them. 0 = a commit as soon as the writer is free"
        ),
    )
    feedback_own_decisions: bool = field(
        default=False,
        metadata=_doc(
            "a caller naming a tenant (or bound to one) may report outcomes only on decisions its own tenant's "
            "calls made (PERMISSION_DENIED, DECISION_OF_ANOTHER_TENANT, per outcome); callers naming none "
            "may report on any"
        ),
    )
    store_targets: bool = field(
        default=True,
        metadata=_doc(
            "with a store: record AdminService.SetTargets changes there and apply the stored ones over "
            "share_targets and spend_targets at startup (and every targets_watch_s), so a restart and every "
            "replica sharing the store hold them; false = changes last while the process runs"
        ),
    )
    targets_watch_s: float = field(
        default=10.0,
        metadata=_doc(
            "seconds between reads of the target changes other replicas record in the shared store; "
            "0 = read at startup only"
        ),
    )
    max_feedback_items: int = field(default=1024, metadata=_doc("most outcomes in one Feedback call"))
    feedback_rate: float = field(
        default=2000.0,
        metadata=_doc(
            "most outcomes a second each tenant reports with Feedback (a token bucket of max(this, "
            "--max-feedback-items) outcomes); a call past it is refused whole, RESOURCE_EXHAUSTED "
            "FEEDBACK_RATE with the delay until it fits, so one caller's flood does not take the core that "
            "other tenants' Route calls need (lmroute.service.feedback_rate); 0 = no limit"
        ),
    )
    explore_rate: float = field(
        default=0.0,
        metadata=_doc(
            "share of Route decisions flipped on purpose to learn from single outcomes, most of them near "
            "the threshold (docs/OUTCOMES.md); with candidates, the share whose model is drawn at random "
            "among them; each reports its propensity. 0 = never; at most 0.5"
        ),
    )
    share_targets: str = field(
        default="",
        metadata=_doc(
            "strong-share targets held live per tenant, tenant=share,... (e.g. default=0.3,batch=0.1): a Route "
            "call that sets neither threshold nor strong_share is decided by its tenant's share controller "
            "(docs/CONTROL.md); a tenant not listed is `default` when that is listed. Empty = no targets",
            metavar="TARGETS",
        ),
    )
    spend_targets: str = field(
        default="",
        metadata=_doc(
            "spend targets held live per tenant, USD per 1,000 requests, tenant=usd,... (e.g. default=3): a "
            "Route call among candidates that sets no model_policy is decided by its tenant's spend "
            "controller (docs/MODELS.md); a tenant not listed is `default` when that is listed",
            metavar="TARGETS",
        ),
    )
    binding_targets: bool = field(
        default=False,
        metadata=_doc(
            "a call whose tenant holds a share target may not set its own threshold or strong_share, nor one "
            "whose tenant holds a spend target its own model_policy or prices other than the models file's "
            "(PERMISSION_DENIED, TARGET_IS_BINDING): "
            "the targets are the tenants' budgets, not defaults (with tokens bound to tenants, so a caller "
            "cannot name another tenant)"
        ),
    )
    tenant_header: str = field(
        default="x-lmroute-tenant", metadata=_doc("request metadata key that names the caller's tenant")
    )
    tenants: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "the tenants a caller may name in its metadata (tenant_header) or HTTP headers, comma-separated or "
            "the flag repeated: a call naming another is refused (INVALID_ARGUMENT, UNKNOWN_TENANT); a token "
            "bound to a tenant speaks for it whatever this lists. Empty = any name of 1-64 of "
            "[A-Za-z0-9._-], so a caller without a bound token can take several turns of the fair queue by "
            "naming several tenants (docs/SECURITY.md)",
            metavar="TENANT",
        ),
    )
    control_window: int = field(
        default=ControlSettings.window,
        metadata=_doc("a share controller's threshold is a quantile of this many latest scores of its router"),
    )
    control_repay: int = field(
        default=ControlSettings.repay,
        metadata=_doc("a share controller pays a deficit of strong decisions back over about this many decisions"),
    )
    control_horizon: int = field(
        default=ControlSettings.horizon,
        metadata=_doc("a share controller forgets its deficit over about this many decisions"),
    )
    control_spend_repay: int = field(
        default=SPEND_REPAY,
        metadata=_doc("a spend controller pays a deficit of spend back over about this many decisions"),
    )
    models_file: str = field(
        default="",
        metadata=_doc(
            "JSON file of model prices (USD per million input / output tokens) and answer lengths, for Route "
            "calls among candidates that do not price them (docs/MODELS.md); empty = none",
            metavar="PATH",
        ),
    )
    expected_output_tokens: int = field(
        default=256,
        metadata=_doc(
            "answer length a model's expected cost assumes where the models file gives none (1 to 1,000,000 tokens)"
        ),
    )
    plugins: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "router kind plug-in module to import before the bundle is loaded (it registers its kinds); "
            "repeat the flag for more, the variable takes a comma-separated list",
            flag="--plugin",
            metavar="MODULE",
        ),
    )
    admin_service: str = field(
        default="loopback",
        metadata=_doc(
            "serve lmroute.v1.AdminService (hot swap of the bundle, the tenants' targets reported and set) on "
            "the same port: loopback = only when host is a loopback address (127.0.0.0/8, ::1, localhost), on, "
            "or off; a non-loopback bind needs 'on' stated (and should configure tokens: it then needs an "
            "unbound one)"
        ),
    )
    bundle_watch_s: float = field(
        default=0.0,
        metadata=_doc(
            "poll the serving bundle's directory every this many seconds and hot-swap when the bundle_version "
            "in its manifest.json changes (e.g. a symlink flipped to a new bundle; a refused version is not "
            "retried until the version there changes again); 0 = off"
        ),
    )
    auth_tokens_file: str = field(
        default="",
        metadata=_doc(
            "file of accepted bearer tokens, one per line, `<token>` or `<token> <tenant>` (docs/SECURITY.md); "
            "with tokens configured every call but health needs `authorization: Bearer <token>`; read again "
            "when it changes (a bad new file keeps the tokens in use)",
            metavar="PATH",
        ),
    )
    auth_tokens_env: str = field(
        default="",
        metadata=_doc(
            "name of an environment variable holding accepted tokens, `<token>[:<tenant>],...` (the tokens "
            "themselves never go on the command line)",
            metavar="NAME",
        ),
    )
    reflection: str = field(
        default="auto",
        metadata=_doc("serve gRPC server reflection: auto (on unless tokens are configured), on, or off"),
    )
    tls_cert_file: str = field(
        default="",
        metadata=_doc(
            "PEM certificate chain of the server: with it (and tls_key_file) the gRPC port speaks TLS only; the "
            "files are re-read when they change, for the next connections (docs/SECURITY.md)",
            metavar="PATH",
        ),
    )
    tls_key_file: str = field(default="", metadata=_doc("PEM private key of the server certificate", metavar="PATH"))
    tls_client_ca_file: str = field(
        default="",
        metadata=_doc("PEM CA certificate(s): clients must present a certificate signed by one (mTLS)", metavar="PATH"),
    )
    tracing: str = field(
        default="off",
        metadata=_doc(
            "OpenTelemetry spans of each call and its stages (admission, queue, encode, score): off, console "
            "(printed as JSON to stdout) or external (the process's tracer provider, e.g. set up by "
            "opentelemetry-instrument); needs the tracing extra (docs/SECURITY.md)"
        ),
    )
    metrics_port: int = field(
        default=-1,
        metadata=_doc("serve Prometheus metrics at http://<host>:<port>/metrics; 0 picks a free port, -1 = off"),
    )
    metrics_host: str = field(
        default="",
        metadata=_doc(
            "address the metrics endpoint binds, when not host's: e.g. a private interface only the scraper "
            "reaches, while the gRPC port faces callers (the endpoint has no tokens and its labels name tenants)"
        ),
    )
    http_port: int = field(
        default=-1,
        metadata=_doc(
            "serve the OpenAI-compatible front (POST /v1/chat/completions, GET /v1/models, POST /v1/feedback) "
            "on this port of the same host, forwarding chat completions to the upstreams file's models "
            "(docs/OPENAI_FRONT.md); 0 picks a free port, -1 = off"
        ),
    )
    upstreams_file: str = field(
        default="",
        metadata=_doc(
            "JSON file naming the OpenAI-compatible endpoint of the strong and the weak model (model, base_url, "
            "api_key_env, timeouts) that the HTTP front forwards to; needed with http_port",
            metavar="PATH",
        ),
    )
    front_max_body_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata=_doc(
            "largest OpenAI front request body, bytes (larger: 400 REQUEST_TOO_LARGE); at most 4 such bodies "
            "are parsed and held at once (parsed JSON takes many times its bytes: docs/OPENAI_FRONT.md), more "
            "wait their turn"
        ),
    )
    front_body_timeout_s: float = field(
        default=30.0,
        metadata=_doc("most seconds the OpenAI front waits for a request's body; then 408 and the connection closed"),
    )
    front_max_connections: int = field(
        default=1024,
        metadata=_doc(
            "most connections open to the OpenAI front at once; past it the oldest idle connection (one "
            "waiting for a request head) is closed for a new one, and with none idle the new one is closed "
            "as soon as it is accepted (keep it well under the process's open-file limit: the gRPC port and "
            "the store need files too)"
        ),
    )
    front_idle_timeout_s: float = field(
        default=60.0,
        metadata=_doc(
            "most seconds an OpenAI front connection may go without sending a whole request head, from its "
            "opening or its last answer (a TLS handshake too); then it is closed"
        ),
    )
    upstream_max_s: float = field(
        default=600.0,
        metadata=_doc(
            "most seconds one forwarded chat completion holds its upstream slot, from the slot wait to a "
            "streamed answer's end; then it is aborted: 504, or a streamed answer's last event an error"
        ),
    )
    front_write_timeout_s: float = field(
        default=30.0,
        metadata=_doc(
            "most seconds one write of an answer (whole or streamed) to an OpenAI front caller may take (a "
            "caller that does not read); then the caller's connection is closed and, for a stream, the "
            "upstream slot freed"
        ),
    )
    front_max_stream_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata=_doc(
            "most bytes of one streamed upstream answer forwarded (a whole answer is capped at 64 MiB); "
            "beyond it the stream ends with an error event and the upstream slot is freed"
        ),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.bundle_path, Path):
            object.__setattr__(self, "bundle_path", Path(self.bundle_path))
        if str(self.bundle_path) in ("", "."):
            raise ConfigError("bundle_path: must name a bundle directory (got empty)")
        if not self.host:
            raise ConfigError("host: must not be empty")
        object.__setattr__(self, "host", self.host.removeprefix("[").removesuffix("]"))  # [::1] is ::1
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: must be in [0, 65535] (got {self.port})")
        for name in (
            "max_prompts_per_request",
            "max_turns",
            "max_request_chars",
            "max_router_names",
            "max_feedback_items",
            "intra_op_threads",
            "encoder_chunk_size",
        ):
            _at_least(name, getattr(self, name), 1)
        if self.max_request_chars < self.batch.max_prompt_chars:
            raise ConfigError(
                f"max_request_chars: must be >= max_prompt_chars ({self.batch.max_prompt_chars}) "
                f"(got {self.max_request_chars})"
            )
        self._check_scoring_cpus()
        if not 0 <= self.switch_interval_us <= 1_000_000:
            raise ConfigError(f"switch_interval_us: must be in [0, 1000000] (got {self.switch_interval_us})")
        if not (isinstance(self.liveness_stall_s, (int, float)) and 0 <= self.liveness_stall_s < math.inf):
            raise ConfigError(f"liveness_stall_s: must be >= 0 and finite (0: never) (got {self.liveness_stall_s!r})")
        _at_least("max_message_bytes", self.max_message_bytes, 1024)
        if self.transport not in _TRANSPORTS:
            raise ConfigError(f"transport: must be one of {', '.join(_TRANSPORTS)} (got {self.transport!r})")
        _at_least("grpc_threads", self.grpc_threads, 1)
        _at_least("max_streams", self.max_streams, 1)
        _at_least("grpc_max_connections", self.grpc_max_connections, 1)
        rate = self.feedback_rate
        if isinstance(rate, bool) or not (isinstance(rate, (int, float)) and 0 <= rate < math.inf):
            raise ConfigError(f"feedback_rate: must be >= 0 and finite (0: no limit; got {rate!r})")
        # gRPC takes whole milliseconds, int32
        for name in ("grpc_idle_timeout_s", "grpc_max_connection_age_s", "grpc_handshake_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (
                isinstance(value, (int, float)) and 0.001 <= value <= MAX_GRPC_TIMEOUT_S
            ):
                raise ConfigError(f"{name}: must be in [0.001, {MAX_GRPC_TIMEOUT_S:.0f}] seconds (got {value!r})")
        if self.max_streams >= self.grpc_threads:
            raise ConfigError(
                f"max_streams: must be below grpc_threads ({self.grpc_threads}): each open stream holds a "
                f"transport thread, and unary calls need one (got {self.max_streams})"
            )
        if not (isinstance(self.grace_s, (int, float)) and 0 <= self.grace_s < math.inf):
            raise ConfigError(f"grace_s: must be >= 0 and finite (got {self.grace_s!r})")
        if self.grace_s > MAX_GRACE_S:
            raise ConfigError(f"grace_s: must be <= {MAX_GRACE_S:g} (got {self.grace_s!r})")
        if self.device not in _DEVICES:
            raise ConfigError(f"device: must be one of cpu, cuda (got {self.device!r})")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file, tls_key_file: give both or neither")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("tls_client_ca_file: needs tls_cert_file and tls_key_file (mTLS is TLS first)")
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "bundle_public_key"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{name}: no file at {path}")
        if self.tracing not in TRACING_MODES:
            raise ConfigError(f"tracing: must be one of {', '.join(TRACING_MODES)} (got {self.tracing!r})")
        if self.tracing != "off" and importlib.util.find_spec("opentelemetry") is None:
            raise ConfigError("tracing: needs the opentelemetry packages (pip install 'lmroute[tracing]')")
        if self.reflection not in ("auto", "on", "off"):
            raise ConfigError(f"reflection: must be one of auto, on, off (got {self.reflection!r})")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port: must be in [-1, 65535] (got {self.metrics_port})")
        if not (isinstance(self.embeddings_timeout_s, (int, float)) and 0 < self.embeddings_timeout_s < math.inf):
            raise ConfigError(f"embeddings_timeout_s: must be > 0 and finite (got {self.embeddings_timeout_s!r})")
        _at_least("embeddings_retries", self.embeddings_retries, 0)
        _at_least("embeddings_max_concurrency", self.embeddings_max_concurrency, 1)
        if self.embeddings_base_url and not self.embeddings_base_url.startswith(("http://", "https://")):
            raise ConfigError(f"embeddings_base_url: must be an http(s) URL (got {self.embeddings_base_url!r})")
        if not -1 <= self.http_port <= 65535:
            raise ConfigError(f"http_port: must be in [-1, 65535] (got {self.http_port})")
        if self.http_port >= 0 and not self.upstreams_file:
            raise ConfigError("upstreams_file: needed with http_port (the front forwards to its models)")
        ports = [("port", self.port), ("http_port", self.http_port), ("metrics_port", self.metrics_port)]
        ports = [(name, port) for name, port in ports if port > 0]  # 0: any free port; -1: off
        for i, (name, port) in enumerate(ports):
            if clash := [other for other, p in ports[:i] if p == port]:
                raise ConfigError(f"{name}: {port} is {clash[0]}'s too (each listener needs a port of its own)")
        _at_least("front_max_body_bytes", self.front_max_body_bytes, 1024)
        _at_least("front_max_stream_bytes", self.front_max_stream_bytes, 1024)
        _at_least("front_max_connections", self.front_max_connections, 1)
        _at_least("store_max_pending_mib", self.store_max_pending_mib, 1)
        for name in ("front_body_timeout_s", "front_idle_timeout_s", "upstream_max_s", "front_write_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ConfigError(f"{name}: must be > 0 and finite (got {value!r})")
        if self.upstreams_file:
            try:
                upstreams = load_upstreams(Path(self.upstreams_file))
            except ValueError as exc:
                raise ConfigError(f"upstreams_file: {exc}") from None
            for key, up in upstreams.items():  # a hang must fail before the exchange's time is up, or no fallback
                if up.fallback and up.timeout_s >= self.upstream_max_s:
                    where = key if key in ("strong", "weak") else f"models.{key}"
                    raise ConfigError(
                        f"upstreams_file: {where}.timeout_s ({up.timeout_s:g} s) must be under upstream_max_s "
                        f"({self.upstream_max_s:g} s) with fallback: true, or a hung upstream uses up the exchange's "
                        "time before its fallback is tried"
                    )
        try:
            tokens = load_tokens(self.auth_tokens_file, self.auth_tokens_env)
        except ValueError as exc:
            raise ConfigError(f"auth: {exc}") from None
        if self.auth_enabled and not tokens:
            sources = [
                what
                for what in (
                    self.auth_tokens_file and f"the file {self.auth_tokens_file}",
                    self.auth_tokens_env and f"the variable {self.auth_tokens_env}",
                )
                if what
            ]
            verb = "hold" if len(sources) > 1 else "holds"
            raise ConfigError(
                f"auth: {' and '.join(sources)} {verb} no token (a server that asks for tokens needs one)"
            )
        if self.admin_service not in _ADMIN_MODES:
            raise ConfigError(f"admin_service: must be one of {', '.join(_ADMIN_MODES)} (got {self.admin_service!r})")
        if not (isinstance(self.bundle_watch_s, (int, float)) and 0 <= self.bundle_watch_s < float("inf")):
            raise ConfigError(f"bundle_watch_s: must be >= 0 and finite (got {self.bundle_watch_s!r})")
        if self.access_log not in ("all", "sampled"):
            raise ConfigError(f"access_log: must be one of all, sampled (got {self.access_log!r})")
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(f"log_level: must be one of {', '.join(_LOG_LEVELS)} (got {self.log_level!r})")
        if self.store and not self.store.startswith(("sqlite:", "postgresql://", "postgres://")):
            raise ConfigError(f"store: expected sqlite:PATH or postgresql://... (got {redact_dsn(self.store)!r})")
        if self.store.startswith("sqlite:") and not self.store.removeprefix("sqlite:").removeprefix("//"):
            raise ConfigError(f"store: {self.store!r} names no file (sqlite:PATH)")
        if not (isinstance(self.explore_rate, (int, float)) and 0.0 <= self.explore_rate <= 0.5):
            raise ConfigError(f"explore_rate: must be in [0, 0.5] (got {self.explore_rate!r})")
        if not (isinstance(self.targets_watch_s, (int, float)) and 0 <= self.targets_watch_s < float("inf")):
            raise ConfigError(f"targets_watch_s: must be >= 0 and finite (got {self.targets_watch_s!r})")
        if not (
            isinstance(self.store_retention_days, (int, float)) and 0 <= self.store_retention_days <= MAX_RETENTION_DAYS
        ):
            raise ConfigError(
                f"store_retention_days: must be in [0, {MAX_RETENTION_DAYS}] (0: keep everything; got "
                f"{self.store_retention_days!r})"
            )
        if 0 < self.store_retention_days * 86_400_000 < 1:  # the server prunes by whole ms: 0 ms keeps everything
            raise ConfigError(
                f"store_retention_days: {self.store_retention_days!r} days is under 1 ms, which would keep "
                f"everything; must be 0 (keep everything) or at least 1 ms ({1 / 86_400_000:.4g} days)"
            )
        if not (isinstance(self.shutdown_delay_s, (int, float)) and 0 <= self.shutdown_delay_s <= MAX_SHUTDOWN_DELAY_S):
            raise ConfigError(
                f"shutdown_delay_s: must be in [0, {MAX_SHUTDOWN_DELAY_S:g}] (got {self.shutdown_delay_s!r})"
            )
        if not (
            isinstance(self.store_max_decisions, int)
            and not isinstance(self.store_max_decisions, bool)
            and 0 <= self.store_max_decisions <= MAX_STORE_DECISIONS
        ):
            raise ConfigError(
                f"store_max_decisions: must be an integer in [0, {MAX_STORE_DECISIONS}] (0: no cap; got "
                f"{self.store_max_decisions!r})"
            )
        if not (
            isinstance(self.store_prune_interval_s, (int, float))
            and MIN_PRUNE_INTERVAL_S <= self.store_prune_interval_s <= MAX_PRUNE_INTERVAL_S
        ):
            raise ConfigError(
                f"store_prune_interval_s: must be in [{MIN_PRUNE_INTERVAL_S:g}, {MAX_PRUNE_INTERVAL_S:g}] (got "
                f"{self.store_prune_interval_s!r})"
            )
        # at most half of NOT_YET_MS: a decision is in the store well before Feedback on another replica stops
        # answering DECISION_NOT_RECORDED_YET (retry) for its id and answers DECISION_NOT_FOUND
        if not (isinstance(self.store_linger_ms, (int, float)) and 0 <= self.store_linger_ms <= NOT_YET_MS / 2):
            raise ConfigError(f"store_linger_ms: must be in [0, {NOT_YET_MS // 2}] (got {self.store_linger_ms!r})")
        try:
            parse_share_targets(self.share_targets)
        except ValueError as exc:
            raise ConfigError(f"share_targets: {exc}") from None
        try:
            parse_share_targets(self.spend_targets, high=math.inf)
        except ValueError as exc:
            raise ConfigError(f"spend_targets: {exc}") from None
        if isinstance(self.tenants, str) or not isinstance(self.tenants, Sequence):
            raise ConfigError(f"tenants: must be a sequence of tenant names (got {self.tenants!r})")
        object.__setattr__(self, "tenants", tuple(self.tenants))
        for name in self.tenants:
            if not (isinstance(name, str) and TENANT_RE.match(name)):
                raise ConfigError(f"tenants: {name!r} is not a tenant name (1-64 of [A-Za-z0-9._-])")
        if not _METADATA_KEY_RE.match(self.tenant_header):
            raise ConfigError(
                f"tenant_header: must be a lowercase gRPC metadata key of [a-z0-9._-] (got {self.tenant_header!r})"
            )
        try:
            _ = self.control
        except ValueError as exc:
            raise ConfigError(f"control_{exc}") from None
        _at_least("control_spend_repay", self.control_spend_repay, 1)
        if not (
            isinstance(self.expected_output_tokens, int)
            and not isinstance(self.expected_output_tokens, bool)
            and 1 <= self.expected_output_tokens <= MAX_OUTPUT_TOKENS
        ):  # as the models file's output_tokens: a cost of 10^400 tokens is no float
            raise ConfigError(
                f"expected_output_tokens: must be an integer in [1, {MAX_OUTPUT_TOKENS}] (got "
                f"{self.expected_output_tokens!r})"
            )
        if self.models_file:
            try:
                load_models_file(Path(self.models_file))
            except ValueError as exc:
                raise ConfigError(f"models_file: {exc}") from None
        if isinstance(self.plugins, str) or not isinstance(self.plugins, Sequence):
            raise ConfigError(f"plugins: must be a sequence of module names (got {self.plugins!r})")
        object.__setattr__(self, "plugins", tuple(self.plugins))
        for module in self.plugins:
            if not (isinstance(module, str) and all(part.isidentifier() for part in module.split("."))):
                raise ConfigError(f"plugins: {module!r} is not a module name")

    def _check_scoring_cpus(self) -> None:
        try:
            cpus = parse_cpu_list(self.scoring_cpus)
        except ValueError as exc:
            raise ConfigError(f"scoring_cpus: {exc}") from None
        if not cpus:
            return
        allowed = available_cpus()
        if allowed is None:
            raise ConfigError("scoring_cpus: this platform cannot pin threads to CPUs (Linux only)")
        if not cpus <= allowed:
            raise ConfigError(
                f"scoring_cpus: CPU {', '.join(map(str, sorted(cpus - allowed)))} not available to this process "
                f"(it may use {', '.join(map(str, sorted(allowed)))})"
            )
        if not allowed - cpus:
            raise ConfigError(
                f"scoring_cpus: {self.scoring_cpus} leaves no CPU for the event loop (this process may use "
                f"{', '.join(map(str, sorted(allowed)))})"
            )

    @property
    def scoring_cpu_set(self) -> frozenset[int]:
        """The CPUs of `scoring_cpus` (empty: no pinning)."""
        return parse_cpu_list(self.scoring_cpus)

    @property
    def control(self) -> ControlSettings:
        """The share controllers' constants."""
        return ControlSettings(window=self.control_window, repay=self.control_repay, horizon=self.control_horizon)

    @property
    def spend_control(self) -> ControlSettings:
        """The spend controllers' constants."""
        return ControlSettings(window=self.control_window, repay=self.control_spend_repay, horizon=self.control_horizon)

    @property
    def remote_encoder(self) -> RemoteSettings:
        """Where a remote encoder's embeddings endpoint is, its key read from `embeddings_api_key_env`."""
        key = os.environ.get(self.embeddings_api_key_env, "") if self.embeddings_api_key_env else ""
        return RemoteSettings(
            base_url=self.embeddings_base_url,
            api_key=key,
            timeout_s=float(self.embeddings_timeout_s),
            retries=self.embeddings_retries,
            max_concurrency=self.embeddings_max_concurrency,
        )

    @property
    def auth_enabled(self) -> bool:
        """Whether calls need a token (a tokens file or variable is set)."""
        return bool(self.auth_tokens_file or self.auth_tokens_env)

    @property
    def reflection_enabled(self) -> bool:
        """Whether server reflection is served: `reflection` on, or auto without authentication."""
        return self.reflection == "on" or (self.reflection == "auto" and not self.auth_enabled)

    def address(self, port: int, host: str = "") -> str:
        """host:port as gRPC and its clients take it (an IPv6 address in brackets: [::1]:50051); `host`
        instead of the setting's when given."""
        host = host or self.host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def metrics_bind_host(self) -> str:
        """The address the metrics endpoint binds: metrics_host, else host."""
        return self.metrics_host or self.host

    @property
    def loopback_bind(self) -> bool:
        """Whether `host` is a loopback address (127.0.0.0/8, ::1, localhost): only this host's processes
        reach the port."""
        from lmroute.service.client import loopback_host  # the clients' own test of a target

        return loopback_host(self.host)

    @property
    def admin_enabled(self) -> bool:
        """Whether AdminService is served: `admin_service` on, or loopback with a loopback `host`."""
        if self.admin_service != "loopback":
            return self.admin_service == "on"
        return self.loopback_bind

    def redacted(self) -> dict[str, Any]:
        """The leaf settings as a flat dict for logs; the store DSN's password replaced by ***."""
        out: dict[str, Any] = {}
        for s in SETTINGS:
            value = getattr(getattr(self, s.group) if s.group else self, s.name)
            out[s.name] = str(value) if isinstance(value, Path) else value
        out["store"] = redact_dsn(self.store)
        return out


def _at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: must be an integer (got {value!r})")
    if value < low:
        raise ConfigError(f"{name}: must be >= {low} (got {value})")


@dataclass(frozen=True)
class Setting:
    """One leaf setting as the command line and the environment see it.

    `group` names the ServiceConfig field holding it ("batch" for BatchPolicy's), "" for a field of its own.
    `kind` is the value's type: int, float, bool, str, Path, or tuple (of strings).
    """

    name: str
    group: str
    flag: str
    env: str
    kind: type
    default: Any
    help: str
    metavar: str

    @property
    def kind_name(self) -> str:
        return _kind_name(self.kind)


def _kind_name(kind: type) -> str:
    return "tuple[str, ...]" if kind is tuple else kind.__name__


def _leaves(cls: type, group: str) -> list[Setting]:
    hints = typing.get_type_hints(cls)
    out: list[Setting] = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out += _leaves(typing.cast(type, kind), f.name)
            continue
        kind = typing.get_origin(kind) or kind
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(
            Setting(
                name=f.name,
                group=group,
                flag=meta.get("flag", "--" + f.name.replace("_", "-")),
                env=meta.get("env", ENV_PREFIX + f.name.upper()),
                kind=kind,
                default=default,
                help=meta.get("help", ""),
                metavar=meta.get("metavar", _kind_name(kind).upper()),
            )
        )
    return out


SETTINGS: tuple[Setting, ...] = tuple(_leaves(ServiceConfig, ""))
"""Every leaf setting of ServiceConfig (BatchPolicy's included), in declaration order."""


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity|nan)", re.IGNORECASE)


def _parse(s: Setting, raw: str | list[str], source: str) -> Any:
    if s.kind is tuple:  # a repeated flag gives a list; the variable and each flag value may hold commas
        given = raw if isinstance(raw, list) else [raw]
        items = tuple(p.strip() for item in given for p in item.split(",") if p.strip())
        if not items and any(g.strip() for g in given):
            raise ConfigError(f"{s.name}: {raw!r} from {source} names nothing (separators only)")
        if twice := sorted({i for i in items if items.count(i) > 1}):
            raise ConfigError(f"{s.name}: {twice[0]!r} given twice in {source}")
        return items
    assert isinstance(raw, str)
    try:
        if s.kind is int:  # int() also takes other scripts' digits and 5_000
            if not _INT.fullmatch(raw.strip()):
                raise ValueError(raw)
            return int(raw)
        if s.kind is float:
            if not _FLOAT.fullmatch(raw.strip()):
                raise ValueError(raw)
            return float(raw)
        if s.kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if s.kind is Path:
            return Path(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{s.name}: cannot parse {raw!r} from {source} as {s.kind_name}") from None


def _default_text(s: Setting, default_bundle: Path | None) -> str:
    if s.name == "bundle_path":
        return "(required)" if default_bundle is None else str(default_bundle)
    if s.kind is tuple:
        return ", ".join(s.default) or "none"
    return repr(s.default)


def build_arg_parser(default_bundle: Path | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per leaf setting (defaults come from env/dataclass)."""
    parser = argparse.ArgumentParser(
        prog="lmroute-serve",
        description="Serve a router bundle over gRPC. Every flag also reads LMROUTE_<NAME>; a flag given "
        "wins over its variable.",
        allow_abbrev=False,  # --max-q would be --max-queue now, and something else once a flag is added
    )
    for s in SETTINGS:
        parser.add_argument(
            s.flag,
            dest=s.name,
            default=None,
            action="append" if s.kind is tuple else "store",  # the last wins: serve.sh's own, then the caller's
            metavar=s.metavar,
            help=f"{s.help} [env {s.env}; default {_default_text(s, default_bundle)}]",
        )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the settings and that the ports are free, then exit: 0, or 2 and the error (no bundle is "
        "loaded; scripts/serve.sh runs it before it builds one)",
    )
    return parser


def config_from_cli(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    default_bundle: Path | None = None,
) -> ServiceConfig:
    """Build a ServiceConfig from flags (first), LMROUTE_* variables (second) and defaults.

    Raises ConfigError naming the setting for an unparsable or invalid value, and when no bundle path
    is given anywhere and there is no `default_bundle`.
    """
    return config_from_args(build_arg_parser(default_bundle).parse_args(argv), environ, default_bundle=default_bundle)


def mistyped_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(name, the setting's variable it is close to) for each LMROUTE_* variable set that is no setting's
    but nearly spells one (LMROUTE_PLUGIN for LMROUTE_PLUGINS): a typo the server would otherwise ignore
    unsaid. Variables of other tools (LMROUTE_TOKEN, lmroute-export's LMROUTE_EXPORT_*) are not near one."""
    env = os.environ if environ is None else environ
    known = {s.env for s in SETTINGS}
    out = []
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known:
            if close := difflib.get_close_matches(name, known, n=1, cutoff=0.9):
                out.append((name, close[0]))
    return out


def config_from_args(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    *,
    default_bundle: Path | None = None,
) -> ServiceConfig:
    """`config_from_cli` of flags `build_arg_parser` has parsed already."""
    env = os.environ if environ is None else environ
    values: dict[str, dict[str, Any]] = {"": {}, "batch": {}}
    given_by: dict[str, str] = {}  # setting -> the flag or variable that gave it
    for s in SETTINGS:
        raw = getattr(args, s.name)
        if raw is not None:
            values[s.group][s.name] = _parse(s, raw, s.flag)
            given_by[s.name] = s.flag
        elif s.env in env:
            values[s.group][s.name] = _parse(s, env[s.env], s.env)
            given_by[s.name] = s.env
    top = values[""]
    if "bundle_path" not in top:
        if default_bundle is None:
            raise ConfigError("bundle_path: required (--bundle or LMROUTE_BUNDLE)")
        top["bundle_path"] = default_bundle
    try:
        return ServiceConfig(**top, batch=BatchPolicy(**values["batch"]))
    except ConfigError as exc:  # it names the setting (and any it is checked against): say where they came from
        said = str(exc)
        first = said.partition(":")[0]
        named = [first] + [n for n in given_by if n != first and re.search(rf"\b{n}\b", said)]
        sources = [given_by[n] for n in named if n in given_by]
        if not sources:
            raise
        raise ConfigError(f"{exc} (given by {', '.join(sources)})") from None
