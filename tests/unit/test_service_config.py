"""ServiceConfig: defaults, flag > env > default precedence, exact validation messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lmroute.service.config import ServiceConfig, build_arg_parser, config_from_cli
from lmroute.service.errors import ConfigError


def test_defaults_and_frozen() -> None:
    cfg = ServiceConfig(bundle_path=Path("b"))
    assert cfg.host == "127.0.0.1" and cfg.device == "cpu" and cfg.max_batch_size == 16
    assert cfg.max_wait_us == 0 and cfg.max_queue == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        ServiceConfig(Path("b"))  # type: ignore[misc]  # keyword-only


def test_flag_beats_env_beats_default() -> None:
    env = {
        "LMROUTE_BUNDLE": "/env/bundle",
        "LMROUTE_MAX_BATCH_SIZE": "8",
        "LMROUTE_PORT": "7000",
        "LMROUTE_WARMUP": "false",
    }
    cfg = config_from_cli(["--max-batch-size", "32", "--grace-s", "2.5"], env)
    assert cfg.bundle_path == Path("/env/bundle")
    assert cfg.max_batch_size == 32 and cfg.port == 7000 and cfg.grace_s == 2.5
    assert cfg.warmup is False and cfg.max_wait_us == 0


def test_every_field_has_a_flag() -> None:
    text = build_arg_parser().format_help()
    for f in dataclasses.fields(ServiceConfig):
        flag = "--bundle" if f.name == "bundle_path" else "--" + f.name.replace("_", "-")
        assert flag in text
        env = "LMROUTE_BUNDLE" if f.name == "bundle_path" else "LMROUTE_" + f.name.upper()
        assert env in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size: must be >= 1 (got 0)"),
        ({"max_wait_us": -1}, "max_wait_us: must be >= 0 (got -1)"),
        ({"port": 70000}, "port: must be in [0, 65535] (got 70000)"),
        ({"device": "tpu"}, "device: must be one of cpu, cuda (got 'tpu')"),
        ({"log_level": "loud"}, "log_level: must be one of debug, info, warning, error (got 'loud')"),
        ({"grace_s": -1.0}, "grace_s: must be >= 0 (got -1.0)"),
        ({"max_queue": 2.5}, "max_queue: must be an integer (got 2.5)"),
        ({"max_message_bytes": 10}, "max_message_bytes: must be >= 1024 (got 10)"),
        ({"bundle_path": Path("")}, "bundle_path: must name a bundle directory (got empty)"),
    ],
)
def test_bad_values_exact_messages(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"bundle_path": Path("b")}
    args.update(kwargs)
    with pytest.raises(ConfigError) as e:
        ServiceConfig(**args)  # type: ignore[arg-type]
    assert str(e.value) == message


def test_unparsable_env_and_missing_bundle() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_cli([], {"LMROUTE_BUNDLE": "b", "LMROUTE_PORT": "eighty"})
    assert str(e.value) == "port: cannot parse 'eighty' from LMROUTE_PORT as int"
    with pytest.raises(ConfigError) as e:
        config_from_cli([], {})
    assert str(e.value) == "bundle_path: required (--bundle or LMROUTE_BUNDLE)"
    assert config_from_cli([], {}, default_bundle=Path("d")).bundle_path == Path("d")
