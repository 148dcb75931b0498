"""The service's exception tree and the ONE table mapping each error to a gRPC status code.

    ServiceError                       base; carries a stable `reason` string (google.rpc.ErrorInfo)
    +-- InvalidArgument                INVALID_ARGUMENT; the message names the field,
                                       e.g. `prompts[3]: empty prompt`
    +-- NotFound                       NOT_FOUND (unknown router)
    +-- QueueFull                      RESOURCE_EXHAUSTED (admission refused: QUEUE_FULL or OVERLOADED;
                                       retry after the delay it carries)
    +-- TooManyStreams                 RESOURCE_EXHAUSTED (max_streams streaming calls open: health
                                       Watch, reflection; retry after the delay)
    +-- QueueTimeout                   UNAVAILABLE (waited in the queue longer than queue_timeout_ms)
    +-- NotReady                       UNAVAILABLE (bundle not loaded and warmed yet)
    +-- Draining                       UNAVAILABLE (shutting down; no new work)
    +-- DeadlineExpired                DEADLINE_EXCEEDED (client deadline passed before scoring, or
                                       DEADLINE_TOO_SHORT: it cannot hold the call at the measured cost)
    +-- ScorerFailed                   INTERNAL (the scorer raised; details logged, not returned)
    +-- OutOfMemory                    RESOURCE_EXHAUSTED (tokenising or scoring ran out of memory: the
                                       prompts of the batch are scored alone; retry after the delay)
    +-- OutcomeConflict                ALREADY_EXISTS (an outcome already stored with another value)
    +-- NoOutcomeStore                 FAILED_PRECONDITION (Feedback on a server without a store)
    +-- NoBundleEncoder                FAILED_PRECONDITION (DecisionsToJudge with a scorer not a bundle's)
    +-- JudgeListBusy                  RESOURCE_EXHAUSTED (a tenant's DecisionsToJudge while another of
                                       its calls is made or waits; retry after the delay)
    +-- StoreUnavailable               UNAVAILABLE (the outcome store could not make a write durable)
    +-- FeedbackRateExceeded           RESOURCE_EXHAUSTED (a tenant's outcomes past --feedback-rate a
                                       second: FEEDBACK_RATE; retry after the delay it carries)
    +-- BundleRefused                  FAILED_PRECONDITION (a hot-swap candidate bundle was refused: the
                                       loader's message, BUNDLE_INVALID; a served router missing,
                                       BUNDLE_INCOMPATIBLE; warm-up failed, BUNDLE_WARMUP_FAILED)
    +-- SwapInProgress                 ABORTED (another bundle swap is loading; retry after it)
    +-- VersionMoved                   ABORTED (ReloadBundle's if_version is not the serving version)
    +-- Unauthenticated                UNAUTHENTICATED (no valid token; never says which check failed)
    +-- PermissionDenied               PERMISSION_DENIED (a token bound to a tenant calling AdminService;
                                       a policy of its own where targets bind: TARGET_IS_BINDING)
    +-- EncoderUnavailable             UNAVAILABLE (a remote encoder's embeddings endpoint failed; per prompt)
    +-- UpstreamFailed                 UNAVAILABLE, HTTP 502 (the OpenAI-compatible front's upstream
                                       model unreachable, or it answered with a server error)
    +-- UpstreamTimeout                DEADLINE_EXCEEDED, HTTP 504 (the upstream did not answer in time)
    +-- BodyTimeout                    DEADLINE_EXCEEDED, HTTP 408 (an OpenAI front caller did not send
                                       its request body in time)
    +-- UpstreamsMismatch              FAILED_PRECONDITION, HTTP 500 (the front's upstreams file names
                                       models the serving bundle cannot route among)
    ConfigError(ValueError)            a bad setting; raised at startup, never sent over the wire

This module imports no gRPC: the scheduler raises these, the transport converts them with `status_of`.
Codes are google.rpc.Code numbers (`Code`), whose names equal grpc.StatusCode member names.

Error text is bounded, because it travels in response metadata (grpc-message and the google.rpc.Status
in grpc-status-details-bin): a caller-supplied string is quoted into a message through `echo`, which
keeps its first `ECHO_CHARS` characters and states the full length, and `status_of` cuts any message to
`MESSAGE_BYTES` bytes of UTF-8.

The OpenAI-compatible HTTP front answers a failed request with `http_status`: the status code's usual
HTTP equivalent (400, 404, 429, 503, ...), 502 / 504 for the upstream errors, and 500 for an upstreams
file that does not fit the bundle.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BodyTimeout",
    "Code",
    "ConfigError",
    "DeadlineExpired",
    "Draining",
    "InvalidArgument",
    "NotFound",
    "NotReady",
    "NoOutcomeStore",
    "NoBundleEncoder",
    "JudgeListBusy",
    "OutcomeConflict",
    "StoreUnavailable",
    "QueueFull",
    "QueueTimeout",
    "TooManyStreams",
    "OutOfMemory",
    "ScorerFailed",
    "ServiceError",
    "BundleRefused",
    "SwapInProgress",
    "VersionMoved",
    "Unauthenticated",
    "PermissionDenied",
    "EncoderUnavailable",
    "FeedbackRateExceeded",
    "UpstreamFailed",
    "UpstreamTimeout",
    "UpstreamsMismatch",
    "ECHO_CHARS",
    "MESSAGE_BYTES",
    "StatusInfo",
    "echo",
    "http_status",
    "status_of",
]

ECHO_CHARS = 64
"""Characters of a caller-supplied string that an error message quotes (`echo`)."""
MESSAGE_BYTES = 1024
DEADLINE_SLACK_S = 0.02
"""A call gRPC ends within this of its deadline is counted as past its deadline (DEADLINE_EXCEEDED), not
as given up by its caller (CANCELLED): gRPC cancels the handler at the deadline by a clock of its own."""
"""Most UTF-8 bytes of an error message on the wire (`status_of` cuts longer ones)."""


class Code(enum.IntEnum):
    """The google.rpc.Code values this service returns."""

    OK = 0
    CANCELLED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class ConfigError(ValueError):
    """A setting is invalid; the message names the field, e.g. `port: must be in [0, 65535] (got -1)`."""


class ServiceError(Exception):
    """Base of every error the service returns; `reason` is a stable UPPER_SNAKE machine reason."""

    default_reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.retry_after_ms = retry_after_ms  # the retry delay hint when set, over the table's


class InvalidArgument(ServiceError):
    """A request field is invalid; the message starts with the field path."""

    default_reason = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    """A named thing (router) does not exist."""

    default_reason = "ROUTER_NOT_FOUND"


class QueueFull(ServiceError):
    """Admission refused: max_queue prompts admitted already (QUEUE_FULL), or the work ahead at the
    measured cost is more than admission allows (OVERLOADED)."""

    default_reason = "QUEUE_FULL"


class TooManyStreams(ServiceError):
    """A streaming call (health Watch, server reflection) refused: max_streams of them are open."""

    default_reason = "TOO_MANY_STREAMS"


class QueueTimeout(ServiceError):
    """The prompt waited longer than queue_timeout_ms and was dropped before scoring."""

    default_reason = "QUEUE_TIMEOUT"


class NotReady(ServiceError):
    """The bundle is not loaded and warmed yet."""

    default_reason = "NOT_READY"


class Draining(ServiceError):
    """The server is shutting down and takes no new work."""

    default_reason = "DRAINING"


class DeadlineExpired(ServiceError):
    """The client's deadline passed before the prompt reached the scorer."""

    default_reason = "DEADLINE_EXCEEDED"


