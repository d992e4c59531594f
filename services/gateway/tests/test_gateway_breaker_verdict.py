"""Which worker answers count against its circuit breaker: faults do; a worker's
deliberate refusals (draining, a forecast queue wait) and client faults do not."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from llmesh_gateway.upstream import breaker_verdict


def _answer(code: grpc.StatusCode, reason: str = "") -> grpc.aio.AioRpcError:
    trailers = grpc.aio.Metadata()
    if reason:
        status = status_pb2.Status(code=code.value[0], message="refused")
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain="llmesh"))
        trailers.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, "refused", "")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.UNAVAILABLE, ""),  # connection refused, no status from the peer
        (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_ERROR"),
        (grpc.StatusCode.INTERNAL, "INTERNAL"),
        (grpc.StatusCode.UNKNOWN, ""),
    ],
)
def test_worker_faults_count_as_failures(code: grpc.StatusCode, reason: str) -> None:
    assert breaker_verdict(_answer(code, reason)) is False


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.UNAVAILABLE, "WORKER_DRAINING"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_WAIT_TOO_LONG"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL"),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ""),
    ],
)
def test_refusals_and_client_faults_are_neutral(code: grpc.StatusCode, reason: str) -> None:
    assert breaker_verdict(_answer(code, reason)) is None
