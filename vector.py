"""Maps into GIS layers: a class raster, polygons of water, parks, highways and roads, road centerlines.

    python vector.py out/scene.tif --out out/scene.gpkg          # and out/scene.classes.tif
    python vector.py map.png --out layers.gpkg --simplify 1 --min-area 16 --spur 12
    python vector.py out/scene.tif --out scene.geojson          # RFC 7946: EPSG:4326
    python predict.py --weights sat2map --input scene.tif --out out/ --vector   # out/scene.tif and out/scene.gpkg

The layers are in the map's CRS. Every pixel takes its class by palette.py's rule (evaluate.py's
classes); patches smaller than --min-area take the class around them. Polygons come from
rasterio.features.shapes on the cells of a fixed CELL px grid, are smoothed and simplified as one
coverage per cell (neighbouring classes keep one shared edge), and are joined across cell edges
(polygons.py); centerlines come from scikit-image's skeleton of the road classes, traced into lines
split at junctions, short spurs pruned (centerlines.py); geopackage.py writes them. This file reads
the map, sieves its classes and drives both tracers: block by block with a halo, strip after strip,
holding only what touches the next strip (and the finished centerlines, as plain coordinates), so
memory follows --block, the largest connected patch and the road length, not the scene's pixels. The
result does not depend on --block. No PyTorch is imported, here or in the modules used (about
480 MB of memory that the peak would carry for nothing). See docs/gis.md.
"""
import contextlib
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

import bands
import cog
from centerlines import LineTracer
from cli import InputError, command_parser, report, run_command
from durable import atomic_write, replace_durably
from geopackage import LINES, LayerFile, metres_per_unit, remove_temp, to_geojson, unsynced_sqlite
from memory import fix_mmap_threshold
from palette import CLASSES, HIGHWAY, PALETTE, ROAD, classify_rgb, palette_share
from polygons import AREAS, PolygonTracer

NODATA = 255  # the class raster's value where the map has no data
CELL = 256  # px: polygons are traced per cell of this grid, whose lines keep their vertices (see docs/gis.md)
SKELETON_HALO = 64  # px of context around a block for its skeleton, far more than a road's half width
MIN_PALETTE_SHARE = 0.25  # share of a map's pixels in palette colours at least (sample maps: > 0.95, photos: < 0.1)
MAX_MIN_AREA = 1024  # px; the sieve's halo grows with --min-area


@dataclass
class Settings:
    """What vector.py's flags set (docs/gis.md#flags)."""
    simplify: float = 0.75  # px: coverage simplification (Visvalingam-Whyatt) of polygons, Douglas-Peucker of lines
    min_area: int = 9  # px: smaller patches take the class around them
    spur: float = 10.0  # px: centerline branches with a free end shorter than this are pruned
    block: int = 1024  # px side of the blocks read at once; memory grows with it

    def check(self):
        """InputError naming the flag of a value out of range."""
        if not (math.isfinite(self.simplify) and self.simplify >= 0):
            raise InputError(f"--simplify {self.simplify}: expected a tolerance >= 0 px")
        if not 0 <= self.min_area <= MAX_MIN_AREA:
            raise InputError(f"--min-area {self.min_area}: expected 0 to {MAX_MIN_AREA} px")
        if not (math.isfinite(self.spur) and self.spur >= 0):
            raise InputError(f"--spur {self.spur}: expected a length >= 0 px")
        if self.block < 512 or self.block % 512:
            raise InputError(f"--block {self.block}: expected a positive multiple of 512")

    def halo(self) -> int:
        """px of context read around each block: the skeleton's, plus what makes the sieve exact
        (a patch under min_area px lies within min_area px of where it is seen, and so do enough
        pixels of a larger one to tell it is larger)."""
        return SKELETON_HALO + (2 * self.min_area + 2 if self.min_area > 1 else 0)


@dataclass
class Layers:
    """Vectors in pixel coordinates (x: column, y: row; pixel corners on integers): (class id,
    geometry) pairs, and the sieved class raster they were traced from (for arrays only)."""
    polygons: list = field(default_factory=list)
    lines: list = field(default_factory=list)
    classes: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------------
# Classes: the sieve


