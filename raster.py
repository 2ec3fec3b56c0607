"""Rasters in and out around the tile engine (tiles.py): bands, value scaling, masks, GeoTIFF out (cog.py).

    python predict.py --weights sat2map --input scene.tif --out out/ --bands 3,2,1 --gsd 1.2

predict.py is the command; this file does the work. An input is read as a *source* (a GDAL raster
through rasterio, or a decoded PNG/JPEG), run through the tile engine, and written to a *sink* (a
GeoTIFF on the input's grid, or a PNG). A raster is never held whole: the engine reads and writes it
window by window, so memory depends on the tile and the block, not on the raster. Under torchrun a
large raster is translated band by band into part files, one per process, which `assemble` joins.
The band count in and out is the generator's (generator.channels): three, or one for grey.
"""
import contextlib
import glob
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import dataset
import cog
from generator import channels
from tiles import ArraySink, Engine, TensorSource
from utils import InputError, first_line

RASTER_EXTS = (".tif", ".tiff", ".vrt", ".img", ".jp2")  # what a folder listing treats as rasters
GDAL_CACHE_MB = 32  # GDAL's block cache counts in our memory; the engine never needs more than this
SAMPLE_WINDOWS = 10  # the stretch samples SAMPLE_WINDOWS^2 windows, one in each cell of a grid
SAMPLE_SIZE = 64  # px side of a sampling window
OVERVIEW_PIXELS = 1 << 20  # an overview this small or smaller is read whole for the stretch


# ----------------------------------------------------------------------------------------------------
# Reading rasters: bands, value scaling, masks


def rasterio_env():
    """GDAL settings for the raster path: a small block cache (it is part of our peak memory unless
    GDAL_CACHEMAX is set), no .aux.xml side files, masks stored inside the TIFF."""
    import rasterio
    options = {"GDAL_PAM_ENABLED": "NO", "GDAL_TIFF_INTERNAL_MASK": "YES"}
    if "GDAL_CACHEMAX" not in os.environ:
        options["GDAL_CACHEMAX"] = GDAL_CACHE_MB
    return rasterio.Env(**options)


def open_raster(path: Path):
    """Open a raster GDAL can read, or raise InputError naming the file."""
    import rasterio
    from rasterio.errors import RasterioError
    try:
        ds = rasterio.open(path)
    except (RasterioError, OSError) as e:
        raise InputError(f"{path}: not a raster GDAL can read ({gdal_reason(e)})") from None
    if ds.count == 0 or ds.width == 0 or ds.height == 0:
        ds.close()
        raise InputError(f"{path}: has no bands or no pixels")
    return ds


def gdal_reason(error: BaseException) -> str:
    """What GDAL said went wrong: rasterio often raises "Read failed. See previous exception for
    details.", and the exceptions it chains hold the cause (a missing source file, a short read)."""
    chain = []
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__
    said = [first_line(e, 200) for e in chain if "previous exception" not in str(e)]
    return said[-1] if said else first_line(chain[0], 200)


def read_failure(path, error: BaseException) -> InputError:
    """The one-line error for pixels GDAL could not read from path (or a file it refers to)."""
    reason = gdal_reason(error)
    missing = "No such file" in reason or "does not exist" in reason
    return InputError(f"{path}: cannot read its pixels: {reason}" + ("" if missing else " (is the file complete?)"))


def parse_list(text: str, flag: str, kind=float, count: int | None = None) -> list:
    """'3,2,1' -> [3, 2, 1]; a clear InputError naming the flag otherwise."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated {kind.__name__} values") from None
    if count is not None and len(values) != count:
        raise InputError(f"{flag} {text!r}: expected {count} comma-separated values")
    return values


def pick_bands(ds, requested: list[int] | None, path, count: int = 3) -> list[int]:
    """The `count` 1-based bands fed to the model. Three: `requested` (one band is repeated as grey),
    else the red, green and blue bands by colour interpretation, else the first three bands that are
    not alpha (a single band is repeated as grey). One (a grey generator): `requested`, else the only
    band that is not alpha."""
    from rasterio.enums import ColorInterp
    if count == 1:
        return pick_grey_band(ds, requested, path)
    if requested is not None:
        if not requested:
            raise InputError(f"{path}: --bands leaves no band to translate (expected 3 bands, or 1 for grey)")
        bad = [b for b in requested if not 1 <= b <= ds.count]
        if bad:
            raise InputError(f"{path}: --bands {','.join(map(str, requested))}: band {bad[0]} is out of range "
                             f"(this raster has bands 1..{ds.count})")
        if len(requested) not in (1, 3):
            raise InputError(f"{path}: --bands names {len(requested)} bands; expected 3 (R,G,B) or 1 (grey)")
        return requested * 3 if len(requested) == 1 else requested
    interp = list(ds.colorinterp)
    rgb = [interp.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue) if c in interp]
    if len(rgb) == 3:
        return rgb
    data = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha]
    if not data:
        raise InputError(f"{path}: no bands left to translate (its only bands are alpha)")
    if len(data) == 2:
        raise InputError(f"{path}: 2 data bands; pass --bands B (grey) or three bands such as --bands 1,2,2")
    return data[:3] if len(data) >= 3 else data * 3


def pick_grey_band(ds, requested: list[int] | None, path) -> list[int]:
    """The one band a grey generator reads: `requested`, else the raster's only data band."""
    from rasterio.enums import ColorInterp
    if requested is None:
        requested = [i + 1 for i, c in enumerate(ds.colorinterp) if c != ColorInterp.alpha]
        if len(requested) != 1:
            raise InputError(f"{path}: {len(requested)} data bands, and the generator takes one (grey): "
                             f"pass --bands B")
    if len(requested) != 1 or not 1 <= requested[0] <= ds.count:
        raise InputError(f"{path}: --bands {','.join(map(str, requested))}: the generator takes one band (grey) "
                         f"of this raster's 1..{ds.count}: pass --bands B")
    return requested


