// W3C trace context: a `traceparent` to send, so a call can be found in the mesh's
// traces (the gateway's spans join it and it returns the trace id in `x-trace-id`).
import { randomBytes } from "node:crypto";

/** A new sampled W3C traceparent and its trace id: `{traceparent, traceId}`. */
export function newTraceparent() {
  const traceId = randomBytes(16).toString("hex");
  const spanId = randomBytes(8).toString("hex");
  return { traceparent: `00-${traceId}-${spanId}-01`, traceId };
}
