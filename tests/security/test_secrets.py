"""No secret leaves the mesh's processes through its observability, and keys are stored
only hashed.

A workload with real credentials (every API key of the mesh, a key created and revoked
on the way, user and admin JWTs) and wrong ones (a well-formed key with a wrong secret,
a forged JWT, garbage bearers) runs every kind of call, failures included. Then every
log line of every service, the /metrics text of every service and every span exported
over OTLP (names, attributes, events, status, resource) are scanned for each secret:
the full key or token, the key's secret part, the token's signature, the JWT signing
secret. The gateway's key store (SQLite file, its WAL) is read directly.

Extends tests/test_e2e_gateway_auth.py::test_no_secret_in_any_log (the mesh's own keys in
its logs) to metrics, spans, tokens, wrong credentials and the store.
"""

from __future__ import annotations

import contextlib
import hmac
import sqlite3
import urllib.request
import uuid
from pathlib import Path

import grpc
import jwt
import pytest
from e2etest.gateway_mesh import JWT_SECRET, Mesh
from fuzz.report import record

from llmesh.testing.polling import wait_until
from llmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from security.calls import bearer, token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _key_secret(api_key: str) -> str:
    return api_key.split("_", 2)[2]


def _workload(mesh: Mesh, run: str) -> list[str]:
    """Calls with real and wrong credentials; returns every secret that was used."""
    created: list[str] = []
    user_jwt, admin_jwt = token(), token(role="admin", tenant="ops")
    forged = jwt.encode({"sub": "eve", "role": "admin", "exp": 2**31}, b"e" * 48, "HS256")
    wrong_secret = mesh.keys["alice"].rsplit("_", 1)[0] + "_" + "W" * 43
    credentials = [*mesh.keys.values(), user_jwt, admin_jwt]
    wrong = [forged, wrong_secret, "lmk_garbage", "x" * 40 + "Zq9"]
    sampling = common_pb2.SamplingParams(temperature=0.0, max_tokens=2)
    with grpc.insecure_channel(mesh.gateway) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        admin = gateway_pb2_grpc.AdminServiceStub(channel)
        for credential in credentials + wrong:
            meta = bearer(credential)
            calls = [
                lambda meta=meta: stub.Generate(
                    gateway_pb2.GenerateRequest(
                        input=common_pb2.GenerationInput(prompt="hi", sampling=sampling)
                    ),
                    metadata=meta,
                    timeout=30,
                ),
                lambda meta=meta: list(
                    stub.Chat(
                        gateway_pb2.ChatRequest(
                            session_id=f"s-{run}", message="hello", sampling=sampling
                        ),
                        metadata=meta,
                        timeout=30,
                    )
                ),
                lambda meta=meta: stub.Remember(
                    gateway_pb2.RememberRequest(memory=common_pb2.MemoryDraft(text="a fact")),
                    metadata=meta,
                    timeout=30,
                ),
                lambda meta=meta: stub.Recall(
                    gateway_pb2.RecallRequest(query="fact"), metadata=meta, timeout=30
                ),
                lambda meta=meta: stub.GetSession(
                    gateway_pb2.GetSessionRequest(session_id="none"), metadata=meta, timeout=30
                ),
                lambda meta=meta: admin.ListApiKeys(
                    gateway_pb2.ListApiKeysRequest(), metadata=meta, timeout=30
                ),
                # Bad bytes with a valid credential: the error path logs too.
                lambda meta=meta: channel.unary_unary(
                    "/llmesh.v1.GatewayService/Recall",
                    request_serializer=None,
                    response_deserializer=None,
                )(b"\x0a\x02\xff\xfe", metadata=meta, timeout=30),
            ]
            for fn in calls:
                with contextlib.suppress(grpc.RpcError):
                    fn()
        # A key made and revoked on the way: its secret travels once, in the response.
        made = admin.CreateApiKey(
            gateway_pb2.CreateApiKeyRequest(
                name=f"leak-{run}", role=gateway_pb2.ROLE_USER, tenant="acme"
            ),
            # The request id is a control: it must reach the logs the scan reads.
            metadata=(*bearer(mesh.keys["admin"]), ("x-request-id", f"control-{run}")),
            timeout=30,
        )
        created.append(made.api_key)
        stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=bearer(made.api_key))
        admin.RevokeApiKey(
            gateway_pb2.RevokeApiKeyRequest(key_id=made.info.key_id),
            metadata=bearer(mesh.keys["admin"]),
            timeout=30,
        )
        with contextlib.suppress(grpc.RpcError):
            stub.ListModels(gateway_pb2.ListModelsRequest(), metadata=bearer(made.api_key))
    return credentials + wrong + created


