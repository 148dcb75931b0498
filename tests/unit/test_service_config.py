"""ServiceConfig: defaults, flag > env > default precedence, the exact flag and variable names, the
batch settings nested in `batch`, the plug-in list, exact validation messages."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from lmroute.service.config import SETTINGS, BatchPolicy, ServiceConfig, build_arg_parser, config_from_cli
from lmroute.service.cpus import parse_cpu_list
from lmroute.service.errors import ConfigError

# The command line and environment contract (deploy/, scripts/ and the benchmarks use these names).
FLAGS_AND_VARIABLES = [
    ("--bundle", "LMROUTE_BUNDLE"),
    ("--bundle-public-key", "LMROUTE_BUNDLE_PUBLIC_KEY"),
    ("--host", "LMROUTE_HOST"),
    ("--port", "LMROUTE_PORT"),
    ("--max-batch-size", "LMROUTE_MAX_BATCH_SIZE"),
    ("--max-batch-ms", "LMROUTE_MAX_BATCH_MS"),
    ("--max-wait-us", "LMROUTE_MAX_WAIT_US"),
    ("--max-batch-tokens", "LMROUTE_MAX_BATCH_TOKENS"),
    ("--max-queue", "LMROUTE_MAX_QUEUE"),
    ("--queue-timeout-ms", "LMROUTE_QUEUE_TIMEOUT_MS"),
    ("--admit-wait-ms", "LMROUTE_ADMIT_WAIT_MS"),
    ("--tenant-fair-share", "LMROUTE_TENANT_FAIR_SHARE"),
    ("--metrics-tenants", "LMROUTE_METRICS_TENANTS"),
    ("--max-prompt-chars", "LMROUTE_MAX_PROMPT_CHARS"),
    ("--inline-us", "LMROUTE_INLINE_US"),
    ("--max-prompts-per-request", "LMROUTE_MAX_PROMPTS_PER_REQUEST"),
    ("--max-turns", "LMROUTE_MAX_TURNS"),
    ("--max-request-chars", "LMROUTE_MAX_REQUEST_CHARS"),
    ("--max-router-names", "LMROUTE_MAX_ROUTER_NAMES"),
    ("--max-message-bytes", "LMROUTE_MAX_MESSAGE_BYTES"),
    ("--transport", "LMROUTE_TRANSPORT"),
    ("--grpc-threads", "LMROUTE_GRPC_THREADS"),
    ("--max-streams", "LMROUTE_MAX_STREAMS"),
    ("--grpc-max-connections", "LMROUTE_GRPC_MAX_CONNECTIONS"),
    ("--grpc-idle-timeout-s", "LMROUTE_GRPC_IDLE_TIMEOUT_S"),
    ("--grpc-max-connection-age-s", "LMROUTE_GRPC_MAX_CONNECTION_AGE_S"),
    ("--grpc-handshake-timeout-s", "LMROUTE_GRPC_HANDSHAKE_TIMEOUT_S"),
    ("--intra-op-threads", "LMROUTE_INTRA_OP_THREADS"),
    ("--scoring-cpus", "LMROUTE_SCORING_CPUS"),
    ("--switch-interval-us", "LMROUTE_SWITCH_INTERVAL_US"),
    ("--encoder-chunk-size", "LMROUTE_ENCODER_CHUNK_SIZE"),
    ("--embeddings-base-url", "LMROUTE_EMBEDDINGS_BASE_URL"),
    ("--embeddings-api-key-env", "LMROUTE_EMBEDDINGS_API_KEY_ENV"),
    ("--embeddings-timeout-s", "LMROUTE_EMBEDDINGS_TIMEOUT_S"),
    ("--embeddings-retries", "LMROUTE_EMBEDDINGS_RETRIES"),
    ("--embeddings-max-concurrency", "LMROUTE_EMBEDDINGS_MAX_CONCURRENCY"),
    ("--device", "LMROUTE_DEVICE"),
    ("--grace-s", "LMROUTE_GRACE_S"),
    ("--shutdown-delay-s", "LMROUTE_SHUTDOWN_DELAY_S"),
    ("--liveness-stall-s", "LMROUTE_LIVENESS_STALL_S"),
    ("--warmup", "LMROUTE_WARMUP"),
    ("--log-level", "LMROUTE_LOG_LEVEL"),
    ("--access-log", "LMROUTE_ACCESS_LOG"),
    ("--stats-path", "LMROUTE_STATS_PATH"),
    ("--store", "LMROUTE_STORE"),
    ("--store-prompts", "LMROUTE_STORE_PROMPTS"),
    ("--store-retention-days", "LMROUTE_STORE_RETENTION_DAYS"),
    ("--store-max-decisions", "LMROUTE_STORE_MAX_DECISIONS"),
    ("--store-max-pending-mib", "LMROUTE_STORE_MAX_PENDING_MIB"),
    ("--store-prune-interval-s", "LMROUTE_STORE_PRUNE_INTERVAL_S"),
    ("--store-linger-ms", "LMROUTE_STORE_LINGER_MS"),
    ("--feedback-own-decisions", "LMROUTE_FEEDBACK_OWN_DECISIONS"),
    ("--store-targets", "LMROUTE_STORE_TARGETS"),
    ("--targets-watch-s", "LMROUTE_TARGETS_WATCH_S"),
    ("--max-feedback-items", "LMROUTE_MAX_FEEDBACK_ITEMS"),
    ("--feedback-rate", "LMROUTE_FEEDBACK_RATE"),
    ("--explore-rate", "LMROUTE_EXPLORE_RATE"),
    ("--share-targets", "LMROUTE_SHARE_TARGETS"),
    ("--spend-targets", "LMROUTE_SPEND_TARGETS"),
    ("--binding-targets", "LMROUTE_BINDING_TARGETS"),
    ("--tenant-header", "LMROUTE_TENANT_HEADER"),
    ("--tenants", "LMROUTE_TENANTS"),
    ("--control-window", "LMROUTE_CONTROL_WINDOW"),
    ("--control-repay", "LMROUTE_CONTROL_REPAY"),
    ("--control-horizon", "LMROUTE_CONTROL_HORIZON"),
    ("--control-spend-repay", "LMROUTE_CONTROL_SPEND_REPAY"),
    ("--models-file", "LMROUTE_MODELS_FILE"),
    ("--expected-output-tokens", "LMROUTE_EXPECTED_OUTPUT_TOKENS"),
    ("--plugin", "LMROUTE_PLUGINS"),
    ("--admin-service", "LMROUTE_ADMIN_SERVICE"),
    ("--bundle-watch-s", "LMROUTE_BUNDLE_WATCH_S"),
    ("--auth-tokens-file", "LMROUTE_AUTH_TOKENS_FILE"),
    ("--auth-tokens-env", "LMROUTE_AUTH_TOKENS_ENV"),
    ("--reflection", "LMROUTE_REFLECTION"),
    ("--tls-cert-file", "LMROUTE_TLS_CERT_FILE"),
    ("--tls-key-file", "LMROUTE_TLS_KEY_FILE"),
    ("--tls-client-ca-file", "LMROUTE_TLS_CLIENT_CA_FILE"),
    ("--tracing", "LMROUTE_TRACING"),
    ("--metrics-port", "LMROUTE_METRICS_PORT"),
    ("--metrics-host", "LMROUTE_METRICS_HOST"),
    ("--http-port", "LMROUTE_HTTP_PORT"),
    ("--upstreams-file", "LMROUTE_UPSTREAMS_FILE"),
    ("--front-max-body-bytes", "LMROUTE_FRONT_MAX_BODY_BYTES"),
    ("--front-body-timeout-s", "LMROUTE_FRONT_BODY_TIMEOUT_S"),
    ("--front-max-connections", "LMROUTE_FRONT_MAX_CONNECTIONS"),
    ("--front-idle-timeout-s", "LMROUTE_FRONT_IDLE_TIMEOUT_S"),
    ("--upstream-max-s", "LMROUTE_UPSTREAM_MAX_S"),
    ("--front-write-timeout-s", "LMROUTE_FRONT_WRITE_TIMEOUT_S"),
    ("--front-max-stream-bytes", "LMROUTE_FRONT_MAX_STREAM_BYTES"),
]


def test_defaults_and_frozen() -> None:
    cfg = ServiceConfig(bundle_path=Path("b"))
    assert cfg.host == "127.0.0.1" and cfg.device == "cpu" and cfg.batch.max_batch_size == -1
    assert cfg.batch == BatchPolicy() and cfg.batch.max_wait_us == 0 and cfg.batch.max_queue == 1024
    assert cfg.plugins == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch.max_queue = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        ServiceConfig(Path("b"))  # type: ignore[misc]  # keyword-only
    with pytest.raises(TypeError):
        BatchPolicy(16)  # type: ignore[misc]  # keyword-only


def test_flag_beats_env_beats_default() -> None:
    env = {
        "LMROUTE_BUNDLE": "/env/bundle",
        "LMROUTE_MAX_BATCH_SIZE": "8",
        "LMROUTE_MAX_QUEUE": "9",
        "LMROUTE_PORT": "7000",
        "LMROUTE_WARMUP": "false",
    }
    cfg = config_from_cli(["--max-batch-size", "32", "--grace-s", "2.5"], env)
    assert cfg.bundle_path == Path("/env/bundle")
    assert cfg.batch.max_batch_size == 32 and cfg.port == 7000 and cfg.grace_s == 2.5
    assert cfg.batch.max_queue == 9 and cfg.batch.max_wait_us == 0
    assert cfg.warmup is False


def test_every_setting_has_its_flag_and_variable() -> None:
    assert [(s.flag, s.env) for s in SETTINGS] == FLAGS_AND_VARIABLES
    text = build_arg_parser().format_help()
    for flag, env in FLAGS_AND_VARIABLES:
        assert flag in text and env in text
    batch = {f.name for f in dataclasses.fields(BatchPolicy)}
    assert {s.name for s in SETTINGS if s.group == "batch"} == batch  # declared once, in BatchPolicy
    top = {f.name for f in dataclasses.fields(ServiceConfig)} - {"batch"}
    assert {s.name for s in SETTINGS if s.group == ""} == top


def test_the_readmes_flag_table_names_every_flag() -> None:
    """Each lmroute-serve flag is in a row of README.md's flag table (`--flag` in backquotes)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    rows = "\n".join(line for line in readme.splitlines() if line.startswith("| `--"))
    missing = [flag for flag, _ in FLAGS_AND_VARIABLES if f"`{flag}`" not in rows]
    assert not missing, f"README.md's flag table lacks {missing}"


