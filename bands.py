"""Opening a raster, which of its bands the generator reads, the limits that scale their values, and
where they are valid.

    python predict.py --weights sat2map --input scene.tif --out out/ --bands 3,2,1 --stretch 2,98

`pick_bands` follows --bands, else the colour interpretation (three bands, or one for a grey
generator); `value_limits` gives the per-band limits of --range or of the --stretch percentiles,
which `stretch_limits` takes from an overview or a sample of small windows, never from the whole
raster; `valid_mask` is GDAL's nodata, mask and alpha (and finite values). `open_raster` opens a
file GDAL reads, inside `rasterio_env`'s settings. raster.py's RasterSource reads the tile engine's
windows through them, vector.py its class windows; the app's previews scale as raster.py does. No
torch here, so that vector.py starts light.
"""
import math
import os
from pathlib import Path

import numpy as np

from cli import InputError, first_line

GDAL_CACHE_MB = 32  # GDAL's block cache counts in our memory; the engine never needs more than this
SAMPLE_WINDOWS = 10  # the stretch samples SAMPLE_WINDOWS^2 windows, one in each cell of a grid
SAMPLE_SIZE = 64  # px side of a sampling window
OVERVIEW_PIXELS = 1 << 20  # an overview this small or smaller is read whole for the stretch


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


def is_georeferenced(ds) -> bool:
    from affine import Affine
    return ds.crs is not None or ds.transform != Affine.identity() or bool(ds.gcps[0])


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


def value_limits(ds, bands: list[int], opts, path) -> tuple:
    """Per-band (lo, hi) of the values scaled to the full range: --range, else the --stretch
    percentiles where --stretch is given or a band is not uint8; (None, None) for uint8 taken as it
    is. opts: raster.Options (value_range, stretch, stretch_given)."""
    if opts.value_range is not None:
        return tuple(np.full(len(bands), v, np.float64) for v in opts.value_range)
    if opts.stretch_given or any(ds.dtypes[b - 1] != "uint8" for b in bands):
        return stretch_limits(ds, bands, *opts.stretch, path)[:2]
    return None, None


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



#END
