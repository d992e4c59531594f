// The wrapper without a server: validation, error decoding, stream helpers, options.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  BadRequestSchema,
  Code,
  codeName,
  ConnectError,
  createLlmeshClient,
  ErrorInfoSchema,
  errorDetails,
  GenerateRequestSchema,
  isRetryable,
  newTraceparent,
  QuotaFailureSchema,
  RetryInfoSchema,
  textStream,
  violations,
} from "@llmesh/client";
import { create } from "@bufbuild/protobuf";

test("a request that breaks a rule is refused before sending, read like BadRequest", async () => {
  // No server listens on port 9: the call fails before any connection is tried.
  const { gateway } = createLlmeshClient({ target: "127.0.0.1:9", apiKey: "k" });
  const bad = { input: { content: { case: "prompt", value: "" }, sampling: { maxTokens: 0 } } };
  await assert.rejects(gateway.generate(bad), (error) => {
    const details = errorDetails(error);
    assert.equal(details.codeName, "INVALID_ARGUMENT");
    assert.equal(details.reason, "INVALID_FIELD");
    assert.equal(details.local, true);
    assert.deepEqual(
      details.fieldViolations.map((v) => v.field).sort(),
      ["input.prompt", "input.sampling.max_tokens"],
    );
    return true;
  });
  const message = create(GenerateRequestSchema, bad);
  assert.equal(violations(GenerateRequestSchema, message).length, 2);
});

test("errorDetails decodes ErrorInfo, BadRequest, RetryInfo and QuotaFailure", () => {
  const error = new ConnectError(
    "rate limited",
    Code.ResourceExhausted,
    { "x-trace-id": "ab".repeat(16), "x-request-id": "r-1" },
    [
      { desc: ErrorInfoSchema, value: { reason: "RATE_LIMITED", domain: "llmesh.dev", metadata: { limit: "rpm" } } },
      { desc: RetryInfoSchema, value: { retryDelay: { seconds: 1n, nanos: 500_000_000 } } },
      { desc: QuotaFailureSchema, value: { violations: [{ subject: "principal:p", description: "rpm" }] } },
      { desc: BadRequestSchema, value: { fieldViolations: [{ field: "f", description: "d", reason: "r" }] } },
    ],
  );
  const details = errorDetails(error);
  assert.equal(details.codeName, "RESOURCE_EXHAUSTED");
  assert.equal(details.message, "rate limited");
  assert.equal(details.reason, "RATE_LIMITED");
  assert.deepEqual(details.metadata, { limit: "rpm" });
  assert.equal(details.retryDelayMs, 1500);
  assert.equal(details.quotaFailure.violations[0].subject, "principal:p");
  assert.deepEqual(details.fieldViolations, [{ field: "f", description: "d", reason: "r" }]);
  assert.equal(details.traceId, "ab".repeat(16));
  assert.equal(details.requestId, "r-1");
  assert.equal(details.local, false);
  assert.ok(isRetryable(error));
  // Any error at all: a plain Error is UNKNOWN with no details.
  const plain = errorDetails(new Error("boom"));
  assert.equal(plain.codeName, "UNKNOWN");
  assert.equal(plain.reason, undefined);
  assert.equal(isRetryable(new ConnectError("x", Code.InvalidArgument)), false);
});

test("codeName is the gRPC name", () => {
  assert.equal(codeName(Code.DeadlineExceeded), "DEADLINE_EXCEEDED");
  assert.equal(codeName(Code.Unauthenticated), "UNAUTHENTICATED");
  assert.equal(codeName(Code.Canceled), "CANCELED");
});

async function* events(list, error) {
  for (const event of list) yield { event };
  if (error) throw error;
}

const start = { case: "start", value: { model: "m" } };
const delta = (text) => ({ case: "delta", value: { text, tokenIds: [1] } });
const done = { case: "done", value: { finishReason: 2 } };

test("textStream yields the deltas' text and resolves start and done", async () => {
  const stream = textStream(events([start, delta("Hel"), delta(""), delta("lo"), done]));
  const seen = [];
  for await (const text of stream) seen.push(text);
  assert.deepEqual(seen, ["Hel", "lo"]);
  assert.equal((await stream.start).model, "m");
  assert.equal((await stream.done).finishReason, 2);
  await assert.rejects(async () => {
    for await (const _ of stream);
  }, TypeError);
  const whole = await textStream(events([start, delta("a"), delta("b"), done])).text();
  assert.equal(whole.text, "ab");
});

test("a stream that fails rejects text() and done; one without done rejects done", async () => {
  const failure = new ConnectError("gone", Code.Unavailable);
  const broken = textStream(events([start, delta("a")], failure));
  await assert.rejects(broken.text(), (e) => e === failure);
  await assert.rejects(broken.done, (e) => e === failure);
  assert.equal((await broken.start).model, "m");
  const cut = textStream(events([start, delta("a")]));
  await assert.rejects(cut.text(), (e) => ConnectError.from(e).code === Code.DataLoss);
});

test("options: mutual TLS needs cert and key; an API key must be a token", () => {
  assert.throws(() => createLlmeshClient({ tls: { cert: "-----BEGIN x" } }), /cert and key/);
  assert.throws(() => createLlmeshClient({ apiKey: "two words" }), /apiKey/);
  const client = createLlmeshClient({ tls: { ca: "-----BEGIN CERTIFICATE-----\n" } });
  assert.deepEqual(Object.keys(client), ["gateway", "admin", "health", "transport"]);
});

test("newTraceparent is a sampled W3C traceparent", () => {
  const { traceparent, traceId } = newTraceparent();
  assert.match(traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  assert.equal(traceparent.slice(3, 35), traceId);
});
