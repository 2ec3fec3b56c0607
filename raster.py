"""Rasters in and out around the tile engine (tiles.py): bands, value scaling, masks, GeoTIFF out (cog.py).

    python predict.py --weights sat2map --input scene.tif --out out/ --bands 3,2,1 --gsd 1.2

predict.py is the command; this file does the work. An input is read as a *source* (a GDAL raster
through rasterio, its bands and values chosen by bands.py, or a decoded PNG/JPEG), run through the tile
engine, and written to a *sink* (a GeoTIFF on the input's grid, or a PNG). A raster is never held
whole: the engine reads and writes it window by window, so memory depends on the tile and the block,
not on the raster. Under torchrun a large raster is translated band by band into part files, one per
process, which parts.py joins. The band count in and out is the generator's (generator.channels):
three, or one for grey.
"""
import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import cog
import dataset
from bands import is_georeferenced, open_raster, pick_bands, rasterio_env, read_failure, valid_mask, value_limits
from cli import InputError, report
from generator import channels
from tiles import ArraySink, Engine, TensorSource

RASTER_EXTS = (".tif", ".tiff", ".vrt", ".img", ".jp2")  # what a folder listing treats as rasters


# ----------------------------------------------------------------------------------------------------
# Writing rasters (the files themselves: cog.py)


def resample_back(work: Path, ds, bands: list[int], target: Path, alpha: bool, overviews: bool, rows: int = 512):
    """Bring the working-resolution result back onto the input's grid (bilinear, through a GDAL warped
    view, read window by window), masked where the input is invalid or the work had no data."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window
    import rasterio
    with rasterio.open(work) as src, WarpedVRT(src, crs=ds.crs, transform=ds.transform, width=ds.width,
                                               height=ds.height, resampling=Resampling.bilinear) as vrt, \
            contextlib.ExitStack() as files:
        count = src.count - alpha  # the generator's channels
        sink = cog.open_sink(files, target, ds.width, ds.height, ds.crs, ds.transform, alpha, overviews=overviews,
                             channels=count)
        for y in range(0, ds.height, rows):
            win = Window(0, y, ds.width, min(rows, ds.height - y))
            rgb = vrt.read(list(range(1, count + 1)), window=win)
            valid = valid_mask(ds, bands, win) & (vrt.read_masks(1, window=win) > 0)
            sink.write_uint8(y, 0, rgb, valid)
        sink.finish()


# ----------------------------------------------------------------------------------------------------
# One input file, start to end


@dataclass
class Options:
    """What predict.py asks for, per input file."""
    engine: Engine
    bands: list | None = None
    stretch: tuple = (2.0, 98.0)
    stretch_given: bool = False
    value_range: tuple | None = None
    scale: float = 1.0
    gsd: float | None = None
    fmt: str | None = None
    pairs: bool = False
    direction: str = "AtoB"
    max_pixels: int | None = None  # the most pixels of work (bounds.check_size); None: PIL's guard on PNG/JPEG only


def is_picture(path: Path) -> bool:
    """PNG and JPEG go through PIL (EXIF orientation, palettes); everything else through GDAL."""
    return path.suffix.lower() in dataset.IMG_EXTS


def input_files(src: Path, flag: str = "--input") -> list[Path]:
    """The inputs to translate: one file, or a folder's images and rasters (sorted); a bad `src` is an
    InputError naming the flag that gave it (--input, or --calibrate's folder)."""
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in dataset.IMG_EXTS + RASTER_EXTS)
        if not files:
            raise InputError(f"{flag} {src}: no images ({', '.join(dataset.IMG_EXTS + RASTER_EXTS)}) in this folder")
        return files
    if not src.is_file():
        raise InputError(f"{flag} {src}: no such file or folder")
    return [src]


def input_half(img, pairs: bool, direction: str, path: Path):
    """With --pairs, the direction's input half of an A|B image; otherwise the whole image (with a
    hint when it looks like a pair)."""
    if not pairs:
        if img.width == 2 * img.height:
            report(f"note: {path} is exactly twice as wide as high; if it is an A|B pair, pass --pairs "
                   f"to translate only its input half")
        return img
    if img.width % 2:
        raise dataset.DataError(f"{path}: odd width {img.width} (--pairs expects A|B halves of equal width)")
    half = img.width // 2
    return img.crop((0, 0, half, img.height) if direction == "AtoB" else (half, 0, img.width, img.height))


