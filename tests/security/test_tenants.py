"""Tenant isolation across every memory and session RPC of the gateway (Remember, Recall,
Forget by id and by metadata, GetSession, ListSessions, DeleteSession, Chat's history,
recall and idempotency replay): a tenant comes from the caller's key or token only, and
nothing one tenant stores is seen, changed or replayed by another, in either direction.

Extends tests/test_e2e_gateway_auth.py::test_tenant_a_never_sees_tenant_b (one direction,
five RPCs) with the writes, both directions, the idempotency keys and JWT tenants.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from e2etest.gateway_mesh import Mesh
from fuzz.report import record

from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from security.calls import bearer, token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _chat(
    stub: Any, meta: Any, session_id: str, message: str, **fields: Any
) -> tuple[gateway_pb2.ChatStart, gateway_pb2.ChatDone, str]:
    start = done = None
    text = []
    for event in stub.Chat(
        gateway_pb2.ChatRequest(
            session_id=session_id,
            message=message,
            sampling=common_pb2.SamplingParams(temperature=0.0, max_tokens=3),
            **fields,
        ),
        metadata=meta,
        timeout=60,
    ):
        kind = event.WhichOneof("event")
        if kind == "start":
            start = event.start
        elif kind == "delta":
            text.append(event.delta.text)
        else:
            done = event.done
    assert start is not None and done is not None
    return start, done, "".join(text)


def _code(fn: Any) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def test_no_memory_or_session_crosses_tenants(security_mesh: Mesh) -> None:
    run = uuid.uuid4().hex[:8]
    fact = f"zebra{run} launches the quasar{run} rocket on friday"
    session = f"plans-{run}"
    key = f"same-key-{run}"
    acme, acme2 = bearer(security_mesh.keys["alice"]), bearer(security_mesh.keys["carol"])
    globex, initech = bearer(security_mesh.keys["bob"]), bearer(security_mesh.keys["dave"])
    checks = 0
    with grpc.insecure_channel(security_mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        query = gateway_pb2.RecallRequest(
            query=f"zebra{run} quasar{run}", options=common_pb2.RecallOptions(k=50)
        )

        def recall(meta: Any) -> set[str]:
            """Of the two memories of this test, those ``meta``'s tenant recalls (other
            memories of its own tenant may come too: semantic search ranks them all)."""
            hits = stub.Recall(query, metadata=meta, timeout=30).hits
            return {h.memory.id for h in hits} & {a.id, b.id}

        # Two tenants store the same text under the same idempotency key and metadata.
        draft = common_pb2.MemoryDraft(
            text=fact,
            idempotency_key=key,
            metadata=common_pb2.Metadata(entries={"owner": f"o{run}"}),
        )
        a = stub.Remember(gateway_pb2.RememberRequest(memory=draft), metadata=acme, timeout=30)
        b = stub.Remember(gateway_pb2.RememberRequest(memory=draft), metadata=globex, timeout=30)
        # Not the other tenant's memory, and not told that the text exists elsewhere.
        assert a.id != b.id and not b.duplicate
        again = stub.Remember(gateway_pb2.RememberRequest(memory=draft), metadata=acme2)
        assert again.id == a.id  # same tenant, other key: the same memory (a retry)
        checks += 3

        # Recall: each tenant finds its own and only its own; a third finds nothing.
        assert recall(acme) == {a.id}
        assert recall(globex) == {b.id}
        assert recall(initech) == set()
        assert recall(bearer(token(tenant="acme"))) == {a.id}  # a JWT's tenant claim
        assert recall(bearer(token(tenant="globex"))) == {b.id}
        checks += 5

        # Chat: the same session id and idempotency key in two tenants are two sessions.
        start_a, done_a, _ = _chat(stub, acme, session, fact, idempotency_key=key)
        assert done_a.session_version == 1 and not done_a.replayed
        assert b.id not in start_a.memory_ids and start_a.history_messages == 0
        start_b, done_b, _ = _chat(stub, globex, session, fact, idempotency_key=key)
        assert not done_b.replayed and done_b.session_version == 1  # not acme's turn
        assert a.id not in start_b.memory_ids and start_b.history_messages == 0
        start_d, _, _ = _chat(stub, initech, f"other-{run}", fact)
        assert not set(start_d.memory_ids) & {a.id, b.id}
        checks += 7

        # Sessions: reads, listings and deletes stay inside the tenant.
        get = gateway_pb2.GetSessionRequest(session_id=session)
        mine = stub.GetSession(get, metadata=acme, timeout=30)
        theirs = stub.GetSession(get, metadata=globex, timeout=30)
        assert mine.messages[0].content == fact
        assert len(theirs.messages) == 2 and mine.session.version == theirs.session.version == 1
        assert _code(lambda: stub.GetSession(get, metadata=initech)) == grpc.StatusCode.NOT_FOUND
        listed = {
            s.session_id
            for s in stub.ListSessions(
                gateway_pb2.ListSessionsRequest(page_size=200), metadata=initech
            ).sessions
        }
        assert session not in listed
        delete = gateway_pb2.DeleteSessionRequest(session_id=session)
        assert _code(lambda: stub.DeleteSession(delete, metadata=initech)) == (
            grpc.StatusCode.NOT_FOUND
        )
        assert stub.DeleteSession(delete, metadata=globex).deleted_messages == 2
        assert len(stub.GetSession(get, metadata=acme).messages) == 2  # acme's still there
        checks += 8

        # Forget by id and by metadata filter: another tenant deletes nothing.
        by_id = gateway_pb2.ForgetRequest(ids=[a.id])
        by_filter = gateway_pb2.ForgetRequest(
            metadata_filter=common_pb2.Metadata(entries={"owner": f"o{run}"})
        )
        assert stub.Forget(by_id, metadata=initech).deleted == 0
        assert stub.Forget(by_filter, metadata=initech).deleted == 0
        assert stub.Forget(by_id, metadata=globex).deleted == 0
        assert recall(acme) == {a.id}
        assert stub.Forget(by_filter, metadata=globex).deleted == 1  # its own only
        assert recall(acme) == {a.id} and recall(globex) == set()
        checks += 6
    record("tenant_isolation", {"checks": checks, "tenants": 3})
