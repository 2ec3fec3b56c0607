"""One raster shared between processes under torchrun: each translates a band of tile rows into its
part file, and rank 0 joins the parts into the file one process would have written.

    torchrun --nproc-per-node 4 predict.py --weights sat2map --input scene.tif --out out/ --eval

predict.py shares the work out (by `input_pixels`, read from the headers) and cuts a raster larger than
a fair share into `parts_of` bands, one per process (tiles.Engine.bands: each band is translated
exactly as in a whole run); raster.predict_file writes band k into `part_path`, `assemble` joins them
window by window and finishes the output as raster.py does, and `discard_parts` clears them after a
failure (docs/inference-at-scale.md).
"""
import contextlib
import glob
from pathlib import Path

import numpy as np

import cog
from bands import open_raster, rasterio_env
from cli import InputError
from raster import Options, finish, is_picture, part_path, plan_raster, working_size


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
