"""The tile engine: an image of any size translated in overlapping tiles blended with a Hann window,
window by window, so memory depends on the tile and the block width, never on the image.

    python predict.py --weights sat2map --input scene.tif --out out/   # runs it (see raster.py)

An input is a *source* (height, width, and read(y0, y1, x0, x1) -> (image in [-1, 1], validity on
the host); optionally split as read_raw -> (raw, validity) and scale(raw) -> image, so the two are
timed apart), the output goes to a *sink* (write(y, x, rgb, valid), host tensors). The engine walks
column blocks of at most `block` px and, inside each block, rows of tiles; a row of output is written
as soon as no later tile touches it. Three stages: a reader (read, scale, cut tiles), the network, a
writer (blend, write). On a GPU, or where the network's threads leave a CPU core free, the reader and
writer are threads beside the network, joined by small bounded queues; where the network's threads
hold every core they take turns on the calling thread instead, which is quicker there. A band
of rows (`Engine.bands`) can be translated on its own, exactly as in the whole run: that is how
predict.py shares one raster between processes. A run can be stopped from outside (Ctrl-C, a
Stop button, a client gone, a time limit) through its cancel hook, checked before every forward pass.
raster.py supplies GeoTIFF sources and sinks; `translate` is the in-memory form.
"""
import contextlib
import os
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from backends import as_net
from cli import Cancelled
from cog import to_uint8
from generator import channels, tta
from memory import fix_mmap_threshold, keep_freed_buffers

SHOW_TILES = 32  # a per-file tile progress bar appears from this many tiles on


def overlap_pays(device) -> bool:
    """Whether reading and writing in threads beside the network makes a run quicker: yes where the
    network runs on an accelerator, or on a CPU whose cores its threads (torch.get_num_threads, i.e.
    OMP_NUM_THREADS) leave free. Where they hold every core, a helper thread can only run by pausing
    one of them, and the network's other threads wait for that one: on a 2-core CPU the overlapped
    run reached 80% of the network-alone rate, the stages one after the other 85-87%."""
    if device.type != "cpu":
        return True
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return torch.get_num_threads() < cores


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
    """G (a net of backends.py, or a generator module) on tiles (N, C, t, t) inside its `inference`
    context. Paper mode: every tile (and every TTA variant) is its own batch, so BatchNorm sees that
    tile's statistics, as a training crop did, and its dropout is seeded by its place. --eval: up to
    `batch` tiles per forward pass. use_tta averages the 8 flips/rotations."""
    G = as_net(G)
    tiles = tiles.to(G.dtype)  # what predict's --amp made G
    if paper:
        out = []
        for t, (y, x) in zip(tiles, places):
            torch.manual_seed(tile_seed(seed, y, x))
            out.append(tta(G, t[None], separate=True) if use_tta else G(t[None]).float())
        return torch.cat(out)
    # channels-last unless the net says otherwise; the paper mode above stays contiguous, as dropout
    # masks follow the layout
    tiles = tiles.contiguous(memory_format=G.memory_format)
    run = (lambda chunk: tta(G, chunk)) if use_tta else (lambda chunk: G(chunk).float())
    return torch.cat([run(tiles[i:i + batch]) for i in range(0, len(tiles), batch)])


def stop_if(cancel):
    """Raise Cancelled when the cancel hook gives a reason to stop: cancel() returns None (or False)
    to go on, else the reason, a str (True: no reason given)."""
    if cancel is not None and (reason := cancel()):
        raise Cancelled(reason if isinstance(reason, str) else "cancelled")