class ScorerFailed(ServiceError):
    """The scorer raised; the wire message is generic and the details are logged."""

    default_reason = "SCORER_FAILED"


class OutOfMemory(ServiceError):
    """Tokenising or scoring raised MemoryError (a process memory limit reached): the call's prompts need
    more than the server can hold now; smaller calls, or the same one later, may pass."""

    default_reason = "OUT_OF_MEMORY"


class OutcomeConflict(ServiceError):
    """An outcome for the same decision (or prompt), kind, model and source is stored with another value."""

    default_reason = "OUTCOME_CONFLICT"


class NoOutcomeStore(ServiceError):
    """Feedback reached a server that runs without an outcome store (--store empty)."""

    default_reason = "NO_OUTCOME_STORE"


class NoBundleEncoder(ServiceError):
    """DecisionsToJudge reached a server whose scorer is not a bundle's: no encoder to pick decisions with."""

    default_reason = "NO_BUNDLE_ENCODER"


class JudgeListBusy(ServiceError):
    """A tenant's DecisionsToJudge call while another call of that tenant is being answered or waits its
    turn: one at a time a tenant, so that no tenant's calls queue ahead of everyone else's."""

    default_reason = "JUDGE_LIST_BUSY"


class StoreUnavailable(ServiceError):
    """The outcome store could not make a write durable (its commit failed or its queue is full);
    nothing of the call was acknowledged."""

    default_reason = "STORE_UNAVAILABLE"