def sieve(cls: np.ndarray, min_area: int) -> np.ndarray:
    """Class ids (h, w) with every 4-connected patch of fewer than min_area pixels given the class
    most of its outside neighbours have (ties: the lower id; only small neighbours: background).
    A rule of the neighbourhood alone, so a block with Settings.halo gives the whole raster's answer."""
    from skimage.measure import label
    if min_area <= 1:
        return cls
    labels, n = label(cls, background=NODATA, connectivity=1, return_num=True)
    small = np.bincount(labels.ravel(), minlength=n + 1) < min_area
    small[0] = False  # nodata is never sieved
    small_px = small[labels]
    if not small_px.any():
        return cls
    votes = np.zeros((n + 1) * len(CLASSES), np.int64)
    for a, b in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1, :], np.s_[1:, :])):
        for p, q in ((a, b), (b, a)):
            vote = small_px[p] & ~small_px[q] & (cls[q] != NODATA)
            votes += np.bincount(labels[p][vote] * len(CLASSES) + cls[q][vote], minlength=votes.size)
    new = votes.reshape(n + 1, len(CLASSES)).argmax(1).astype(np.uint8)
    out = cls.copy()
    out[small_px] = new[labels[small_px]]
    return out


# ----------------------------------------------------------------------------------------------------
# Blocks, strips and the whole raster


