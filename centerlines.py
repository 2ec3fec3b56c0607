"""Road centerlines: the skeleton of the road classes traced into lines split at junctions, short spurs pruned.

    python vector.py out/scene.tif --out out/scene.gpkg        # the centerlines layer

vector.py skeletonises the road and highway pixels (scikit-image) block by block; `LineTracer` takes
the skeleton cell by cell: every pair of 8-neighbour skeleton pixels is a one-pixel step, and
shapely.line_merge joins the steps into lines between junctions and free ends. Lines that a later
cell or strip can still extend stay open; finished ones are simplified and kept as plain coordinates,
and once all are known the spurs are pruned over the whole map (docs/gis.md#how).
"""
import numpy as np

from palette import HIGHWAY, ROAD


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

    def __init__(self, height: int, width: int, simplify: float, spur: float):
        self.height, self.width = height, width
        self.simplify, self.spur = simplify, spur  # px: Douglas-Peucker's tolerance; the shortest free branch kept
        self.above = np.zeros(width, np.uint8)  # skeleton classes along the last row traced, per column
        self.left = np.zeros(height, np.uint8)  # ... along the last column traced, per row
        self.corner = {}  # (y, x) -> class of pixel (y - 1, x - 1), for the cell starting there
        self.strip, self.open = [], []  # lines ending where a later cell, or the next strip, can add a step
        self.junctions = np.zeros(0, complex)  # junctions some open line ends at
        self.xy, self.sizes, self.cls = [], [], []  # finished lines: vertices, vertex counts, classes

    def add_cell(self, skeleton: np.ndarray, y0: int, x0: int):
        """skeleton: the cell's class ids (h, w) on the skeleton's pixels, 0 elsewhere; cells come row by
        row, left to right."""
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
        simple = shapely.simplify(shapely.normalize(lines), self.simplify)
        xy, idx = shapely.get_coordinates(simple, return_index=True)
        self.xy.append(xy)
        self.sizes.append(np.bincount(idx, minlength=len(lines)))
        self.cls.append(np.where(highway > road, HIGHWAY, ROAD).astype(np.uint8))

    def result(self, chunk: int = 1 << 16):
        """The finished lines, in lists of at most `chunk` (class, LineString), with spurs pruned: a
        line with a free end shorter than `spur` goes (once, over the whole map), and lines of
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
        keep = ~(free & (length < self.spur))
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
