// A small Node client for llmesh over gRPC (HTTP/2), built on the stubs that
// `make protos` generates into ./gen from protos/llmesh/v1.
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AdminService, GatewayService } from "./gen/llmesh/v1/gateway_pb.js";
import { RegistryService } from "./gen/llmesh/v1/registry_pb.js";

/**
 * Clients for the public API.
 * @param {string} target host:port of the gateway, e.g. "127.0.0.1:50051"
 * @param {{apiKey?: string, tls?: boolean}} [options]
 */
export function connect(target, options = {}) {
  const scheme = options.tls ? "https" : "http";
  const interceptors = [];
  if (options.apiKey) {
    interceptors.push((next) => async (req) => {
      req.header.set("authorization", `Bearer ${options.apiKey}`);
      return next(req);
    });
  }
  const transport = createGrpcTransport({ baseUrl: `${scheme}://${target}`, interceptors });
  return {
    gateway: createClient(GatewayService, transport),
    admin: createClient(AdminService, transport),
    registry: createClient(RegistryService, transport),
  };
}

export * from "./gen/llmesh/v1/common_pb.js";
export * from "./gen/llmesh/v1/gateway_pb.js";
