"""Writing the GeoTIFFs of the raster path: the working GTiff the tile engine fills, its overviews,
and the Cloud-Optimized GeoTIFF (or PNG) it finally becomes.

    python predict.py --weights sat2map --input scene.tif --out out/   # writes out/scene.tif, a COG

A COG can only be made by copying a finished image (GDAL's COG driver has no random writing), so
the engine first fills a working GTiff next to the output, through a GeoTiffSink. The sink also
builds the overview levels from the rows as they arrive (2x2 means of the valid pixels), in the
engine's writer thread, beside the network; at the end `publish` shows them to GDAL through a VRT, so
the copy only compresses (on every core) and never reads the whole image again to build them. Every
file appears complete or not at all: temp names next to the output, fsync, rename.
"""
import contextlib
import functools
import glob
import math
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from durable import replace_durably

BLOCK = 512  # px side of the tiles of every GTiff written here (working files, overviews, the COG)


def to_uint8(rgb) -> np.ndarray:
    """A torch tensor (C, h, w) in [-1, 1] -> uint8 rounded to the nearest level, as utils.to_image does
    (tensor methods only: this module imports no torch)."""
    return rgb.clamp(-1, 1).add_(1).mul_(127.5).round_().byte().numpy()


@functools.cache
def fast_compression() -> dict:
    """The working GTiff's compression: ZSTD level 1 where this GDAL has it (on real maps a third of
    deflate's time to write, and quicker to read back for the COG), else deflate level 1."""
    from rasterio.enums import Compression
    from rasterio.io import MemoryFile
    with MemoryFile() as mem, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the probe has no georeferencing
        with mem.open(driver="GTiff", width=16, height=16, count=1, dtype="uint8", compress="zstd") as probe:
            probe.write(np.zeros((1, 16, 16), np.uint8))
        with mem.open() as probe:
            zstd = probe.compression == Compression.zstd
    return {"compress": "zstd", "zstd_level": 1} if zstd else {"compress": "deflate", "zlevel": 1}


def tiff_profile(width, height, crs=None, transform=None, count=3) -> dict:
    """A tiled, compressed uint8 GTiff for working output (BLOCK px tiles, fast_compression)."""
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": "uint8",
               "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, **fast_compression(),
               "photometric": "RGB" if count == 3 else "MINISBLACK", "BIGTIFF": "IF_SAFER"}
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    return profile


def create_tiff(path: Path, width, height, crs, transform, alpha: bool, channels: int = 3):
    """Open a new working GTiff for GeoTiffSink (RGB, or grey for 1 channel, plus alpha when `alpha`)."""
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # overviews, and outputs of plain pictures
        dst = rasterio.open(path, "w", **tiff_profile(width, height, crs, transform, channels + alpha))
    if alpha:
        colours = [ColorInterp.red, ColorInterp.green, ColorInterp.blue] if channels == 3 else [ColorInterp.gray]
        dst.colorinterp = [*colours, ColorInterp.alpha]
    return dst


