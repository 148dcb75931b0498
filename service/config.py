"""Service configuration: one frozen, keyword-only dataclass, built from CLI flags and LMROUTE_* env vars.

Every field of `ServiceConfig` is a CLI flag (`--max-batch-size`) and an environment variable
(`LMROUTE_MAX_BATCH_SIZE`); a flag beats the variable, the variable beats the default. Values are
validated at construction and a bad value raises `ConfigError` with an exact message naming the field,
e.g. ``max_batch_size: must be >= 1 (got 0)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmroute.service.errors import ConfigError

__all__ = ["ServiceConfig", "ENV_PREFIX", "config_from_cli", "build_arg_parser"]

ENV_PREFIX = "LMROUTE_"
_DEVICES = ("cpu", "cuda")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _doc(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """All settings of the serving process (units in the names)."""

    bundle_path: Path = field(metadata=_doc("router bundle directory (manifest.json inside)"))
    host: str = field(default="127.0.0.1", metadata=_doc("address to bind"))
    port: int = field(default=50051, metadata=_doc("TCP port; 0 picks a free one"))
    max_batch_size: int = field(
        default=16,
        metadata=_doc("most prompts in one batch (CPU: larger batches add latency, not throughput)"),
    )
    max_wait_us: int = field(
        default=0,
        metadata=_doc(
            "longest a batch waits to fill, microseconds; 0 = it leaves as soon as the scorer is free, "
            "so prompts only accumulate while a batch is being scored"
        ),
    )
    max_batch_tokens: int = field(
        default=16384, metadata=_doc("padded-token budget of a batch (longest prompt x prompts)")
    )
    max_queue: int = field(
        default=64,
        metadata=_doc(
            "most prompts admitted (queued or being scored) at once; beyond it RESOURCE_EXHAUSTED. "
            "Keep it near what the server scores within queue_timeout_ms (2 CPU cores: ~50 prompts/s), "
            "so overload is shed at once instead of timing out in the queue; also caps one Score call"
        ),
    )
    queue_timeout_ms: int = field(
        default=1000, metadata=_doc("longest a prompt may wait in the queue before UNAVAILABLE")
    )
    max_prompts_per_request: int = field(default=256, metadata=_doc("most prompts in one Score call"))
    max_prompt_chars: int = field(default=20000, metadata=_doc("longer prompts are refused with INVALID_ARGUMENT"))
    max_message_bytes: int = field(
        default=4 * 1024 * 1024, metadata=_doc("largest gRPC message received or sent, bytes")
    )
    intra_op_threads: int = field(default=1, metadata=_doc("ONNX Runtime intra-op threads"))
    encoder_chunk_size: int = field(
        default=8, metadata=_doc("prompts per encoder run inside a batch (length-sorted chunks)")
    )
    device: str = field(default="cpu", metadata=_doc("cpu or cuda"))
    grace_s: float = field(default=10.0, metadata=_doc("graceful-shutdown grace period, seconds"))
    warmup: bool = field(default=True, metadata=_doc("score a few prompts before reporting SERVING"))
    log_level: str = field(default="info", metadata=_doc("debug, info, warning or error"))
    stats_path: str = field(
        default="",
        metadata=_doc("write server timings (JSON histograms) here every second and at stop; empty = off"),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.bundle_path, Path):
            object.__setattr__(self, "bundle_path", Path(self.bundle_path))
        if str(self.bundle_path) in ("", "."):
            raise ConfigError("bundle_path: must name a bundle directory (got empty)")
        if not self.host:
            raise ConfigError("host: must not be empty")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: must be in [0, 65535] (got {self.port})")
        for name in (
            "max_batch_size",
            "max_batch_tokens",
            "max_queue",
            "queue_timeout_ms",
            "max_prompts_per_request",
            "max_prompt_chars",
            "intra_op_threads",
            "encoder_chunk_size",
        ):
            _at_least(name, getattr(self, name), 1)
        _at_least("max_wait_us", self.max_wait_us, 0)
        _at_least("max_message_bytes", self.max_message_bytes, 1024)
        if self.grace_s < 0:
            raise ConfigError(f"grace_s: must be >= 0 (got {self.grace_s})")
        if self.device not in _DEVICES:
            raise ConfigError(f"device: must be one of cpu, cuda (got {self.device!r})")
        if self.log_level not in _LOG_LEVELS:
            raise ConfigError(f"log_level: must be one of {', '.join(_LOG_LEVELS)} (got {self.log_level!r})")

    def redacted(self) -> dict[str, Any]:
        """The settings as a plain dict for logs (no field is secret today; kept as the one place)."""
        return {f.name: str(v) if isinstance(v, Path) else v for f, v in _items(self)}


def _at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: must be an integer (got {value!r})")
    if value < low:
        raise ConfigError(f"{name}: must be >= {low} (got {value})")


def _items(cfg: ServiceConfig) -> list[tuple[dataclasses.Field[Any], Any]]:
    return [(f, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)]


def _flag(name: str) -> str:
    return "--" + ("bundle" if name == "bundle_path" else name.replace("_", "-"))


def _env(name: str) -> str:
    return ENV_PREFIX + ("BUNDLE" if name == "bundle_path" else name.upper())


def _field_type(f: dataclasses.Field[Any]) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def _parse(f: dataclasses.Field[Any], raw: str, source: str) -> Any:
    kind = _field_type(f)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "Path":
            return Path(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{f.name}: cannot parse {raw!r} from {source} as {kind}") from None


def build_arg_parser(default_bundle: Path | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per ServiceConfig field (defaults come from env/dataclass)."""
    parser = argparse.ArgumentParser(
        prog="lmroute-serve",
        description="Serve a router bundle over gRPC. Every flag also reads LMROUTE_<NAME>.",
    )
    for f in dataclasses.fields(ServiceConfig):
        if f.name == "bundle_path":
            default = "(required)" if default_bundle is None else str(default_bundle)
        else:
            default = repr(f.default)
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            default=None,
            metavar=_field_type(f).upper(),
            help=f"{f.metadata.get('help', '')} [env {_env(f.name)}; default {default}]",
        )
    return parser


def config_from_cli(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    default_bundle: Path | None = None,
) -> ServiceConfig:
    """Build a ServiceConfig from flags (first), LMROUTE_* variables (second) and defaults.

    Raises ConfigError naming the field for an unparsable or invalid value, and when no bundle path
    is given anywhere and there is no `default_bundle`.
    """
    env = os.environ if environ is None else environ
    args = build_arg_parser(default_bundle).parse_args(argv)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServiceConfig):
        raw = getattr(args, f.name)
        if raw is not None:
            values[f.name] = _parse(f, raw, _flag(f.name))
        elif _env(f.name) in env:
            values[f.name] = _parse(f, env[_env(f.name)], _env(f.name))
    if "bundle_path" not in values:
        if default_bundle is None:
            raise ConfigError("bundle_path: required (--bundle or LMROUTE_BUNDLE)")
        values["bundle_path"] = default_bundle
    return ServiceConfig(**values)
