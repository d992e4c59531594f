"""Which worker failures count against a worker, and the worker channel pool.

Calls themselves (deadline, trace, request id, error translation) go through
:mod:`llmesh.kernel.upstream`; channels come from the kernel's
:class:`~llmesh.kernel.channels.ChannelPool`, like every other outbound call of the mesh.
"""

from __future__ import annotations

import grpc

from llmesh.kernel.channels import ChannelPool

__all__ = ["RETRYABLE", "WORKER_FAULTS", "ChannelPool"]

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
# Codes worth trying on another worker before anything was sent to the client.
RETRYABLE = WORKER_FAULTS | {grpc.StatusCode.RESOURCE_EXHAUSTED}
