/* GeoTIFFs in and out for the page's worker, with geotiff.js: bands.py's band choice, validity
 * (GDAL's mask, nodata, alpha, non-finite values) and 2-98 percentile stretch on the way in, and the
 * map as a GeoTIFF on the input's grid (size, CRS, geotransform; the input's invalid pixels masked by
 * an alpha band) on the way out.
 *
 *     python web/serve.py        # then open http://127.0.0.1:8000; worker.js uses this
 *
 * One difference from predict.py: its percentiles come from a sample of 100 windows (or an overview),
 * as it never holds a scene whole; the page holds it and takes them over every valid pixel.
 */
import "./vendor/geotiff.js"; // geotiff.js's browser build: defines globalThis.GeoTIFF
import { InputError, checkSize } from "./images.js";

const { fromBlob, fromArrayBuffer, writeArrayBuffer } = globalThis.GeoTIFF;
const STRETCH = [2, 98]; // predict.py's --stretch default
const GEO_TAGS = ["ModelPixelScale", "ModelTiepoint", "ModelTransformation", "GeoKeyDirectory",
  "GeoDoubleParams", "GeoAsciiParams"];
const MASK_SUBFILE = 4; // NewSubfileType of GDAL's internal mask (GDAL_TIFF_INTERNAL_MASK)

/** The first image of a GeoTIFF, checked against the size limit before any pixel is read. */
export async function openRaster(file) {
  let tiff, image;
  try {
    tiff = await fromBlob(file);
    image = await tiff.getImage(0);
  } catch (e) {
    throw new InputError(`${file.name}: not a TIFF geotiff.js can read (${e.message})`);
  }
  checkSize(file.name, image.getWidth(), image.getHeight());
  return { tiff, image, name: file.name };
}

/** Each band's colour interpretation as GDAL gives it for a GeoTIFF: its GDAL_METADATA items, else
 * red, green, blue for an RGB image, grey for band 1 of a black-is-zero one, alpha for extra samples
 * marked so. */
async function colourInterpretation(image) {
  const count = image.getSamplesPerPixel();
  const fd = image.getFileDirectory();
  const photometric = fd.getValue("PhotometricInterpretation");
  const extra = Array.from(fd.getValue("ExtraSamples") ?? []);
  const base = photometric === 2 ? 3 : 1;
  const interp = [];
  for (let b = 0; b < count; b++) {
    const given = (await image.getGDALMetadata(b))?.COLORINTERP;
    if (given) interp.push(given.toLowerCase());
    else if (photometric === 2 && b < 3) interp.push(["red", "green", "blue"][b]);
    else if (b < base) interp.push(photometric === 1 ? "gray" : "undefined");
    else interp.push([1, 2].includes(extra[b - base]) ? "alpha" : "undefined");
  }
  return interp;
}

/** bands.pick_bands: the three 1-based bands fed as R, G, B (`requested`, as --bands, or by colour
 * interpretation, else the first three that are not alpha; one band is repeated as grey). */
export async function pickBands(raster, requested) {
  const count = raster.image.getSamplesPerPixel();
  const name = raster.name;
  if (requested) {
    const bad = requested.filter((b) => !(b >= 1 && b <= count));
    if (bad.length) {
      throw new InputError(`${name}: bands ${requested.join(",")}: band ${bad[0]} is out of range ` +
        `(this raster has bands 1..${count})`);
    }
    if (![1, 3].includes(requested.length)) {
      throw new InputError(`${name}: bands ${requested.join(",")}: expected 3 bands (R,G,B) or 1 (grey)`);
    }
    return requested.length === 1 ? [requested[0], requested[0], requested[0]] : requested;
  }
  const interp = await colourInterpretation(raster.image);
  const rgb = ["red", "green", "blue"].map((c) => interp.indexOf(c) + 1);
  if (rgb.every((b) => b > 0)) return rgb;
  const data = interp.map((c, i) => (c === "alpha" ? 0 : i + 1)).filter((b) => b > 0);
  if (!data.length) throw new InputError(`${name}: no bands left to translate (its only bands are alpha)`);
  if (data.length === 2) {
    throw new InputError(`${name}: 2 data bands; give Bands as one band (grey) or three such as 1,2,2`);
  }
  return data.length >= 3 ? data.slice(0, 3) : [data[0], data[0], data[0]];
}

