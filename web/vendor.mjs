// Copies the files the page loads from npm's packages into vendor/ (git-ignored); `npm ci` runs it
// (postinstall), so the folder is servable by any static host, GitHub Pages included, with no CDN.
//
//     cd web && npm ci
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const FILES = {
  "onnxruntime-web/dist/ort.wasm.bundle.min.mjs": "ort.wasm.bundle.min.mjs",
  "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm",
  "onnxruntime-web/dist/ort.webgpu.bundle.min.mjs": "ort.webgpu.bundle.min.mjs",
  "onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.wasm": "ort-wasm-simd-threaded.asyncify.wasm",
  "geotiff/dist-browser/geotiff.js": "geotiff.js",
  "geotiff/LICENSE": "LICENSE.geotiff",
};
const vendor = join(here, "vendor");
rmSync(vendor, { recursive: true, force: true });
mkdirSync(vendor);
for (const [from, to] of Object.entries(FILES)) copyFileSync(join(here, "node_modules", from), join(vendor, to));
console.log(`vendor/: ${Object.keys(FILES).length} files from node_modules`);