def test_defaults_of_the_settings_are_the_dataclass_defaults() -> None:
    cfg = ServiceConfig(bundle_path=Path("b"))
    for s in SETTINGS:
        if s.name != "bundle_path":
            assert getattr(cfg.batch if s.group else cfg, s.name) == s.default, s.name
    assert config_from_cli(["--bundle", "b"], {}) == cfg
    logged = cfg.redacted()
    assert list(logged) == [s.name for s in SETTINGS]
    assert logged["bundle_path"] == "b" and logged["max_batch_size"] == -1 and logged["plugins"] == ()


def test_plugins_repeat_the_flag_or_list_them_in_the_variable() -> None:
    env = {"LMROUTE_BUNDLE": "b", "LMROUTE_PLUGINS": "pkg.kind_a, kind_b,"}
    assert config_from_cli([], env).plugins == ("pkg.kind_a", "kind_b")
    cfg = config_from_cli(["--plugin", "one", "--plugin", "two.three"], env)
    assert cfg.plugins == ("one", "two.three")  # the flag beats the variable
    assert ServiceConfig(bundle_path=Path("b"), plugins=["x"]).plugins == ("x",)  # type: ignore[arg-type]
    help_text = build_arg_parser().format_help()
    assert "--plugin MODULE" in help_text and "LMROUTE_PLUGINS" in help_text