class FeedbackRateExceeded(ServiceError):
    """A Feedback call whose tenant has reported more outcomes than `feedback_rate` a second allows
    (lmroute.service.feedback_rate); nothing of the call was taken. Carries the delay until it fits."""

    default_reason = "FEEDBACK_RATE"


class BundleRefused(ServiceError):
    """A hot-swap candidate bundle was refused; the bundle serving before keeps serving."""

    default_reason = "BUNDLE_INVALID"


class SwapInProgress(ServiceError):
    """A bundle swap was asked for while another one is loading."""

    default_reason = "SWAP_IN_PROGRESS"


class VersionMoved(ServiceError):
    """A conditional bundle swap found another version serving than the one it was made for."""

    default_reason = "VERSION_MOVED"


class Unauthenticated(ServiceError):
    """The call carries no valid token. The message never says which check failed."""

    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    """The caller may not make this call: a token bound to a tenant speaks for that tenant only (it cannot
    administer the server); with binding targets a tenant holding one cannot set its own policy."""

    default_reason = "PERMISSION_DENIED"


class EncoderUnavailable(ServiceError):
    """A remote encoder's embeddings endpoint failed after its retries (the message names the model and
    the failure); each prompt of the batch gets it as its own error."""

    default_reason = "ENCODER_UNAVAILABLE"


