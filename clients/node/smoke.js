// Encodes a request with the generated stubs and prints it as base64, so a
// Python test can check both languages agree on the wire format; with
// `registry HOST:PORT` it also calls a real registry over gRPC.
import { create, toBinary } from "@bufbuild/protobuf";
import { ChatRequestSchema } from "./gen/llmesh/v1/gateway_pb.js";
import { connect } from "./client.js";

const request = create(ChatRequestSchema, {
  sessionId: "s-1",
  message: "héllo from node",
  historyLimit: 7,
  recall: { k: 3, semanticWeight: 0.5, metadataFilter: { topic: "ops" } },
});
const out = { chat_request_b64: Buffer.from(toBinary(ChatRequestSchema, request)).toString("base64") };
if (process.argv[2] === "registry") {
  const { registry } = connect(process.argv[3]);
  const reply = await registry.listWorkers({});
  out.workers = reply.workers.map((w) => ({ id: w.workerId, address: w.address, state: w.state }));
}
console.log(JSON.stringify(out));