def _needles(used: list[str]) -> dict[str, bytes]:
    """Each secret in the forms it must never appear in."""
    out: dict[str, bytes] = {"jwt signing secret": JWT_SECRET}
    for n, value in enumerate(used):
        out[f"credential {n}"] = value.encode()
        if value.startswith("lmk_") and value.count("_") >= 2:
            out[f"credential {n} secret part"] = _key_secret(value).encode()
        if value.count(".") == 2:
            out[f"credential {n} signature"] = value.rsplit(".", 1)[1].encode()
    return {name: needle for name, needle in out.items() if len(needle) >= 12}


def _spans_blob(mesh: Mesh) -> tuple[bytes, int]:
    blob = bytearray()
    for service, span in mesh.collector.spans:
        blob += service.encode() + b"\n" + span.SerializeToString() + b"\n" + str(span).encode()
    return bytes(blob), len(mesh.collector.spans)


def test_no_secret_in_logs_metrics_or_spans(security_mesh: Mesh) -> None:
    spans_before = len(security_mesh.collector.spans)
    run = uuid.uuid4().hex[:8]
    used = _workload(security_mesh, run)
    # Spans are exported in batches (50 ms here): wait for the workload's to arrive.
    wait_until(
        lambda: len(security_mesh.collector.spans) > spans_before + 100,
        timeout_s=30,
        what="the workload's spans",
    )
    logs = {p.name: p.log.read_bytes() for p in security_mesh.procs}
    metrics = {
        name: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        for name, port in security_mesh.metrics_ports.items()
    }
    spans, span_count = _spans_blob(security_mesh)
    found: list[str] = []
    for name, needle in _needles(used).items():
        for source, text in [
            *((f"log of {k}", v) for k, v in logs.items()),
            *((f"/metrics of {k}", v) for k, v in metrics.items()),
            ("spans", spans),
        ]:
            if needle in text:
                found.append(f"{name} in {source}")
    figures = {
        "secrets": len(_needles(used)),
        "log_lines": sum(v.count(b"\n") for v in logs.values()),
        "metric_lines": sum(v.count(b"\n") for v in metrics.values()),
        "spans": span_count,
        "services_scanned": sorted(set(logs) | set(metrics)),
        "secrets_found": len(found),
    }
    record("secrets_scan", figures)
    print(figures)
    assert not found, found
    assert len(metrics) == 5 and all(metrics.values())
    # The scan saw the workload: its control request id is in the gateway's log.
    assert f"control-{run}".encode() in logs["gateway"]
    assert span_count > 100


def test_keys_are_stored_only_hashed(security_mesh: Mesh) -> None:
    from llmesh_gateway.apikeys import digest

    assert security_mesh.home is not None
    db = security_mesh.home / "gateway.db"
    files = [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-journal")) if p.exists()]
    raw = b"".join(p.read_bytes() for p in files)
    uri = f"file:{db}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        rows = conn.execute("SELECT key_id, salt, digest FROM api_keys").fetchall()
        every_value = b"".join(
            str(value).encode() if not isinstance(value, bytes) else value
            for table in ("api_keys", "audit_events")
            for row in conn.execute(f"SELECT * FROM {table}")
            for value in row
        )
    stored = {key_id: (salt, hashed) for key_id, salt, hashed in rows}
    for name, api_key in security_mesh.keys.items():
        _prefix, key_id, secret = api_key.split("_", 2)
        assert secret.encode() not in raw and api_key.encode() not in raw, name
        assert secret.encode() not in every_value, name
        salt, hashed = stored[key_id]
        assert hmac.compare_digest(hashed, digest(salt, secret)), name  # the salted hash
        assert len(salt) >= 16 and len(hashed) == 32
    record("key_store", {"keys": len(stored), "files_read": [p.name for p in files]})
