"""The error table's wire form, field by field (kills errors.py's mutants: docs/quality.md).

``LlmeshError.to_status`` is what every client reads: the code, the message and the
``google.rpc`` details in a fixed order. Each assertion names something a broken
mapping would get wrong.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from llmesh.kernel import errors
from llmesh.kernel.errors import (
    DOMAIN,
    FieldViolation,
    InvalidArgument,
    LlmeshError,
    QuotaViolation,
    ResourceExhausted,
    invalid,
)
from llmesh.kernel.reasons import ErrorReason

SUBCLASSES = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    (errors.Aborted, grpc.StatusCode.ABORTED, code_pb2.ABORTED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, code_pb2.DEADLINE_EXCEEDED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
    (errors.Cancelled, grpc.StatusCode.CANCELLED, code_pb2.CANCELLED),
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE, code_pb2.OUT_OF_RANGE),
    (errors.LlmeshError, grpc.StatusCode.INTERNAL, code_pb2.INTERNAL),
]


def _unpack(status: object) -> list[object]:
    """The details of a ``google.rpc.Status`` as messages, in order."""
    kinds = {
        "google.rpc.ErrorInfo": error_details_pb2.ErrorInfo,
        "google.rpc.BadRequest": error_details_pb2.BadRequest,
        "google.rpc.QuotaFailure": error_details_pb2.QuotaFailure,
        "google.rpc.RetryInfo": error_details_pb2.RetryInfo,
    }
    out: list[object] = []
    for any_ in status.details:  # type: ignore[attr-defined]
        name = any_.TypeName()
        message = kinds[name]()
        assert any_.Unpack(message)
        out.append(message)
    return out


@pytest.mark.parametrize(("cls", "grpc_code", "rpc_code"), SUBCLASSES)
def test_each_class_has_its_code_and_default_reason(
    cls: type[LlmeshError], grpc_code: grpc.StatusCode, rpc_code: int
) -> None:
    exc = cls("what went wrong")
    assert exc.code == grpc_code
    status = exc.to_status()
    assert status.code == rpc_code
    assert status.message == "what went wrong"
    assert str(exc) == "what went wrong"
    assert exc.args == ("what went wrong",)
    (info,) = _unpack(status)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == cls.default_reason == grpc_code.name
    assert info.domain == DOMAIN == "llmesh.dev"
    assert dict(info.metadata) == {}


def test_defaults_of_a_bare_error() -> None:
    exc = LlmeshError("m")
    assert exc.message == "m"
    assert exc.reason == ErrorReason.INTERNAL
    assert exc.metadata == {}
    assert exc.retry_after_s is None
    assert exc.field_violations == ()
    assert exc.quota_violations == ()


def test_explicit_reason_and_metadata_are_kept_and_copied() -> None:
    metadata = {"model": "m1", "worker": "w"}
    exc = errors.NotFound("no model", reason="MODEL_NOT_FOUND", metadata=metadata)
    metadata["model"] = "changed"
    assert exc.reason == "MODEL_NOT_FOUND"
    assert exc.metadata == {"model": "m1", "worker": "w"}
    (info,) = _unpack(exc.to_status())
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "MODEL_NOT_FOUND"
    assert dict(info.metadata) == {"model": "m1", "worker": "w"}


def test_every_detail_in_order_with_every_field() -> None:
    exc = ResourceExhausted(
        "slow down",
        reason="RATE_LIMITED",
        metadata={"bucket": "requests"},
        retry_after_s=1.5,
        field_violations=[
            FieldViolation("a.b", "too long", "string.max_len"),
            FieldViolation("c[0]", "required"),
        ],
        quota_violations=[
            QuotaViolation("tenant:t1", "requests per minute"),
            QuotaViolation("key:k", "tokens per minute"),
        ],
    )
    assert isinstance(exc.field_violations, tuple)
    assert isinstance(exc.quota_violations, tuple)
    status = exc.to_status()
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    info, bad, quota, retry = _unpack(status)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "RATE_LIMITED",
        "llmesh.dev",
        {"bucket": "requests"},
    )
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [(v.field, v.description, v.reason) for v in bad.field_violations] == [
        ("a.b", "too long", "string.max_len"),
        ("c[0]", "required", ""),
    ]
    assert isinstance(quota, error_details_pb2.QuotaFailure)
    assert [(v.subject, v.description) for v in quota.violations] == [
        ("tenant:t1", "requests per minute"),
        ("key:k", "tokens per minute"),
    ]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 1500


@pytest.mark.parametrize(
    ("retry_after_s", "millis"),
    [(0.0, 0), (-3.0, 0), (0.0004, 0), (0.0006, 1), (2.0, 2000), (0.25, 250)],
)
def test_retry_delay_is_rounded_to_milliseconds_and_never_negative(
    retry_after_s: float, millis: int
) -> None:
    details = _unpack(errors.Unavailable("later", retry_after_s=retry_after_s).to_status())
    assert len(details) == 2  # ErrorInfo, RetryInfo: a zero delay is still sent
    retry = details[1]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == millis
    assert retry.retry_delay.seconds >= 0 and retry.retry_delay.nanos >= 0


def test_only_the_details_that_apply_are_sent() -> None:
    only_quota = _unpack(
        ResourceExhausted("q", quota_violations=[QuotaViolation("s", "d")]).to_status()
    )
    assert [type(d).__name__ for d in only_quota] == ["ErrorInfo", "QuotaFailure"]
    only_fields = _unpack(
        InvalidArgument("f", field_violations=[FieldViolation("x", "y")]).to_status()
    )
    assert [type(d).__name__ for d in only_fields] == ["ErrorInfo", "BadRequest"]


def test_invalid_names_the_field_in_message_and_violation() -> None:
    exc = invalid("sampling.top_p", "must be in (0, 1]")
    assert isinstance(exc, InvalidArgument)
    assert exc.message == "sampling.top_p: must be in (0, 1]"
    assert exc.reason == ErrorReason.INVALID_ARGUMENT
    assert exc.field_violations == (FieldViolation("sampling.top_p", "must be in (0, 1]", ""),)
    _, bad = _unpack(exc.to_status())
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("sampling.top_p", "must be in (0, 1]")
    ]
