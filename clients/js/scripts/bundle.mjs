// The browser bundle (one ESM file, minified): dist/meridian-client.min.js, and a copy for the
// WebRTC demo served by `meridian up` (examples/webrtc/meridian-client.js, committed).
import { build } from "esbuild";
import { copyFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
const root = fileURLToPath(new URL("..", import.meta.url));
await build({
  entryPoints: [`${root}/src/index.ts`],
  bundle: true,
  format: "esm",
  minify: true,
  target: "es2020",
  platform: "browser",
  external: ["ws"],
  outfile: `${root}/dist/meridian-client.min.js`,
  logLevel: "warning",
});
copyFileSync(`${root}/dist/meridian-client.min.js`, `${root}/../../examples/webrtc/meridian-client.js`);