class UpstreamFailed(ServiceError):
    """The OpenAI-compatible front's upstream model could not be reached or answered with a server error
    (the message names the model and what happened; HTTP 502). `logged`: the message without what the
    upstream answered (an error body may quote the prompt; the caller gets it, the log does not)."""

    default_reason = "UPSTREAM_FAILED"

    def __init__(self, message: str, *, logged: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.logged = message if logged is None else logged


class UpstreamTimeout(ServiceError):
    """The front's upstream model did not answer within its timeout (HTTP 504). `logged`: the message as
    the server's log has it (naming the upstream's URL, which the caller's message does not)."""

    default_reason = "UPSTREAM_TIMEOUT"

    def __init__(self, message: str, *, logged: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.logged = message if logged is None else logged


class UpstreamsMismatch(ServiceError):
    """The OpenAI front's upstreams file names models the serving bundle cannot route among (not predicted
    by its default quality router, unpriced, or no such router): the deployment's to fix, not the caller's
    (HTTP 500; the message says what does not fit)."""

    default_reason = "UPSTREAMS_MISMATCH"


class BodyTimeout(ServiceError):
    """The OpenAI front's caller did not send its request body within the front's deadline (HTTP 408)."""

    default_reason = "BODY_TIMEOUT"


@dataclass(frozen=True)
class StatusInfo:
    """How one error goes on the wire: status code, ErrorInfo reason, message, optional retry delay."""

    code: Code
    reason: str
    message: str
    retry_after_ms: int | None = None


# THE table: exception class -> (status code, retry delay hint in ms or None).
_TABLE: dict[type[ServiceError], tuple[Code, int | None]] = {
    InvalidArgument: (Code.INVALID_ARGUMENT, None),
    NotFound: (Code.NOT_FOUND, None),
    QueueFull: (Code.RESOURCE_EXHAUSTED, 50),
    TooManyStreams: (Code.RESOURCE_EXHAUSTED, 1000),
    QueueTimeout: (Code.UNAVAILABLE, 100),
    NotReady: (Code.UNAVAILABLE, 1000),
    Draining: (Code.UNAVAILABLE, 1000),
    DeadlineExpired: (Code.DEADLINE_EXCEEDED, None),
    ScorerFailed: (Code.INTERNAL, None),
    OutOfMemory: (Code.RESOURCE_EXHAUSTED, 1000),
    OutcomeConflict: (Code.ALREADY_EXISTS, None),
    NoOutcomeStore: (Code.FAILED_PRECONDITION, None),
    NoBundleEncoder: (Code.FAILED_PRECONDITION, None),
    JudgeListBusy: (Code.RESOURCE_EXHAUSTED, 1000),
    StoreUnavailable: (Code.UNAVAILABLE, 500),
    FeedbackRateExceeded: (Code.RESOURCE_EXHAUSTED, 1000),
    BundleRefused: (Code.FAILED_PRECONDITION, None),
    SwapInProgress: (Code.ABORTED, None),
    VersionMoved: (Code.ABORTED, None),
    Unauthenticated: (Code.UNAUTHENTICATED, None),
    PermissionDenied: (Code.PERMISSION_DENIED, None),
    EncoderUnavailable: (Code.UNAVAILABLE, 1000),
    UpstreamFailed: (Code.UNAVAILABLE, None),
    UpstreamTimeout: (Code.DEADLINE_EXCEEDED, None),
    BodyTimeout: (Code.DEADLINE_EXCEEDED, None),
    UpstreamsMismatch: (Code.FAILED_PRECONDITION, None),
}

# The HTTP status of each code, for the OpenAI-compatible front (lmroute.service.openai_front); the
# upstream errors have their own (a gateway's 502 and 504), the rest follow the usual gRPC-HTTP mapping.
_HTTP_BY_CODE: dict[Code, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.UNAUTHENTICATED: 401,
}
_HTTP_BY_ERROR: dict[type[ServiceError], int] = {
    UpstreamFailed: 502,
    UpstreamTimeout: 504,
    BodyTimeout: 408,
    UpstreamsMismatch: 500,
}

_INTERNAL_MESSAGE = "internal error"


def echo(value: str) -> str:
    """`value` quoted for an error message: its repr, cut to its first ECHO_CHARS characters with the
    full length stated, e.g. ``'aaaa...a'... (200000 characters)``."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}... ({len(value)} characters)"


def _bounded(message: str) -> str:
    """`message` cut to at most MESSAGE_BYTES bytes of UTF-8, its full length stated after the cut."""
    if len(message) * 4 <= MESSAGE_BYTES:  # a character is at most 4 bytes of UTF-8
        return message
    data = message.encode("utf-8", "replace")
    if len(data) <= MESSAGE_BYTES:
        return message
    tail = f"... ({len(message)} characters)"
    head = data[: MESSAGE_BYTES - len(tail)].decode("utf-8", "ignore")  # drops a character cut in two
    return head + tail


def http_status(exc: BaseException) -> tuple[int, StatusInfo]:
    """The HTTP status and wire status of any exception (the front's answer to a failed request)."""
    info = status_of(exc)
    own = [status for cls, status in _HTTP_BY_ERROR.items() if isinstance(exc, cls)]
    return (own[0] if own else _HTTP_BY_CODE[info.code]), info


def status_of(exc: BaseException) -> StatusInfo:
    """The wire status of any exception: a ServiceError by the table, anything else INTERNAL.

    Messages of ScorerFailed and of unknown exceptions are replaced by a generic text so that no
    internals leak; log the exception itself. A message longer than MESSAGE_BYTES bytes is cut.
    """
    if isinstance(exc, ServiceError):
        for cls in type(exc).__mro__:
            if cls in _TABLE:
                code, retry = _TABLE[cls]
                message = _INTERNAL_MESSAGE if code is Code.INTERNAL else _bounded(exc.message)
                if exc.retry_after_ms is not None:  # the error's own delay (an upstream's Retry-After)
                    retry = exc.retry_after_ms
                return StatusInfo(code, exc.reason, message, retry)
    return StatusInfo(Code.INTERNAL, "INTERNAL", _INTERNAL_MESSAGE, None)
