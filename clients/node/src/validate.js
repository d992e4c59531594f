// The contract's buf.validate rules, checked before a request is sent: the same rules,
// read by @bufbuild/protovalidate, that every llmesh service enforces.
import { pathToString } from "@bufbuild/protobuf/reflect";
import { createValidator } from "@bufbuild/protovalidate";
import { Code, ConnectError } from "@connectrpc/connect";

const validator = createValidator();

/**
 * The rules `message` breaks, as `{field, rule, message}` with the field path the
 * servers put in BadRequest (`input.sampling.top_p`, `memory.metadata.entries["k"]`).
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
 * Throws a ConnectError INVALID_ARGUMENT (with `.violations`) when `message` breaks a
 * rule; `errorDetails()` reads it like the server's BadRequest.
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

/** A Connect interceptor that checks every request (a server stream's one input too). */
export const validating = (next) => async (req) => {
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
