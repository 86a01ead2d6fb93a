// Bundle size (not a test): the browser bundle (esbuild, minified, ESM, everything the
// package exports) gzipped at level 9.
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
const min = readFileSync(new URL("../dist/meridian-client.min.js", import.meta.url));
const gz = gzipSync(min, { level: 9 });
console.log(`bundle: ${(min.length / 1024).toFixed(1)} KiB minified, ${(gz.length / 1024).toFixed(2)} KiB min+gzip`);
