"""Request validation for the registry (errors name each bad field)."""

from __future__ import annotations

import re

from llmesh.kernel.errors import FieldViolation, InvalidArgument
from llmesh.v1 import common_pb2, registry_pb2
from llmesh_registry.model import STARTING, UNSPECIFIED

_WORKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_VALID_STATES = frozenset(common_pb2.WorkerState.values())


def _check_id(field: str, value: str, out: list[FieldViolation]) -> None:
    if not _WORKER_ID.match(value):
        out.append(FieldViolation(field, "required: 1-128 characters of A-Z a-z 0-9 . _ : - "))


def _check_address(field: str, value: str, out: list[FieldViolation]) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        out.append(FieldViolation(field, "expected host:port with a port in 1..65535"))


def _raise(violations: list[FieldViolation]) -> None:
    if violations:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise InvalidArgument(summary, field_violations=violations)


def checked_worker(request: registry_pb2.RegisterRequest) -> common_pb2.WorkerInfo:
    """The worker to store, or ``InvalidArgument`` naming each bad field."""
    violations: list[FieldViolation] = []
    worker = request.worker
    _check_id("worker.worker_id", worker.worker_id, violations)
    _check_address("worker.address", worker.address, violations)
    if worker.capacity < 0:
        violations.append(FieldViolation("worker.capacity", "must be >= 0"))
    if worker.state not in _VALID_STATES:
        violations.append(FieldViolation("worker.state", "unknown state"))
    _raise(violations)
    clean = common_pb2.WorkerInfo()
    clean.CopyFrom(worker)
    for name in ("registered_at", "last_heartbeat_at", "lease_expires_at"):
        clean.ClearField(name)  # type: ignore[arg-type]
    if clean.state == UNSPECIFIED:
        clean.state = STARTING
    return clean


def check_heartbeat(request: registry_pb2.HeartbeatRequest) -> None:
    violations: list[FieldViolation] = []
    _check_id("worker_id", request.worker_id, violations)
    if not request.lease_id:
        violations.append(FieldViolation("lease_id", "required (from Register)"))
    if request.state not in _VALID_STATES:
        violations.append(FieldViolation("state", "unknown state"))
    _raise(violations)


def check_worker_id(worker_id: str) -> None:
    violations: list[FieldViolation] = []
    _check_id("worker_id", worker_id, violations)
    _raise(violations)


def check_set_state(request: registry_pb2.SetWorkerStateRequest) -> None:
    violations: list[FieldViolation] = []
    _check_id("worker_id", request.worker_id, violations)
    if request.state == UNSPECIFIED or request.state not in _VALID_STATES:
        violations.append(
            FieldViolation("state", "set one of STARTING, READY, DRAINING, UNHEALTHY")
        )
    _raise(violations)
