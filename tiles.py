"""The tile engine: an image of any size translated in overlapping tiles blended with a Hann window,
window by window, so memory depends on the tile and the block width, never on the image.

    python predict.py --weights sat2map --input scene.tif --out out/   # runs it (see raster.py)

An input is a *source* (height, width, and read(y0, y1, x0, x1) -> (image in [-1, 1], validity)), the
output goes to a *sink* (write(y, x, rgb, valid)). The engine walks column blocks of at most `block`
px and, inside each block, rows of tiles; a row of output is written as soon as no later tile touches
it. raster.py supplies GeoTIFF sources and sinks; `translate` is the in-memory form.
"""
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from generator import inference, tta

SHOW_TILES = 32  # a per-file tile progress bar appears from this many tiles on



def pad_reflect(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pad (N, C, H, W) at the bottom and right to (h, w) by reflection (repeated for tiny images)."""
    if min(x.shape[-2:]) == 1:  # a 1-px side has nothing to reflect: repeat it once, then reflect
        x = F.pad(x, (0, int(x.shape[-1] < w and x.shape[-1] == 1), 0, int(x.shape[-2] < h and x.shape[-2] == 1)),
                  mode="replicate")
    while x.shape[-2] < h or x.shape[-1] < w:
        dh, dw = min(h - x.shape[-2], x.shape[-2] - 1), min(w - x.shape[-1], x.shape[-1] - 1)
        x = F.pad(x, (0, dw, 0, dh), mode="reflect")
    return x


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets covering [0, size) with at least `overlap` px shared; the last one ends at size."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def window(tile: int, device) -> torch.Tensor:
    """Separable Hann window, strictly positive so every pixel has weight even at the image border."""
    w = torch.hann_window(tile + 2, periodic=False, device=device)[1:-1]
    return (w[:, None] * w[None, :])[None, None]


def tile_seed(seed: int, y: int, x: int) -> int:
    """Dropout seed of one tile, fixed by its place in the image: a tile computed twice (at a block
    edge) or in a different order gives the same output."""
    return ((seed * 1_000_003 + y) * 1_000_003 + x) & (2 ** 63 - 1)


def run_tiles(G, tiles: torch.Tensor, places: list, paper: bool, seed: int, batch: int, use_tta: bool):
    """G on tiles (N, 3, t, t) inside an `inference` context. Paper mode: every tile (and every TTA
    variant) is its own batch, so BatchNorm sees that tile's statistics, as a training crop did, and its
    dropout is seeded by its place. --eval: up to `batch` tiles per forward pass. use_tta averages the
    8 flips/rotations."""
    tiles = tiles.to(next(G.parameters()).dtype)  # what predict's --amp made G
    if paper:
        out = []
        for t, (y, x) in zip(tiles, places):
            torch.manual_seed(tile_seed(seed, y, x))
            out.append(tta(G, t[None], separate=True) if use_tta else G(t[None]).float())
        return torch.cat(out)
    # channels-last is faster; the paper mode above stays contiguous, as dropout masks follow the layout
    tiles = tiles.contiguous(memory_format=torch.channels_last)
    run = (lambda chunk: tta(G, chunk)) if use_tta else (lambda chunk: G(chunk).float())
    return torch.cat([run(tiles[i:i + batch]) for i in range(0, len(tiles), batch)])


def fill_invalid(t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Tile (3, h, w) with its invalid pixels set to the mean of its valid ones, so nodata values
    (0, -9999, ...) reach neither the network nor, in the paper mode, its BatchNorm statistics."""
    mean = (t * valid).sum((1, 2), keepdim=True) / valid.sum()
    return torch.where(valid, t, mean)


@dataclass
class Engine:
    """How tiles are run: size, overlap, test-time mode, batching, TTA, and the column block width."""
    tile: int = 256
    overlap: int = 64
    paper: bool = True
    seed: int = 0
    batch: int = 8
    tta: bool = False
    block: int = 4096

    def run(self, G, source, sink, progress=False) -> int:
        """Translate source into sink; returns the number of valid output pixels. progress: True for a
        tqdm bar, or a callable progress(done_tiles, total_tiles) called after each tile row."""
        H, W, t = source.height, source.width, self.tile
        ys, xs = tile_starts(max(H, t), t, self.overlap), tile_starts(max(W, t), t, self.overlap)
        device = next(G.parameters()).device
        win = window(t, device)[0]
        blocks = [(x0, min(W, x0 + self.block)) for x0 in range(0, W, self.block)]
        cols = [[x for x in xs if x < x1 and x + t > x0] for x0, x1 in blocks]
        total = len(ys) * sum(map(len, cols))
        report = progress if callable(progress) else None
        bar = tqdm(total=total, desc="tiles", unit="tile", leave=False,
                   disable=report is not None or not progress or total < SHOW_TILES)
        valid_pixels, pixels, done_tiles, start = 0, 0, 0, time.perf_counter()
        with inference(G, paper=self.paper, seed=self.seed):
            for (x0, x1), block_cols in zip(blocks, cols):
                cx0, cx1 = block_cols[0], block_cols[-1] + t
                acc = torch.zeros(3, t, cx1 - cx0, device=device)
                weight = torch.zeros(1, t, cx1 - cx0, device=device)
                for r, y in enumerate(ys):
                    image, valid = source.read(y, min(y + t, H), cx0, min(cx1, W))
                    image, valid = pad_reflect(torch.cat([image, valid[None].float()])[None], t, cx1 - cx0)[0].split(3)
                    valid = valid[0] > 0.5
                    self._accumulate(G, image.to(device), valid.to(device), y, cx0, block_cols, acc, weight, win)
                    bar.update(len(block_cols))
                    done_tiles += len(block_cols)
                    if report is not None:
                        report(done_tiles, total)
                    end = ys[r + 1] if r + 1 < len(ys) else H  # rows above `end` get no more tiles
                    rows, span = slice(0, end - y), slice(x0 - cx0, x1 - cx0)
                    w = weight[:, rows, span]
                    done = (w[0] > 0) & valid[rows, span].to(device)
                    sink.write(y, x0, (acc[:, rows, span] / w.clamp_min(1e-12)).cpu(), done.cpu())
                    valid_pixels += int(done.sum())
                    pixels += (end - y) * (x1 - x0)
                    if end < H:
                        self._shift(acc, weight, ys[r + 1] - y)
                    if not bar.disable:
                        bar.set_postfix_str(f"{pixels / 1e6 / (time.perf_counter() - start):.2f} MP/s", refresh=False)
        bar.close()
        return valid_pixels

    def _accumulate(self, G, image, valid, y, cx0, block_cols, acc, weight, win):
        """Run the tiles of one tile row and add them, windowed and weighted by their share of valid
        pixels, into the block's accumulators. Tiles without a valid pixel are not run at all."""
        t = self.tile
        tiles, places, shares = [], [], []
        for x in block_cols:
            v = valid[:, x - cx0:x - cx0 + t]
            share = v.float().mean().item()
            if share == 0:
                continue
            tile = image[:, :, x - cx0:x - cx0 + t]
            tiles.append(tile if share == 1 else fill_invalid(tile, v))
            places.append((y, x))
            shares.append(share)
        if not tiles:
            return
        out = run_tiles(G, torch.stack(tiles), places, self.paper, self.seed, self.batch, self.tta)
        for o, (_, x), share in zip(out, places, shares):
            acc[:, :, x - cx0:x - cx0 + t] += o * (win * share)
            weight[:, :, x - cx0:x - cx0 + t] += win * share

    @staticmethod
    def _shift(acc, weight, rows: int):
        """Move the accumulators up by `rows` (the rows just written) and clear the bottom."""
        for a in (acc, weight):
            a[:, :-rows] = a[:, rows:].clone()
            a[:, -rows:] = 0


class TensorSource:
    """An image (3, H, W) in memory, every pixel valid: float in [-1, 1], or uint8 (a decoded PNG/JPEG,
    converted window by window so no float copy of the whole image is made)."""

    def __init__(self, x: torch.Tensor):
        self.x, self.height, self.width = x, x.shape[-2], x.shape[-1]

    def read(self, y0, y1, x0, x1):
        part = self.x[:, y0:y1, x0:x1]
        part = part.float() / 127.5 - 1 if part.dtype == torch.uint8 else part.float()
        return part, torch.ones(part.shape[1:], dtype=torch.bool)


class TensorSink:
    """Collects the output as one float tensor (3, H, W) in [-1, 1]."""

    def __init__(self, height, width, device="cpu"):
        self.out = torch.zeros(3, height, width, device=device)

    def write(self, y, x, rgb, valid):
        self.out[:, y:y + rgb.shape[1], x:x + rgb.shape[2]] = rgb.to(self.out.device)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(3, h, w) in [-1, 1] -> uint8 rounded to the nearest level, as utils.to_image does."""
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


class ArraySink:
    """Collects the output as uint8 (H, W, 3), a quarter of a float copy: the PNG/JPEG path."""

    def __init__(self, height, width):
        self.out = np.zeros((height, width, 3), dtype=np.uint8)

    def write(self, y, x, rgb, valid):
        self.out[y:y + rgb.shape[1], x:x + rgb.shape[2]] = to_uint8(rgb).transpose(1, 2, 0)


def translate(G, x: torch.Tensor, tile=256, overlap=64, paper=True, seed=0, batch=8, tta=False) -> torch.Tensor:
    """G over one image (1, 3, H, W) in [-1, 1] of any size, held in memory; returns (1, 3, H, W)."""
    sink = TensorSink(x.shape[-2], x.shape[-1], x.device)
    Engine(tile, overlap, paper, seed, batch, tta, block=max(x.shape[-1], 1)).run(G, TensorSource(x[0]), sink)
    return sink.out[None]
