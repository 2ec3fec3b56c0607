"""Peak memory and speed of predict.py's raster path on synthetic GeoTIFF scenes of growing size, against
the speed of the network alone on the same tiles.

    python bench_raster.py                                  # 2k, 8k, 16k; full-size and small model; CPU
    python bench_raster.py --sizes 4096 --models full --dtype uint8   # the 85% target of the raster path
    python bench_raster.py --sizes 512 --models small       # a quick check that it runs

Each scene is a 4-band uint16 (or uint8) GeoTIFF with a nodata corner, translated with --bands 3,2,1
(so the percentile stretch, masks and the COG output are all measured) by a randomly initialised
generator (speed does not depend on the weights). Every run is its own process; its peak RSS is the
kernel's high-water mark, shown next to the mark reached after imports, before the scene is opened.

Per run: `seconds` is the raster path from opening the file to the published COG (not the start of
Python or the loading of the weights: `startup`); `net MP/s` is the network alone on the tiles that run
ran, in the same batches, on the device, with nothing else to do; `ratio` = end-to-end rate / network
rate, PASS at TARGET or more. The stage columns are each stage's own seconds (read, scale, network,
blend, write; they overlap, so they may add up to more than the run); `publish` is the COG copy after
the engine (its overviews were built during the run, by the writer); `other` is the rest outside the
tile engine (the stretch sample, opening and closing files). `--pipeline on|off` overlaps the stages or
runs them one after the other (auto: as predict.py picks for the device). The network runs on predict's
--backend (default auto: its probe's choice for this machine, printed per model, before the rows), so
the network-alone rate and the ratio follow it; `startup` includes a first probe or export.
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import backends
from cli import InputError, command_parser
from config import add_device
from memory import peak_rss_mb

MODELS = {"full": 64, "small": 8}  # name -> generator width (ngf)
TARGET = 0.85  # the raster path's share of the network-alone rate it must reach
STAGES = ("read", "scale", "network", "blend", "write")


def make_raster(path: Path, size: int, rows: int = 512, dtype: str = "uint16") -> Path:
    """A size x size 4-band uint16 (or uint8) GeoTIFF (UTM, 0.5 m pixels), textured, with a nodata
    top-left corner; written in strips so making a 16k scene needs little memory."""
    import rasterio
    from rasterio.transform import from_origin
    if path.is_file():
        return path
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": dtype, "nodata": 0,
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
            data = np.stack(bands) if dtype == "uint16" else np.stack(bands) / 20
            data = np.clip(data, 1, np.iinfo(dtype).max).astype(dtype)
            data[:, (yy + xx[None]) < size // 4] = 0
            dst.write(data, window=rasterio.windows.Window(0, y, size, h))
    tmp.rename(path)
    return path


def child(argv: list[str]):
    """Run predict.py's argv on its input in this process (--repeat N: N times, each run followed by
    the network alone, keeping the quickest of each) and print one JSON line: seconds, peak RSS
    before/after, stage times, and the network alone on the same tiles."""
    import rasterio  # noqa: F401 -- loading GDAL happens once per process: startup, like the weights
    import predict
    import raster
    from utils import pick_device
    argv, repeat = list(argv), 1
    if "--repeat" in argv:
        i = argv.index("--repeat")
        repeat = int(argv[i + 1])
        del argv[i:i + 2]
    before = peak_rss_mb()
    start = time.perf_counter()
    args, opts = predict.parse(argv)
    files = raster.input_files(Path(args.input))
    G, config, choice = predict.load_net(args, pick_device(args.device), opts, files, 0, 1)
    opts.direction = args.direction or config["direction"]
    device = G.device
    network_alone(G, opts.engine, [1], device)  # warm up the kernels both runs use
    startup = time.perf_counter() - start
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    best, network, rc = None, float("inf"), 0
    for _ in range(repeat):
        stats = {}
        start = time.perf_counter()
        for f in files:
            try:
                raster.predict_file(G, f, out_dir, opts, progress=False, stats=stats)
            except InputError as e:
                print(f"error: {e}", file=sys.stderr)
                rc = 1
        stats["run"] = time.perf_counter() - start
        best = stats if best is None or stats["run"] < best["run"] else best
        network = min(network, network_alone(G, opts.engine, stats.get("row_tiles", []), device))
    print(json.dumps({"rc": rc, "seconds": best["run"], "startup": startup, "rss_imports_mb": before,
                      "peak_rss_mb": peak_rss_mb(), "network_seconds": network, "tiles": sum(best.get("row_tiles", [])),
                      **{k: best.get(k, 0.0) for k in (*STAGES, "publish")}, "engine_seconds": best.get("seconds", 0.0),
                      "backend": str(choice)}))


def network_alone(G, engine, row_tiles: list[int], device) -> float:
    """Seconds G (a net of backends.py) takes on rows of this many tiles each, already on the device,
    in the engine's batches and test-time mode: the rate the raster path can at best reach."""
    import torch
    from tiles import run_tiles
    if not row_tiles or not max(row_tiles):
        return 0.0
    x = torch.rand(max(row_tiles), 3, engine.tile, engine.tile, device=device) * 2 - 1
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with G.inference(engine.paper, engine.seed):
        sync()
        start = time.perf_counter()
        for n in row_tiles:
            if n:
                run_tiles(G, x[:n], [(0, 0)] * n, engine.paper, engine.seed, engine.batch, engine.tta)
        sync()
    return time.perf_counter() - start


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
    p.add_argument("--dtype", default="uint16", choices=["uint16", "uint8"], help="the scenes' sample type "
                   "(uint16 is stretched by percentiles, uint8 is used as it is)")
    add_device(p)
    p.add_argument("--paper", action="store_true", help="paper test-time mode (one tile per batch) instead of --eval")
    p.add_argument("--pipeline", choices=["auto", "on", "off"], default="auto", help="predict.py's --pipeline: "
                   "off runs read, network, write one after the other, on overlaps them")
    p.add_argument("--repeat", type=int, default=1, help="run each scene this many times, each run followed by "
                   "the network alone, and compare the quickest of each (this machine's speed drifts)")
    p.add_argument("--work", help="folder for the scenes and outputs (kept; default a temp folder)")
    p.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    backends.add_flags(p, "--eval runs", "default: tiles of the scene", eval_mode=lambda args: not args.paper)
    args = p.parse_args()
    if args.repeat < 1:
        p.error(f"--repeat {args.repeat}: expected 1 or more")
    runs_on = ["--backend", args.backend, *["--int8"] * args.int8, *(["--calibrate", args.calibrate] if args.calibrate else [])]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_raster."))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'model':<6} {'size':>6} {'MP':>7} {'seconds':>8} {'MP/s':>6} {'net MP/s':>8} {'ratio':>6} {'':>4} "
          + " ".join(f"{s:>7}" for s in (*STAGES, "publish", "other")) + f" {'startup':>7} {'RSS imports MiB':>16} {'peak RSS MiB':>13}")
    failed = False
    for model in args.models.split(","):
        weights = save_model(work / f"G_{model}.pt", MODELS[model])
        for size in map(int, args.sizes.split(",")):
            scene = make_raster(work / f"scene_{size}_{args.dtype}.tif", size, dtype=args.dtype)
            argv = ["--weights", str(weights), "--input", str(scene), "--out", str(work / f"out_{model}"),
                    "--bands", "3,2,1", "--device", args.device, *runs_on] + ([] if args.paper else ["--eval"])
            m = measure(argv + ["--pipeline", args.pipeline, "--repeat", str(args.repeat)])
            if size == int(args.sizes.split(",")[0]):
                print(f"{model}: the network runs on {m['backend']}", flush=True)
            mp = size * size / 1e6
            net = mp / m["network_seconds"] if m["network_seconds"] else float("nan")
            ratio = (mp / m["seconds"]) / net
            failed |= not ratio >= TARGET
            rows.append({"model": model, "size": size, "megapixels": mp, **m, "mp_per_s": mp / m["seconds"],
                         "network_mp_per_s": net, "ratio": ratio, "pass": ratio >= TARGET})
            other = m["seconds"] - m["engine_seconds"] - m["publish"]
            print(f"{model:<6} {size:>6} {mp:>7.1f} {m['seconds']:>8.1f} {mp / m['seconds']:>6.2f} {net:>8.2f} "
                  f"{ratio:>6.0%} {'PASS' if ratio >= TARGET else 'FAIL':>4} "
                  + " ".join(f"{m[s]:>7.1f}" for s in (*STAGES, "publish")) + f" {other:>7.1f} {m['startup']:>7.1f}"
                  f" {m['rss_imports_mb']:>16.0f} {m['peak_rss_mb']:>13.0f}", flush=True)
    print(f"target: the raster path at {TARGET:.0%} or more of the network-alone rate: {'FAIL' if failed else 'PASS'}")
    if args.json:
        print(json.dumps(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        sys.exit(main())
