/* Pictures in and out for the page's worker: what kind a file is and its size from its header (so a
 * picture over the limit is refused before it is decoded), PNG/JPEG decoded as predict.py's PIL path
 * does (RGB, EXIF orientation applied, no colour management), maps encoded as PNG.
 *
 *     python web/serve.py        # then open http://127.0.0.1:8000; worker.js uses this
 */

export const MAX_MEGAPIXELS = 40; // what one tab holds comfortably: input, output and encoders, under 1 GB

/** A message for the page, naming the file: bad input, not a bug. */
export class InputError extends Error {}

/** "png", "jpeg" or "tiff" from a file's first bytes, or null. */
export async function kindOf(file) {
  const b = new Uint8Array(await file.slice(0, 8).arrayBuffer());
  if (b.length >= 8 && [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a].every((v, i) => b[i] === v)) return "png";
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "jpeg";
  const order = String.fromCharCode(b[0], b[1]);
  const magic = order === "II" ? b[2] | (b[3] << 8) : (b[2] << 8) | b[3];
  if ((order === "II" || order === "MM") && (magic === 42 || magic === 43)) return "tiff";
  return null;
}

/** [width, height] of a PNG (its IHDR) or a JPEG (its first frame header), without decoding it. */
export async function pictureSize(file, kind) {
  if (kind === "png") {
    const view = new DataView(await file.slice(16, 24).arrayBuffer());
    if (view.byteLength < 8) throw new InputError(`${file.name}: cannot decode (the PNG header is cut short)`);
    return [view.getUint32(0), view.getUint32(4)];
  }
  let pos = 2; // after SOI: segments of marker (2 bytes) and length (2 bytes, counting itself)
  while (pos + 9 <= file.size) {
    const view = new DataView(await file.slice(pos, pos + 9).arrayBuffer());
    const marker = view.getUint16(0);
    if (marker >> 8 !== 0xff) break;
    const code = marker & 0xff;
    if (code >= 0xc0 && code <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(code)) {
      return [view.getUint16(7), view.getUint16(5)]; // start of frame: precision, height, width
    }
    pos += 2 + view.getUint16(2);
  }
  throw new InputError(`${file.name}: cannot decode (no frame header found in the JPEG)`);
}

/** Refuse a picture over MAX_MEGAPIXELS before decoding it. */
export function checkSize(name, width, height) {
  if (!(width > 0 && height > 0)) throw new InputError(`${name}: has no pixels`);
  const mp = (width * height) / 1e6;
  if (mp > MAX_MEGAPIXELS) {
    throw new InputError(`${name}: ${width}×${height} px is ${mp.toFixed(1)} megapixels, over this page's limit of ` +
      `${MAX_MEGAPIXELS}; translate it with predict.py, which reads any size window by window`);
  }
}

/** A PNG/JPEG decoded to RGBA bytes, upright as its EXIF orientation says, without colour conversion. */
export async function decodePicture(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none",
      imageOrientation: "from-image" });
  } catch {
    throw new InputError(`${file.name}: cannot decode (is the file complete?)`);
  }
  const { width, height } = bitmap;
  checkSize(file.name, width, height);
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return { width, height, rgba: ctx.getImageData(0, 0, width, height).data };
}

/** A source for tiles.js over decoded RGBA bytes, every pixel valid: v / 127.5 - 1 in float32. */
export function pictureSource({ width, height, rgba }) {
  return {
    width, height,
    read(y0, y1) {
      const n = (y1 - y0) * width;
      const image = new Float32Array(3 * n);
      for (let p = 0; p < n; p++) {
        const q = (y0 * width + p) * 4;
        for (let c = 0; c < 3; c++) image[c * n + p] = Math.fround(Math.fround(rgba[q + c] / 127.5) - 1);
      }
      return { image, valid: new Uint8Array(n).fill(1) };
    },
  };
}

/** RGBA bytes as a PNG file (alpha kept where it is not 255). */
export async function encodePng(rgba, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  canvas.getContext("2d").putImageData(new ImageData(rgba, width, height), 0, 0);
  return canvas.convertToBlob({ type: "image/png" });
}
