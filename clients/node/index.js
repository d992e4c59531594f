// @llmesh/client: the llmesh gateway from Node (see README.md).
export { createLlmeshClient, DEFAULT_TARGET } from "./src/client.js";
export {
  codeName,
  ERROR_DOMAIN,
  errorDetails,
  isRetryable,
  REQUEST_ID_HEADER,
  TRACE_ID_HEADER,
} from "./src/errors.js";
export { TextStream, textStream } from "./src/streams.js";
export { newTraceparent } from "./src/trace.js";
export { check, violations } from "./src/validate.js";
export { Code, ConnectError } from "@connectrpc/connect";
export * from "./gen/llmesh/v1/common_pb.js";
export * from "./gen/llmesh/v1/gateway_pb.js";
export * from "./gen/google/rpc/error_details_pb.js";
export {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus,
} from "./gen/grpc_health/v1/health_pb.js";
