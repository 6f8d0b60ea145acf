// dist/ is committed (a fresh clone runs the console without Node) and embedded in the gaia
// binary: it must be exactly what a build of these sources makes. After changing src/, run
// `npm run build` and commit dist/.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "vite";
import { afterAll, expect, it } from "vitest";

const root = fileURLToPath(new URL("..", import.meta.url));
const fresh = mkdtempSync(join(tmpdir(), "gaia-console-dist-"));
afterAll(() => rmSync(fresh, { recursive: true, force: true }));

function files(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string): void => {
    for (const entry of readdirSync(d, { withFileTypes: true })) {
      const path = join(d, entry.name);
      if (entry.isDirectory()) walk(path);
      else out.set(relative(dir, path), readFileSync(path).toString("base64"));
    }
  };
  walk(dir);
  return out;
}

it("dist/ is a fresh build of src/ (run `npm run build` and commit dist/)", async () => {
  await build({ root, logLevel: "warn", build: { outDir: fresh, emptyOutDir: true } });
  const built = files(fresh);
  const committed = files(join(root, "dist"));
  expect([...committed.keys()].sort()).toEqual([...built.keys()].sort());
  for (const [name, bytes] of built) expect(committed.get(name), name).toBe(bytes);
  expect(built.has("index.html")).toBe(true);
});