def overview_factors(width, height) -> list[int]:
    """2, 4, 8, ... until the coarsest level fits in one BLOCK px tile (as GDAL's COG driver picks)."""
    factors, f = [], 2
    while max(width, height) / (f // 2) > BLOCK:
        factors.append(f)
        f *= 2
    return factors


def overview_path(path: Path, factor: int) -> Path:
    return path.with_name(f"{path.stem}.ovr{factor}.tif")


def overviews_fit(width, height, block: int | None) -> bool:
    """Whether the sink can build the overviews from rows written in column blocks `block` px wide
    (None: the whole width at once). Every level must halve the image, and each block's left edge,
    exactly: then its 2x2 means are GDAL's AVERAGE overviews, pixel for pixel, and a run's output is
    the same whoever builds them (one process's sink, torchrun's assembly, or GDAL). Otherwise GDAL
    builds them (its levels are then floor-halved, not 2x2 cells)."""
    levels = 1 << len(overview_factors(width, height))
    return width % levels == 0 and height % levels == 0 and (block is None or width <= block or block % levels == 0)


def halve(pixels: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The next overview level of (C, h, w) uint8 pixels (zero where invalid) and their (h, w)
    validity: each 2x2 cell's rounded mean over its valid pixels, valid where any is (an odd last
    row or column makes cells of its own)."""
    h, w = valid.shape
    count = np.zeros((h + h % 2, w + w % 2), np.uint16)
    count[:h, :w] = valid
    total = np.zeros((len(pixels), *count.shape), np.uint16)
    total[:, :h, :w] = pixels
    count = count.reshape(count.shape[0] // 2, 2, -1, 2).sum((1, 3), dtype=np.uint16)
    total = total.reshape(len(pixels), count.shape[0], 2, -1, 2).sum((2, 4), dtype=np.uint16)
    mean = (2 * total + count) // np.maximum(2 * count, 1)  # round half up, as GDAL's average does
    return mean.astype(np.uint8), count > 0


class GeoTiffSink:
    """Writes uint8 RGB (or grey) windows and their validity into an open GTiff: as its internal mask, or
    as a last (alpha) band for PNG output; with `below`, a sink for the next overview level, each written
    band is also halved into it. Rows are held until they fill a row of the file's blocks, because
    GDAL compresses a block each time a write leaves it half done and appends it again when the rest
    comes (the work twice over, and a file twice the size). Call finish() after the last write."""

    def __init__(self, dst, alpha: bool = False, top: int = 0, below: "GeoTiffSink | None" = None):
        self.dst, self.alpha, self.top, self.below = dst, alpha, top, below  # top: the image row dst starts at
        self.held, self.y, self.x, self.end = [], 0, 0, 0  # (pixels, valid) rows from file row y to end at column x

    def write(self, y, x, rgb, valid):
        """The engine's sink: (C, h, w) in [-1, 1] and (h, w) bool at row y, column x of the image."""
        self.write_uint8(y - self.top, x, to_uint8(rgb), valid.numpy())

    def write_uint8(self, y, x, pixels: np.ndarray, valid: np.ndarray):
        """(C, h, w) uint8 and (h, w) bool at row y, column x of the file."""
        if self.held and (x != self.x or y != self.end or pixels.shape[2] != self.held[0][0].shape[2]):
            self.flush()
        if not self.held:
            self.y, self.x = y, x
        self.held.append((pixels, valid))
        self.end = y + pixels.shape[1]
        if self.end // BLOCK * BLOCK > self.y:
            self.flush(self.end // BLOCK * BLOCK)

    def flush(self, upto: int | None = None):
        """Write the held rows (those above file row `upto`, if given; the rest stay held)."""
        from rasterio.windows import Window
        if not self.held:
            return
        pixels = np.concatenate([p for p, _ in self.held], axis=1)
        valid = np.concatenate([v for _, v in self.held], axis=0)
        n = pixels.shape[1] if upto is None else upto - self.y
        self.held = [(pixels[:, n:], valid[n:])] if n < pixels.shape[1] else []
        pixels, valid = pixels[:, :n], valid[:n]
        win = Window(self.x, self.y, pixels.shape[2], n)
        pixels *= valid  # invalid pixels are black
        mask = valid.view(np.uint8) * 255
        self.dst.write(pixels, indexes=list(range(1, len(pixels) + 1)), window=win)
        if self.alpha:
            self.dst.write(mask, len(pixels) + 1, window=win)
        else:
            self.dst.write_mask(mask, window=win)
        if self.below is not None:  # y and x are even: bands end on BLOCK rows, blocks on overviews_fit
            self.below.write_uint8(self.y // 2, self.x // 2, *halve(pixels, valid))
        self.y += n

    def finish(self):
        """Write everything still held, here and in the overview levels."""
        self.flush()
        if self.below is not None:
            self.below.finish()


def open_sink(stack: contextlib.ExitStack, path: Path, width, height, crs, transform, alpha=False, top=0,
              overviews=False, channels=3) -> GeoTiffSink:
    """A GeoTiffSink on a new working GTiff at `path` of `channels` bands (and, with `overviews`, one
    GTiff per overview level, overview_path), whose files `stack` closes."""
    below = None
    if overviews:
        for f in reversed(overview_factors(width, height)):
            dst = stack.enter_context(create_tiff(overview_path(path, f), math.ceil(width / f),
                                                  math.ceil(height / f), None, None, False, channels))
            below = GeoTiffSink(dst, below=below)
    dst = stack.enter_context(create_tiff(path, width, height, crs, transform, alpha, channels))
    return GeoTiffSink(dst, alpha, top, below)


def with_overviews(work: Path, vrt: Path) -> Path:
    """A VRT of the finished working GTiff that names its overview files as the overviews of its
    bands and of its mask."""
    import rasterio.shutil
    rasterio.shutil.copy(work, vrt, driver="VRT")
    tree = ET.parse(vrt)
    root = tree.getroot()
    with rasterio.open(work) as ds:
        factors = overview_factors(ds.width, ds.height)
    bands = [(b, str(i)) for i, b in enumerate(root.findall("VRTRasterBand"), 1)]
    bands += [(b, "mask,1") for b in root.findall("MaskBand/VRTRasterBand")]
    for band, source in bands:
        for f in factors:
            overview = ET.SubElement(band, "Overview")
            ET.SubElement(overview, "SourceFilename", relativeToVRT="0").text = str(overview_path(work, f).resolve())
            ET.SubElement(overview, "SourceBand").text = source
    tree.write(vrt)
    return vrt


def publish(work: Path, out: Path, fmt: str, overviews=False, resampling="average"):
    """Turn the working GTiff into the final file: a Cloud-Optimized GeoTIFF (deflate, BLOCK px tiles,
    overviews: the sink's when `overviews`, else made here with `resampling`, a rasterio Resampling
    name such as "mode" for classes; a plain tiled GTiff with overviews where GDAL has no COG driver)
    or a PNG, written under a temp name in the output folder and renamed into place."""
    import rasterio
    import rasterio.shutil
    from rasterio.enums import Resampling
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    vrt = work.with_suffix(".vrt") if overviews and fmt != "png" else None
    # the engine is done: every core may compress tiles and build overviews (unless the user said otherwise)
    threads = os.environ.get("GDAL_NUM_THREADS", "ALL_CPUS")
    try:
        if vrt is not None:
            # a VRT left by a killed run: GDAL, writing over it, would delete the overview files it names
            vrt.unlink(missing_ok=True)
        source = work if vrt is None else with_overviews(work, vrt)
        with rasterio.Env(GDAL_NUM_THREADS=threads):
            if fmt == "png":
                rasterio.shutil.copy(work, tmp, driver="PNG")
            elif has_driver("COG"):
                rasterio.shutil.copy(source, tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK,
                                     NUM_THREADS=threads, OVERVIEWS="FORCE_USE_EXISTING" if overviews else "AUTO",
                                     OVERVIEW_RESAMPLING=resampling.upper(), BIGTIFF="IF_SAFER")
            else:
                if not overviews:
                    with rasterio.open(work, "r+") as ds:
                        ds.build_overviews(overview_factors(ds.width, ds.height), Resampling[resampling])
                rasterio.shutil.copy(source, tmp, driver="GTiff", COPY_SRC_OVERVIEWS="YES", TILED="YES",
                                     NUM_THREADS=threads, COMPRESS="DEFLATE", BLOCKXSIZE=BLOCK, BLOCKYSIZE=BLOCK,
                                     BIGTIFF="IF_SAFER")
        replace_durably(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        if vrt is not None:
            vrt.unlink(missing_ok=True)


def has_driver(name: str) -> bool:
    """Whether this GDAL build has the named driver."""
    import rasterio
    with rasterio.Env() as env:
        return name in env.drivers()


def remove(*paths: Path):
    """Delete working GTiffs, with their overview files, where they exist."""
    for path in paths:
        path.unlink(missing_ok=True)
        for stray in path.parent.glob(f"{glob.escape(path.stem)}.ovr*.tif"):
            stray.unlink(missing_ok=True)
