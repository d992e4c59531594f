"""Which worker failures count against a worker, and the worker channel pool.

Calls themselves (deadline, trace, request id, error translation) go through
:mod:`llmesh.kernel.upstream`; channels come from the kernel's
:class:`~llmesh.kernel.channels.ChannelPool`, like every other outbound call of the mesh.
"""

from __future__ import annotations

import grpc

from llmesh.kernel.channels import ChannelPool
from llmesh.kernel.upstream import peer_details

__all__ = ["RETRYABLE", "WORKER_FAULTS", "ChannelPool", "breaker_verdict"]

# Codes a worker (not the request) is to blame for: they count against its breaker.
WORKER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# A worker's deliberate refusals: it works as it should (a drain, a full queue), so
# they are retried elsewhere but never count against its breaker.
NOT_FAULTS = frozenset({"WORKER_DRAINING", "QUEUE_WAIT_TOO_LONG", "QUEUE_FULL"})


def breaker_verdict(exc: grpc.aio.AioRpcError) -> bool | None:
    """False (a failure for the worker's breaker) for a worker fault, else None (neutral)."""
    if exc.code() not in WORKER_FAULTS:
        return None
    return None if peer_details(exc).reason in NOT_FAULTS else False


# Codes worth trying on another worker before anything was sent to the client.
RETRYABLE = WORKER_FAULTS | {grpc.StatusCode.RESOURCE_EXHAUSTED}
