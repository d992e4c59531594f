// Type-checked (tsc -p clients/node), never run: the public API as a TypeScript user
// writes it. A wrong type in index.d.ts or the generated stubs fails `make test`.
import {
  ChatRole,
  Code,
  createLlmeshClient,
  errorDetails,
  HealthCheckResponse_ServingStatus,
  newTraceparent,
  textStream,
  type ChatDone,
  type ErrorDetails,
} from "@llmesh/client";

export async function example(): Promise<void> {
  const client = createLlmeshClient({
    target: "127.0.0.1:50051",
    apiKey: "lmk_x_y",
    tls: { ca: "ca.pem", cert: "client.pem", key: "client.key" },
    timeoutMs: 10_000,
  });
  const reply = await client.gateway.generate(
    { input: { content: { case: "prompt", value: "Hello" }, sampling: { maxTokens: 8 } } },
    { timeoutMs: 5_000 },
  );
  const text: string = reply.text;
  const stream = textStream(
    client.gateway.chat({
      sessionId: "s-1",
      message: "hi",
      sampling: { maxTokens: 8 },
    }),
  );
  for await (const delta of stream) process.stdout.write(delta + text);
  const done: ChatDone = await stream.done;
  const version: bigint = done.sessionVersion;
  const messages = { messages: [{ role: ChatRole.USER, content: "hi" }] };
  const generated = await textStream(
    client.gateway.generateStream({ input: { content: { case: "messages", value: messages } } }),
  ).text();
  const tokens: number | undefined = generated.done.usage?.completionTokens;
  const { traceparent } = newTraceparent();
  const health = await client.health.check({ service: "" }, { headers: { traceparent } });
  if (health.status !== HealthCheckResponse_ServingStatus.SERVING) return;
  try {
    await client.gateway.embed({ texts: [] });
  } catch (error) {
    const details: ErrorDetails = errorDetails(error);
    const fields: string[] = details.fieldViolations.map((v) => v.field);
    const wait: number | undefined = details.retryDelayMs;
    if (details.code === Code.InvalidArgument) console.log(fields, wait, version, tokens);
  }
}
