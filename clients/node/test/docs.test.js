// Every ```js example of clients/node/README.md and docs/api.md runs against the mesh
// of tests/test_clients_mesh.py (its own key, LLMESH_DOCS_KEY) and exits 0.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { promisify } from "node:util";

const run = promisify(execFile);
const root = new URL("../../../", import.meta.url);
const pages = ["clients/node/README.md", "docs/api.md"];
const skip = process.env.LLMESH_TARGET ? false : "needs a mesh: run tests/test_clients_mesh.py";

/** The ```js blocks of a Markdown page. */
export function examples(markdown) {
  return [...markdown.matchAll(/^```js\n([\s\S]*?)^```/gm)].map((m) => m[1]);
}

for (const page of pages) {
  const found = examples(readFileSync(new URL(page, root), "utf8"));
  describe(page, { skip }, () => {
    test("has examples", () => assert.ok(found.length >= 2));
    found.forEach((code, i) => {
      const title = code.split("\n")[0].replace(/^\/\/\s*/, "");
      test(`example ${i + 1}: ${title}`, async () => {
        const env = { ...process.env, LLMESH_API_KEY: process.env.LLMESH_DOCS_KEY };
        try {
          await run(process.execPath, ["--input-type=module", "-e", code], {
            cwd: root,
            env,
            timeout: 60_000,
          });
        } catch (error) {
          assert.fail(`${code}\n--- stderr:\n${error.stderr}\n${error.message}`);
        }
      });
    });
  });
}