def ground_scale(ds, gsd: float, path) -> float:
    """Factor from the raster's pixel size to `gsd` metres per pixel (< 1 shrinks)."""
    if ds.crs is None:
        raise InputError(f"{path}: --gsd needs a georeferenced raster with a CRS (use --scale instead)")
    try:
        unit, factor = ds.crs.linear_units_factor
    except Exception:
        raise InputError(f"{path}: --gsd needs a projected CRS in metres or feet; {ds.crs} is geographic "
                         f"(reproject with gdalwarp -t_srs, or use --scale)") from None
    res = math.sqrt(abs(ds.transform.a * ds.transform.e - ds.transform.b * ds.transform.d)) * factor
    return res / gsd


def working_size(ds, path, opts: "Options") -> tuple[int, int, float]:
    """(width, height, factor) of the grid the engine translates a raster on: its own (factor 1), or
    resized by --scale or to --gsd."""
    scale = ground_scale(ds, opts.gsd, path) if opts.gsd else opts.scale
    if abs(scale - 1) < 1e-9:
        return ds.width, ds.height, 1.0
    return max(1, round(ds.width * scale)), max(1, round(ds.height * scale)), scale


def predict_file(G, path: Path, out_dir: Path, opts: Options, progress=True, part=None,
                 stats: dict | None = None, cancel=None) -> Path:
    """Translate one input into out_dir; returns the written file. Bad input raises InputError.

    progress: True for a tile bar, or a callable progress(done_tiles, total_tiles) called after each
    tile row. part: (k, n) translates only band k of n of a GDAL raster into its part file (returned),
    which `assemble` later joins with the others into the output. stats, cancel: see tiles.Engine.run;
    a cancelled run raises Cancelled and leaves no file behind."""
    if is_picture(path):
        return predict_picture(G, path, out_dir, opts, progress, stats, cancel)
    from rasterio.errors import RasterioIOError
    with rasterio_env():
        ds = open_raster(path)
        with ds:
            try:
                return predict_raster(G, ds, path, out_dir, opts, progress, part, stats, cancel)
            except RasterioIOError as e:  # GDAL reads lazily: a short file or a lost VRT source shows here
                if "Read failed" not in str(e):
                    raise
                raise read_failure(path, e) from None


def picture_source(path: Path, opts: Options, in_channels: int = 3) -> TensorSource:
    """A PNG/JPEG decoded whole as uint8 (PIL; grey for a grey generator): its input half with --pairs,
    resized by --scale."""
    from PIL import Image
    img = input_half(dataset.load_image(path, in_channels, opts.max_pixels or dataset.MAX_PIXELS), opts.pairs,
                     opts.direction, path)
    if opts.scale != 1.0:
        img = img.resize((max(1, round(img.width * opts.scale)), max(1, round(img.height * opts.scale))),
                         Image.BICUBIC)
    return TensorSource(dataset.pixels_of(img))


@contextlib.contextmanager
def open_source(path: Path, opts: Options, in_channels: int = 3):
    """The source the engine reads for one input file, as predict_file builds it for a generator of
    in_channels; nothing is written (int8 calibration takes its tiles from it)."""
    if is_picture(path):
        yield picture_source(path, opts, in_channels)
        return
    with rasterio_env():
        ds = open_raster(path)
        # plan_raster names an output file: in a folder that is never made
        with ds, working_source(ds, plan_raster(ds, path, path.parent / ".sat2map-plan", opts, in_channels)) as source:
            yield source


def predict_picture(G, path: Path, out_dir: Path, opts: Options, progress=False, stats=None, cancel=None) -> Path:
    """A PNG/JPEG decoded whole as uint8 (PIL; grey for a grey generator), translated by the same engine,
    saved as PNG (or TIFF)."""
    from PIL import Image
    from utils import save_image
    c_in, c_out = channels(G)
    source = picture_source(path, opts, c_in)
    fmt = opts.fmt or "png"
    out = out_dir / f"{path.stem}.{'tif' if fmt == 'tif' else 'png'}"
    if out.resolve() == path.resolve():
        raise InputError(f"{path}: the output would overwrite the input; choose another --out")
    if fmt == "png":
        sink = ArraySink(source.height, source.width, c_out)
        opts.engine.run(G, source, sink, progress, stats=stats, cancel=cancel)
        save_image(Image.fromarray(sink.out if c_out == 3 else sink.out[..., 0]), out)
        return out
    with rasterio_env():
        return write_via_tiff(G, source, out, "tif", opts.engine, None, None, progress=progress, stats=stats,
                              cancel=cancel)


