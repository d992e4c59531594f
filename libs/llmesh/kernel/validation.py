"""Request decoding and contract validation for the kernel server interceptor.

Every request is parsed here (not by grpc), so malformed wire bytes and invalid UTF-8
become ``INVALID_ARGUMENT`` with ``ErrorInfo.reason = MALFORMED_REQUEST`` through the
kernel's one error mapping instead of grpc's ``UNKNOWN``. A parsed request is then
checked against the ``buf.validate`` rules in ``protos/`` (``kernel.rulecheck`` runs the
standard rules natively; the ``protovalidate`` package answers for anything else): a
broken rule is ``INVALID_ARGUMENT`` with ``ErrorInfo.reason = INVALID_FIELD`` and one
``BadRequest.FieldViolation`` per violation with the field path (written like
protobuf-es ``pathToString``, so Node and Python agree), the rule id (``reason``) and
the rule's message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import protovalidate
from buf.validate import validate_pb2
from google.protobuf import message as pb_message

from llmesh.kernel.errors import FieldViolation, InvalidArgument
from llmesh.kernel.reasons import ErrorReason
from llmesh.kernel.rulecheck import RuleChecker
from llmesh.kernel.violations import Violation, subscript

MALFORMED_REQUEST = ErrorReason.MALFORMED_REQUEST
Deserializer = Callable[[bytes], Any]


def decode(deserializer: Deserializer, raw: bytes, *, method: str) -> Any:
    """Parse ``raw`` with the method's deserializer; bad bytes are an ``InvalidArgument``."""
    try:
        return deserializer(raw)
    except (pb_message.DecodeError, ValueError, RecursionError) as exc:
        # upb reports the cause ("String field had bad UTF-8", "Wire format was
        # corrupt"); it names no server internals.
        cause = str(exc).rpartition(": ")[2] or type(exc).__name__
        raise InvalidArgument(
            f"malformed request for {method}: {cause}; send a serialized "
            "protobuf message of the method's request type (strings must be UTF-8)",
            reason=MALFORMED_REQUEST,
            metadata={"method": method},
        ) from None


def field_path(path: validate_pb2.FieldPath) -> str:
    """``messages[2].content`` / ``metadata["k"]``: protobuf-es ``pathToString`` format."""
    out: list[str] = []
    for element in path.elements:
        if out:
            out.append(".")
        out.append(element.field_name)
        kind = element.WhichOneof("subscript")
        if kind is not None:
            out.append(subscript(getattr(element, kind)))
    return "".join(out)


class RequestValidator:
    """Checks requests against their ``buf.validate`` rules (compiled once per type).

    The standard rules run as plain Python (``kernel.rulecheck``, ~20 us for a chat
    request); ``protovalidate`` runs only for message types with rules that module
    does not implement (custom CEL), and the tests hold both to the same answers.
    """

    def __init__(self) -> None:
        self._validator = protovalidate.Validator()  # type: ignore[no-untyped-call]
        self._rules = RuleChecker(self._protovalidate)

    def _protovalidate(self, message: pb_message.Message) -> list[Violation]:
        try:
            found = self._validator.collect_violations(message)
        except ValueError as exc:  # e.g. a Duration beyond CEL's range
            return [Violation("", "unrepresentable", f"a value is out of range: {exc}")]
        return [
            Violation(field_path(v.proto.field), v.proto.rule_id, v.proto.message) for v in found
        ]

    def violations(self, request: pb_message.Message) -> list[FieldViolation]:
        """Every rule ``request`` breaks, as field violations (empty: valid)."""
        return [
            FieldViolation(field=v.field, description=v.message, reason=v.rule_id)
            for v in self._rules.violations(request)
        ]

    def check(self, request: Any) -> None:
        """Raise ``InvalidArgument`` (with ``BadRequest``) when ``request`` breaks a rule."""
        if not isinstance(request, pb_message.Message):
            return
        violations = self.violations(request)
        if not violations:
            return
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise InvalidArgument(
            f"{first.field or request.DESCRIPTOR.name}: {first.description}{more}",
            reason=ErrorReason.INVALID_FIELD,
            field_violations=violations,
        )