/** Bool mask (H*W, 1 = valid) as GDAL gives it: the internal mask if there is one, else the nodata
 * value of the chosen bands, else an alpha band; and, for float data, finite values only. */
async function validity(raster, bands, values) {
  const { tiff, image } = raster;
  const n = image.getWidth() * image.getHeight();
  const valid = new Uint8Array(n).fill(1);
  const mask = await internalMask(tiff, image);
  const nodata = image.getGDALNoData();
  const interp = await colourInterpretation(image);
  const alpha = interp.indexOf("alpha");
  if (mask) {
    for (let p = 0; p < n; p++) valid[p] = mask[p] > 0 ? 1 : 0;
  } else if (nodata !== null) {
    for (const v of bands.map((b) => values.get(b))) {
      for (let p = 0; p < n; p++) if (v[p] === nodata || (Number.isNaN(nodata) && Number.isNaN(v[p]))) valid[p] = 0;
    }
  } else if (alpha >= 0) {
    const [a] = await image.readRasters({ samples: [alpha], interleave: false });
    for (let p = 0; p < n; p++) if (!(a[p] > 0)) valid[p] = 0;
  }
  for (const v of bands.map((b) => values.get(b))) {
    if (v instanceof Float32Array || v instanceof Float64Array) {
      for (let p = 0; p < n; p++) if (!Number.isFinite(v[p])) valid[p] = 0;
    }
  }
  return valid;
}

/** The pixels of GDAL's internal mask of `image` (an IFD of NewSubfileType 4 of the same size), or null. */
async function internalMask(tiff, image) {
  const count = await tiff.getImageCount();
  for (let i = 1; i < count; i++) {
    const candidate = await tiff.getImage(i);
    const kind = candidate.getFileDirectory().getValue("NewSubfileType") ?? 0;
    const sameSize = candidate.getWidth() === image.getWidth() && candidate.getHeight() === image.getHeight();
    if (kind === MASK_SUBFILE && sameSize) {
      const [mask] = await candidate.readRasters({ interleave: false });
      return mask;
    }
  }
  return null;
}

/** np.percentile (linear) of the sorted values a at q percent. */
function percentile(a, q) {
  const pos = (q / 100) * (a.length - 1);
  const lo = Math.floor(pos), t = pos - lo;
  return lo + 1 < a.length ? a[lo] + (a[lo + 1] - a[lo]) * t : a[lo];
}

/** bands.stretch_limits over every valid pixel: per band [lo, hi] at the 2nd and 98th percentiles. */
function stretchLimits(bands, values, valid) {
  return bands.map((b) => {
    const v = values.get(b);
    const kept = new Float64Array(valid.reduce((s, x) => s + x, 0));
    let k = 0;
    for (let p = 0; p < valid.length; p++) if (valid[p]) kept[k++] = v[p];
    kept.sort();
    const lo = percentile(kept, STRETCH[0]);
    return [lo, Math.max(percentile(kept, STRETCH[1]), lo + 1e-6)];
  });
}

/**
 * A source for tiles.js over a GeoTIFF's chosen bands, scaled to [-1, 1] as bands.RasterSource does:
 * uint8 as it is (v / 127.5 - 1), anything else stretched per band between its percentiles, clipped.
 * Returns {source, valid (Uint8Array H*W), georeferenced}.
 */
