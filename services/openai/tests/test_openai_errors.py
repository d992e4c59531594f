"""The one table: the gateway's gRPC status and details -> OpenAI's error shape."""

from __future__ import annotations

import grpc
import pytest

from llmesh.kernel import errors
from llmesh.kernel.interceptors import STATUS_DETAILS_KEY
from llmesh_openai.errors import STATUS_TABLE, OpenAIError, from_gateway
from llmesh_openai.requests import CHAT_PARAMS, EMBED_PARAMS, GENERATE_PARAMS


def peer_error(exc: errors.LlmeshError) -> grpc.aio.AioRpcError:
    """What the gateway's kernel sends for ``exc``."""
    trailers = grpc.aio.Metadata((STATUS_DETAILS_KEY, exc.to_status().SerializeToString()))
    return grpc.aio.AioRpcError(exc.code, grpc.aio.Metadata(), trailers, exc.message)


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (errors.InvalidArgument("bad"), 400, "invalid_request_error"),
        (errors.Unauthenticated("who?"), 401, "authentication_error"),
        (errors.PermissionDenied("no"), 403, "permission_error"),
        (errors.NotFound("none"), 404, "not_found_error"),
        (errors.ResourceExhausted("slow down", retry_after_s=2.5), 429, "rate_limit_error"),
        (errors.Unavailable("later", retry_after_s=0.2), 503, "service_unavailable_error"),
        (errors.DeadlineExceeded("late"), 504, "timeout_error"),
        (errors.ResourceExhausted("big", reason="REQUEST_TOO_LARGE"), 413, "rate_limit_error"),
    ],
)
def test_status_table(error: errors.LlmeshError, status: int, kind: str) -> None:
    out = from_gateway(peer_error(error), GENERATE_PARAMS)
    assert (out.status, out.type, out.message) == (status, kind, error.message)
    assert out.code == error.reason.lower()
    if error.retry_after_s is not None:
        assert out.headers()["retry-after-ms"] == str(round(error.retry_after_s * 1000))
        assert int(out.headers()["retry-after"]) >= error.retry_after_s


def test_every_code_has_an_http_status() -> None:
    unlisted = {c for c in grpc.StatusCode if c not in STATUS_TABLE and c != grpc.StatusCode.OK}
    # The server faults: 500, with our message (a peer's text may hold internals).
    assert unlisted == {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.DATA_LOSS}  # fmt: skip
    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
        "failed to connect to all addresses; last error: 127.0.0.1:50051",
    )  # fmt: skip
    out = from_gateway(bare, GENERATE_PARAMS)
    assert out.status == 503 and "127.0.0.1" not in out.message and out.headers()


@pytest.mark.parametrize(
    ("params", "path", "param"),
    [
        (GENERATE_PARAMS, "input.sampling.top_p", "top_p"),
        (GENERATE_PARAMS, "input.sampling.stop[1]", "stop[1]"),
        (GENERATE_PARAMS, "input.messages.messages[2].content", "messages[2].content"),
        (GENERATE_PARAMS, "input.prompt", "prompt"),
        (GENERATE_PARAMS, "input.model", "model"),
        (CHAT_PARAMS, "sampling.max_tokens", "max_tokens"),
        (CHAT_PARAMS, "message", "messages"),
        (CHAT_PARAMS, "session_id", "llmesh.session_id"),
        (CHAT_PARAMS, "recall.k", "llmesh.recall.k"),
        (EMBED_PARAMS, "texts[3]", "input[3]"),
    ],
)
def test_field_paths_become_params(params: object, path: str, param: str) -> None:
    error = errors.InvalidArgument(
        "invalid request", field_violations=[errors.FieldViolation(path, "is wrong", "x.y")]
    )
    out = from_gateway(peer_error(error), params)  # type: ignore[arg-type]
    assert out.param == param and out.message == f"{param}: is wrong"


def test_error_body_shape() -> None:
    body = OpenAIError(400, "fix it", param="n", code="unsupported_value").body()
    assert body == {
        "error": {"message": "fix it", "type": "invalid_request_error", "param": "n",
                  "code": "unsupported_value"}
    }  # fmt: skip