def fill_invalid(t: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Tile (C, h, w) with its invalid pixels set to the mean of its valid ones, so nodata values
    (0, -9999, ...) reach neither the network nor, in the paper mode, its BatchNorm statistics."""
    mean = (t * valid).sum((1, 2), keepdim=True) / valid.sum()
    return torch.where(valid, t, mean)


@dataclass
class Row:
    """One tile row of one column block, as the reader hands it to the network: the tiles to run (on
    the host, pinned for a CUDA device, or wherever the source keeps its image), their places and
    valid shares, and the padded validity mask (host)."""
    block: int  # index of the column block
    r: int  # index of the tile row
    tiles: torch.Tensor | None  # (N, C, t, t); None when no tile of the row has a valid pixel
    places: list  # (y, x) of each tile
    shares: list  # share of valid pixels of each tile, a python float
    valid: torch.Tensor  # (t, block width) bool, host
    out: torch.Tensor | None = None  # G's output for `tiles`, on the device
    timing: tuple | None = None  # CUDA events around the network, read once the writer has synced


def put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """q.put that gives up (returns False) once `stop` is set, so no thread waits forever on a
    consumer that has died."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            pass
    return False


DONE = object()  # the end of a queue's items


def get(q: queue.Queue, stop: threading.Event):
    """q.get that returns DONE once `stop` is set and nothing is left."""
    while True:
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            if stop.is_set():
                return DONE


@dataclass
class Engine:
    """How tiles are run: size, overlap, test-time mode, batching, TTA, and the column block width.
    pipeline: read and write in threads beside the network (the result is the same, bit for bit);
    None: where that is quicker (overlap_pays)."""
    tile: int = 256
    overlap: int = 64
    paper: bool = True
    seed: int = 0
    batch: int = 8
    tta: bool = False
    block: int = 4096
    pipeline: bool | None = None
    queue_rows: int = 2  # tile rows waiting between two stages: memory stays a few rows

    def plan(self, height: int, width: int):
        """Tile rows, column blocks and each block's tile columns of a height x width image."""
        t = self.tile
        ys, xs = tile_starts(max(height, t), t, self.overlap), tile_starts(max(width, t), t, self.overlap)
        blocks = [(x0, min(width, x0 + self.block)) for x0 in range(0, width, self.block)]
        cols = [[x for x in xs if x < x1 and x + t > x0] for x0, x1 in blocks]
        return ys, blocks, cols

    def bands(self, height: int, width: int, n: int) -> list[tuple[int, int]]:
        """Up to n horizontal bands (y0, y1) of output rows, cut at tile-row boundaries with about as
        many tile rows each: translated apart (`run(rows=...)`) they give the whole result exactly."""
        ys = self.plan(height, width)[0]
        cuts, edges = sorted({round(k * len(ys) / n) for k in range(n + 1)}), ys + [height]
        return [(edges[a], edges[b]) for a, b in zip(cuts, cuts[1:])]

    def _row_range(self, ys, height, rows) -> tuple[int, int]:
        """Tile rows to run for output rows `rows` = (y0, y1): from the first that reaches below y0
        (its lower part is blended into y0's rows) to the last that starts above y1."""
        if rows is None:
            return 0, len(ys)
        y0, y1 = rows
        if y0 not in ys + [height] or y1 not in ys + [height]:
            raise ValueError(f"rows {rows}: expected tile-row boundaries (see Engine.bands)")
        first = next(i for i, y in enumerate(ys) if y + self.tile > y0)
        return first, sum(y < y1 for y in ys)

    def run(self, G, source, sink, progress=False, rows=None, stats: dict | None = None, cancel=None) -> int:
        """Translate source into sink; returns the number of valid output pixels written.

        progress: True for a tile bar, or a callable progress(done_tiles, total_tiles) called after
        each tile row is written (from the writer thread). rows: (y0, y1), only these output rows (a
        band from `bands`), each exactly as in a whole run. stats: a dict that receives the seconds
        spent reading, scaling (and cutting tiles), in the network, blending and writing (each
        stage's own time; they overlap), the run's wall time ("seconds") and the number of tiles of
        each row run ("row_tiles"). cancel: a callable asked before each tile row is read and before
        each forward pass (a tile in the paper mode, a batch with --eval), whatever runs the tiles:
        None to go on, else the reason to stop, raised as Cancelled (the sink is then left
        unfinished, for its owner to discard)."""
        began = time.perf_counter()
        G = as_net(G)
        H, W = source.height, source.width
        ys, blocks, cols = self.plan(H, W)
        first, stop = self._row_range(ys, H, rows)
        write_from = ys[first] if rows is None else rows[0]
        device = G.device
        total = (stop - first) * sum(map(len, cols))
        stats = {} if stats is None else stats
        for k in ("read", "scale", "network", "blend", "write"):
            stats.setdefault(k, 0.0)
        stats.setdefault("row_tiles", [])
        bar = tqdm(total=total, desc="tiles", unit="tile", leave=False,
                   disable=progress is not True or total < SHOW_TILES)
        report = progress if callable(progress) else None
        rows_in = self._read(source, ys, blocks, cols, first, stop, device, stats, cancel)
        writer = Writer(self, sink, ys, blocks, cols, H, write_from, device, stats, bar, report, total,
                        channels(G)[1])
        overlapped = self.pipeline if self.pipeline is not None else overlap_pays(device)
        # Threads that allocate row buffers (the stages overlapped, or a server's request threads, one
        # malloc arena each) must hand big buffers back, or the arenas fragment and the peak creeps up
        # with the rows. The main thread alone reuses what it frees instead: a fresh buffer faults on
        # every page, which cost a CPU's network a third of its time.
        alone = not overlapped and threading.current_thread() is threading.main_thread()
        (keep_freed_buffers if alone else fix_mmap_threshold)()
        with G.inference(self.paper, self.seed):
            if overlapped:
                self._overlapped(G, rows_in, writer, device, stats, cancel)
            else:
                for row in rows_in:
                    writer(self._network(G, row, device, stats, cancel))
        bar.close()
        stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - began
        return writer.valid_pixels

    def _read(self, source, ys, blocks, cols, first, stop, device, stats, cancel=None):
        """Rows of tiles, block by block (the reader's work): read, scale, pad, share of valid pixels
        and invalid fill, all decided on the host from the mask, so the device is never waited on."""
        t = self.tile
        read_raw, scale = getattr(source, "read_raw", None), getattr(source, "scale", None)
        for k, ((x0, x1), block_cols) in enumerate(zip(blocks, cols)):
            cx0, cx1 = block_cols[0], block_cols[-1] + t
            for r in range(first, stop):
                stop_if(cancel)
                y = ys[r]
                start = time.perf_counter()
                if read_raw is not None:
                    raw, valid = read_raw(y, min(y + t, source.height), cx0, min(cx1, source.width))
                    read = time.perf_counter()
                    image = scale(raw)
                else:
                    image, valid = source.read(y, min(y + t, source.height), cx0, min(cx1, source.width))
                    read = time.perf_counter()
                stats["read"] += read - start
                row = self._cut(image, valid.cpu(), k, r, y, cx0, cx1, block_cols, device)
                stats["scale"] += time.perf_counter() - read
                yield row

    def _cut(self, image, valid, k, r, y, cx0, cx1, block_cols, device) -> Row:
        """Pad a row's image and mask to whole tiles and cut out the tiles that have a valid pixel,
        their invalid pixels filled."""
        t = self.tile
        if image.shape[-2:] != (t, cx1 - cx0):  # the bottom or right edge of the image
            image = pad_reflect(image[None], t, cx1 - cx0)[0]
            valid = pad_reflect(valid[None, None].float(), t, cx1 - cx0)[0, 0] > 0.5
        tiles, places, shares = [], [], []
        for x in block_cols:
            v = valid[:, x - cx0:x - cx0 + t]
            share = v.float().mean().item()  # a host tensor: no device sync
            if share == 0:
                continue
            tile = image[:, :, x - cx0:x - cx0 + t]
            tiles.append(tile if share == 1 else fill_invalid(tile, v.to(tile.device)))
            places.append((y, x))
            shares.append(share)
        if not tiles:
            return Row(k, r, None, places, shares, valid)
        # built once, in the layout run_tiles runs (so it copies nothing), pinned for a copy to a GPU
        # that runs beside the host's work
        pin = device.type == "cuda" and image.device.type == "cpu"
        batch = torch.empty((len(tiles), *tiles[0].shape), dtype=image.dtype, device=image.device, pin_memory=pin,
                            memory_format=torch.contiguous_format if self.paper else torch.channels_last)
        for b, tile in zip(batch, tiles):
            b.copy_(tile)
        return Row(k, r, batch, places, shares, valid)

    def _network(self, G, row: Row, device, stats, cancel=None) -> Row:
        """G on one row's tiles (the main thread's work)."""
        if row.tiles is None:
            stats["row_tiles"].append(0)
            return row
        start = time.perf_counter()
        events = None
        if device.type == "cuda":
            events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            events[0].record()
        tiles = row.tiles.to(device, non_blocking=True)
        step, out = 1 if self.paper else self.batch, []  # a paper-mode tile is its own forward pass anyway
        for i in range(0, len(tiles), step):  # so a long row stops at its next tile, not at its end
            stop_if(cancel)
            out.append(run_tiles(G, tiles[i:i + step], row.places[i:i + step], self.paper, self.seed, self.batch,
                                 self.tta))
        row.out = torch.cat(out)
        if events is not None:
            events[1].record()
            row.timing = events  # the GPU's time, read by the writer once it has waited for the row
        else:
            stats["network"] += time.perf_counter() - start
        stats["row_tiles"].append(len(row.places))
        row.tiles = None  # the host copy may go
        return row

    def _overlapped(self, G, rows_in, writer, device, stats, cancel=None):
        """The reader thread, the network here, the writer thread, with bounded queues between them.
        An exception in any of the three stops the others and is raised here."""
        inbox, outbox = queue.Queue(self.queue_rows), queue.Queue(self.queue_rows)
        stop, errors = threading.Event(), []

        def on_device(work):
            def body():
                try:
                    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
                        work()
                except BaseException as e:  # noqa: B036 -- handed to the caller's thread
                    errors.append(e)
                    stop.set()
            return body

        def read():
            for row in rows_in:
                if not put(inbox, row, stop):
                    return
            put(inbox, DONE, stop)

        def write():
            while (row := get(outbox, stop)) is not DONE:
                writer(row)

        threads = [threading.Thread(target=on_device(f), daemon=True, name=f"tiles-{f.__name__}") for f in (read, write)]
        for th in threads:
            th.start()
        try:
            while (row := get(inbox, stop)) is not DONE:
                if not put(outbox, self._network(G, row, device, stats, cancel), stop):
                    break
            else:
                put(outbox, DONE, stop)
                threads[1].join()
        finally:
            stop.set()
            for th in threads:
                th.join()
        if errors:
            raise errors[0]


class Writer:
    """The blending and writing of rows (the writer's work): each row's tiles, windowed and weighted by
    their share of valid pixels, are added into accumulators one tile high and as wide as the column
    block; the output rows no later tile touches are normalised, brought to the host and written."""

    def __init__(self, engine, sink, ys, blocks, cols, height, write_from, device, stats, bar, report, total,
                 out_channels):
        self.engine, self.sink, self.ys, self.blocks, self.cols = engine, sink, ys, blocks, cols
        self.out_channels = out_channels  # the generator's: 3, or 1 for grey
        self.height, self.write_from, self.device, self.stats = height, write_from, device, stats
        self.bar, self.report, self.total, self.done = bar, report, total, 0
        self.win = window(engine.tile, device)[0]
        self.block, self.acc, self.weight, self.valid_pixels = None, None, None, 0
        self.pixels, self.start = 0, time.perf_counter()

    def __call__(self, row: Row):
        t, ys = self.engine.tile, self.ys
        if row.timing is not None:  # the writer may wait for the GPU; the network thread does not
            row.timing[1].synchronize()
            self.stats["network"] += row.timing[0].elapsed_time(row.timing[1]) / 1000
        start = time.perf_counter()
        x0, x1 = self.blocks[row.block]
        cx0 = self.cols[row.block][0]
        if row.block != self.block:
            width = self.cols[row.block][-1] + t - cx0
            self.acc = torch.zeros(self.out_channels, t, width, device=self.device)
            self.weight = torch.zeros(1, t, width, device=self.device)
            self.block = row.block
        acc, weight, win = self.acc, self.weight, self.win
        if row.out is not None:
            for o, (_, x), share in zip(row.out, row.places, row.shares):
                w = win * share
                acc[:, :, x - cx0:x - cx0 + t].addcmul_(o, w)
                weight[:, :, x - cx0:x - cx0 + t] += w
        y = ys[row.r]
        end = ys[row.r + 1] if row.r + 1 < len(ys) else self.height  # rows above `end` get no more tiles
        if y >= self.write_from:
            rows, span = slice(0, end - y), slice(x0 - cx0, x1 - cx0)
            rgb = to_host(acc[:, rows, span] / weight[:, rows, span].clamp_min(1e-12))
            # a valid pixel always has weight: the tile holding it has a valid share > 0
            done = row.valid[rows, span]
            blended = time.perf_counter()
            self.stats["blend"] += blended - start
            self.sink.write(y, x0, rgb, done)
            self.valid_pixels += int(done.sum())
            self.pixels += (end - y) * (x1 - x0)
            start = time.perf_counter()
            self.stats["write"] += start - blended
        if end < self.height:
            shift_up(acc, weight, ys[row.r + 1] - y)
        self.stats["blend"] += time.perf_counter() - start
        self._progress(len(self.cols[row.block]))

    def _progress(self, tiles: int):
        self.done += tiles
        if self.report is not None:
            self.report(self.done, self.total)
        if not self.bar.disable:
            self.bar.update(tiles)
            self.bar.set_postfix_str(f"{self.pixels / 1e6 / (time.perf_counter() - self.start):.2f} MP/s", refresh=False)


def shift_up(acc, weight, rows: int):
    """Move the accumulators up by `rows` (the rows just written) and clear the bottom."""
    for a in (acc, weight):
        a[:, :-rows] = a[:, rows:].clone()
        a[:, -rows:] = 0


def to_host(x: torch.Tensor) -> torch.Tensor:
    """x on the host; from a CUDA device through pinned memory, waiting only for the work queued
    before the copy (not for the whole device)."""
    if x.device.type != "cuda":
        return x.cpu()
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    ready.synchronize()
    return host


class TensorSource:
    """An image (C, H, W) in memory, every pixel valid: float in [-1, 1], or uint8 (a decoded PNG/JPEG,
    converted window by window so no float copy of the whole image is made). The image stays on its
    device; the validity mask, like every source's, is on the host, where the engine decides from it
    which tiles run."""

    def __init__(self, x: torch.Tensor):
        self.x, self.height, self.width = x, x.shape[-2], x.shape[-1]

    def read_raw(self, y0, y1, x0, x1):
        part = self.x[:, y0:y1, x0:x1]
        return part, torch.ones(part.shape[1:], dtype=torch.bool)

    @staticmethod
    def scale(part):
        return part.float().div_(127.5).sub_(1) if part.dtype == torch.uint8 else part.float()

    def read(self, y0, y1, x0, x1):
        part, valid = self.read_raw(y0, y1, x0, x1)
        return self.scale(part), valid


class TensorSink:
    """Collects the output as one float tensor (C, H, W) in [-1, 1]."""

    def __init__(self, height, width, device="cpu", channels=3):
        self.out = torch.zeros(channels, height, width, device=device)

    def write(self, y, x, rgb, valid):
        self.out[:, y:y + rgb.shape[1], x:x + rgb.shape[2]] = rgb.to(self.out.device)


class ArraySink:
    """Collects the output as uint8 (H, W, C), a quarter of a float copy: the PNG/JPEG path."""

    def __init__(self, height, width, channels=3):
        self.out = np.zeros((height, width, channels), dtype=np.uint8)

    def write(self, y, x, rgb, valid):
        self.out[y:y + rgb.shape[1], x:x + rgb.shape[2]] = to_uint8(rgb).transpose(1, 2, 0)


def translate(G, x: torch.Tensor, tile=256, overlap=64, paper=True, seed=0, batch=8, tta=False) -> torch.Tensor:
    """G over one image (1, C, H, W) in [-1, 1] of any size, held in memory; returns (1, C_out, H, W)."""
    sink = TensorSink(x.shape[-2], x.shape[-1], x.device, channels(G)[1])
    Engine(tile, overlap, paper, seed, batch, tta, block=max(x.shape[-1], 1)).run(G, TensorSource(x[0]), sink)
    return sink.out[None]
