"""An error's StatusInfo (lmroute.service.errors) as the grpc.Status a call ends with: the code, the
message, and a google.rpc.Status in the trailing metadata carrying an ErrorInfo (the stable reason, domain
`ERROR_DOMAIN`) and, when the error has one, a RetryInfo (the retry delay). Used by the request-context
interceptor for every refused unary call and by the stream cap for refused streams."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from lmroute.service.errors import StatusInfo

__all__ = ["ERROR_DOMAIN", "code_name", "wire_status"]

ERROR_DOMAIN = "lmroute.v1"

_CODE_NAMES: dict[int, str] = {c.value[0]: c.name for c in grpc.StatusCode}


def code_name(number: int) -> str:
    """The gRPC status code's name of its number ("INVALID_ARGUMENT" for 3; the number when unknown)."""
    return _CODE_NAMES.get(number, str(number))


@dataclass(frozen=True)
class _Status(grpc.Status):  # type: ignore[misc]  # grpc has no type stubs: Any
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def wire_status(info: StatusInfo, trailers: tuple[tuple[str, str | bytes], ...] = ()) -> grpc.Status:
    """`info` as a grpc.Status: its google.rpc.Status (ErrorInfo, RetryInfo details) in the trailing
    metadata, `trailers` after it."""
    details = []
    err = any_pb2.Any()
    err.Pack(error_details_pb2.ErrorInfo(reason=info.reason, domain=ERROR_DOMAIN))
    details.append(err)
    if info.retry_after_ms is not None:
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(info.retry_after_ms)
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    status = rpc_status.to_status(status_pb2.Status(code=int(info.code), message=info.message, details=details))
    return _Status(status.code, status.details, (*status.trailing_metadata, *trailers))
