// The OpenAI door driven by the official `openai` npm package, with Node's own test
// runner. Started by tests/test_e2e_openai.py against its mesh:
//   LLMESH_OPENAI_URL=http://127.0.0.1:PORT/v1 LLMESH_KEYS='{"alice": "...", ...}'
//   LLMESH_MODEL=tiny-llama-test node --test tests/node/openai_door.test.mjs
import assert from "node:assert/strict";
import { test } from "node:test";
import OpenAI from "openai";

const baseURL = process.env.LLMESH_OPENAI_URL;
const keys = JSON.parse(process.env.LLMESH_KEYS ?? "{}");
const model = process.env.LLMESH_MODEL ?? "tiny-llama-test";
const hello = [{ role: "user", content: "hello from node" }];

function client(who = "dave") {
  return new OpenAI({ baseURL, apiKey: keys[who] ?? who, maxRetries: 0 });
}

test("chat completion", async () => {
  const reply = await client().chat.completions.create({
    model, messages: hello, max_tokens: 4, temperature: 0,
  });
  assert.equal(reply.object, "chat.completion");
  assert.equal(reply.choices[0].message.role, "assistant");
  assert.equal(reply.choices[0].finish_reason, "length");
  assert.equal(reply.usage.completion_tokens, 4);
});

test("streamed chat ends with usage", async () => {
  const stream = await client().chat.completions.create({
    model, messages: hello, max_tokens: 3, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.equal(chunks[0].choices[0].delta.role, "assistant");
  assert.deepEqual(chunks.at(-1).choices, []);
  assert.equal(chunks.at(-1).usage.completion_tokens, 3);
  assert.equal(chunks.at(-2).choices[0].finish_reason, "length");
});

test("completion, embeddings and models", async () => {
  const api = client();
  const completion = await api.completions.create({ model, prompt: "once", max_tokens: 2 });
  assert.equal(completion.object, "text_completion");
  assert.equal(completion.usage.completion_tokens, 2);
  // The Node SDK asks for base64 and decodes it to numbers.
  const embedded = await api.embeddings.create({ model: "all-minilm-l6-v2", input: ["a", "b"] });
  assert.equal(embedded.data.length, 2);
  assert.equal(embedded.data[0].embedding.length, 384);
  assert.ok(embedded.usage.prompt_tokens > 0);
  const ids = [];
  for await (const m of api.models.list()) ids.push(m.id);
  assert.ok(ids.includes(model));
});

test("memory: a two-turn chat through the llmesh body field", async () => {
  const api = client();
  const llmesh = { session_id: "node-memory-1" };
  await api.chat.completions.create({
    model, messages: [{ role: "user", content: "my name is Ada" }], max_tokens: 2, llmesh,
  });
  const second = await api.chat.completions.create({
    model, messages: [{ role: "user", content: "who am I?" }], max_tokens: 2, llmesh,
  });
  assert.equal(second.llmesh.history_messages, 2);
  assert.equal(second.llmesh.session_version, 2);
});

test("errors: bad key, role, bad field with param", async () => {
  await assert.rejects(client("llmesh_bogus").models.list(), (err) => {
    assert.ok(err instanceof OpenAI.AuthenticationError);
    assert.equal(err.status, 401);
    return true;
  });
  await assert.rejects(client().get("/llmesh/workers"), (err) => {
    assert.ok(err instanceof OpenAI.PermissionDeniedError);
    assert.equal(err.error.code, "role_required");
    return true;
  });
  await assert.rejects(
    client().chat.completions.create({ model, messages: hello, top_p: 1.5 }),
    (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError);
      assert.equal(err.param, "top_p");
      return true;
    },
  );
});