def valid_mask(ds, bands: list[int], window, data: np.ndarray | None = None) -> np.ndarray:
    """Bool (h, w): True where every chosen band is valid (GDAL's nodata, mask and alpha, and finite
    values for float data). `data`: the bands' values in the window, as read, when the caller has them."""
    if data is not None and data.dtype.kind in "iu" and all(nodata_only(ds, b) for b in bands):
        return np.all([band != ds.nodatavals[b - 1] for b, band in zip(bands, data)], axis=0)
    valid = np.all(ds.read_masks(sorted(set(bands)), window=window) > 0, axis=0)
    if data is not None and np.issubdtype(data.dtype, np.floating):
        valid &= np.all(np.isfinite(data), axis=0)
    return valid


def nodata_only(ds, band: int) -> bool:
    """Whether GDAL's mask of this integer band is its nodata value and nothing else, with a value
    the band's type can hold: then the mask is `values != nodata`, and asking GDAL for it would read
    and decode the band a second time."""
    nodata = ds.nodatavals[band - 1]
    if [f.name for f in ds.mask_flag_enums[band - 1]] != ["nodata"] or nodata is None:
        return False
    info = np.iinfo(ds.dtypes[band - 1])
    return float(nodata).is_integer() and info.min <= nodata <= info.max


def stretch_limits(ds, bands: list[int], low: float, high: float, path) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-band (low, high) percentiles of the valid pixels, from an overview when the raster has one
    of at most OVERVIEW_PIXELS, else from a stratified sample of small windows (one per cell of a
    SAMPLE_WINDOWS^2 grid), falling back to scanning blocks when the sample holds no valid pixel.
    Never reads the whole raster at full resolution. Returns (lo, hi, pixels read per band)."""
    values = sample_values(ds, bands, path)
    lo = np.array([np.percentile(v, low) for v in values], dtype=np.float64)
    hi = np.array([np.percentile(v, high) for v in values], dtype=np.float64)
    return lo, np.maximum(hi, lo + 1e-6), len(values[0])


def sample_values(ds, bands: list[int], path) -> list[np.ndarray]:
    """Valid values of each chosen band from an overview, a window sample, or a block scan."""
    from rasterio.windows import Window
    overviews = ds.overviews(bands[0])
    small = [f for f in overviews if math.ceil(ds.width / f) * math.ceil(ds.height / f) <= OVERVIEW_PIXELS]
    if small:
        shape = (math.ceil(ds.height / small[0]), math.ceil(ds.width / small[0]))
        windows = [(None, shape)]
    else:
        rng = np.random.default_rng(0)
        n = SAMPLE_WINDOWS
        size_y, size_x = min(SAMPLE_SIZE, ds.height), min(SAMPLE_SIZE, ds.width)
        windows = []
        for i in range(n):
            for j in range(n):
                y0 = int(i * (ds.height - size_y) / n + rng.integers(0, max(1, (ds.height - size_y) // n + 1)))
                x0 = int(j * (ds.width - size_x) / n + rng.integers(0, max(1, (ds.width - size_x) // n + 1)))
                windows.append((Window(min(x0, ds.width - size_x), min(y0, ds.height - size_y), size_x, size_y), None))
    values = collect(ds, bands, windows)
    if not len(values[0]):  # valid pixels may be rare: look for them block by block
        values = collect(ds, bands, ((w, None) for _, w in ds.block_windows(bands[0])),
                         limit=SAMPLE_WINDOWS ** 2 * SAMPLE_SIZE ** 2)
    if not len(values[0]):
        raise InputError(f"{path}: every pixel of bands {','.join(map(str, bands))} is nodata or masked; "
                         f"nothing to translate")
    return values


def collect(ds, bands: list[int], windows, limit: int | None = None) -> list[np.ndarray]:
    """The valid values of each band in the given (window, out_shape) reads, up to `limit` pixels."""
    chosen = sorted(set(bands))
    found = {b: [] for b in chosen}
    count = 0
    for win, shape in windows:
        shape = None if shape is None else (len(chosen), *shape)
        data = ds.read(chosen, window=win, out_shape=shape)
        masks = ds.read_masks(chosen, window=win, out_shape=shape)
        valid = np.all(masks > 0, axis=0)
        if np.issubdtype(data.dtype, np.floating):
            valid &= np.all(np.isfinite(data), axis=0)
        for b, band in zip(chosen, data):
            found[b].append(band[valid].astype(np.float64))
        count += int(valid.sum())
        if limit and count >= limit:
            break
    return [np.concatenate(found[b]) for b in bands]


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


def is_georeferenced(ds) -> bool:
    from affine import Affine
    return ds.crs is not None or ds.transform != Affine.identity() or bool(ds.gcps[0])


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
    lo = hi = None
    if opts.value_range is not None:
        lo, hi = np.array([opts.value_range[0]] * len(bands)), np.array([opts.value_range[1]] * len(bands))
    elif opts.stretch_given or any(ds.dtypes[b - 1] != "uint8" for b in bands):
        lo, hi, _ = stretch_limits(ds, bands, *opts.stretch, path)
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


# ----------------------------------------------------------------------------------------------------
# One raster shared between processes: each translates a band into its part file, one joins them


def part_path(out: Path, k: int, n: int) -> Path:
    """The temp file of band k of n of the output `out`, next to it."""
    return out.with_name(f".{out.stem}.part{k}of{n}.tif")


def parts_of(path: Path, opts: Options, n: int) -> int:
    """How many bands a raster is cut into for n processes (fewer when it has fewer tile rows)."""
    with rasterio_env():
        ds = open_raster(path)
        with ds:
            width, height, _ = working_size(ds, path, opts)
    return len(opts.engine.bands(height, width, n))


def assemble(path: Path, out_dir: Path, opts: Options, n: int, in_channels: int = 3, rows: int = 512) -> Path:
    """Join the n part files of a shared raster, band after band, window by window, into the working
    GTiff, then finish it as a one-process run does (resample back, COG or PNG); removes the parts.
    The result equals the one-process output: each band was translated exactly as in a whole run.
    in_channels: the generator's (which bands of the input were read)."""
    import rasterio
    from rasterio.windows import Window
    with rasterio_env():
        ds = open_raster(path)
        with ds:
            plan = plan_raster(ds, path, out_dir, opts, in_channels)
            parts = [part_path(plan.out, k, n) for k in range(n)]
            work = plan.out.with_name(f".{plan.out.stem}.work.tif")
            grid = plan.out.with_name(f".{plan.out.stem}.grid.tif")
            try:
                missing = [p for p in parts if not p.is_file()]
                if missing:
                    raise InputError(f"{path}: part {missing[0]} is missing; with several machines, --out must "
                                     f"be a folder all of them see (a shared file system)")
                valid, top = 0, 0
                overviews = plan.fmt == "tif" and not plan.resampled and cog.overviews_fit(plan.width, plan.height, None)
                with rasterio.open(parts[0]) as first:
                    count = first.count - plan.alpha  # the generator's output channels
                with contextlib.ExitStack() as files:
                    sink = cog.open_sink(files, work, plan.width, plan.height, ds.crs, plan.transform, plan.alpha,
                                         overviews=overviews, channels=count)
                    for part in parts:
                        with rasterio.open(part) as src:
                            for y in range(0, src.height, rows):
                                win = Window(0, y, src.width, min(rows, src.height - y))
                                mask = src.read(count + 1, window=win) if plan.alpha else src.read_masks(1, window=win)
                                sink.write_uint8(top + y, 0, src.read(list(range(1, count + 1)), window=win), mask > 0)
                                valid += int(np.count_nonzero(mask))
                            top += src.height
                    sink.finish()
                finish(work, grid, plan.out, plan.fmt, valid, plan.alpha, (ds, plan.bands) if plan.resampled else None,
                       overviews)
            finally:
                cog.remove(work, grid, *parts)
    return plan.out


def discard_parts(path: Path, out_dir: Path, n: int):
    """Remove whatever part files of a shared raster exist (after a failure)."""
    for f in out_dir.glob(f".{glob.escape(path.stem)}.part*of{n}.tif"):
        f.unlink(missing_ok=True)


def input_pixels(path: Path) -> int:
    """A file's pixel count from its header (no decoding), to share files out by work; 0 when it
    cannot be read (the error is reported when it is translated)."""
    try:
        if is_picture(path):
            from PIL import Image
            with Image.open(path) as img:
                return img.width * img.height
        with rasterio_env():
            ds = open_raster(path)
            with ds:
                return ds.width * ds.height
    except Exception:
        return 0


def report(message: str):
    """One line on stderr that does not break a progress bar."""
    tqdm.write(message, file=sys.stderr)