export async function rasterSource(raster, requested) {
  const { image, name } = raster;
  const width = image.getWidth(), height = image.getHeight();
  const bands = await pickBands(raster, requested);
  const unique = [...new Set(bands)];
  let arrays;
  try {
    arrays = await image.readRasters({ samples: unique.map((b) => b - 1), interleave: false });
  } catch (e) {
    throw new InputError(`${name}: cannot read its pixels (${e.message}; is the file complete?)`);
  }
  const values = new Map(unique.map((b, i) => [b, arrays[i]]));
  const valid = await validity(raster, bands, values);
  if (!valid.some((v) => v)) throw new InputError(`${name}: every pixel is nodata or masked; nothing to translate`);
  const stretched = bands.some((b) => !(values.get(b) instanceof Uint8Array));
  const limits = stretched ? stretchLimits(bands, values, valid).map((pair) => pair.map(Math.fround)) : null;
  const scale = (v, c) => {
    if (!limits) return Math.fround(Math.fround(v / 127.5) - 1);
    const [lo, hi] = limits[c];
    const x = Number.isNaN(v) ? 0 : Math.fround(v); // bands.py's nan_to_num
    const t = Math.min(1, Math.max(0, Math.fround(Math.fround(x - lo) / Math.fround(hi - lo))));
    return Math.fround(Math.fround(t * 2) - 1);
  };
  const source = {
    width, height,
    read(y0, y1) {
      const n = (y1 - y0) * width, start = y0 * width;
      const image = new Float32Array(3 * n);
      bands.forEach((b, c) => {
        const v = values.get(b);
        for (let p = 0; p < n; p++) image[c * n + p] = scale(v[start + p], c);
      });
      return { image, valid: valid.subarray(start, start + n) };
    },
  };
  return { source, valid, georeferenced: GEO_TAGS.some((t) => image.getFileDirectory().hasTag(t)) };
}

/** What the network saw, as RGBA levels (alpha 0 where invalid): the "before" picture of a GeoTIFF,
 * read a band of rows at a time. */
export function scaledInput(source, valid, rows = 256) {
  const { width, height } = source;
  const rgba = new Uint8ClampedArray(width * height * 4);
  for (let y0 = 0; y0 < height; y0 += rows) {
    const { image } = source.read(y0, Math.min(height, y0 + rows));
    const n = image.length / 3, start = y0 * width;
    for (let p = 0; p < n; p++) {
      for (let c = 0; c < 3; c++) rgba[(start + p) * 4 + c] = Math.round((image[c * n + p] + 1) * 127.5);
      rgba[(start + p) * 4 + 3] = valid[start + p] ? 255 : 0;
    }
  }
  return rgba;
}

/** The map as a GeoTIFF on the input's grid: RGBA uint8 (alpha 0 where the input is invalid) with
 * the input's georeferencing tags copied as they are. Read back and checked before it is offered. */
export async function writeGeoTiff(rgba, raster) {
  const { image, name } = raster;
  const width = image.getWidth(), height = image.getHeight();
  const fd = image.getFileDirectory();
  const metadata = { width, height, BitsPerSample: [8, 8, 8, 8], SamplesPerPixel: 4, PhotometricInterpretation: 2,
    ExtraSamples: [2], SampleFormat: [1, 1, 1, 1] };
  for (const tag of GEO_TAGS) {
    if (fd.hasTag(tag)) metadata[tag] = await fd.loadValue(tag);
  }
  // the writer invents a WGS 84 grid unless it sees one of these keys; the directory copied above
  // carries the input's real ones
  metadata.ProjectedCSTypeGeoKey = image.getGeoKeys()?.ProjectedCSTypeGeoKey;
  const buffer = writeArrayBuffer(new Uint8Array(rgba.buffer, rgba.byteOffset, rgba.length), metadata);
  const back = await (await fromArrayBuffer(buffer)).getImage(0);
  const same = (tag) => String(fd.getValue(tag) ?? "") === String(back.getFileDirectory().getValue(tag) ?? "");
  if (back.getWidth() !== width || back.getHeight() !== height || !GEO_TAGS.every(same)) {
    throw new InputError(`${name}: the map's GeoTIFF could not carry this file's georeferencing; the PNG is complete`);
  }
  return new Blob([buffer], { type: "image/tiff" });
}