def translate_to_tiff(G, source, work: Path, engine: Engine, crs, transform, alpha=False, progress=False,
                      rows=None, stats=None, overviews=False, cancel=None) -> int:
    """Run the engine into a new working GTiff (only the output rows `rows`, if given, for a part;
    with its overview files when `overviews`); returns the number of valid pixels written."""
    top, bottom = rows or (0, source.height)
    if rows is not None and transform is not None:
        transform = transform @ transform.translation(0, top)
    with contextlib.ExitStack() as files:
        sink = cog.open_sink(files, work, source.width, bottom - top, crs, transform, alpha, top, overviews,
                             channels(G)[1])
        valid = engine.run(G, source, sink, progress, rows, stats, cancel)
        sink.finish()
    return valid


def finish(work: Path, grid: Path, out: Path, fmt: str, valid: int, alpha=False, back=None, overviews=False,
           stats=None):
    """Turn a complete working GTiff into `out`: refuse it when no pixel is valid, resample it back
    to the input grid (`back` = (dataset, bands)) into `grid`, publish (with the work's overview
    files, if it has them)."""
    if not valid:
        raise InputError(f"{out.stem}: every pixel is nodata or masked; nothing to translate")
    start = time.perf_counter()
    if back is not None:
        ds = back[0]
        overviews = fmt == "tif" and cog.overviews_fit(ds.width, ds.height, None)
        resample_back(work, *back, grid, alpha, overviews=overviews)
        cog.remove(work)
        work = grid
    cog.publish(work, out, fmt, overviews)
    if stats is not None:
        stats["publish"] = stats.get("publish", 0.0) + time.perf_counter() - start


def write_via_tiff(G, source, out: Path, fmt: str, engine: Engine, crs, transform, alpha=False,
                   progress=False, back=None, stats=None, cancel=None) -> Path:
    """Run the engine into a working GTiff next to `out`, optionally resample it back to the input
    grid (`back` = (dataset, bands)), then publish it as `out`. Temp files never outlive the call."""
    work = out.with_name(f".{out.stem}.work.tif")
    grid = out.with_name(f".{out.stem}.grid.tif")
    overviews = fmt == "tif" and back is None and cog.overviews_fit(source.width, source.height, engine.block)
    try:
        valid = translate_to_tiff(G, source, work, engine, crs, transform, alpha, progress, stats=stats,
                                  overviews=overviews, cancel=cancel)
        finish(work, grid, out, fmt, valid, alpha, back, overviews, stats)
    finally:
        cog.remove(work, grid)
    return out


@dataclass
class RasterPlan:
    """What a raster becomes: its bands and value scaling, the output file and format, and the
    working grid the engine runs on (the input's, or a resampled one for --scale / --gsd)."""
    bands: list
    lo: np.ndarray | None
    hi: np.ndarray | None
    out: Path
    fmt: str
    alpha: bool
    georef: bool
    width: int
    height: int
    transform: object  # the working grid's; None for a raster without georeferencing
    resampled: bool


def plan_raster(ds, path: Path, out_dir: Path, opts: Options, in_channels: int = 3) -> RasterPlan:
    """Decide bands (`in_channels` of them), value scaling, output and working grid; every process of a
    shared raster decides the same (the stretch sample is seeded)."""
    bands = pick_bands(ds, opts.bands, path, in_channels)
    lo, hi = value_limits(ds, bands, opts, path)
    georef = is_georeferenced(ds)
    fmt = opts.fmt or ("tif" if georef else "png")
    out = out_dir / f"{path.stem}.{fmt}"
    if out.resolve() == path.resolve():
        raise InputError(f"{path}: the output would overwrite the input; choose another --out")
    width, height, scale = working_size(ds, path, opts)
    masked = any(f.name != "all_valid" for b in bands for f in ds.mask_flag_enums[b - 1])
    alpha = fmt == "png" and masked
    if scale == 1.0:
        return RasterPlan(bands, lo, hi, out, fmt, alpha, georef, width, height,
                          ds.transform if georef else None, False)
    if not georef:
        raise InputError(f"{path}: --scale on a raster needs georeferencing to map the result back "
                         f"onto its grid (convert it to PNG to resize it plainly)")
    transform = ds.transform @ ds.transform.scale(ds.width / width, ds.height / height)
    return RasterPlan(bands, lo, hi, out, fmt, alpha, georef, width, height, transform, True)


