/* The tile engine of tiles.py, in the browser: an image of any size translated in overlapping tiles
 * blended with a Hann window, so that the page's map equals `predict.py --eval` on the same file.
 *
 *     python web/serve.py        # then open http://127.0.0.1:8000; worker.js runs this
 *
 * It mirrors tiles.py step for step (one column block, as the page holds the whole image): the same
 * tile starts, reflection padding of images smaller than a tile, share of valid pixels per tile,
 * invalid pixels filled with the tile's mean, Hann window weighted by that share, rows written once no
 * later tile touches them, and levels rounded half to even as torch does. Float32 arithmetic is
 * mirrored with Math.fround where torch rounds; what remains is summation order (below a level).
 */

/** tiles.tile_starts: offsets covering [0, size) with at least `overlap` px shared; the last ends at size. */
export function tileStarts(size, tile, overlap) {
  if (size <= tile) return [0];
  const starts = [];
  for (let s = 0; s < size - tile; s += tile - overlap) starts.push(s);
  starts.push(size - tile);
  return starts;
}

/** tiles.window: the separable Hann window torch.hann_window(tile + 2, periodic=False)[1:-1], squared
 * out to (tile, tile); strictly positive, so every pixel has weight even at the image border. */
export function hannWindow(tile) {
  const w = new Float32Array(tile);
  for (let i = 0; i < tile; i++) w[i] = 0.5 - 0.5 * Math.cos((2 * Math.PI * (i + 1)) / (tile + 1));
  const win = new Float32Array(tile * tile);
  for (let y = 0; y < tile; y++) for (let x = 0; x < tile; x++) win[y * tile + x] = w[y] * w[x];
  return win;
}

/** Where each of `size` positions reads from an axis of n pixels, as tiles.pad_reflect pads it: a
 * 1-px side repeated once, then reflected (without repeating the edge) as often as needed. */
export function padIndex(n, size) {
  const index = Array.from({ length: n }, (_, i) => i);
  if (n === 1 && size > 1) index.push(0);
  while (index.length < size) {
    const len = index.length;
    const d = Math.min(size - len, len - 1);
    for (let k = 0; k < d; k++) index.push(index[len - 2 - k]);
  }
  return Int32Array.from(index);
}

