"""Which bands of a raster the generator reads, how their values become [-1, 1], and where they are valid.

    python predict.py --weights sat2map --input scene.tif --out out/ --bands 3,2,1 --stretch 2,98

`pick_bands` follows --bands, else the colour interpretation (three bands, or one for a grey
generator); `value_limits` gives the per-band limits of --range or of the --stretch percentiles,
which `stretch_limits` takes from an overview or a sample of small windows, never from the whole
raster; `valid_mask` is GDAL's nodata, mask and alpha (and finite values); `RasterSource` is what the
tile engine reads. raster.py plans and writes around them; the app's previews scale as they do.
"""
import math

import numpy as np
import torch

from utils import InputError

SAMPLE_WINDOWS = 10  # the stretch samples SAMPLE_WINDOWS^2 windows, one in each cell of a grid
SAMPLE_SIZE = 64  # px side of a sampling window
OVERVIEW_PIXELS = 1 << 20  # an overview this small or smaller is read whole for the stretch


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
