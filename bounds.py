"""The bounds a translation keeps: how much work an input may ask for, and how a running one is stopped.

    python predict.py --weights sat2map --input scene.tif --out out/ --max-megapixels 500
    python app.py --max-megapixels 64 --max-seconds 600     # a public server's bounds (docs/app.md)

Size: before any work, an input's pixels are read from its header (PIL's size without decoding,
GDAL's width and height), and so is the size of the grid the engine will translate after --scale or
--gsd. The larger of the two is the work (a raster resampled for --gsd is written back at its own
size), and over --max-megapixels it is refused in one line that names both sizes and the limit.
Time: a Stop is the cancel hook tiles.Engine.run asks before every forward pass. predict.py's first
Ctrl-C sets one; the app's are set by its Stop button, by a client that left, or by its time limit.
"""
import contextlib
import signal
import threading
import time
from pathlib import Path

from PIL import Image

import bands
import dataset
import raster
from cli import InputError


# ----------------------------------------------------------------------------------------------------
# Size


def work_size(path: Path, opts: raster.Options) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((width, height) of the input, (width, height) the engine translates), from the header alone;
    None for a picture PIL cannot open (the translation reports it)."""
    if not raster.is_picture(path):
        with bands.rasterio_env():
            ds = bands.open_raster(path)
            with ds:
                width, height, _ = raster.working_size(ds, path, opts)
                return (ds.width, ds.height), (width, height)
    try:
        with Image.open(path) as img:  # reads the header; the pixels are decoded on first use only
            width, height = img.size
    except (OSError, SyntaxError, ValueError, EOFError):
        return None
    half = width // 2 if opts.pairs else width
    if opts.scale == 1.0:
        return (width, height), (half, height)
    return (width, height), (max(1, round(half * opts.scale)), max(1, round(height * opts.scale)))


def check_size(path: Path, opts: raster.Options):
    """Refuse (InputError) an input whose work is over opts.max_pixels, before any work. None:
    predict.py's default, PIL's guard against decompression bombs for PNG/JPEG (decoded whole) and no
    limit for rasters (read window by window)."""
    limit = opts.max_pixels or (dataset.MAX_PIXELS if raster.is_picture(path) else None)
    size = None if limit is None else work_size(path, opts)
    if size is None:
        return
    (width, height), (out_w, out_h) = size
    work = max(width * height, out_w * out_h)
    if work <= limit:
        return
    resized = ""
    if (out_w, out_h) != (width, height):
        how = f"--gsd {opts.gsd:g}" if opts.gsd else f"--scale {opts.scale:g}" if opts.scale != 1.0 else "--pairs"
        resized = f" translated at {out_w}x{out_h} px ({how})"
    raise InputError(f"{path}: {width}x{height} px{resized} is {work / 1e6:.1f} megapixels of work, over the "
                     f"limit of {limit / 1e6:g} megapixels (--max-megapixels)")


# ----------------------------------------------------------------------------------------------------
# Time


class Stop:
    """A cancel hook for tiles.Engine.run, asked from the engine's threads: None until there is a
    reason to stop (given to `set`, the time limit of `seconds` run out, or one of `checks`, callables
    that return a reason or None), then that first reason for good."""

    def __init__(self, seconds: float | None = None, checks=()):
        self.reason, self.seconds, self.checks = None, seconds, list(checks)
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def set(self, reason: str):
        if self.reason is None:
            self.reason = reason

    def __call__(self) -> str | None:
        if self.reason is None and self.deadline is not None and time.monotonic() > self.deadline:
            self.set(f"over the time limit of {self.seconds:g} s (--max-seconds)")
        for check in self.checks:
            if self.reason is None and (reason := check()):
                self.set(reason)
        return self.reason


@contextlib.contextmanager
def ctrl_c_stops():
    """A Stop that the first Ctrl-C (SIGINT) sets while the block runs: the engine stops at its next tile
    and the file it was writing is removed, never left half written. A second Ctrl-C interrupts at once
    (KeyboardInterrupt). Outside the main thread (no signals there) it is a Stop nobody sets."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum, frame):
        if stop.reason is not None:
            raise KeyboardInterrupt
        stop.set("interrupted (Ctrl-C)")

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
