/* The page's Web Worker: it owns the ONNX Runtime Web session and does every heavy step (decoding,
 * tiling, the network, blending, encoding), so the page stays responsive. One worker per model.
 *
 *     python web/serve.py        # then open http://127.0.0.1:8000; page.js starts this worker
 *
 * Messages in: {type: "load", url, card}, then any number of {type: "translate", file, bands}.
 * Messages out: {type: "ready", backend, why} | {type: "progress", done, total} |
 *   {type: "result", width, height, tiles, seconds, network, png, before, tif, note} |
 *   {type: "error", message}.
 */
import { InputError, decodePicture, encodePng, kindOf, pictureSize, pictureSource, checkSize } from "./images.js";
import { openRaster, rasterSource, scaledInput, writeGeoTiff } from "./rasters.js";
import { translate } from "./tiles.js";

const BATCH = 4; // tiles per session.run: eval mode, so the result does not depend on it
let model = null; // {ort, session, card, backend}
let queue = Promise.resolve(); // one message at a time, in order

self.onmessage = ({ data }) => {
  queue = queue.then(() => handle(data)).catch((e) => {
    const message = e instanceof InputError ? e.message : `unexpected error: ${e?.message ?? e}`;
    self.postMessage({ type: "error", message });
  });
};

async function handle(message) {
  if (message.type === "load") {
    model = await load(message.url, message.card);
    self.postMessage({ type: "ready", backend: model.backend, why: model.why });
  } else if (message.type === "translate") {
    self.postMessage({ type: "result", ...(await translateFile(message.file, message.bands)) });
  }
}

/** The model's session on the best backend this browser has: WebGPU, else WASM (multi-threaded where
 * the page is cross-origin isolated). Returns it with the backend's name and why it is that one. */
async function load(url, card) {
  const response = await fetch(url);
  if (!response.ok) throw new InputError(`${url}: the server answered ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const gpu = self.navigator.gpu;
  const adapter = gpu ? await gpu.requestAdapter().catch(() => null) : null;
  let why = gpu ? "no WebGPU adapter here: GPU absent or blocked" : "this browser has no WebGPU";
  if (adapter) {
    try {
      const ort = await import("./vendor/ort.webgpu.bundle.min.mjs");
      const session = await ort.InferenceSession.create(bytes, { executionProviders: ["webgpu"] });
      return { ort, session, card, backend: "WebGPU", why: "the browser has a WebGPU adapter" };
    } catch (e) {
      why = `WebGPU failed (${e.message})`;
    }
  }
  const ort = await import("./vendor/ort.wasm.bundle.min.mjs");
  const threads = self.crossOriginIsolated ? Math.max(1, Math.min(4, self.navigator.hardwareConcurrency || 1)) : 1;
  ort.env.wasm.numThreads = threads;
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  const isolation = self.crossOriginIsolated ? "cross-origin isolated" : "not cross-origin isolated, so one thread";
  const backend = `WASM SIMD, ${threads} thread${threads > 1 ? "s" : ""}`;
  return { ort, session, card, backend, why: `${why}; ${isolation}` };
}

/** One file, start to end: its source, the tile engine, the downloads. */
async function translateFile(file, bands) {
  if (!model) throw new InputError("no model is loaded yet");
  const began = performance.now();
  const kind = await kindOf(file);
  if (!kind) throw new InputError(`${file.name}: not a PNG, JPEG or TIFF (judged by its first bytes)`);
  let source, raster = null, valid = null, georeferenced = false;
  if (kind === "tiff") {
    raster = await openRaster(file);
    ({ source, valid, georeferenced } = await rasterSource(raster, parseBands(bands, file.name)));
  } else {
    checkSize(file.name, ...(await pictureSize(file, kind)));
    source = pictureSource(await decodePicture(file));
  }
  const { card, session, ort } = model;
  const run = async (input, n) => {
    const feeds = { [card.input]: new ort.Tensor("float32", input, [n, 3, card.tile, card.tile]) };
    return (await session.run(feeds))[card.output].data;
  };
  const progress = (done, total) => self.postMessage({ type: "progress", done, total });
  const { rgba, tiles, network } = await translate(source, { tile: card.tile, overlap: card.overlap, batch: BATCH,
    run, progress });
  const { width, height } = source;
  const png = await encodePng(rgba, width, height);
  const before = raster ? await encodePng(scaledInput(source, valid), width, height) : null;
  let tif = null, note = "";
  if (georeferenced) {
    try {
      tif = await writeGeoTiff(rgba, raster);
    } catch (e) {
      if (!(e instanceof InputError)) throw e;
      note = e.message; // the PNG stands
    }
  }
  return { width, height, tiles, network, seconds: (performance.now() - began) / 1000, png, before, tif, note };
}

/** "3,2,1" or "4" -> [3, 2, 1] or [4]; empty -> null (the bands chosen by colour interpretation). */
function parseBands(text, name) {
  if (!text || !text.trim()) return null;
  const bands = text.split(",").filter((v) => v.trim()).map(Number);
  if (bands.some((b) => !Number.isInteger(b))) {
    throw new InputError(`${name}: bands ${JSON.stringify(text)}: expected comma-separated band numbers such as 3,2,1`);
  }
  return bands;
}
