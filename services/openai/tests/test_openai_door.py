"""The door served in-process (uvicorn on a free port) with no gateway behind it."""

from __future__ import annotations

import httpx2 as httpx  # the openai SDK's HTTP client
import openai

from llmesh.testing.servers import free_port
from llmesh_openai.app import serving
from llmesh_openai.settings import OpenAISettings


async def test_no_gateway_is_503_with_retry_after_and_health_says_so() -> None:
    settings = OpenAISettings(port=0, gateway_address=f"127.0.0.1:{free_port()}")
    async with serving(settings) as door, httpx.AsyncClient(base_url=door.url) as http:
        reply = await http.get("/v1/models", headers={"authorization": "Bearer k"})
        assert reply.status_code == 503
        assert reply.json()["error"]["type"] == "service_unavailable_error"
        assert int(reply.headers["retry-after"]) >= 1 and reply.headers["x-request-id"]
        health = await http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "NOT_SERVING"
        assert (await http.get("/health/live")).status_code == 200
        missing = await http.get("/v1/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
        wrong = await http.get("/v1/chat/completions")
        assert wrong.status_code == 405
        bad = await http.post("/v1/chat/completions", content=b"{not json")
        assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
        timeout = await http.post(
            "/v1/chat/completions", json={}, headers={"x-request-timeout": "soon"}
        )
        assert timeout.status_code == 400
        assert timeout.json()["error"]["param"] == "x-request-timeout"
        sdk = openai.AsyncOpenAI(base_url=f"{door.url}/v1", api_key="k", max_retries=0)
        try:
            await sdk.models.list()
        except openai.InternalServerError as exc:
            assert exc.status_code == 503
        else:
            raise AssertionError("no 503")