class RasterSource:
    """The chosen bands of a rasterio dataset (three, or one for a grey generator), scaled to [-1, 1]:
    uint8 as it is, anything else through (value - lo) / (hi - lo) per band, clipped; plus the validity
    mask."""

    def __init__(self, ds, bands: list[int], lo=None, hi=None):
        self.ds, self.bands = ds, bands
        self.height, self.width = ds.height, ds.width
        self.lo = None if lo is None else torch.tensor(lo, dtype=torch.float32).view(-1, 1, 1)
        self.hi = None if hi is None else torch.tensor(hi, dtype=torch.float32).view(-1, 1, 1)

    def read_raw(self, y0, y1, x0, x1):
        """The bands' values in a window, as stored, and where they are valid."""
        from rasterio.windows import Window
        win = Window(x0, y0, x1 - x0, y1 - y0)
        data = self.ds.read(self.bands, window=win)
        return data, torch.from_numpy(valid_mask(self.ds, self.bands, win, data))

    def scale(self, data: np.ndarray) -> torch.Tensor:
        """Stored values -> float (C, h, w) in [-1, 1]."""
        if self.lo is None:
            return torch.from_numpy(data).float().div_(127.5).sub_(1)
        x = data.astype(np.float32)
        x = torch.from_numpy(x if data.dtype.kind in "iu" else np.nan_to_num(x, copy=False))
        return x.sub_(self.lo).div_(self.hi - self.lo).clamp_(0, 1).mul_(2).sub_(1)

    def read(self, y0, y1, x0, x1):
        data, valid = self.read_raw(y0, y1, x0, x1)
        return self.scale(data), valid


@contextlib.contextmanager
def working_source(ds, plan: RasterPlan):
    """The RasterSource the engine reads: the raster itself, or a resampling view of it."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    if not plan.resampled:
        yield RasterSource(ds, plan.bands, plan.lo, plan.hi)
        return
    has_mask = any(f.name in ("per_dataset", "alpha") for f in ds.mask_flag_enums[plan.bands[0] - 1])
    with WarpedVRT(ds, crs=ds.crs, transform=plan.transform, width=plan.width, height=plan.height,
                   add_alpha=has_mask and ds.nodata is None,
                   resampling=Resampling.average if plan.width < ds.width else Resampling.bilinear) as vrt:
        yield RasterSource(vrt, plan.bands, plan.lo, plan.hi)


def part_path(out: Path, k: int, n: int) -> Path:
    """The temp file of band k of n of the output `out`, next to it (parts.py joins them)."""
    return out.with_name(f".{out.stem}.part{k}of{n}.tif")


def predict_raster(G, ds, path: Path, out_dir: Path, opts: Options, progress, part=None, stats=None,
                   cancel=None) -> Path:
    """A GDAL raster: pick and scale bands, resample to the working resolution if asked, translate
    window by window, and write on the input's grid (or, for a part, its band of the working grid)."""
    plan = plan_raster(ds, path, out_dir, opts, channels(G)[0])
    back = (ds, plan.bands) if plan.resampled else None
    with working_source(ds, plan) as source:
        if part is None:
            return write_via_tiff(G, source, plan.out, plan.fmt, opts.engine, ds.crs, plan.transform, plan.alpha,
                                  progress, back, stats, cancel)
        k, n = part
        target = part_path(plan.out, k, n)
        rows = opts.engine.bands(plan.height, plan.width, n)[k]
        try:
            translate_to_tiff(G, source, target, opts.engine, ds.crs, plan.transform, plan.alpha, progress, rows, stats,
                              cancel=cancel)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target
