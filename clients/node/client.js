// A small Node client for llmesh over gRPC (HTTP/2), built on the stubs that
// `make protos` generates into ./gen from protos/llmesh/v1.
import { pathToString } from "@bufbuild/protobuf/reflect";
import { createValidator } from "@bufbuild/protovalidate";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AdminService, GatewayService } from "./gen/llmesh/v1/gateway_pb.js";
import { RegistryService } from "./gen/llmesh/v1/registry_pb.js";

const validator = createValidator();

/**
 * The buf.validate rules `message` breaks (the same rules the servers enforce), as
 * `{field, rule, message}` with the field path the servers put in BadRequest.
 * @param {import("@bufbuild/protobuf").DescMessage} schema
 * @param {import("@bufbuild/protobuf").Message} message
 */
export function violations(schema, message) {
  const result = validator.validate(schema, message);
  if (result.kind === "valid") return [];
  if (result.kind === "error") throw result.error; // a rule that does not compile: our bug
  return result.violations.map((v) => ({
    field: pathToString(v.field),
    rule: v.ruleId,
    message: v.message,
  }));
}

/**
 * Throws a ConnectError with code INVALID_ARGUMENT (and `.violations`) when
 * `message` breaks a rule, before anything is sent.
 */
export function check(schema, message) {
  const found = violations(schema, message);
  if (found.length === 0) return;
  const first = found[0];
  const error = new ConnectError(
    `${first.field || schema.name}: ${first.message}`,
    Code.InvalidArgument,
  );
  error.violations = found;
  throw error;
}

// Validates every request before it is sent (a server-streaming call's one input too).
const validating = (next) => async (req) => {
  if (!req.stream) {
    check(req.method.input, req.message);
    return next(req);
  }
  const input = req.message;
  async function* checked() {
    for await (const message of input) {
      check(req.method.input, message);
      yield message;
    }
  }
  return next({ ...req, message: checked() });
};

/**
 * Clients for the public API. Requests are validated against the contract's
 * buf.validate rules before they are sent (`validate: false` turns that off).
 * @param {string} target host:port of the gateway, e.g. "127.0.0.1:50051"
 * @param {{apiKey?: string, tls?: boolean, validate?: boolean}} [options]
 */
export function connect(target, options = {}) {
  const scheme = options.tls ? "https" : "http";
  const interceptors = options.validate === false ? [] : [validating];
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
