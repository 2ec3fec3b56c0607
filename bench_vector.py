"""Peak memory and time of vector.py on large map scenes made of real maps: the 2 GB target at 16000 px.

    python bench_vector.py                          # 16000 x 16000, vector.py's defaults
    python bench_vector.py --sizes 4096,16000 --block 1024
    python bench_vector.py --sizes 1024             # a quick check that it runs
    python bench_vector.py --input data/maps/val --work scenes/   # other real pairs; keep the scenes

Each scene is a GeoTIFF (UTM, 0.5 m pixels) tiled with one real map (of the A|B pairs in --input,
default the sample pairs in ../shared/maps_sample: the one with the most road pixels), every other tile mirrored so that its
streets, parks and water run on across tile edges: the scene's road network is one connected piece,
the hardest case for the merge at block edges. It is written in strips, so making it takes little
memory. Every run of vector.py is its own process; its peak RSS is the kernel's high-water mark
(memory.peak_rss_mb), shown next to the mark after the imports. PASS where the peak stays under
TARGET_MB. The class raster is written too, unless --no-classes (as predict.py --vector runs).
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cli import InputError, command_parser, parse_list, run_command
from durable import replace_durably

TARGET_MB = 2048  # peak RSS a 16000 x 16000 scene must stay under
SAMPLE = Path(__file__).resolve().parent.parent / "shared" / "maps_sample"


def make_scene(path: Path, size: int, maps: Path, tile: int = 256) -> Path:
    """A size x size RGB GeoTIFF tiled with the map half of the A|B pair in `maps` that has the most
    road pixels, mirrored in a checkerboard so that each tile meets its neighbours edge to edge;
    written a row of tiles at a time."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    import palette
    if path.is_file():
        return path
    halves = []
    for f in sorted(maps.glob("*.png")):
        img = Image.open(f).convert("RGB")
        half = img.crop((img.width // 2, 0, img.width, img.height)).resize((tile, tile), Image.NEAREST)
        halves.append(np.asarray(half).transpose(2, 0, 1))
    if not halves:
        raise InputError(f"--input {maps}: no A|B pair PNGs in it (expected real map pairs, such as the sample's)")
    t = max(halves, key=lambda h: int((palette.classify_rgb(h) == palette.CLASSES.index("road")).sum()))
    mirrored = {(i, j): t[:, ::-1 if i else 1, ::-1 if j else 1] for i in (0, 1) for j in (0, 1)}
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": from_origin(500000, 4000000, 0.5, 0.5), "tiled": True, "blockxsize": 512,
               "blockysize": 512, "compress": "deflate", "zlevel": 1, "photometric": "RGB", "BIGTIFF": "IF_SAFER"}
    tmp = path.with_name(f".{path.name}.tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        for ty in range(0, size, tile):
            row = np.concatenate([mirrored[(ty // tile) % 2, (tx // tile) % 2] for tx in range(0, size, tile)], 2)
            h = min(tile, size - ty)
            dst.write(np.ascontiguousarray(row[:, :h, :size]), window=Window(0, ty, size, h))
    replace_durably(tmp, path)
    return path


def child(argv: list[str]):
    """Run vector.py's argv in this process and print one JSON line: seconds, peak RSS after the
    imports and at the end, and the feature counts."""
    import rasterio  # noqa: F401 -- loading GDAL, scikit-image and shapely is startup, not the run
    import shapely  # noqa: F401
    import skimage.morphology  # noqa: F401
    import palette
    import vector
    from memory import peak_rss_mb
    palette.tables()
    before = peak_rss_mb()
    start = time.perf_counter()
    counts = vector.vectorise(Path(argv[0]), Path(argv[1]), Path(argv[2]) if argv[2] != "-" else None,
                              settings=vector.Settings(block=int(argv[3])))
    print(json.dumps({"seconds": time.perf_counter() - start, "rss_imports_mb": before, "peak_rss_mb": peak_rss_mb(),
                      **counts}))


def measure(scene: Path, out: Path, block: int, classes: bool) -> dict:
    """vector.py on the scene in a fresh process; its child() record."""
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(scene), str(out),
                        str(out.with_suffix(".classes.tif")) if classes else "-", str(block)],
                       capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise InputError(f"{scene}: vector.py failed (exit status {r.returncode}): {last}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    if argv is None and sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2:])
    import vector
    p = command_parser(__doc__.split("\n")[0])
    p.add_argument("--sizes", default="16000", help="square scene sizes in px, comma-separated")
    p.add_argument("--block", type=int, default=vector.Settings.block, help="vector.py's --block")
    p.add_argument("--no-classes", action="store_true", help="leave out the class raster, as predict.py --vector does")
    p.add_argument("--input", default=str(SAMPLE), help="folder of real A|B map pairs the scenes are tiled with")
    p.add_argument("--work", help="folder for the scenes and outputs (kept; default a temp folder)")
    p.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    args = p.parse_args(argv)
    try:
        sizes = parse_list(args.sizes, "--sizes", int)
        vector.Settings(block=args.block).check()
    except InputError as e:
        p.error(str(e))
    if not sizes or min(sizes) < 1:
        p.error(f"--sizes {args.sizes}: expected positive sizes in px")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_vector-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"{'size':>6} {'block':>6} {'seconds':>8} {'MP/s':>6} {'RSS imports':>12} {'peak RSS':>9}  "
              f"{'polygons':>9} {'lines':>7}  2 GB")
        for size in sizes:
            scene = make_scene(work / f"maps_{size}.tif", size, Path(args.input))
            r = measure(scene, work / f"maps_{size}.gpkg", args.block, not args.no_classes)
            r.update(size=size, block=args.block)
            rows.append(r)
            polygons = sum(r[k] for k in ("water", "park", "highway", "road"))
            print(f"{size:>6} {args.block:>6} {r['seconds']:>8.1f} {size * size / 1e6 / r['seconds']:>6.1f} "
                  f"{r['rss_imports_mb']:>10.0f}MB {r['peak_rss_mb']:>7.0f}MB  {polygons:>9} {r['centerlines']:>7}  "
                  f"{'PASS' if r['peak_rss_mb'] < TARGET_MB else 'FAIL'}")
    if args.json:
        print(json.dumps(rows))
    return 0 if all(r["peak_rss_mb"] < TARGET_MB for r in rows) else 1


if __name__ == "__main__":
    sys.exit(run_command(main))