/** torch.round: half to even. */
function roundHalfEven(v) {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** (y + 1) * 127.5 in float32, clipped and rounded as tiles.to_uint8 does. */
export function toLevel(y) {
  const v = Math.min(1, Math.max(-1, y));
  return roundHalfEven(Math.fround(Math.fround(v + 1) * 127.5));
}

/**
 * Cut one row of tiles out of a strip of the image: the tiles with a valid pixel, their invalid pixels
 * set to the tile's mean per channel (tiles.fill_invalid), their x and share of valid pixels.
 * strip: {image: Float32Array (3, h, W), valid: Uint8Array (h, W)}; rows/cols: padIndex maps.
 */
function cutRow(strip, width, xs, tile, rows, cols) {
  const plane = tile * tile;
  const hw = strip.valid.length;
  const tiles = [], places = [], shares = [];
  for (const x of xs) {
    const data = new Float32Array(3 * plane);
    const valid = new Uint8Array(plane);
    let count = 0;
    for (let i = 0; i < tile; i++) {
      const src = rows[i] * width;
      for (let j = 0; j < tile; j++) {
        const p = src + cols[x + j];
        const k = i * tile + j;
        valid[k] = strip.valid[p];
        count += valid[k];
        for (let c = 0; c < 3; c++) data[c * plane + k] = strip.image[c * hw + p];
      }
    }
    if (count === 0) continue;
    if (count < plane) fillInvalid(data, valid, count, plane);
    tiles.push(data);
    places.push(x);
    shares.push(count / plane);
  }
  return { tiles, places, shares };
}

/** tiles.fill_invalid: invalid pixels of a tile set to the mean of its valid ones, per channel. */
function fillInvalid(data, valid, count, plane) {
  for (let c = 0; c < 3; c++) {
    let sum = 0;
    for (let k = 0; k < plane; k++) if (valid[k]) sum += data[c * plane + k];
    const mean = Math.fround(sum / count);
    for (let k = 0; k < plane; k++) if (!valid[k]) data[c * plane + k] = mean;
  }
}

/** The network on a row's tiles, `batch` at a time; returns one Float32Array (3, t, t) per tile. */
async function runRow(tiles, tile, batch, run) {
  const size = 3 * tile * tile;
  const outs = [];
  for (let i = 0; i < tiles.length; i += batch) {
    const chunk = tiles.slice(i, i + batch);
    const input = new Float32Array(chunk.length * size);
    chunk.forEach((t, b) => input.set(t, b * size));
    const output = await run(input, chunk.length);
    for (let b = 0; b < chunk.length; b++) outs.push(output.subarray(b * size, (b + 1) * size));
  }
  return outs;
}

/** Add a row's outputs into the accumulators, Hann-windowed and weighted by their valid share. */
function blend(acc, weight, outs, places, shares, win, tile, span) {
  const plane = tile * tile;
  const w = new Float32Array(plane);
  outs.forEach((o, n) => {
    const x = places[n];
    for (let k = 0; k < plane; k++) w[k] = win[k] * shares[n];
    for (let i = 0; i < tile; i++) {
      for (let j = 0; j < tile; j++) {
        const k = i * tile + j, a = i * span + x + j;
        weight[a] += w[k];
        for (let c = 0; c < 3; c++) acc[c * tile * span + a] += Math.fround(o[c * plane + k] * w[k]);
      }
    }
  });
}

/** The finished rows [y, y + count) into the RGBA output, masked (alpha 0) where the source is invalid. */
function writeRows(out, acc, weight, strip, y, count, width, tile, span) {
  for (let i = 0; i < count; i++) {
    for (let j = 0; j < width; j++) {
      const a = i * span + j, o = ((y + i) * width + j) * 4;
      const wsum = Math.max(weight[a], 1e-12);
      for (let c = 0; c < 3; c++) out[o + c] = toLevel(Math.fround(acc[c * tile * span + a] / wsum));
      out[o + 3] = strip.valid[i * width + j] ? 255 : 0;
    }
  }
}

/** tiles.shift_up: move the accumulators up by `rows` and clear the bottom. */
function shiftUp(acc, weight, rows, tile, span) {
  for (const [a, planes] of [[acc, 3], [weight, 1]]) {
    for (let c = 0; c < planes; c++) {
      const base = c * tile * span;
      a.copyWithin(base, base + rows * span, base + tile * span);
      a.fill(0, base + (tile - rows) * span, base + tile * span);
    }
  }
}

/**
 * Translate a source {height, width, read(y0, y1) -> {image: Float32Array (3, h, W) in [-1, 1],
 * valid: Uint8Array (h, W)}} with run(input Float32Array (n, 3, t, t), n) -> Float32Array output.
 * Returns {rgba: Uint8ClampedArray (H, W, 4), tiles: number of tiles run, network: seconds in run}.
 * progress(done, total) follows the tile rows.
 */
export async function translate(source, { tile, overlap, batch, run, progress }) {
  const { height, width } = source;
  const ys = tileStarts(Math.max(height, tile), tile, overlap);
  const xs = tileStarts(Math.max(width, tile), tile, overlap);
  const span = xs[xs.length - 1] + tile;
  const win = hannWindow(tile);
  const acc = new Float32Array(3 * tile * span), weight = new Float32Array(tile * span);
  const rgba = new Uint8ClampedArray(height * width * 4);
  const cols = padIndex(width, span);
  let ran = 0, network = 0;
  for (let r = 0; r < ys.length; r++) {
    const y = ys[r];
    const strip = source.read(y, Math.min(y + tile, height));
    const row = cutRow(strip, width, xs, tile, padIndex(Math.min(tile, height - y), tile), cols);
    const began = performance.now();
    const outs = await runRow(row.tiles, tile, batch, run);
    network += (performance.now() - began) / 1000;
    ran += outs.length;
    blend(acc, weight, outs, row.places, row.shares, win, tile, span);
    const end = r + 1 < ys.length ? ys[r + 1] : height;
    writeRows(rgba, acc, weight, strip, y, end - y, width, tile, span);
    if (end < height) shiftUp(acc, weight, end - y, tile, span);
    progress?.((r + 1) * xs.length, ys.length * xs.length);
  }
  return { rgba, tiles: ran, network };
}
