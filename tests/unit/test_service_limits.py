"""The edge's pure parts: quoting callers' strings in errors, the bound on error text, the call size
limits of a request, their settings, and the liveness watchdog driven by an injected clock."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from lmroute.service.config import BatchPolicy, ServiceConfig
from lmroute.service.errors import (
    MESSAGE_BYTES,
    ConfigError,
    InvalidArgument,
    NotFound,
    ScorerFailed,
    echo,
    status_of,
)
from lmroute.service.health_check import HealthServicer
from lmroute.service.liveness import LIVENESS_SERVICE, LivenessWatchdog
from lmroute.service.prompts import check_limits
from lmroute.v1 import router_pb2


def test_echo_quotes_short_strings_whole_and_cuts_long_ones() -> None:
    assert echo("mf") == "'mf'"
    assert echo("x" * 64) == repr("x" * 64)
    assert echo("y" * 200_000) == repr("y" * 64) + "... (200000 characters)"
    assert echo("\x00" * 100) == repr("\x00" * 64) + "... (100 characters)"


def test_status_messages_are_bounded_in_utf8_bytes() -> None:
    short = "prompts[3]: empty prompt"
    assert status_of(InvalidArgument(short)).message == short
    long = status_of(NotFound("n" * 5000)).message
    assert len(long.encode()) <= MESSAGE_BYTES and long.endswith("... (5000 characters)")
    assert long.startswith("n" * 900)
    wide = status_of(InvalidArgument("\u00e9\U0001f600" * 400)).message  # 2- and 4-byte characters
    assert len(wide.encode()) <= MESSAGE_BYTES and wide.endswith("... (800 characters)")
    assert "\ufffd" not in wide  # no character cut in two
    exact = "a" * MESSAGE_BYTES
    assert status_of(InvalidArgument(exact)).message == exact
    assert status_of(ScorerFailed("x" * 5000)).message == "internal error"


def _conversation(turns: int, content: str = "", role: str = "user") -> router_pb2.Prompt:
    msgs = [router_pb2.ChatMessage(role=role, content=content) for _ in range(turns)]
    return router_pb2.Prompt(conversation=router_pb2.Conversation(messages=msgs))


def test_check_limits_names_the_first_long_conversation_then_counts_characters() -> None:
    prompts = [router_pb2.Prompt(text="a" * 10), _conversation(3), _conversation(4), _conversation(9)]
    with pytest.raises(InvalidArgument) as e:
        check_limits(prompts, max_turns=3, max_request_chars=10**6)
    assert (e.value.message, e.value.reason) == (
        "prompts[2].conversation.messages: 4 turns (limit 3)",
        "TOO_MANY_TURNS",
    )
    with pytest.raises(InvalidArgument) as e:
        check_limits([_conversation(2)], "prompt", indexed=False, max_turns=1, max_request_chars=10)
    assert e.value.message == "prompt.conversation.messages: 2 turns (limit 1)"
    within = [router_pb2.Prompt(text="a" * 6), _conversation(2, "bb")]  # 6 + 2 x 2 = 10 characters
    check_limits(within, max_turns=2, max_request_chars=10)
    with pytest.raises(InvalidArgument) as e:
        check_limits([*within, router_pb2.Prompt(text="\u00e9")], max_turns=2, max_request_chars=10)
    assert (e.value.message, e.value.reason) == ("prompts: 11 characters in all (limit 10)", "REQUEST_TOO_LONG")
    check_limits([router_pb2.Prompt()], max_turns=1, max_request_chars=1)  # unset: nothing counted


def test_limit_settings_are_validated_with_exact_messages() -> None:
    cfg = ServiceConfig(bundle_path=Path("b"))
    assert (cfg.max_turns, cfg.max_request_chars, cfg.max_router_names) == (256, 1_000_000, 64)
    assert cfg.liveness_stall_s == 30.0
    assert cfg.max_request_chars >= cfg.batch.max_prompt_chars
    cases = [
        (dict(max_turns=0), "max_turns: must be >= 1 (got 0)"),
        (dict(max_request_chars=0), "max_request_chars: must be >= 1 (got 0)"),
        (dict(max_router_names=0), "max_router_names: must be >= 1 (got 0)"),
        (dict(max_request_chars=19_999), "max_request_chars: must be >= max_prompt_chars (20000) (got 19999)"),
        (dict(liveness_stall_s=-1.0), "liveness_stall_s: must be >= 0 and finite (0: never) (got -1.0)"),
        (dict(liveness_stall_s=math.inf), "liveness_stall_s: must be >= 0 and finite (0: never) (got inf)"),
    ]
    for kw, message in cases:
        with pytest.raises(ConfigError) as e:
            ServiceConfig(bundle_path=Path("b"), **kw)  # type: ignore[arg-type]
        assert str(e.value) == message
    small = ServiceConfig(bundle_path=Path("b"), max_request_chars=100, batch=BatchPolicy(max_prompt_chars=100))
    assert small.max_request_chars == 100


class _Stalls:
    """A StallSource whose answer the test sets."""

    def __init__(self) -> None:
        self.value = 0.0
        self.asked: list[float] = []

    def stalled_s(self, now: float) -> float:
        self.asked.append(now)
        return self.value


def test_watchdog_flips_liveness_on_a_stall_and_back_on_progress() -> None:
    async def run() -> list[tuple[bool, int]]:
        servicer = HealthServicer()
        await servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        source = _Stalls()
        dog = LivenessWatchdog(source, servicer, 30.0, clock=lambda: 123.0)
        seen = []
        for stalled in (0.0, 29.9, 30.0, 45.0, 0.0):
            source.value = stalled
            live = await dog.check()
            check = await servicer.Check(health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE), None)
            seen.append((live, check.status))
        assert source.asked == [123.0] * 5
        return seen

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert asyncio.run(run()) == [
        (True, serving),
        (True, serving),
        (False, not_serving),
        (False, not_serving),
        (True, serving),
    ]


def test_watchdog_polls_on_its_own_and_stops_on_close() -> None:
    async def run() -> tuple[int, int]:
        source = _Stalls()
        dog = LivenessWatchdog(source, HealthServicer(), 0.05)  # polls every 10 ms
        dog.start()
        t_end = time.monotonic() + 10
        while len(source.asked) < 3:
            assert time.monotonic() < t_end, "the watchdog never polled"
            await asyncio.sleep(0.005)
        await dog.close()
        after_close = len(source.asked)
        await asyncio.sleep(0.05)
        return after_close, len(source.asked)

    after_close, later = asyncio.run(run())
    assert later == after_close
    with pytest.raises(ValueError, match=r"stall_s: must be > 0 \(got 0\)"):
        LivenessWatchdog(_Stalls(), HealthServicer(), 0)
