// Builds the console into dist/, which is committed and embedded in the gaia binary
// (allocator/src/console.rs). The build is deterministic: file names carry a hash of their
// contents only, and nothing else varies (test/dist.test.ts checks dist/ is a fresh build).
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  // The client from its sources (clients/typescript has no committed build); its
  // package.json's `browser` field leaves out `ws`, as for any bundler.
  resolve: { alias: { "@gaia-fleet/client": fileURLToPath(new URL("../clients/typescript/src/index.ts", import.meta.url)) } },
  build: { outDir: "dist", emptyOutDir: true, target: "es2022", sourcemap: false, reportCompressedSize: false },
  // `npm run dev` serves the page with the API of a `gaia run` on the default port.
  server: { proxy: { "/v1": "http://127.0.0.1:7700" } },
});
