"""AdminService paths in process, over a scripted cache and fake worker channels: which
workers a model load/unload targets, a partial failure, every target failing, the
audit wrapper without an audit log or a request, and audit listing pages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from llmesh.kernel.context import RequestContext, reset_request, set_request
from llmesh.kernel.errors import NotFound, Unavailable
from llmesh.v1 import common_pb2, gateway_pb2
from llmesh_gateway.admin import AdminServicer
from llmesh_gateway.store import AuditRecord, decode_page_token


def _worker(worker_id: str, *, loaded: tuple[str, ...] = (), ready: bool = True) -> Any:
    state = common_pb2.WORKER_STATE_READY if ready else common_pb2.WORKER_STATE_DRAINING
    return common_pb2.WorkerInfo(
        worker_id=worker_id, address=f"{worker_id}:1", models_loaded=list(loaded), state=state
    )


class Cache:
    def __init__(self, *workers: Any) -> None:
        self.workers = {w.worker_id: w for w in workers}
        self.staleness_s = 0.0

    def get(self, worker_id: str) -> Any:
        return self.workers.get(worker_id)

    def list(self) -> list[Any]:
        return [self.workers[k] for k in sorted(self.workers)]


class Channel:
    """Answers each unary call with ``answers[address]`` (an exception is raised)."""

    def __init__(self, address: str, answers: dict[str, Any], calls: list[str]) -> None:
        self.address, self.answers, self.calls = address, answers, calls

    def unary_unary(self, path: str, *args: Any, **kwargs: Any) -> Any:
        channel = self

        class Method:
            _method = path.encode()

            async def __call__(self, request: Any, **kw: Any) -> Any:
                channel.calls.append(f"{channel.address} {path.rsplit('/', 1)[-1]}")
                answer = channel.answers[channel.address]
                if isinstance(answer, BaseException):
                    raise answer
                return answer

        return Method()

    unary_stream = stream_unary = stream_stream = unary_unary


@dataclass
class Pool:
    answers: dict[str, Any]
    calls: list[str] = field(default_factory=list)

    def get(self, address: str) -> Channel:
        return Channel(address, self.answers, self.calls)


@dataclass
class Router:
    pool: Pool


def _down() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down", ""
    )


def _admin(cache: Cache, answers: dict[str, Any], **kwargs: Any) -> tuple[AdminServicer, Pool]:
    pool = Pool(answers)
    admin = AdminServicer(
        cache=cache,  # type: ignore[arg-type]
        registry=None,  # type: ignore[arg-type]
        router=Router(pool),  # type: ignore[arg-type]
        keys=kwargs.pop("keys", None),
        audit=kwargs.pop("audit", None),
    )
    return admin, pool


async def test_load_targets_ready_workers_and_unload_the_loaded_ones() -> None:
    cache = Cache(_worker("w1", loaded=("m",)), _worker("w2"), _worker("w3", ready=False))
    admin, pool = _admin(cache, {"w1:1": object(), "w2:1": object(), "w3:1": object()})
    loaded = await admin.LoadModel(gateway_pb2.LoadModelRequest(model="m"), None)  # type: ignore[arg-type]
    assert sorted(loaded.worker_ids) == ["w1", "w2"]
    unloaded = await admin.UnloadModel(gateway_pb2.UnloadModelRequest(model="m"), None)  # type: ignore[arg-type]
    assert list(unloaded.worker_ids) == ["w1"]
    assert "w1:1 UnloadModel" in pool.calls
    one = await admin.UnloadModel(
        gateway_pb2.UnloadModelRequest(model="m", worker_id="w3"),
        None,  # type: ignore[arg-type]
    )
    assert list(one.worker_ids) == ["w3"]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (gateway_pb2.UnloadModelRequest(model="m", worker_id="nope"), "no worker 'nope'"),
        (gateway_pb2.UnloadModelRequest(model="other"), "no worker to unload 'other'"),
    ],
)
async def test_unload_with_no_target_is_not_found(request_: Any, message: str) -> None:
    admin, _ = _admin(Cache(_worker("w1", loaded=("m",))), {})
    with pytest.raises(NotFound) as info:
        await admin.UnloadModel(request_, None)  # type: ignore[arg-type]
    assert info.value.message == message
    assert info.value.reason == "WORKER_NOT_FOUND"


async def test_load_with_no_ready_worker_is_not_found() -> None:
    admin, _ = _admin(Cache(_worker("w1", ready=False)), {})
    with pytest.raises(NotFound) as info:
        await admin.LoadModel(gateway_pb2.LoadModelRequest(model="m"), None)  # type: ignore[arg-type]
    assert info.value.message == "no worker to load 'm'"


async def test_a_partial_failure_reports_the_workers_that_did_it() -> None:
    admin, _ = _admin(Cache(_worker("w1"), _worker("w2")), {"w1:1": _down(), "w2:1": object()})
    done = await admin.LoadModel(gateway_pb2.LoadModelRequest(model="m"), None)  # type: ignore[arg-type]
    assert list(done.worker_ids) == ["w2"]


async def test_every_target_failing_raises_the_first_error() -> None:
    admin, _ = _admin(Cache(_worker("w1"), _worker("w2")), {"w1:1": _down(), "w2:1": _down()})
    with pytest.raises(Unavailable):
        await admin.LoadModel(gateway_pb2.LoadModelRequest(model="m"), None)  # type: ignore[arg-type]


@dataclass
class Audit:
    flushed: int = 0
    audited_calls: list[tuple[Any, str]] = field(default_factory=list)

    async def flush(self) -> int:
        self.flushed += 1
        return 0


@dataclass
class Store:
    records: list[AuditRecord]
    asked: list[tuple[int | None, int]] = field(default_factory=list)

    async def list_audit(self, *, before_seq: int | None, limit: int) -> list[AuditRecord]:
        self.asked.append((before_seq, limit))
        return self.records[:limit]


@dataclass
class Keys:
    store: Store


def _record(seq: int) -> AuditRecord:
    return AuditRecord(
        time=float(seq),
        principal="p",
        tenant="t",
        action="a",
        outcome="OK",
        detail="",
        request_id="",
        seq=seq,
    )


async def test_audit_listing_pages_without_an_audit_log() -> None:
    store = Store([_record(s) for s in (5, 4, 3)])
    admin, _ = _admin(Cache(), {}, keys=Keys(store))
    page = await admin.ListAuditEvents(gateway_pb2.ListAuditEventsRequest(page_size=2), None)  # type: ignore[arg-type]
    assert [e.time.seconds for e in page.events] == [5, 4]
    assert decode_page_token("a", page.next_page_token) == 4
    assert store.asked == [(None, 3)]
    last = await admin.ListAuditEvents(gateway_pb2.ListAuditEventsRequest(), None)  # type: ignore[arg-type]
    assert len(last.events) == 3 and last.next_page_token == ""
    assert store.asked[-1] == (None, 101)


async def test_the_audit_wrapper_runs_the_call_without_a_request_or_a_log() -> None:
    audit = Audit()
    store = Store([])
    admin, _ = _admin(Cache(), {}, keys=Keys(store), audit=audit)
    await admin.ListAuditEvents(gateway_pb2.ListAuditEventsRequest(), None)  # type: ignore[arg-type]
    assert audit.flushed == 1  # no request context: not audited, still answered
    admin_without, _ = _admin(Cache(_worker("w1")), {})
    token = set_request(RequestContext("r", "/llmesh.v1.AdminService/ListWorkers"))
    try:
        listed = await admin_without.ListWorkers(gateway_pb2.ListWorkersRequest(), None)  # type: ignore[arg-type]
    finally:
        reset_request(token)
    assert [w.worker_id for w in listed.workers] == ["w1"]
