"""Maps into GIS layers: a class raster, polygons of water, parks, highways and roads, road centerlines.

    python vector.py out/scene.tif --out out/scene.gpkg          # and out/scene.classes.tif
    python vector.py map.png --out layers.gpkg --simplify 1 --min-area 16 --spur 12
    python vector.py out/scene.tif --out scene.geojson          # RFC 7946: EPSG:4326
    python predict.py --weights sat2map --input scene.tif --out out/ --vector   # out/scene.tif and out/scene.gpkg

The layers are in the map's CRS. Every pixel takes its class by palette.py's rule (evaluate.py's
classes); patches smaller than --min-area take the class around them. Polygons come from
rasterio.features.shapes on the cells of a fixed CELL px grid, are smoothed and simplified as one
coverage per cell (neighbouring classes keep one shared edge), and are joined across cell edges;
centerlines come from scikit-image's skeleton of the road classes, traced into lines split at
junctions, short spurs pruned. The raster is read block by block with a halo, strip after strip, and
only what touches the next strip is held (and the finished centerlines, as plain coordinates), so memory
follows --block, the largest connected patch and the road length, not the scene's pixels. The result
does not depend on --block. See docs/gis.md.
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
import raster
import tiles
from config import command_parser
from palette import CLASSES, PALETTE, classify_rgb, palette_share
from utils import InputError, atomic_write, replace_durably, run_command

ROAD, HIGHWAY, WATER, PARK = (CLASSES.index(n) for n in ("road", "highway", "water", "park"))
AREAS = (WATER, PARK, HIGHWAY, ROAD)  # classes with a polygon layer each, named as the class
LINES = "centerlines"
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
# Polygons: one cell at a time, joined across cell edges


def cell_polygons(cls: np.ndarray, y0: int, x0: int, tolerance: float):
    """The polygons of one cell's 4-connected patches, smoothed and simplified as one coverage whose
    outline (the cell's edges) stays put. Returns (labels (h, w), polygon by label, class by label)."""
    import shapely
    from rasterio.features import shapes
    from rasterio.transform import Affine
    from skimage.measure import label
    labels = label(cls.astype(np.int16), background=-1, connectivity=1).astype(np.int32)  # 1..n, every pixel
    n = int(labels.max())
    cls_of = np.zeros(n + 1, np.uint8)
    cls_of[labels] = cls
    polys = np.empty(n + 1, object)
    for geom, value in shapes(labels, connectivity=4, transform=Affine.translation(x0, y0)):
        polys[int(value)] = shapely.geometry.shape(geom)
    polys[1:] = smooth(polys[1:], corners(labels), y0, x0)
    if tolerance > 0:
        polys[1:] = shapely.coverage_simplify(polys[1:], tolerance, simplify_boundary=False)
    return labels, polys, cls_of


def corners(labels: np.ndarray) -> np.ndarray:
    """bool (h + 1, w + 1): the pixel corners a smoothed outline must keep: where three or more
    patches meet, where a patch touches itself diagonally, and all along the cell's edges."""
    p = np.pad(labels, 1, constant_values=-1)
    a, b, c, d = p[:-1, :-1], p[:-1, 1:], p[1:, :-1], p[1:, 1:]
    distinct = 1 + (b != a) + ((c != a) & (c != b)) + ((d != a) & (d != b) & (d != c))
    keep = (distinct >= 3) | ((a == d) & (b == c) & (a != b))
    keep[0], keep[-1], keep[:, 0], keep[:, -1] = True, True, True, True
    return keep


def smooth(polys: np.ndarray, keep: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """Each outline through the midpoints of its pixel edges instead of their corners, except at the
    corners in `keep`: staircases become straight lines, yet every pixel centre stays on its side
    (so rasterising gives back the same pixels), and two patches still share one edge."""
    import shapely
    rings, owner = shapely.get_rings(polys, return_index=True)
    xy, ring = shapely.get_coordinates(shapely.segmentize(rings, 1.0), return_index=True)
    closing = np.r_[ring[1:] != ring[:-1], True]  # each ring's last vertex repeats its first
    xy, ring = xy[~closing], ring[~closing]
    start, end = np.r_[True, ring[1:] != ring[:-1]], np.r_[ring[1:] != ring[:-1], True]
    following = np.arange(1, len(xy) + 1)
    following[end] = np.flatnonzero(start)
    corner = keep[xy[:, 1].astype(np.int64) - y0, xy[:, 0].astype(np.int64) - x0]
    out = np.empty((2 * len(xy), 2))
    out[0::2], out[1::2] = xy, (xy + xy[following]) / 2
    take = np.c_[corner, np.ones_like(corner)].ravel()
    return shapely.polygons(shapely.linearrings(out[take], indices=np.repeat(ring, 2)[take]), indices=owner)


class PolygonTracer:
    """Polygons of the AREAS classes, traced cell by cell and joined with the pieces across each
    cell edge they touch (a union-find over the pieces); a piece is finished once nothing it joins
    can still touch an untraced cell, which is known at the end of each strip of blocks."""

    def __init__(self, height: int, width: int, tolerance: float):
        self.height, self.width, self.tolerance = height, width, tolerance
        self.next_id = 1
        self.parent, self.pieces, self.cls = {}, {}, {}  # the open pieces by id (0: none)
        self.above = np.zeros(width, np.int64)  # piece ids along the last row traced, per column
        self.left = np.zeros(height, np.int64)  # piece ids along the last column traced, per row
        self.done = []  # finished (class, polygon) not yet taken

    def add_block(self, cls: np.ndarray, y0: int, x0: int):
        for cy in range(0, cls.shape[0], CELL):
            for cx in range(0, cls.shape[1], CELL):
                self.add_cell(cls[cy:cy + CELL, cx:cx + CELL], y0 + cy, x0 + cx)

    def add_cell(self, cls: np.ndarray, y0: int, x0: int):
        labels, polys, cls_of = cell_polygons(cls, y0, x0, self.tolerance)
        y1, x1 = y0 + cls.shape[0], x0 + cls.shape[1]
        written = np.isin(cls_of, AREAS)
        ids = np.where(written, self.next_id + np.arange(len(cls_of)), 0)
        self.next_id += len(cls_of)
        edges = [labels[0]] * (y0 > 0) + [labels[-1]] * (y1 < self.height) + \
                [labels[:, 0]] * (x0 > 0) + [labels[:, -1]] * (x1 < self.width)
        on_edge = np.zeros(len(cls_of), bool)
        on_edge[np.concatenate(edges or [np.zeros(0, np.int32)])] = True
        for i in np.flatnonzero(written):
            if on_edge[i]:
                self.parent[ids[i]], self.pieces[ids[i]], self.cls[ids[i]] = ids[i], [polys[i]], int(cls_of[i])
            else:
                self.finish(int(cls_of[i]), polys[i])
        cell_ids = ids[labels]
        if y0 > 0:
            self.join(self.above[x0:x1], cell_ids[0])
        if x0 > 0:
            self.join(self.left[y0:y1], cell_ids[:, 0])
        self.above[x0:x1], self.left[y0:y1] = cell_ids[-1], cell_ids[:, -1]

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: np.ndarray, b: np.ndarray):
        """Join the pieces facing each other across a cell edge (id arrays along it) when of one class."""
        pairs = np.unique(np.stack([a, b])[:, (a > 0) & (b > 0)], axis=1)
        for i, j in pairs.T.tolist():
            if self.cls[i] == self.cls[j]:
                self.parent[self.find(i)] = self.find(j)

    def end_strip(self, last: bool):
        """Finish every group that no longer touches the strip's last row; keep the others as one
        geometry each, under their root's id."""
        import shapely
        groups = {}
        for i in self.parent:
            groups.setdefault(self.find(i), []).append(i)
        still_open = set() if last else {self.find(i) for i in np.unique(self.above[self.above > 0]).tolist()}
        pieces, cls = {}, {}
        for root, members in groups.items():
            # the pieces share their cell edges vertex for vertex (those stay put): a coverage, whose union
            # only drops the shared edges, in memory and time linear in the vertices
            union = shapely.coverage_union_all([g for i in members for g in self.pieces[i]])
            if root in still_open:
                pieces[root], cls[root] = [union], self.cls[root]
            else:
                self.finish(self.cls[root], union)
        self.above = np.array([self.find(i) if i and not last else 0 for i in self.above.tolist()], np.int64)
        self.parent, self.pieces, self.cls = {i: i for i in pieces}, pieces, cls

    def finish(self, c: int, geom):
        """A finished polygon, without the vertices on straight runs (the cell edges' and the seams'), valid."""
        import shapely
        self.done += [(c, g) for g in valid_parts(shapely.simplify(geom, 0))]

    def take(self) -> list:
        done, self.done = self.done, []
        return done


def valid_parts(geom) -> list:
    """The polygons of a geometry, made valid first where it is not (OGC rules, shapely.make_valid)."""
    import shapely
    if geom.geom_type == "Polygon" and geom.is_valid:
        return [geom]
    if not geom.is_valid:  # polygons out, collapsed parts dropped
        geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    return [g for g in shapely.get_parts(geom) if not g.is_empty]


# ----------------------------------------------------------------------------------------------------
# Centerlines: pixel steps of the skeleton, merged into lines, strip by strip


def pixel_steps(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The steps between 8-neighbour pixels of a skeleton window S (h + 1, w + 1) whose row 0 and
    column 0 are pixels of the blocks above and to the left (their steps among themselves were
    taken there): (from, to), each (n, 2) of (row, column). A diagonal step is left out where two
    straight steps join the same pixels, so that corners make no small triangles."""
    a, b, c, d = S[:-1, :-1], S[:-1, 1:], S[1:, :-1], S[1:, 1:]
    steps = []
    r, k = np.nonzero(c & d)  # along rows, below row 0
    steps.append(((r + 1, k), (r + 1, k + 1)))
    r, k = np.nonzero(b & d)  # along columns, right of column 0
    steps.append(((r, k + 1), (r + 1, k + 1)))
    r, k = np.nonzero(a & d & ~b & ~c)
    steps.append(((r, k), (r + 1, k + 1)))
    r, k = np.nonzero(b & c & ~a & ~d)
    steps.append(((r, k + 1), (r + 1, k)))
    start = np.concatenate([np.stack(s[0], 1) for s in steps])
    end = np.concatenate([np.stack(s[1], 1) for s in steps])
    return start, end


def cut_lines(lines: np.ndarray, at) -> np.ndarray:
    """Split lines at their inner vertices where at(xyz) is true (the vertex ends one piece and starts the next)."""
    import shapely
    if not len(lines):
        return lines
    xyz, idx = shapely.get_coordinates(lines, include_z=bool(shapely.has_z(lines).any()), return_index=True)
    first = np.r_[True, idx[1:] != idx[:-1]]
    last = np.r_[idx[1:] != idx[:-1], True]
    cut = at(xyz) & ~first & ~last
    if not cut.any():
        return lines
    copies = 1 + cut
    at_copy = np.cumsum(copies) - copies  # where each vertex's first copy lands
    starts = np.zeros(int(copies.sum()), np.int64)
    starts[at_copy[first]] = 1
    starts[at_copy[cut] + 1] = 1
    return shapely.linestrings(np.repeat(xyz, copies, axis=0), indices=np.cumsum(starts) - 1)


def ends(lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each line's first and last point, as complex numbers x + iy (exact: half-pixel coordinates)."""
    import shapely
    p, q = shapely.get_point(lines, 0), shapely.get_point(lines, -1)
    return shapely.get_x(p) + 1j * shapely.get_y(p), shapely.get_x(q) + 1j * shapely.get_y(q)


class LineTracer:
    """Road and highway centerlines. Each cell's skeleton becomes steps between neighbouring pixel
    centres (z: the pixel's class), which shapely.line_merge joins into lines between junctions and
    ends; lines are cut where a later cell can still add a step, and those stay open, to be merged
    again at the end of the strip (and cut again where the next strip can add steps). A junction some
    open line ends at is remembered, so that no later merge runs through it. Finished lines are
    simplified and kept as plain coordinates; spurs are pruned once all are known (`result`)."""

    def __init__(self, height: int, width: int, settings: Settings):
        self.height, self.width, self.settings = height, width, settings
        self.above = np.zeros(width, np.uint8)  # skeleton classes along the last row traced, per column
        self.left = np.zeros(height, np.uint8)  # ... along the last column traced, per row
        self.corner = {}  # (y, x) -> class of pixel (y - 1, x - 1), for the cell starting there
        self.strip, self.open = [], []  # lines ending where a later cell, or the next strip, can add a step
        self.junctions = np.zeros(0, complex)  # junctions some open line ends at
        self.xy, self.sizes, self.cls = [], [], []  # finished lines: vertices, vertex counts, classes

    def add_block(self, skeleton: np.ndarray, y0: int, x0: int):
        """skeleton: class ids (h, w) on the skeleton's pixels, 0 elsewhere."""
        for cy in range(0, skeleton.shape[0], CELL):
            for cx in range(0, skeleton.shape[1], CELL):
                self.add_cell(skeleton[cy:cy + CELL, cx:cx + CELL], y0 + cy, x0 + cx)

    def add_cell(self, skeleton: np.ndarray, y0: int, x0: int):
        import shapely
        (h, w), y1, x1 = skeleton.shape, y0 + skeleton.shape[0], x0 + skeleton.shape[1]
        S = np.zeros((h + 1, w + 1), np.uint8)
        S[1:, 1:], S[0, 1:], S[1:, 0] = skeleton, self.above[x0:x1], self.left[y0:y1]
        S[0, 0] = self.corner.pop((y0, x0), 0)
        self.corner[y1, x1] = skeleton[-1, -1]
        self.above[x0:x1], self.left[y0:y1] = skeleton[-1], skeleton[:, -1]
        start, end = pixel_steps(S > 0)
        if not len(start):
            return
        xyz = np.stack([np.c_[x0 - 0.5 + p[:, 1], y0 - 0.5 + p[:, 0], S[p[:, 0], p[:, 1]]] for p in (start, end)], 1)
        steps = shapely.linestrings(xyz.reshape(-1, 3), indices=np.repeat(np.arange(len(xyz)), 2))
        rows = [r - 0.5 for r, inner in ((y0, y0 > 0), (y1, y1 < self.height)) if inner]
        cols = [c - 0.5 for c, inner in ((x0, x0 > 0), (x1, x1 < self.width)) if inner]
        self.strip += self.split(steps, lambda xyz: np.isin(xyz[:, 1], rows) | np.isin(xyz[:, 0], cols))

    def end_strip(self, y1: int):
        """Merge the lines the strip's cells left open, and those the strip above did; keep open
        those ending in the strip's last row, for the next strip."""
        row = y1 - 0.5 if y1 < self.height else np.nan
        lines, self.strip = self.strip + self.open, []
        self.open = self.split(np.array(lines, dtype=object), lambda xyz: xyz[:, 1] == row, strip_end=True)

    def split(self, lines: np.ndarray, open_at, strip_end: bool = False) -> list:
        """Merge lines, cut them at the remembered junctions and at the vertices where open_at(xy)
        (a later step can reach them); finish those that do not end there, and return the others.
        The junctions they end at are remembered (at the strip's end, only those: no other line is open)."""
        import shapely
        if not len(lines):
            return []
        merged = shapely.get_parts(shapely.line_merge(shapely.multilinestrings(lines)))
        merged = cut_lines(merged, lambda xyz: open_at(xyz) | np.isin(xyz[:, 0] + 1j * xyz[:, 1], self.junctions))
        a, b = ends(merged)
        points, degree = np.unique(np.r_[a, b], return_counts=True)
        reach = open_at(np.c_[np.r_[a, b].real, np.r_[a, b].imag])
        still_open = reach[:len(a)] | reach[len(a):]
        at_open = np.r_[a[still_open], b[still_open]]
        found = np.intersect1d(points[degree >= 3], at_open)
        self.junctions = np.union1d(found, self.junctions)
        if strip_end:
            self.junctions = np.intersect1d(self.junctions, at_open)
        self.finish(merged[~still_open])
        return list(merged[still_open])

    def finish(self, lines: np.ndarray):
        """Class by majority of the pixels (a tie is road); simplified; kept as plain coordinates."""
        import shapely
        if not len(lines):
            return
        xyz, idx = shapely.get_coordinates(lines, include_z=True, return_index=True)
        highway = np.bincount(idx, weights=(xyz[:, 2] == HIGHWAY).astype(float), minlength=len(lines))
        road = np.bincount(idx, weights=(xyz[:, 2] == ROAD).astype(float), minlength=len(lines))
        # in one direction whatever the merge's order, so that Douglas-Peucker picks the same vertices
        simple = shapely.simplify(shapely.normalize(lines), self.settings.simplify)
        xy, idx = shapely.get_coordinates(simple, return_index=True)
        self.xy.append(xy)
        self.sizes.append(np.bincount(idx, minlength=len(lines)))
        self.cls.append(np.where(highway > road, HIGHWAY, ROAD).astype(np.uint8))

    def result(self, chunk: int = 1 << 16):
        """The finished lines, in lists of at most `chunk` (class, LineString), with spurs pruned: a
        line with a free end shorter than Settings.spur goes (once, over the whole map), and lines of
        one class left meeting two by two where a spur went are joined."""
        import shapely
        if not self.sizes:
            return
        xy, sizes, cls = np.concatenate(self.xy), np.concatenate(self.sizes), np.concatenate(self.cls)
        self.xy, self.sizes, self.cls = [], [], []
        last = np.cumsum(sizes) - 1
        first = last - sizes + 1
        a, b = xy[first] @ [1, 1j], xy[last] @ [1, 1j]
        step = np.r_[np.hypot(*np.diff(xy, axis=0).T), 0]
        step[last] = 0  # from one line's end to the next line's start
        length = np.add.reduceat(step, first)
        degree_before = node_degrees(a, b)
        free = ((degree_before(a) == 1) | (degree_before(b) == 1)) & (a != b)
        keep = ~(free & (length < self.settings.spur))
        degree = node_degrees(a[keep], b[keep])
        rejoin = keep & (((degree(a) == 2) & (degree_before(a) >= 3)) | ((degree(b) == 2) & (degree_before(b) >= 3)))
        junctions = np.unique(np.r_[a[keep], b[keep]])
        junctions = junctions[degree(junctions) >= 3]
        joined = []
        for c in (ROAD, HIGHWAY):
            parts = [shapely.linestrings(xy[first[i]:last[i] + 1]) for i in np.flatnonzero(rejoin & (cls == c))]
            merged = shapely.get_parts(shapely.line_merge(shapely.multilinestrings(np.array(parts, dtype=object))))
            joined += [(c, g) for g in cut_lines(merged, lambda xyz: np.isin(xyz[:, 0] + 1j * xyz[:, 1], junctions))]
        whole = np.flatnonzero(keep & ~rejoin)
        for k in range(0, len(whole), chunk):
            yield [(int(cls[i]), shapely.LineString(xy[first[i]:last[i] + 1])) for i in whole[k:k + chunk]]
        if joined:
            yield joined


def node_degrees(a: np.ndarray, b: np.ndarray):
    """A function giving, for points, how many of the lines with ends a and b end there."""
    points, count = np.unique(np.r_[a, b], return_counts=True)

    def degree(p: np.ndarray) -> np.ndarray:
        i = np.minimum(np.searchsorted(points, p), len(points) - 1)
        return np.where(points[i] == p, count[i], 0) if len(points) else np.zeros(len(p), np.int64)
    return degree


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
    tiles.fix_mmap_threshold()  # block-sized buffers go back to the OS when freed, as in the tile engine
    block, halo = settings.block, settings.halo()
    polygons, lines = PolygonTracer(height, width, settings.simplify), LineTracer(height, width, settings)
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
            polygons.add_block(core, y0, x0)
            sy0, sx0 = max(0, y0 - SKELETON_HALO), max(0, x0 - SKELETON_HALO)  # the sieve is exact here
            near = cls[sy0 - wy0:min(height, y1 + SKELETON_HALO) - wy0, sx0 - wx0:min(width, x1 + SKELETON_HALO) - wx0]
            skeleton = skeletonize((near == ROAD) | (near == HIGHWAY))
            skeleton = skeleton[y0 - sy0:y1 - sy0, x0 - sx0:x1 - sx0] * core
            lines.add_block(skeleton, y0, x0)
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


@contextlib.contextmanager
def unsynced_sqlite():
    """SQLite (GeoPackage) without its own syncs and journal while it writes our temp file: the
    file is thrown away if anything fails, and fsynced before its rename (utils.replace_durably),
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
    with raster.rasterio_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # said below, in words
        ds = raster.open_raster(path)
        with ds:
            reader = MapReader(ds, path)
            crs = ds.crs
            if fmt == "geojson" and crs is None:
                raise InputError(f"{path}: has no CRS, and GeoJSON (RFC 7946) is in longitude and latitude; "
                                 f"write a GeoPackage (--out *.gpkg) instead")
            if not raster.is_georeferenced(ds):
                raster.report(f"note: {path} is not georeferenced: the layers are in pixel coordinates "
                              f"(x: column, y: row), without metres")
            elif crs is None:
                raster.report(f"note: {path} has no CRS: the layers are in its grid's coordinates, without metres")
            elif metres_per_unit(crs) is None:
                raster.report(f"note: {path} is in {crs.to_string()}, not in metres: area_m2 and length_m are empty")
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
    with raster.rasterio_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with raster.open_raster(path) as ds:
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
