"""Peak memory and speed of predict.py's raster path on synthetic GeoTIFF scenes of growing size.

    python bench_raster.py                                  # 2k, 8k, 16k; full-size and small model; CPU
    python bench_raster.py --sizes 512 --models small       # a quick check that it runs

Each scene is a 4-band uint16 GeoTIFF with a nodata corner, translated with --bands 3,2,1 (so the
percentile stretch, masks and the COG output are all measured) by a randomly initialised generator
(speed does not depend on the weights). Every run is its own process; its peak RSS is the kernel's
high-water mark, shown next to the mark reached after imports, before the scene is opened.
"""
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from config import add_device, command_parser

MODELS = {"full": 64, "small": 8}  # name -> generator width (ngf)


def make_raster(path: Path, size: int, rows: int = 512) -> Path:
    """A size x size 4-band uint16 GeoTIFF (UTM, 0.5 m pixels), textured, with a nodata top-left
    corner; written in strips so making a 16k scene needs little memory."""
    import rasterio
    from rasterio.transform import from_origin
    if path.is_file():
        return path
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint16", "nodata": 0,
               "crs": "EPSG:32633", "transform": from_origin(500000, 4000000, 0.5, 0.5), "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate", "zlevel": 1, "BIGTIFF": "IF_SAFER"}
    rng = np.random.default_rng(0)
    xx = np.arange(size)
    tmp = path.with_name(f".{path.name}.tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        for y in range(0, size, rows):
            h = min(rows, size - y)
            yy = np.arange(y, y + h)[:, None]
            base = 2000 + 1500 * np.sin(xx[None] / 37.0) * np.cos(yy / 53.0)
            bands = [base * (0.6 + 0.2 * b) + rng.normal(0, 300, (h, size)) for b in range(4)]
            data = np.clip(np.stack(bands), 1, 65535).astype(np.uint16)
            data[:, (yy + xx[None]) < size // 4] = 0
            dst.write(data, window=rasterio.windows.Window(0, y, size, h))
    tmp.rename(path)
    return path


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB: the kernel's VmHWM, which starts afresh
    with the program (ru_maxrss would carry over the parent's peak across fork and exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(argv: list[str]):
    """Run predict.main(argv) in this process and print one JSON line: seconds, peak RSS before/after."""
    import predict
    before = peak_rss_mb()
    start = time.perf_counter()
    rc = predict.main(argv)
    print(json.dumps({"rc": rc, "seconds": time.perf_counter() - start, "rss_imports_mb": before,
                      "peak_rss_mb": peak_rss_mb()}))


def measure(argv: list[str], cwd=None, env=None, timeout=None) -> dict:
    """predict.py's arguments run in a fresh process; returns its child() record."""
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *argv], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError(f"predict failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def save_model(path: Path, ngf: int) -> Path:
    """A randomly initialised generator of width ngf, saved as predict.py loads it."""
    import torch
    from generator import Generator, init_weights
    torch.manual_seed(0)
    torch.save({"G": init_weights(Generator(ngf=ngf)).state_dict(), "config": {"ngf": ngf}}, path)
    return path


def main():
    p = command_parser(__doc__.split("\n")[0])
    p.add_argument("--sizes", default="2048,8192,16384", help="square scene sizes in px")
    p.add_argument("--models", default="small,full", help="comma-separated: " + ", ".join(MODELS))
    add_device(p)
    p.add_argument("--paper", action="store_true", help="paper test-time mode (one tile per batch) instead of --eval")
    p.add_argument("--work", help="folder for the scenes and outputs (kept; default a temp folder)")
    p.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_raster."))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'model':<6} {'size':>6} {'MP':>7} {'seconds':>8} {'MP/s':>7} {'RSS imports MiB':>16} {'peak RSS MiB':>13}")
    for model in args.models.split(","):
        weights = save_model(work / f"G_{model}.pt", MODELS[model])
        for size in map(int, args.sizes.split(",")):
            scene = make_raster(work / f"scene_{size}.tif", size)
            argv = ["--weights", str(weights), "--input", str(scene), "--out", str(work / f"out_{model}"),
                    "--bands", "3,2,1", "--device", args.device] + ([] if args.paper else ["--eval"])
            m = measure(argv)
            mp = size * size / 1e6
            rows.append({"model": model, "size": size, "megapixels": mp, **m, "mp_per_s": mp / m["seconds"]})
            print(f"{model:<6} {size:>6} {mp:>7.1f} {m['seconds']:>8.1f} {mp / m['seconds']:>7.2f} "
                  f"{m['rss_imports_mb']:>16.0f} {m['peak_rss_mb']:>13.0f}", flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
