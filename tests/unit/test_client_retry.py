"""The clients' retry policy (lmroute.service.client_retry): backoff growth, cap and jitter; the server's
RetryInfo delay honoured and spread upwards only; no retry past the deadline, after the last attempt or
for a status that is not retryable. The errors are fakes carrying a status code and trailing metadata, as
grpc's errors do."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from lmroute.service.client_retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy, error_reason, retry_delay_s, retryable


class FakeError(grpc.RpcError):
    def __init__(
        self, code: grpc.StatusCode, delay_ms: int | None = None, reason: str = "", message: str = "x"
    ) -> None:
        self._message = message
        details = []
        if reason:
            info = any_pb2.Any()
            info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="lmroute.v1"))
            details.append(info)
        if delay_ms is not None:
            retry = any_pb2.Any()
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(delay_ms)
            retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
            details.append(retry)
        self._code = code
        status = status_pb2.Status(code=code.value[0], message=message, details=details)
        self._trailing = (("grpc-status-details-bin", status.SerializeToString()),) if details else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailing


BUSY = FakeError(grpc.StatusCode.UNAVAILABLE)


def test_the_computed_backoff_doubles_to_its_cap_within_its_jitter() -> None:
    p = DEFAULT_RETRY
    assert [round(p.backoff_s(n, BUSY, 0.5), 6) for n in range(1, 8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert p.backoff_s(1, BUSY, 0.0) == pytest.approx(0.04) and p.backoff_s(1, BUSY, 0.999999) == pytest.approx(0.06)
    assert p.backoff_s(7, BUSY, 0.999999) == 2.0  # the cap holds after the jitter too


def test_the_servers_delay_is_waited_and_only_lengthened() -> None:
    refused = FakeError(grpc.StatusCode.RESOURCE_EXHAUSTED, delay_ms=300, reason="OVERLOADED")
    assert retry_delay_s(refused) == 0.3 and error_reason(refused) == "OVERLOADED"
    assert DEFAULT_RETRY.backoff_s(1, refused, 0.0) == pytest.approx(0.3)
    assert DEFAULT_RETRY.backoff_s(5, refused, 0.999999) == pytest.approx(0.36)
    assert retry_delay_s(BUSY) is None and error_reason(BUSY) == ""


def test_when_a_call_is_over() -> None:
    p = DEFAULT_RETRY
    refused = FakeError(grpc.StatusCode.RESOURCE_EXHAUSTED, delay_ms=300)
    assert p.next_delay_s(1, refused, 0.0, None) == pytest.approx(0.3)
    assert p.next_delay_s(1, refused, 0.0, 0.32) == pytest.approx(0.3)
    assert p.next_delay_s(1, refused, 0.0, 0.3) is None  # the wait would reach the deadline
    assert p.next_delay_s(1, refused, 0.0, 0.305) is None  # it would leave the retry under MIN_ATTEMPT_S
    centuries = FakeError(grpc.StatusCode.RESOURCE_EXHAUSTED, delay_ms=10**14)
    assert p.next_delay_s(1, centuries, 0.0, None) is None  # no timeout, but no sleep time.sleep cannot take
    assert p.next_delay_s(4, refused, 0.0, None) is None  # the fourth attempt was the last
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
        assert p.next_delay_s(1, FakeError(code), 0.0, None) is None
    assert NO_RETRY.next_delay_s(1, BUSY, 0.0, None) is None


def test_a_message_over_the_size_limit_is_not_retried() -> None:
    """gRPC's own RESOURCE_EXHAUSTED for a message over its limit: the same message is as large again."""
    for said in (
        "CLIENT: Sent message larger than max (4601614 vs. 4194304)",
        "Received message larger than max (5 vs. 4)",
    ):
        assert not retryable(FakeError(grpc.StatusCode.RESOURCE_EXHAUSTED, message=said))
        assert (
            DEFAULT_RETRY.next_delay_s(1, FakeError(grpc.StatusCode.RESOURCE_EXHAUSTED, message=said), 0.0, None)
            is None
        )
    assert retryable(FakeError(grpc.StatusCode.RESOURCE_EXHAUSTED, message="queue full"))
    assert retryable(
        FakeError(grpc.StatusCode.UNAVAILABLE, message="Received message larger than max")
    )  # not a size refusal


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_attempts": 0}, "RetryPolicy.max_attempts: must be >= 1 (got 0)"),
        ({"initial_backoff_s": -1.0}, "RetryPolicy.initial_backoff_s: must be >= 0"),
        ({"max_backoff_s": 0.01}, "RetryPolicy.max_backoff_s: must be >= initial_backoff_s"),
        ({"multiplier": 0.5}, "RetryPolicy.multiplier: must be >= 1"),
        ({"jitter": 2.0}, "RetryPolicy.jitter: must be in [0, 1]"),
        ({"initial_backoff_s": "1"}, "RetryPolicy.initial_backoff_s: must be a finite number (got '1')"),
        ({"max_backoff_s": float("nan")}, "RetryPolicy.max_backoff_s: must be a finite number (got nan)"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        RetryPolicy(**changes)  # type: ignore[arg-type]
