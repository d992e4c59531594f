// The client against a real mesh (registry, MLX worker with the tiny model and MiniLM
// embeddings, memory on SQLite, gateway), started by tests/test_node_mesh.py, which
// passes its address and keys in the environment. Skipped without them.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  Code,
  createLlmeshClient,
  errorDetails,
  HealthCheckResponse_ServingStatus,
  isRetryable,
  textStream,
  TRACE_ID_HEADER,
} from "@llmesh/client";

const env = process.env;
const skip = env.LLMESH_TARGET ? false : "needs a mesh: run tests/test_node_mesh.py";
const sampling = { temperature: 0, maxTokens: 4 };
const prompt = (text) => ({ content: { case: "prompt", value: text }, sampling });

function client(apiKey = env.LLMESH_API_KEY, options = {}) {
  return createLlmeshClient({ target: env.LLMESH_TARGET, apiKey, timeoutMs: 20_000, ...options });
}
const anonymous = () => createLlmeshClient({ target: env.LLMESH_TARGET });

async function failure(promise) {
  try {
    await promise;
  } catch (error) {
    return errorDetails(error);
  }
  assert.fail("the call succeeded");
}

describe("llmesh gateway from Node", { skip }, () => {
  test("Generate with an API key; no key is UNAUTHENTICATED", async () => {
    const reply = await client().gateway.generate({ input: prompt("Hello") });
    assert.ok(reply.usage.completionTokens >= 1 && reply.usage.completionTokens <= 4);
    assert.equal(reply.text.length > 0, true);
    const refused = await failure(anonymous().gateway.generate({ input: prompt("Hello") }));
    assert.equal(refused.codeName, "UNAUTHENTICATED");
    assert.equal(refused.reason, "MISSING_CREDENTIALS");
  });

  test("GenerateStream: text deltas, then start and done with usage", async () => {
    const stream = textStream(client().gateway.generateStream({ input: prompt("Once upon") }));
    const deltas = [];
    for await (const text of stream) deltas.push(text);
    const start = await stream.start;
    const done = await stream.done;
    assert.ok(deltas.length >= 1);
    assert.equal(start.model, "tiny-llama-test");
    assert.equal(done.usage.completionTokens, 4);
    // The same call, collected: the greedy text is the same.
    const again = await textStream(
      client().gateway.generateStream({ input: prompt("Once upon") }),
    ).text();
    assert.equal(again.text, deltas.join(""));
  });

  test("Chat across two turns of one session", async () => {
    const gateway = client().gateway;
    const sessionId = `node-${process.pid}`;
    const first = await textStream(
      gateway.chat({ sessionId, message: "My name is Ada.", sampling }),
    ).text();
    assert.equal(first.done.sessionVersion, 1n);
    assert.equal(first.start.historyMessages, 0);
    const second = await textStream(
      gateway.chat({ sessionId, message: "What is my name?", sampling }),
    ).text();
    assert.equal(second.done.sessionVersion, 2n);
    assert.equal(second.start.historyMessages, 2);
    const session = await gateway.getSession({ sessionId });
    assert.deepEqual(
      session.messages.map((m) => m.content),
      ["My name is Ada.", first.text, "What is my name?", second.text],
    );
  });

  test("Embed: one 384-dimension vector per text", async () => {
    const reply = await client().gateway.embed({ texts: ["a cat", "a dog"] });
    assert.equal(reply.dimensions, 384);
    assert.equal(reply.embeddings.length, 2);
    assert.equal(reply.embeddings[0].values.length, 384);
  });

  test("Remember, then Recall finds it", async () => {
    const gateway = client().gateway;
    const text = `The deploy password rotates every ${process.pid} days`;
    const stored = await gateway.remember({ memory: { text, metadata: { entries: { topic: "ops" } } } });
    assert.ok(stored.id);
    const found = await gateway.recall({ query: "when does the deploy password rotate", options: { k: 3 } });
    assert.equal(found.hits[0].memory.id, stored.id);
    assert.equal(found.hits[0].memory.metadata.entries.topic, "ops");
  });

  test("health Check and Watch, without a key", async () => {
    const { health } = anonymous();
    const checked = await health.check({ service: "readiness" });
    assert.equal(checked.status, HealthCheckResponse_ServingStatus.SERVING);
    const controller = new AbortController();
    const watched = [];
    try {
      for await (const reply of health.watch(
        { service: "llmesh.v1.GatewayService" },
        { timeoutMs: 0, signal: controller.signal },
      )) {
        watched.push(reply.status);
        controller.abort(); // the first message is the current status
      }
    } catch (error) {
      assert.equal(errorDetails(error).code, Code.Canceled);
    }
    assert.deepEqual(watched, [HealthCheckResponse_ServingStatus.SERVING]);
  });

  test("a deadline that expires is DEADLINE_EXCEEDED, mid-stream", async () => {
    // Greedy (no early end of sequence), paced by the mesh's 5 ms decode delay.
    const long = {
      content: { case: "prompt", value: "count" },
      sampling: { temperature: 0, maxTokens: 8192 },
    };
    const started = Date.now();
    const deltas = [];
    const stream = textStream(client().gateway.generateStream({ input: long }, { timeoutMs: 1500 }));
    const expired = await failure(
      (async () => {
        for await (const text of stream) deltas.push(text);
      })(),
    );
    const elapsed = Date.now() - started;
    assert.equal(expired.code, Code.DeadlineExceeded);
    assert.ok(deltas.length > 0, "the stream stopped before its first token");
    assert.ok(elapsed >= 1400 && elapsed < 5000, `ended after ${elapsed} ms`);
    await assert.rejects(stream.done);
  });

  test("a bad request: Node decodes the server's field violations", async () => {
    const bad = {
      input: { content: { case: "prompt", value: "hi" }, sampling: { topP: 0, topK: 5000 } },
    };
    // The client refuses it before sending...
    const local = await failure(client().gateway.generate(bad));
    assert.equal(local.local, true);
    // ...and the gateway, asked directly, names the same fields in BadRequest.
    const remote = await failure(client(undefined, { validate: false }).gateway.generate(bad));
    assert.equal(remote.local, false);
    assert.equal(remote.codeName, "INVALID_ARGUMENT");
    assert.equal(remote.reason, "INVALID_FIELD");
    assert.equal(remote.errorInfo.domain, "llmesh.dev");
    const fields = (d) => d.fieldViolations.map((v) => `${v.field} ${v.reason}`).sort();
    assert.deepEqual(fields(remote), [
      "input.sampling.top_k int32.gte_lte",
      "input.sampling.top_p float.gt_lte",
    ]);
    assert.deepEqual(fields(local), fields(remote));
    assert.match(remote.traceId, /^[0-9a-f]{32}$/);
  });

  test("a rate limit: RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure", async () => {
    const { gateway } = client(env.LLMESH_LIMITED_KEY);
    const results = await Promise.allSettled(
      Array.from({ length: Number(env.LLMESH_LIMIT_FLOOD ?? 80) }, () => gateway.listModels({})),
    );
    const refused = results.filter((r) => r.status === "rejected").map((r) => r.reason);
    assert.ok(refused.length > 0, "no call was rate limited");
    const details = errorDetails(refused[0]);
    assert.equal(details.codeName, "RESOURCE_EXHAUSTED");
    assert.equal(details.reason, "RATE_LIMITED");
    assert.ok(details.retryDelayMs > 0);
    assert.ok(isRetryable(refused[0]));
    assert.match(details.quotaFailure.violations[0].subject, /^principal:/);
  });

  test("a traceparent sent by Node: the gateway joins the trace and returns its id", async () => {
    const traceId = env.LLMESH_TRACE_ID;
    const traceparent = `00-${traceId}-00f067aa0ba902b7-01`;
    let returned;
    await client().gateway.generate(
      { input: prompt("Trace me") },
      { headers: { traceparent }, onTrailer: (trailers) => (returned = trailers.get(TRACE_ID_HEADER)) },
    );
    assert.equal(returned, traceId);
  });
});
