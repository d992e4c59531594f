// google.rpc.Status details of a failed call, decoded into typed messages. The gateway
// sends them in the grpc-status-details-bin trailer; Connect parses that trailer into
// ConnectError.details, and findDetails() decodes them with the generated schemas.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "../gen/google/rpc/error_details_pb.js";

/** The ErrorInfo domain of every llmesh error. */
export const ERROR_DOMAIN = "llmesh.dev";

/** Trailer with the call's trace id (quote it in a support ticket). */
export const TRACE_ID_HEADER = "x-trace-id";
/** Trailer with the call's request id. */
export const REQUEST_ID_HEADER = "x-request-id";

/** "INVALID_ARGUMENT" for Code.InvalidArgument (the gRPC name of a Connect code). */
export function codeName(code) {
  return (Code[code] ?? "Unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

const durationMs = (d) => (d ? Number(d.seconds) * 1000 + Math.round(d.nanos / 1e6) : undefined);

/**
 * What went wrong with a call, from any error it threw: the status code, the typed
 * details (`errorInfo`, `badRequest`, `retryInfo`, `quotaFailure`, each undefined when
 * absent) and shortcuts (`reason`, `fieldViolations`, `retryDelayMs`, `traceId`). A
 * request refused by the client's own validation reads like the server's refusal:
 * reason INVALID_FIELD and the same field violations, `local: true`.
 */
export function errorDetails(error) {
  const err = ConnectError.from(error);
  const errorInfo = err.findDetails(ErrorInfoSchema)[0];
  const badRequest = err.findDetails(BadRequestSchema)[0];
  const retryInfo = err.findDetails(RetryInfoSchema)[0];
  const quotaFailure = err.findDetails(QuotaFailureSchema)[0];
  const local = Array.isArray(err.violations);
  let fieldViolations = (badRequest?.fieldViolations ?? []).map((v) => ({
    field: v.field,
    description: v.description,
    reason: v.reason,
  }));
  if (local) {
    fieldViolations = err.violations.map((v) => ({
      field: v.field,
      description: v.message,
      reason: v.rule,
    }));
  }
  return {
    code: err.code,
    codeName: codeName(err.code),
    message: err.rawMessage,
    reason: errorInfo?.reason ?? (local ? "INVALID_FIELD" : undefined),
    metadata: { ...(errorInfo?.metadata ?? {}) },
    fieldViolations,
    retryDelayMs: durationMs(retryInfo?.retryDelay),
    traceId: err.metadata.get(TRACE_ID_HEADER) ?? undefined,
    requestId: err.metadata.get(REQUEST_ID_HEADER) ?? undefined,
    local,
    errorInfo,
    badRequest,
    retryInfo,
    quotaFailure,
  };
}

/** Whether the gateway says a retry may succeed (after `retryDelayMs` when given). */
export function isRetryable(error) {
  const { code } = ConnectError.from(error);
  return (
    code === Code.Unavailable || code === Code.ResourceExhausted || code === Code.Aborted
  );
}