def test_tenants_list_in_one_flag_repeated_flags_or_the_variable() -> None:
    env = {"LMROUTE_BUNDLE": "b", "LMROUTE_TENANTS": "interactive, batch"}
    assert config_from_cli([], env).tenants == ("interactive", "batch")
    assert config_from_cli(["--tenants", "a,b", "--tenants", "c"], env).tenants == ("a", "b", "c")
    assert config_from_cli([], {"LMROUTE_BUNDLE": "b"}).tenants == ()  # default: any well-formed name
    assert "--tenants TENANT" in build_arg_parser().format_help()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: BatchPolicy(max_batch_size=0), "max_batch_size: must be >= 1 (got 0)"),
        (lambda: BatchPolicy(max_batch_size=-2), "max_batch_size: must be >= 1 (got -2)"),  # -1 alone: auto
        (lambda: BatchPolicy(max_wait_us=-1), "max_wait_us: must be >= 0 (got -1)"),
        (lambda: BatchPolicy(max_batch_size=65_537), "max_batch_size: must be <= 65536 (got 65537)"),
        (lambda: BatchPolicy(max_batch_size=10**10), "max_batch_size: must be <= 65536 (got 10000000000)"),
        (
            lambda: BatchPolicy(max_wait_us=1_000_000),
            "max_wait_us: must be below queue_timeout_ms (1000 ms): a lone prompt waits max_wait_us for its batch "
            "to fill, and one queued that long fails UNAVAILABLE (got 1000000)",
        ),
        (
            lambda: BatchPolicy(max_wait_us=90_000, queue_timeout_ms=50),
            "max_wait_us: must be below queue_timeout_ms (50 ms): a lone prompt waits max_wait_us for its batch "
            "to fill, and one queued that long fails UNAVAILABLE (got 90000)",
        ),
        (lambda: BatchPolicy(max_queue=2.5), "max_queue: must be an integer (got 2.5)"),
        (lambda: ServiceConfig(bundle_path=Path("b"), port=70000), "port: must be in [0, 65535] (got 70000)"),
        (lambda: ServiceConfig(bundle_path=Path("b"), device="tpu"), "device: must be one of cpu, cuda (got 'tpu')"),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), log_level="loud"),
            "log_level: must be one of debug, info, warning, error (got 'loud')",
        ),
        (lambda: ServiceConfig(bundle_path=Path("b"), grace_s=-1.0), "grace_s: must be >= 0 and finite (got -1.0)"),
        (lambda: ServiceConfig(bundle_path=Path("b"), grace_s=math.nan), "grace_s: must be >= 0 and finite (got nan)"),
        (lambda: ServiceConfig(bundle_path=Path("b"), grace_s=1e20), "grace_s: must be <= 3600 (got 1e+20)"),
        (lambda: ServiceConfig(bundle_path=Path("b"), grace_s=3600.5), "grace_s: must be <= 3600 (got 3600.5)"),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), store_linger_ms=6000),
            "store_linger_ms: must be in [0, 5000] (got 6000)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), max_message_bytes=10),
            "max_message_bytes: must be >= 1024 (got 10)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), front_max_body_bytes=10),
            "front_max_body_bytes: must be >= 1024 (got 10)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), front_max_connections=0),
            "front_max_connections: must be >= 1 (got 0)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), grpc_max_connections=0),
            "grpc_max_connections: must be >= 1 (got 0)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), grpc_idle_timeout_s=0),
            "grpc_idle_timeout_s: must be in [0.001, 2000000] seconds (got 0)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), grpc_handshake_timeout_s=math.inf),
            "grpc_handshake_timeout_s: must be in [0.001, 2000000] seconds (got inf)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), feedback_rate=-1.0),
            "feedback_rate: must be >= 0 and finite (0: no limit; got -1.0)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), upstream_max_s=math.inf),
            "upstream_max_s: must be > 0 and finite (got inf)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), front_write_timeout_s=0),
            "front_write_timeout_s: must be > 0 and finite (got 0)",
        ),
        (lambda: ServiceConfig(bundle_path=Path("")), "bundle_path: must name a bundle directory (got empty)"),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), plugins=("ok", "not-a-module")),
            "plugins: 'not-a-module' is not a module name",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), share_targets="default=0.3,batch=2"),
            "share_targets: entry 1 ('batch=2'): value must be in [0, 1]",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), tenants=("batch", "two words")),
            "tenants: 'two words' is not a tenant name (1-64 of [A-Za-z0-9._-])",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), tenant_header="X-Tenant"),
            "tenant_header: must be a lowercase gRPC metadata key of [a-z0-9._-] (got 'X-Tenant')",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), control_repay=0),
            "control_repay: must be an integer >= 1 (got 0)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), store_retention_days=math.inf),
            "store_retention_days: must be in [0, 1000000] (0: keep everything; got inf)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), store_retention_days=1e308),
            "store_retention_days: must be in [0, 1000000] (0: keep everything; got 1e+308)",
        ),
        (  # the server prunes by whole ms: 0 ms would keep everything
            lambda: ServiceConfig(bundle_path=Path("b"), store_retention_days=1e-9),
            "store_retention_days: 1e-09 days is under 1 ms, which would keep everything; must be 0 (keep "
            "everything) or at least 1 ms (1.157e-08 days)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), expected_output_tokens=10**400),
            "expected_output_tokens: must be an integer in [1, 1000000] (got " + str(10**400) + ")",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), shutdown_delay_s=-1.0),
            "shutdown_delay_s: must be in [0, 3600] (got -1.0)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), store_max_decisions=-1),
            "store_max_decisions: must be an integer in [0, 1000000000000] (0: no cap; got -1)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), store_prune_interval_s=0.0),
            "store_prune_interval_s: must be in [1, 3.1536e+07] (got 0.0)",
        ),
        (
            lambda: ServiceConfig(bundle_path=Path("b"), store_prune_interval_s=math.nan),
            "store_prune_interval_s: must be in [1, 3.1536e+07] (got nan)",
        ),
    ],
)
def test_bad_values_exact_messages(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        build()
    assert str(e.value) == message


def test_the_upper_bounds_themselves_are_accepted() -> None:
    assert BatchPolicy(max_batch_size=65_536).max_batch_size == 65_536
    assert BatchPolicy(max_wait_us=999_999, queue_timeout_ms=1000).max_wait_us == 999_999
    assert ServiceConfig(bundle_path=Path("b"), grace_s=3600).grace_s == 3600
    one_ms = ServiceConfig(bundle_path=Path("b"), store_retention_days=1 / 86_400_000).store_retention_days
    assert int(one_ms * 86_400_000) == 1  # the shortest retention taken is one the server keeps (1 ms)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--max-batch-size", "0"], {}, "max_batch_size: must be >= 1 (got 0) (given by --max-batch-size)"),
        ([], {"LMROUTE_MAX_WAIT_US": "-5"}, "max_wait_us: must be >= 0 (got -5) (given by LMROUTE_MAX_WAIT_US)"),
        (
            ["--max-batch-size", "10000000000"],
            {},
            "max_batch_size: must be <= 65536 (got 10000000000) (given by --max-batch-size)",
        ),
        (
            ["--max-wait-us", "2000000", "--queue-timeout-ms", "2000"],
            {},
            "max_wait_us: must be below queue_timeout_ms (2000 ms): a lone prompt waits max_wait_us for its batch "
            "to fill, and one queued that long fails UNAVAILABLE (got 2000000) (given by --max-wait-us, "
            "--queue-timeout-ms)",
        ),
        (["--grace-s", "1e20"], {}, "grace_s: must be <= 3600 (got 1e+20) (given by --grace-s)"),
        (
            ["--store-retention-days", "1e-9"],
            {},
            "store_retention_days: 1e-09 days is under 1 ms, which would keep everything; must be 0 (keep "
            "everything) or at least 1 ms (1.157e-08 days) (given by --store-retention-days)",
        ),
        (  # a check against another setting names where that one came from too (only it was given here)
            ["--grpc-threads", "10"],
            {},
            "max_streams: must be below grpc_threads (10): each open stream holds a transport thread, and unary "
            "calls need one (got 64) (given by --grpc-threads)",
        ),
        (["--queue-timeout-ms", "soon"], {}, "queue_timeout_ms: cannot parse 'soon' from --queue-timeout-ms as int"),
        ([], {"LMROUTE_PORT": "eighty"}, "port: cannot parse 'eighty' from LMROUTE_PORT as int"),
        ([], {"LMROUTE_WARMUP": "maybe"}, "warmup: cannot parse 'maybe' from LMROUTE_WARMUP as bool"),
        (["--max-queue", "٥"], {}, "max_queue: cannot parse '٥' from --max-queue as int"),  # int() took it as 5
        (["--max-queue", "5_000"], {}, "max_queue: cannot parse '5_000' from --max-queue as int"),
        (["--grace-s", "1_0"], {}, "grace_s: cannot parse '1_0' from --grace-s as float"),
        ([], {"LMROUTE_TENANTS": " , "}, "tenants: ' , ' from LMROUTE_TENANTS names nothing (separators only)"),
        (["--tenants", "a,b, a"], {}, "tenants: 'a' given twice in --tenants"),
    ],
)
def test_bad_flags_and_variables_exact_messages(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config_from_cli(["--bundle", "b", *argv], env)
    assert str(e.value) == message


def test_missing_bundle() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_cli([], {})
    assert str(e.value) == "bundle_path: required (--bundle or LMROUTE_BUNDLE)"
    assert config_from_cli([], {}, default_bundle=Path("d")).bundle_path == Path("d")


def test_scoring_cpus_are_checked_against_the_cpus_of_this_process() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    assert config_from_cli(["--bundle", "b"], {}).scoring_cpu_set == frozenset()
    if len(allowed) > 1:  # one CPU for the scorer, the rest for the event loop
        cfg = config_from_cli(["--bundle", "b"], {"LMROUTE_SCORING_CPUS": str(allowed[0])})
        assert cfg.scoring_cpu_set == {allowed[0]}
    with pytest.raises(ConfigError) as e:
        ServiceConfig(bundle_path=Path("b"), scoring_cpus="1-x")
    assert str(e.value) == "scoring_cpus: '1-x' is not a CPU number or range (e.g. 0 or 2-3)"
    with pytest.raises(ConfigError) as e:
        ServiceConfig(bundle_path=Path("b"), scoring_cpus="4096")
    assert str(e.value).startswith("scoring_cpus: CPU 4096 not available to this process (it may use ")
    every = ",".join(map(str, allowed))
    with pytest.raises(ConfigError) as e:
        ServiceConfig(bundle_path=Path("b"), scoring_cpus=every)
    assert str(e.value).startswith(f"scoring_cpus: {every} leaves no CPU for the event loop")


def test_cpu_lists_parse_like_linux_cpu_lists() -> None:
    assert parse_cpu_list("") == frozenset()
    assert parse_cpu_list("0") == {0}
    assert parse_cpu_list("0,4-6, 9") == {0, 4, 5, 6, 9}
    with pytest.raises(ValueError, match="'3-1' is not a CPU range"):
        parse_cpu_list("3-1")
    with pytest.raises(ValueError, match="'0-99999999999': CPU numbers go up to 65535"):
        parse_cpu_list("0-99999999999")  # refused before a range of 10^11 is built


def test_an_abbreviated_flag_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """An abbreviation was taken for the flag it starts (and would mean another once a flag is added);
    a flag given twice keeps the last (serve.sh gives its own, then the caller's)."""
    with pytest.raises(SystemExit) as e:
        config_from_cli(["--bundle", "b", "--max-q", "7"], {})
    assert e.value.code == 2 and "unrecognized arguments: --max-q 7" in capsys.readouterr().err
    assert config_from_cli(["--bundle", "b", "--port", "1", "--port", "2"], {}).port == 2
    assert config_from_cli(["--bundle", "b", "--plugin", "a", "--plugin", "b"], {}).plugins == ("a", "b")  # lists add


def test_listeners_need_ports_of_their_own_and_a_sqlite_store_a_file() -> None:
    with pytest.raises(ConfigError, match="metrics_port: 7000 is port's too"):
        ServiceConfig(bundle_path=Path("b"), port=7000, metrics_port=7000)
    with pytest.raises(ConfigError, match="http_port: 7001 is port's too"):
        ServiceConfig(bundle_path=Path("b"), port=7001, http_port=7001, upstreams_file="u.json")
    assert ServiceConfig(bundle_path=Path("b"), port=0, metrics_port=0).metrics_port == 0  # any free ones
    with pytest.raises(ConfigError, match=r"store: 'sqlite:' names no file \(sqlite:PATH\)"):
        ServiceConfig(bundle_path=Path("b"), store="sqlite:")


@pytest.mark.parametrize(
    ("dsn", "logged"),
    [
        ("postgresql://lm:S3cret@db:5432/lm", "postgresql://lm:***@db:5432/lm"),
        ("postgresql://lm@db/lm?password=S3cret&sslmode=require", "postgresql://lm@db/lm?password=***&sslmode=require"),
        ("postgres://db/lm?sslmode=require&PASSWORD=S3cret", "postgres://db/lm?sslmode=require&PASSWORD=***"),
        ("postgresql://db/lm?sslkey=k.pem&sslpassword=S3cret", "postgresql://db/lm?sslkey=k.pem&sslpassword=***"),
        ("sqlite:artifacts/outcomes.sqlite3", "sqlite:artifacts/outcomes.sqlite3"),
    ],
)
def test_the_store_dsns_password_is_never_logged(dsn: str, logged: str) -> None:
    """Wherever the DSN carries it: the user part, or libpq's password query parameter."""
    assert ServiceConfig(bundle_path=Path("b"), store=dsn).redacted()["store"] == logged


def test_a_libpq_keyword_dsn_is_refused_without_repeating_its_password() -> None:
    """`host=... password=...` is not a DSN the store takes; the refusal names it with the password out."""
    for dsn in ("host=127.0.0.1 port=5432 password=S3cret dbname=x", "host=h password='S3 cr\\'et' user=u"):
        with pytest.raises(ConfigError) as info:
            ServiceConfig(bundle_path=Path("b"), store=dsn)
        assert "S3" not in str(info.value) and "password=***" in str(info.value), str(info.value)


def test_tokens_that_hold_no_token_are_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tokens file of comments and blank lines, or an empty variable: refused with the other settings
    (it was a traceback at startup)."""
    empty = tmp_path / "tokens"
    empty.write_text("# no token yet\n\n")
    with pytest.raises(ConfigError, match=rf"^auth: the file {empty} holds no token \(a server that asks"):
        config_from_cli(["--bundle", "b", "--auth-tokens-file", str(empty)], {})
    monkeypatch.setenv("LMT", "")
    with pytest.raises(ConfigError, match=r"^auth: the variable LMT holds no token"):
        config_from_cli(["--bundle", "b", "--auth-tokens-env", "LMT"], {})


def test_a_variable_that_nearly_spells_a_settings_is_named() -> None:
    from lmroute.service.config import mistyped_variables

    env = {"LMROUTE_PLUGIN": "x", "LMROUTE_MAX_BATCHSIZE": "9", "LMROUTE_PORT": "1", "LMROUTE_TOKEN": "t"}
    env |= {"LMROUTE_TARGET": "h:1", "LMROUTE_EXPORT_MF_LR": "0.1", "LMROUTE_TLS_CERT": "c.pem"}
    assert mistyped_variables(env) == [
        ("LMROUTE_MAX_BATCHSIZE", "LMROUTE_MAX_BATCH_SIZE"),
        ("LMROUTE_PLUGIN", "LMROUTE_PLUGINS"),
    ]
