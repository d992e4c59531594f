// Connects to the gateway: one HTTP/2 transport (gRPC protocol) carrying credentials,
// a default deadline and the contract's validation, and clients for the public API.
import { readFileSync } from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health } from "../gen/grpc_health/v1/health_pb.js";
import { AdminService, GatewayService } from "../gen/llmesh/v1/gateway_pb.js";
import { validating } from "./validate.js";

/** The gateway's default address (`llmesh up`). */
export const DEFAULT_TARGET = "127.0.0.1:50051";

const pem = (value) => (typeof value === "string" && !value.includes("-----BEGIN") ? readFileSync(value) : value);

/** http2 TLS options from `tls`: true (system CAs) or {ca, cert, key, servername}. */
function tlsOptions(tls) {
  if (tls === true) return {};
  const options = {};
  if (tls.ca) options.ca = pem(tls.ca);
  if (tls.cert) options.cert = pem(tls.cert); // cert + key: mutual TLS
  if (tls.key) options.key = pem(tls.key);
  if (tls.servername) options.servername = tls.servername;
  if ((tls.cert && !tls.key) || (tls.key && !tls.cert)) {
    throw new TypeError("tls: mutual TLS needs both cert and key");
  }
  return options;
}

/**
 * Clients for the gateway's public API: `gateway` (GatewayService), `admin`
 * (AdminService, needs an admin key) and `health` (grpc.health.v1, no key needed).
 * Every call sends `authorization: Bearer <apiKey>` when a key is given, the deadline
 * (`timeoutMs` per call, else `options.timeoutMs`, as grpc-timeout), and is checked
 * against the contract's rules before it is sent (`validate: false` turns that off).
 */
export function createLlmeshClient(options = {}) {
  const target = options.target ?? DEFAULT_TARGET;
  if (options.apiKey !== undefined && !/^[\x21-\x7e]+$/.test(options.apiKey)) {
    throw new TypeError("apiKey: must be a non-empty printable ASCII token");
  }
  const interceptors = options.validate === false ? [] : [validating];
  if (options.apiKey) {
    const authorization = `Bearer ${options.apiKey}`;
    interceptors.push((next) => (req) => {
      req.header.set("authorization", authorization);
      return next(req);
    });
  }
  interceptors.push(...(options.interceptors ?? []));
  const secure = Boolean(options.tls);
  const transport = createGrpcTransport({
    baseUrl: `${secure ? "https" : "http"}://${target}`,
    interceptors,
    defaultTimeoutMs: options.timeoutMs ?? 30_000,
    ...(secure ? { nodeOptions: tlsOptions(options.tls) } : {}),
  });
  return {
    gateway: createClient(GatewayService, transport),
    admin: createClient(AdminService, transport),
    health: createClient(Health, transport),
    transport,
  };
}
