// Types of @llmesh/client (the JavaScript in index.js and src/; the message types come
// from the stubs protoc-gen-es generates into gen/).
import type { DescMessage, Message } from "@bufbuild/protobuf";
import type { Client, Interceptor, Transport } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import type {
  BadRequest,
  ErrorInfo,
  QuotaFailure,
  RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";
import type { Health } from "./gen/grpc_health/v1/health_pb.js";
import type { GenerationDelta, GenerationDone } from "./gen/llmesh/v1/common_pb.js";
import type {
  AdminService,
  ChatDone,
  ChatResponse,
  ChatStart,
  GatewayService,
  GenerateStreamResponse,
  GenerateStreamStart,
} from "./gen/llmesh/v1/gateway_pb.js";

export { Code, ConnectError };
export * from "./gen/llmesh/v1/common_pb.js";
export * from "./gen/llmesh/v1/gateway_pb.js";
export * from "./gen/google/rpc/error_details_pb.js";
export {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus,
} from "./gen/grpc_health/v1/health_pb.js";

/** The gateway's default address (`llmesh up`): "127.0.0.1:50051". */
export declare const DEFAULT_TARGET: string;

/** TLS to the gateway: PEM text or a path to a PEM file for each of ca, cert, key. */
export interface TlsOptions {
  /** CA bundle that signed the gateway's certificate (default: the system's). */
  ca?: string | Buffer;
  /** Client certificate, for mutual TLS (with `key`). */
  cert?: string | Buffer;
  /** Client private key, for mutual TLS (with `cert`). */
  key?: string | Buffer;
  /** Name to verify the gateway's certificate against (default: the target's host). */
  servername?: string;
}

export interface ClientOptions {
  /** host:port of the gateway (default DEFAULT_TARGET). */
  target?: string;
  /** API key (or JWT) sent as `authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** true: TLS with the system's CAs; an object: your CA and/or a client certificate. */
  tls?: boolean | TlsOptions;
  /** Deadline of calls that set no `timeoutMs` (default 30000; the gateway caps it). */
  timeoutMs?: number;
  /** false: send requests without checking the contract's rules first (default true). */
  validate?: boolean;
  /** More Connect interceptors, run after credentials and validation. */
  interceptors?: Interceptor[];
}

export interface LlmeshClient {
  gateway: Client<typeof GatewayService>;
  admin: Client<typeof AdminService>;
  health: Client<typeof Health>;
  transport: Transport;
}

/**
 * Clients for the gateway's public API. Per call, Connect's call options apply:
 * `timeoutMs` (sent as grpc-timeout; 0 = no deadline, for Health.Watch), `headers`
 * (e.g. a traceparent), `signal`, `onTrailer` (e.g. for `x-trace-id`).
 */
export declare function createLlmeshClient(options?: ClientOptions): LlmeshClient;

/** A broken rule of the contract, as found before sending. */
export interface Violation {
  field: string;
  rule: string;
  message: string;
}

/** The rules `message` breaks (empty when valid). */
export declare function violations<Desc extends DescMessage>(schema: Desc, message: Message): Violation[];

/** Throws ConnectError INVALID_ARGUMENT with `.violations` when `message` breaks a rule. */
export declare function check<Desc extends DescMessage>(schema: Desc, message: Message): void;

/** One field violation, from the server's BadRequest or the client's own check. */
export interface FieldViolation {
  /** Path of the field, e.g. `input.sampling.top_p`. */
  field: string;
  description: string;
  /** The buf.validate rule id, e.g. `double.gt_lte`. */
  reason: string;
}

export interface ErrorDetails {
  code: Code;
  /** The gRPC name of the code, e.g. "RESOURCE_EXHAUSTED". */
  codeName: string;
  message: string;
  /** ErrorInfo.reason, e.g. "RATE_LIMITED" (see docs/api.md for the list). */
  reason: string | undefined;
  /** ErrorInfo.metadata, e.g. {tokens_delivered: "3"}. */
  metadata: Record<string, string>;
  fieldViolations: FieldViolation[];
  /** RetryInfo.retry_delay in milliseconds. */
  retryDelayMs: number | undefined;
  /** The trace id the gateway returned in `x-trace-id` (quote it in a support ticket). */
  traceId: string | undefined;
  requestId: string | undefined;
  /** True when the client refused the request before sending it. */
  local: boolean;
  errorInfo: ErrorInfo | undefined;
  badRequest: BadRequest | undefined;
  retryInfo: RetryInfo | undefined;
  quotaFailure: QuotaFailure | undefined;
}

/** The code, typed google.rpc details and ids of any error a call threw. */
export declare function errorDetails(error: unknown): ErrorDetails;

/** UNAVAILABLE, RESOURCE_EXHAUSTED or ABORTED: retry after `retryDelayMs`. */
export declare function isRetryable(error: unknown): boolean;

/** "INVALID_ARGUMENT" for Code.InvalidArgument. */
export declare function codeName(code: Code): string;

export declare const ERROR_DOMAIN: "llmesh.dev";
export declare const TRACE_ID_HEADER: "x-trace-id";
export declare const REQUEST_ID_HEADER: "x-request-id";

/** A GenerateStream or Chat response: a oneof event start | delta | done. */
export interface StreamEvent<Start, Done> {
  event:
    | { case: "start"; value: Start }
    | { case: "delta"; value: GenerationDelta }
    | { case: "done"; value: Done }
    | { case: undefined; value?: undefined };
}

/** The text deltas of a stream, with its start and done events. */
export declare class TextStream<Start, Done> implements AsyncIterable<string> {
  constructor(responses: AsyncIterable<StreamEvent<Start, Done>>);
  readonly start: Promise<Start>;
  readonly done: Promise<Done>;
  [Symbol.asyncIterator](): AsyncIterator<string>;
  text(): Promise<{ text: string; start: Start; done: Done }>;
}

/** The text of `gateway.chat(...)`. */
export declare function textStream(
  responses: AsyncIterable<ChatResponse>,
): TextStream<ChatStart, ChatDone>;
/** The text of `gateway.generateStream(...)`. */
export declare function textStream(
  responses: AsyncIterable<GenerateStreamResponse>,
): TextStream<GenerateStreamStart, GenerationDone>;

/** A new sampled W3C traceparent header value and its trace id. */
export declare function newTraceparent(): { traceparent: string; traceId: string };