def trace(read, height: int, width: int, settings: Settings, on_block=None, on_polygons=None, on_lines=None,
          progress=None) -> tuple[list, list, int]:
    """Vectorise a class raster read by blocks: read(y0, y1, x0, x1) gives uint8 class ids (NODATA
    where there is no data) of any window. on_block(y0, x0, classes) sees each block's sieved
    classes; on_polygons(list) takes the finished polygons after each strip, on_lines(list) the
    centerlines in chunks at the end (else they are returned); progress(done_rows, rows). Returns the
    polygons and centerlines not taken, each (class, geometry) in pixel coordinates, and the count of
    pixels of the AREAS classes."""
    from skimage.morphology import skeletonize
    fix_mmap_threshold()  # block-sized buffers go back to the OS when freed, as in the tile engine
    block, halo = settings.block, settings.halo()
    polygons = PolygonTracer(height, width, settings.simplify)
    lines = LineTracer(height, width, settings.simplify, settings.spur)
    kept, found = [], 0
    for y0 in range(0, height, block):
        y1 = min(height, y0 + block)
        for x0 in range(0, width, block):
            x1 = min(width, x0 + block)
            wy0, wx0 = max(0, y0 - halo), max(0, x0 - halo)
            cls = sieve(read(wy0, min(height, y1 + halo), wx0, min(width, x1 + halo)), settings.min_area)
            core = cls[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
            found += int(np.isin(core, AREAS).sum())
            if on_block is not None:
                on_block(y0, x0, core)
            sy0, sx0 = max(0, y0 - SKELETON_HALO), max(0, x0 - SKELETON_HALO)  # the sieve is exact here
            near = cls[sy0 - wy0:min(height, y1 + SKELETON_HALO) - wy0, sx0 - wx0:min(width, x1 + SKELETON_HALO) - wx0]
            skeleton = skeletonize((near == ROAD) | (near == HIGHWAY))
            skeleton = skeleton[y0 - sy0:y1 - sy0, x0 - sx0:x1 - sx0] * core
            for cy in range(0, y1 - y0, CELL):  # both tracers go cell by cell, on the fixed grid
                for cx in range(0, x1 - x0, CELL):
                    polygons.add_cell(core[cy:cy + CELL, cx:cx + CELL], y0 + cy, x0 + cx)
                    lines.add_cell(skeleton[cy:cy + CELL, cx:cx + CELL], y0 + cy, x0 + cx)
        polygons.end_strip(y1 == height)
        lines.end_strip(y1)
        if on_polygons is not None:
            on_polygons(polygons.take())
        else:
            kept += polygons.take()
        if progress is not None:
            progress(y1, height)
    centerlines = []
    for chunk in lines.result():
        if on_lines is None:
            centerlines += chunk
        else:
            on_lines(chunk)
    return kept, centerlines, found


def layers(classes: np.ndarray, settings: Settings | None = None) -> Layers:
    """The layers of a class raster held in memory (uint8 (H, W); evaluate.py's images), in pixel coordinates."""
    settings = settings or Settings()
    sieved = np.empty_like(classes)

    def keep(y0, x0, core):
        sieved[y0:y0 + core.shape[0], x0:x0 + core.shape[1]] = core

    polygons, lines, _ = trace(lambda y0, y1, x0, x1: classes[y0:y1, x0:x1], *classes.shape, settings, keep)
    return Layers(polygons, lines, sieved)


# ----------------------------------------------------------------------------------------------------
# Files: the map in; the class raster and the layers out


class MapReader:
    """A map raster's classes window by window: palette.py's class of each RGB pixel, NODATA where
    GDAL masks it (nodata, alpha, predict.py's mask)."""

    def __init__(self, ds, path: Path):
        if ds.count < 3:
            raise InputError(f"{path}: {ds.count} band(s); expected an RGB map in the palette's colours (the "
                             f"output of an RGB generator, or a map picture), not a grey image")
        self.ds, self.bands = ds, bands.pick_bands(ds, None, path)
        if any(ds.dtypes[b - 1] != "uint8" for b in self.bands):
            raise InputError(f"{path}: {ds.dtypes[self.bands[0] - 1]} bands; expected an 8-bit RGB map "
                             f"(predict.py's output, or a map picture)")
        self.check_palette(path)

    def check_palette(self, path: Path, side: int = 1024):
        """Refuse a picture that is not a map: few of its pixels (read at most side px wide, from
        the overviews where it has them) have the palette's colours."""
        f = max(1.0, max(self.ds.width, self.ds.height) / side)
        shape = (3, max(1, round(self.ds.height / f)), max(1, round(self.ds.width / f)))
        rgb = self.ds.read(self.bands, out_shape=shape)
        valid = np.all(self.ds.read_masks(self.bands, out_shape=shape) > 0, axis=0)
        if not valid.any():
            raise InputError(f"{path}: every pixel is nodata or masked; nothing to vectorise")
        share = palette_share(rgb[:, valid][:, :, None])
        if share < MIN_PALETTE_SHARE:
            raise InputError(f"{path}: not a map: {share:.0%} of its pixels have the palette's colours (a map "
                             f"drawn by predict.py, or a ground-truth map, has most of them); see docs/gis.md")

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        from rasterio.windows import Window
        win = Window(x0, y0, x1 - x0, y1 - y0)
        rgb = self.ds.read(self.bands, window=win)
        cls = classify_rgb(rgb)
        cls[~bands.valid_mask(self.ds, self.bands, win, rgb)] = NODATA
        return cls


def open_class_raster(path: Path, ds):
    """A new working GTiff for the classes (cog.py's profile, one band), with a colour table (each
    class in its first palette colour), no data at NODATA, and the class names."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    profile = {**cog.tiff_profile(ds.width, ds.height, ds.crs, ds.transform, count=1), "nodata": NODATA}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        dst = rasterio.open(path, "w", **profile)
    dst.write_colormap(1, {**{i: (*PALETTE[name][0], 255) for i, name in enumerate(CLASSES)}, NODATA: (0, 0, 0, 0)})
    names = ", ".join(f"{i} {name}" for i, name in enumerate(CLASSES))
    dst.set_band_description(1, f"class: {names}; {NODATA} no data")
    dst.update_tags(1, **{f"CLASS_{i}": name for i, name in enumerate(CLASSES)})
    return dst


def format_of(out: Path) -> str:
    """The layers' format an output name asks for: geojson for .geojson or .json, else gpkg."""
    return "geojson" if out.suffix.lower() in (".geojson", ".json") else "gpkg"


def output_path(path: Path, flag: str, source: Path) -> Path:
    """A file to write: not a folder, not the map itself, in an existing folder we may write in."""
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder, expected a file")
    if path.resolve() == source.resolve():
        raise InputError(f"{flag} {path}: would overwrite the map; choose another name")
    if not path.parent.is_dir():
        raise InputError(f"{flag} {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {path.parent} (permission denied)")
    return path


def vectorise(path: Path, out: Path, classes: Path | None = None, fmt: str | None = None,
              settings: Settings | None = None, progress=None) -> dict:
    """Vectorise the map raster `path` into `out` (a GeoPackage, or with fmt "geojson" RFC 7946
    GeoJSON) and, if given, its class raster `classes` (a COG); returns the feature count of each
    layer. Files appear complete or not at all; bad input raises InputError. progress(done_rows, rows)."""
    path, out = Path(path), Path(out)
    settings = settings or Settings()
    settings.check()
    fmt = fmt or format_of(out)
    output_path(out, "--out", path)
    if classes is not None:
        output_path(Path(classes), "--classes", path)
        if Path(classes).resolve() == out.resolve():
            raise InputError(f"--classes {classes}: is --out too; give the class raster a name of its own")
    from rasterio.errors import NotGeoreferencedWarning
    with bands.rasterio_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # said below, in words
        ds = bands.open_raster(path)
        with ds:
            reader = MapReader(ds, path)
            crs = ds.crs
            if fmt == "geojson" and crs is None:
                raise InputError(f"{path}: has no CRS, and GeoJSON (RFC 7946) is in longitude and latitude; "
                                 f"write a GeoPackage (--out *.gpkg) instead")
            if not bands.is_georeferenced(ds):
                report(f"note: {path} is not georeferenced: the layers are in pixel coordinates "
                              f"(x: column, y: row), without metres")
            elif crs is None:
                report(f"note: {path} has no CRS: the layers are in its grid's coordinates, without metres")
            elif metres_per_unit(crs) is None:
                report(f"note: {path} is in {crs.to_string()}, not in metres: area_m2 and length_m are empty")
            return write_layers(reader, path, out, None if classes is None else Path(classes), fmt, crs, settings,
                                progress)


def layers_beside(map_path: Path, progress=None) -> tuple[Path | None, str]:
    """The layers of a map just drawn (predict.py --vector, the app) into <stem>.gpkg beside it, with
    the default settings and no class raster: (that file, "") or, for a map with nothing to vectorise
    (not a map, a grey image, only background), (None, why) and no file. progress: as vectorise's
    (a cancel hook raising there stops it, and no file is left)."""
    gpkg = Path(map_path).with_suffix(".gpkg")
    try:
        vectorise(map_path, gpkg, progress=progress)
    except InputError as e:
        return None, str(e).split(": ", 1)[-1]  # the reason, without the path
    return gpkg, ""


def write_layers(reader: MapReader, path: Path, out: Path, classes: Path | None, fmt: str, crs, settings,
                 progress) -> dict:
    """vectorise's work, into temp files next to the outputs that are renamed into place at the end."""
    ds = reader.ds
    tmp = out.with_name(f".{out.name}.tmp.gpkg")
    json_tmp = out.with_name(f".{out.name}.tmp.geojson")
    work = None if classes is None else classes.with_name(f".{classes.stem}.work.tif")
    try:
        remove_temp(tmp)  # a killed run's: GDAL would append to it
        layer_file = LayerFile(tmp, crs, ds.transform, metres_per_unit(crs))
        with contextlib.ExitStack() as files:
            files.enter_context(unsynced_sqlite())
            dst = None if work is None else files.enter_context(open_class_raster(work, ds))

            def write_classes(y0, x0, core):
                from rasterio.windows import Window
                dst.write(core[None], window=Window(x0, y0, core.shape[1], core.shape[0]))

            found = trace(reader.read, ds.height, ds.width, settings, None if dst is None else write_classes,
                          layer_file.polygons, layer_file.lines, progress)[2]
            if not found:
                raise InputError(f"{path}: no roads, highways, water or parks in it (every pixel is background "
                                 f"or nodata); nothing to vectorise")
            layer_file.close()
        if fmt == "geojson":
            to_geojson(tmp, json_tmp, crs, out.stem)
        if work is not None:
            cog.publish(work, classes, "tif", resampling="mode")
        replace_durably(json_tmp if fmt == "geojson" else tmp, out)
        return layer_file.counts
    finally:
        remove_temp(tmp)
        json_tmp.unlink(missing_ok=True)
        if work is not None:
            cog.remove(work)


def preview(path: Path, layers: Path, out: Path, size: int = 768):
    """The layers drawn over the map into a PNG about `size` px wide (matplotlib): polygons in their
    class's colour, outlined darker; centerlines red, road, or dark red, highway."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyogrio
    import pyogrio.raw
    import shapely
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MplPath
    from rasterio.errors import NotGeoreferencedWarning
    with bands.rasterio_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with bands.open_raster(path) as ds:
            f = max(ds.width, ds.height) / max(size, 1)
            rgb = ds.read(bands.pick_bands(ds, None, path), out_shape=(3, max(1, round(ds.height / f)),
                                                                         max(1, round(ds.width / f))))
            left, bottom, right, top = ds.bounds
    fig = plt.figure(figsize=(rgb.shape[2] / 100, rgb.shape[1] / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(rgb.transpose(1, 2, 0), extent=(left, right, bottom, top), interpolation="nearest")
    for name, _ in pyogrio.list_layers(layers):
        _, _, wkb, (cls, *_) = pyogrio.raw.read(layers, layer=name)
        for geom, c in zip(shapely.from_wkb(wkb), cls):
            if name == LINES:
                xy = shapely.get_coordinates(geom)
                ax.plot(xy[:, 0], xy[:, 1], color="darkred" if c == "highway" else "red", lw=1.2)
                continue
            rings = [shapely.get_coordinates(r) for r in (geom.exterior, *geom.interiors)]
            colour = np.array(PALETTE[c][0]) / 255
            ax.add_patch(PathPatch(MplPath.make_compound_path(*[MplPath(r, closed=True) for r in rings]),
                                   facecolor=(*colour, 0.6), edgecolor=colour * 0.6, lw=0.8))
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.axis("off")
    atomic_write(out, lambda file: fig.savefig(file, format="png"))
    plt.close(fig)


def main(argv=None):
    p = command_parser(__doc__.split("\n")[0])
    p.add_argument("map", nargs="?", metavar="MAP", help="the map: predict.py's output (GeoTIFF or PNG) or a "
                   "ground-truth map (any 8-bit RGB raster GDAL reads)")
    p.add_argument("--input", help="the map, instead of MAP")
    p.add_argument("--out", required=True, help="the layers: a GeoPackage (.gpkg), or GeoJSON (.geojson)")
    p.add_argument("--format", choices=["gpkg", "geojson"], help="gpkg: the map's CRS; geojson: RFC 7946, in "
                   "EPSG:4326 (default: geojson for an --out ending in .geojson or .json, else gpkg)")
    p.add_argument("--classes", help="the class raster, a Cloud-Optimized GeoTIFF (default: OUT's name with "
                   ".classes.tif)")
    p.add_argument("--no-classes", action="store_true", help="do not write the class raster")
    defaults = Settings()
    p.add_argument("--simplify", type=float, default=defaults.simplify, help="tolerance in px of the "
                   "simplification: of polygons (as one coverage, Visvalingam-Whyatt) and centerlines "
                   "(Douglas-Peucker); 0: only the smoothing of staircases")
    p.add_argument("--min-area", type=int, default=defaults.min_area, help="px: patches of fewer pixels take the "
                   "class around them, in the class raster and the layers (0: keep all)")
    p.add_argument("--spur", type=float, default=defaults.spur, help="px: centerline branches with a free end "
                   "shorter than this are pruned (0: keep all)")
    p.add_argument("--preview", help="also draw the layers over the map into this PNG (matplotlib, 768 px wide)")
    p.add_argument("--block", type=int, default=defaults.block, help="px side of the blocks read at once "
                   "(a multiple of 512); memory grows with it and with the largest connected patch, not with "
                   "the map's area; the result is the same")
    args = p.parse_args(argv)
    if (args.map is None) == (args.input is None):
        p.error("give the map once: as MAP or as --input")
    if args.no_classes and args.classes:
        p.error("--classes names the class raster that --no-classes leaves out: give one of them")
    settings = Settings(args.simplify, args.min_area, args.spur, args.block)
    try:
        settings.check()
    except InputError as e:
        p.error(str(e))
    source, out = Path(args.map or args.input), Path(args.out)
    if args.format and args.format != format_of(out):
        p.error(f"--format {args.format}: --out {out} has another suffix (.gpkg, or .geojson)")
    if args.preview and format_of(out) != "gpkg":
        p.error("--preview draws a GeoPackage's layers: give --out a .gpkg name")
    classes = None if args.no_classes else Path(args.classes or out.with_name(f"{out.stem}.classes.tif"))
    with tqdm(total=0, desc="vectorise", unit="row", dynamic_ncols=True, disable=None) as bar:
        def progress(done, rows):
            bar.total = rows
            bar.update(done - bar.n)
        counts = vectorise(source, out, classes, args.format, settings, progress)
    if args.preview:
        preview(source, out, Path(args.preview))
    polygons = ", ".join(f"{n} {layer}" for layer, n in counts.items() if layer != LINES)
    print(f"wrote {out}: polygons {polygons}; {counts[LINES]} centerlines" +
          ("" if classes is None else f"; classes in {classes}"))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
