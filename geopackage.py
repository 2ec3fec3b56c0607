"""The GIS layers on disk: a GeoPackage written feature by feature, and the RFC 7946 GeoJSON made from it.

    python vector.py out/scene.tif --out out/scene.gpkg          # LayerFile
    python vector.py out/scene.tif --out out/scene.geojson       # to_geojson

`LayerFile` appends vector.py's polygons and centerlines (in pixel coordinates) to the GeoPackage's
layers as they are finished, in the map's CRS, with their areas and lengths in metres and in pixels
(pyogrio); the five layers are always there. vector.py writes it under a temp name with SQLite's syncs
off (`unsynced_sqlite`) and renames it into place at the end (docs/gis.md#what-you-get).
"""
import contextlib
import warnings
from pathlib import Path

import numpy as np

from palette import CLASSES
from polygons import AREAS

LINES = "centerlines"  # the layer of road centerlines


class LayerFile:
    """The GeoPackage being written: a layer per AREAS class (class, area_m2, area_px) and the
    centerlines (class, length_m, length_px), in the map's CRS; features are appended as they come."""

    def __init__(self, path: Path, crs, transform, metres: float | None):
        self.path, self.crs, self.metres = path, None if crs is None else crs.to_wkt(), metres
        self.matrix = np.array([[transform.a, transform.d], [transform.b, transform.e]])
        self.offset = np.array([transform.c, transform.f])
        self.counts = {CLASSES[c]: 0 for c in AREAS} | {LINES: 0}
        self.made = set()

    def polygons(self, features: list):
        """(class, polygon in pixel coordinates) pairs, into their classes' layers."""
        for c in AREAS:
            geoms = [g for k, g in features if k == c]
            self.write(CLASSES[c], [CLASSES[c]] * len(geoms), geoms, "Polygon")

    def lines(self, features: list):
        """(class, line in pixel coordinates) pairs, into the centerlines."""
        self.write(LINES, [CLASSES[c] for c, _ in features], [g for _, g in features], "LineString")

    def write(self, layer: str, names: list, px: list, kind: str):
        import pyogrio.raw
        import shapely
        if not px and layer in self.made:
            return
        measure, unit, power = ("area", "m2", 2) if kind == "Polygon" else ("length", "m", 1)
        px = np.array(px, dtype=object)
        geoms = shapely.transform(px, lambda xy: xy @ self.matrix + self.offset)
        size = getattr(shapely, measure)
        real = size(geoms) * self.metres ** power if self.metres else np.full(len(px), np.nan)  # NaN: null
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "'crs' was not provided": a map without one
            pyogrio.raw.write(self.path, shapely.to_wkb(geoms), [np.array(names, dtype=object), real, size(px)],
                              ["class", f"{measure}_{unit}", f"{measure}_px"], layer=layer, driver="GPKG",
                              geometry_type=kind, crs=self.crs, append=layer in self.made)
        self.made.add(layer)
        self.counts[layer] += len(px)

    def close(self):
        """Create the layers that got no feature, so that every file has all five."""
        self.polygons([])
        self.lines([])


def metres_per_unit(crs) -> float | None:
    """Metres in one unit of a projected CRS; None for a geographic CRS or none."""
    if crs is None or not crs.is_projected:
        return None
    try:
        return crs.linear_units_factor[1]
    except Exception:  # a CRS whose units GDAL cannot name
        return None


def to_geojson(gpkg: Path, path: Path, crs, name: str):
    """Every layer of the GeoPackage as one RFC 7946 GeoJSON FeatureCollection (GDAL reprojects it
    to EPSG:4326, longitude first), with the layer's name on each feature. Held in memory whole."""
    import pyogrio
    import pyogrio.raw
    geoms, fields = [], {k: [] for k in ("layer", "class", "area_m2", "area_px", "length_m", "length_px")}
    for layer, _ in pyogrio.list_layers(gpkg):
        meta, _, wkb, values = pyogrio.raw.read(gpkg, layer=layer)
        geoms.append(wkb)
        read = dict(zip(meta["fields"], values))
        for k, column in fields.items():
            column.append(np.full(len(wkb), layer, object) if k == "layer" else read.get(k, np.full(len(wkb), np.nan)))
    pyogrio.raw.write(path, np.concatenate(geoms), [np.concatenate(v) for v in fields.values()], list(fields),
                      layer=name, driver="GeoJSON", geometry_type="Unknown", crs=crs.to_wkt(), RFC7946="YES")


@contextlib.contextmanager
def unsynced_sqlite():
    """SQLite (GeoPackage) without its own syncs and journal while it writes our temp file: the
    file is thrown away if anything fails, and fsynced before its rename (durable.replace_durably),
    so they would only be the same safety paid for at every table and transaction."""
    import pyogrio
    options = {"OGR_SQLITE_SYNCHRONOUS": "OFF", "OGR_SQLITE_JOURNAL": "OFF"}
    before = {k: pyogrio.get_gdal_config_option(k) for k in options}
    pyogrio.set_gdal_config_options(options)
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options(before)


def remove_temp(path: Path):
    """A temp file and what SQLite may have left beside it."""
    for p in (path, *(path.with_name(path.name + s) for s in ("-journal", "-wal", "-shm"))):
        p.unlink(missing_ok=True)
