"""Polygons of a class raster: one per patch of a class, traced cell by cell and joined across cell edges.

    python vector.py out/scene.tif --out out/scene.gpkg        # the water, park, highway and road layers

In each cell of vector.py's fixed grid, rasterio.features.shapes gives a polygon per 4-connected patch;
the outlines are drawn through the midpoints of the pixel edges (`smooth`: staircases become straight,
every pixel centre stays on its side) and simplified as one coverage (shapely.coverage_simplify), so
that neighbouring classes keep one shared edge. `PolygonTracer` joins the pieces facing each other
across cell edges (a union-find) and hands out each polygon once nothing can still join it
(docs/gis.md#how).
"""
import numpy as np

from palette import HIGHWAY, PARK, ROAD, WATER

AREAS = (WATER, PARK, HIGHWAY, ROAD)  # classes with a polygon layer each, named as the class


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

    def add_cell(self, cls: np.ndarray, y0: int, x0: int):
        """The class ids (h, w) of the cell at (y0, x0); cells come row by row, left to right."""
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
                self.finish(int(cls_of[i]), [polys[i]])
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
        groups = {}
        for i in self.parent:
            groups.setdefault(self.find(i), []).append(i)
        still_open = set() if last else {self.find(i) for i in np.unique(self.above[self.above > 0]).tolist()}
        pieces, cls = {}, {}
        for root, members in groups.items():
            group = [g for i in members for g in self.pieces.pop(i)]
            if root in still_open:
                pieces[root], cls[root] = [union_of(group)], self.cls[root]
            else:
                self.finish(self.cls[root], group)
        self.above = np.array([self.find(i) if i and not last else 0 for i in self.above.tolist()], np.int64)
        self.parent, self.pieces, self.cls = {i: i for i in pieces}, pieces, cls

    def finish(self, c: int, group: list):
        """A finished polygon, the union of the pieces in `group`, without the vertices on straight runs
        (the cell edges' and the seams'), valid. The group is emptied as soon as it is joined: a city's
        road network at 16000 px is millions of vertices, and each copy of it held at once counts."""
        self.done += [(c, g) for g in valid_parts(without_straight_runs(group))]

    def take(self) -> list:
        done, self.done = self.done, []
        return done


def union_of(group: list):
    """One geometry of pieces that share their cell edges vertex for vertex (those stay put): a coverage,
    whose union only drops the shared edges, in memory and time linear in the vertices."""
    import shapely
    return group[0] if len(group) == 1 else shapely.coverage_union_all(group)


def without_straight_runs(group: list, chunk: int = 1 << 20):
    """The union of the pieces in `group` (emptied on the way) without the vertices that lie on a
    straight run between their neighbours: the same point set, so nothing about its topology changes.
    shapely.simplify(geom, 0) gives the same vertices, but costs about 450 bytes a vertex (120 without
    preserve_topology) on top of the geometry, gigabytes for a city's road network at 16000 px; this
    works on the flat array of coordinates, a chunk at a time, with the union itself already let go."""
    import shapely
    geom = union_of(group)
    group.clear()
    if geom.geom_type not in ("Polygon", "MultiPolygon"):  # a degenerate union: valid_parts sorts it out
        return geom
    kind, xy, offsets = shapely.to_ragged_array([geom])
    del geom
    ends = offsets[0]  # ring k is xy[ends[k]:ends[k + 1]], closed: its last vertex repeats its first
    n, rings = len(xy), len(ends) - 1
    ring = np.repeat(np.arange(rings, dtype=np.int32), np.diff(ends))
    # each vertex's neighbours along its ring, the closing vertex left out of the cycle
    before, after = np.arange(-1, n - 1, dtype=np.int32), np.arange(1, n + 1, dtype=np.int32)
    before[ends[:-1]], after[ends[1:] - 2] = ends[1:] - 2, ends[:-1]
    keep = np.ones(n, bool)
    keep[ends[1:] - 1] = False
    for i in range(0, n, chunk):
        j = min(n, i + chunk)
        d1, d2 = xy[i:j] - xy[before[i:j]], xy[np.minimum(after[i:j], n - 1)] - xy[i:j]
        keep[i:j] &= (d1[:, 0] * d2[:, 1] != d1[:, 1] * d2[:, 0]) | ((d1 * d2).sum(1) <= 0)  # not on, or back along
    del before, after
    kept = np.bincount(ring[keep], minlength=rings)
    first = np.flatnonzero(keep)[np.r_[0, np.cumsum(kept)[:-1]]]  # each ring's first kept vertex
    new_ends = np.r_[0, np.cumsum(kept + 1)]
    out = np.empty((new_ends[-1], 2))
    out[(np.cumsum(keep) - 1 + ring)[keep]] = xy[keep]  # a ring's kept vertices after the earlier rings'
    out[new_ends[1:] - 1] = xy[first]  # and closed again
    del xy, ring, keep
    return shapely.from_ragged_array(kind, out, (new_ends, *offsets[1:]))[0]


def valid_parts(geom) -> list:
    """The polygons of a geometry, made valid first where it is not (OGC rules, shapely.make_valid)."""
    import shapely
    if geom.geom_type == "Polygon" and geom.is_valid:
        return [geom]
    if not geom.is_valid:  # polygons out, collapsed parts dropped
        geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    return [g for g in shapely.get_parts(geom) if not g.is_empty]
