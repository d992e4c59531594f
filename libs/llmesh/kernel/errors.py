"""Domain errors and their one mapping to gRPC status codes with rich details.

Services raise these; the error interceptor (``kernel.interceptors``) turns them
into ``google.rpc.Status`` trailers. Nothing else in the code base picks status
codes for domain failures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from llmesh.kernel.reasons import ErrorReason

DOMAIN = "llmesh.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field: its path (``sampling.top_p``), what to fix, and the rule id.

    ``reason`` is the broken ``buf.validate`` rule's id (``string.max_len``) when the
    contract validator found it; it goes into ``BadRequest.FieldViolation.reason``.
    """

    field: str
    description: str
    reason: str = ""


@dataclass(frozen=True)
class QuotaViolation:
    """One exhausted quota: which (``subject``) and why (``description``)."""

    subject: str
    description: str


class LlmeshError(Exception):
    """Base of every domain error. Subclasses fix the status code."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason: str = ErrorReason.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
        field_violations: Sequence[FieldViolation] = (),
        quota_violations: Sequence[QuotaViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.retry_after_s = retry_after_s
        self.field_violations = tuple(field_violations)
        self.quota_violations = tuple(quota_violations)

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` sent in the ``grpc-status-details-bin`` trailer."""
        details: list[any_pb2.Any] = []

        def pack(message: object) -> None:
            packed = any_pb2.Any()
            packed.Pack(message)  # type: ignore[arg-type]
            details.append(packed)

        pack(
            error_details_pb2.ErrorInfo(
                reason=self.reason, domain=DOMAIN, metadata=dict(self.metadata)
            )
        )
        if self.field_violations:
            pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description, reason=v.reason
                        )
                        for v in self.field_violations
                    ]
                )
            )
        if self.quota_violations:
            pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=v.subject, description=v.description
                        )
                        for v in self.quota_violations
                    ]
                )
            )
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(max(0, round(self.retry_after_s * 1000)))
            pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return status_pb2.Status(
            code=getattr(code_pb2, self.code.name),
            message=self.message,
            details=details,
        )


class InvalidArgument(LlmeshError):
    """The request is malformed; ``field_violations`` name each bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = ErrorReason.INVALID_ARGUMENT


class NotFound(LlmeshError):
    """The named thing does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = ErrorReason.NOT_FOUND


class AlreadyExists(LlmeshError):
    """The thing to create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = ErrorReason.ALREADY_EXISTS


class FailedPrecondition(LlmeshError):
    """The system is not in a state that allows the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = ErrorReason.FAILED_PRECONDITION


class Aborted(LlmeshError):
    """A concurrency conflict (e.g. a stale ``expected_version``)."""

    code = grpc.StatusCode.ABORTED
    default_reason = ErrorReason.ABORTED


class ResourceExhausted(LlmeshError):
    """A queue, quota or budget is full; set ``retry_after_s``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = ErrorReason.RESOURCE_EXHAUSTED


class Unavailable(LlmeshError):
    """A dependency is down or the service is shutting down; retryable."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = ErrorReason.UNAVAILABLE


class DeadlineExceeded(LlmeshError):
    """The caller's deadline passed before the work finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = ErrorReason.DEADLINE_EXCEEDED


class Unauthenticated(LlmeshError):
    """Credentials are missing or invalid."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = ErrorReason.UNAUTHENTICATED


class PermissionDenied(LlmeshError):
    """The principal lacks the role or tenant for this call."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = ErrorReason.PERMISSION_DENIED


class Cancelled(LlmeshError):
    """The caller cancelled."""

    code = grpc.StatusCode.CANCELLED
    default_reason = ErrorReason.CANCELLED


class OutOfRange(LlmeshError):
    """A value is past the end of a valid range (e.g. a page beyond the last)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


def invalid(field_name: str, description: str) -> InvalidArgument:
    """Shorthand for an ``InvalidArgument`` about one field."""
    return InvalidArgument(
        f"{field_name}: {description}",
        field_violations=[FieldViolation(field_name, description)],
    )
