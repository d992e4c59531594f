// Test tool of tests/test_node_client.py (not part of the package's API): encodes
// requests with the generated stubs and prints them as base64, so a Python test can
// check both languages agree on the wire format and on the contract's rules; with
// `registry HOST:PORT` it also calls a real (internal) registry over gRPC.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  ChatRequestSchema,
  ChatResponseSchema,
  CreateApiKeyRequestSchema,
  ForgetRequestSchema,
  GenerateRequestSchema,
  GenerateStreamRequestSchema,
  RememberRequestSchema,
} from "../gen/llmesh/v1/gateway_pb.js";
import { RegisterRequestSchema, RegistryService } from "../gen/llmesh/v1/registry_pb.js";
import { validating, violations } from "../src/validate.js";

// The registry is internal, so the package has no client for it: built here the same
// way, validating requests before sending.
const connect = (target) => ({
  registry: createClient(
    RegistryService,
    createGrpcTransport({ baseUrl: `http://${target}`, interceptors: [validating] }),
  ),
});

const request = create(ChatRequestSchema, {
  sessionId: "s-1",
  message: "héllo from node",
  historyLimit: 7,
  recall: { k: 3, semanticWeight: 0.5, metadataFilter: { entries: { topic: "ops" } } },
  disableRecall: true,
});
const b64 = (schema, message) => Buffer.from(toBinary(schema, message)).toString("base64");
// The v1 shapes: one shared generation input (a oneof prompt | messages), a
// Duration and an idempotency request id.
const generate = create(GenerateStreamRequestSchema, {
  input: { content: { case: "messages", value: { messages: [{ role: 2, content: "hi" }] } } },
  sessionId: "s-1",
});
const createKey = create(CreateApiKeyRequestSchema, {
  name: "ci",
  role: 1,
  tenant: "acme",
  ttl: { seconds: 3600n, nanos: 0 },
  requestId: "req-1",
});
const out = {
  chat_request_b64: b64(ChatRequestSchema, request),
  generate_request_b64: b64(GenerateStreamRequestSchema, generate),
  create_key_b64: b64(CreateApiKeyRequestSchema, createKey),
};
// `decode-chat B64`: the event a Python server sent, as Node reads it.
if (process.argv[2] === "decode-chat") {
  const event = fromBinary(ChatResponseSchema, Buffer.from(process.argv[3], "base64")).event;
  out.chat_event = {
    case: event.case,
    sessionVersion: Number(event.value.sessionVersion),
    replayed: event.value.replayed,
  };
}
if (process.argv[2] === "registry") {
  const { registry } = connect(process.argv[3]);
  const reply = await registry.listWorkers({});
  out.workers = reply.workers.map((w) => ({ id: w.workerId, address: w.address, state: w.state }));
}
// `validate`: the violations Node finds in invalid requests (and their bytes).
if (process.argv[2] === "validate") {
  const huge = { seconds: 10n ** 12n, nanos: 0 };
  const cases = [
    [RememberRequestSchema, { memory: { text: "a\u0000b", ttl: huge, metadata: { entries: { "": "v" } } } }],
    [CreateApiKeyRequestSchema, { name: "", role: 0, tenant: "UP", ttl: huge }],
    [GenerateRequestSchema, { input: { sampling: { topP: 0, topK: 1001, stop: [""] } } }],
    [ForgetRequestSchema, { ids: Array.from({ length: 1001 }, (_, i) => `m${i}`) }],
    [ChatRequestSchema, { sessionId: "bad id", message: "   ", recall: { k: 101 } }],
    [RegisterRequestSchema, { worker: { workerId: "-w", address: "nowhere" } }],
  ];
  out.validated = cases.map(([schema, init]) => {
    const message = create(schema, init);
    return { type: schema.typeName, b64: b64(schema, message), violations: violations(schema, message) };
  });
}
// `register-invalid HOST:PORT`: the client refuses an invalid Register before sending.
if (process.argv[2] === "register-invalid") {
  const { registry } = connect(process.argv[3]);
  try {
    await registry.register({ worker: { workerId: "-w", address: "nowhere" } });
    out.refused = null;
  } catch (error) {
    out.refused = { code: error.code, violations: error.violations };
  }
}
console.log(JSON.stringify(out));
