"""The static page's speed: tiles per second in headless Chromium (ONNX Runtime Web, WASM) against
ONNX Runtime in Python on the same browser-sized model, in one run.

    python bench_web.py --weights weights/maps/G.pt
    python bench_web.py --weights sat2map --input photo.png --repeat 3 --calibrate tiles/   # int8 (full size)

It exports --weights as export.py --web does (into a temporary models/ folder), then times: ONNX Runtime
in Python (CPU provider, all cores and one thread) on the page's tiles in the page's batches; the page
in Debian's Chromium served as python -m http.server would (one WASM thread) and cross-origin isolated
(WASM threads), each translating --input (default: a random picture of --size) --repeat times after one
run to warm up. "network" counts only ONNX Runtime's session.run; "page" the whole translation
(decoding, tiling, blending, PNG). Needs `npm ci` in web/ and Chromium ($SAT2MAP_CHROMIUM). Run it on a
quiet machine: any other load changes the figures.
"""
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import probe
import web_export
from cli import InputError, command_parser, run_command
from config import WEIGHTS_HELP
from generator import load_generator
from tiles import tile_starts

sys.path.insert(0, str(Path(__file__).resolve().parent / "web"))
import serve  # noqa: E402  (web/serve.py)

BATCH = 4  # tiles per session.run, as web/worker.js runs them
CHROMIUM = os.environ.get("SAT2MAP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def picture_tiles(picture: Path, tile=web_export.TILE, overlap=web_export.OVERLAP) -> int:
    """How many tiles the page (and tiles.py) runs on this picture."""
    with Image.open(picture) as img:
        w, h = img.size
    return len(tile_starts(max(h, tile), tile, overlap)) * len(tile_starts(max(w, tile), tile, overlap))


def python_rate(model: Path, tiles: int, threads: int, repeat: int) -> float:
    """Tiles per second of onnxruntime's CPU provider on `tiles` random tiles, BATCH at a time."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (BATCH, 3, web_export.TILE, web_export.TILE)).astype(np.float32)
    session.run(None, {"satellite": x})  # warm-up
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(0, tiles, BATCH):
            session.run(None, {"satellite": x[:min(BATCH, tiles - i)]})
        rates.append(tiles / (time.perf_counter() - start))
    return statistics.median(rates)


def page_rates(models: Path, picture: Path, isolate: bool, repeat: int) -> tuple[str, float, float]:
    """(backend, network tiles/s, whole-page tiles/s) of the page translating `picture`, medians."""
    from playwright.sync_api import sync_playwright
    httpd = serve.server(models=models, isolate=isolate, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/")
            page.locator("#backend").get_by_text("model:").wait_for(timeout=120_000)
            backend = f"Chromium {browser.version}: {page.locator('#backend').get_attribute('data-backend')}"
            runs = []
            for _ in range(repeat + 1):
                page.evaluate("delete document.getElementById('status').dataset.tiles")
                page.set_input_files("#file", str(picture))
                page.click("#translate")
                page.wait_for_function("document.getElementById('status').dataset.tiles || "
                                       "document.getElementById('message').textContent", timeout=3_600_000)
                data = page.locator("#status").evaluate("s => ({...s.dataset})")
                if not data.get("tiles"):
                    raise InputError(f"the page refused {picture}: {page.locator('#message').text_content()}")
                runs.append((int(data["tiles"]), float(data["network"]), float(data["seconds"])))
            browser.close()
    finally:
        httpd.shutdown()
    runs = runs[1:]  # the first warms up
    return (backend, statistics.median(t / n for t, n, _ in runs), statistics.median(t / s for t, _, s in runs))


def main(argv=None):
    p = command_parser("Tiles per second of the static page (headless Chromium, WASM) against onnxruntime in Python.")
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    p.add_argument("--input", help="picture the page translates (PNG/JPEG; default: a random one of --size)")
    p.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of the random picture")
    p.add_argument("--repeat", type=int, default=2, help="timed runs of each path (after one to warm up)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random picture")
    p.add_argument("--calibrate", metavar="FOLDER", help="satellite pictures the browser model's int8 is "
                   "calibrated on (export.py --web --calibrate): needed where float16 is over 60 MB, e.g. the "
                   "full-size generator")
    args = p.parse_args(argv)
    if not (Path(__file__).parent / "web" / "vendor" / "ort.wasm.bundle.min.mjs").is_file():
        raise InputError("web/vendor/ is empty: run `npm ci` in web/ first")
    G, config = load_generator(args.weights)
    with tempfile.TemporaryDirectory(prefix="sat2map-bench-web-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        card = web_export.export_web(G, config, args.weights, models / "bench.onnx", calibrate=args.calibrate)
        picture = Path(args.input) if args.input else random_picture(Path(tmp) / "random.png", args.size, args.seed)
        tiles = picture_tiles(picture)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"{probe.hardware().cpu}, {cores} cores; onnxruntime {ort_version()}, onnxruntime-web {web_version()}; model "
              f"{card['precision']} ngf {card['ngf']} ({card['bytes'] / 1e6:.1f} MB); {picture.name}: {tiles} tiles of 256 px")
        print(f"{'path':<58} {'network tiles/s':>15} {'page tiles/s':>13}")
        for threads in (0, 1):
            rate = python_rate(models / "bench.onnx", tiles, threads, args.repeat)
            print(f"{'onnxruntime (Python, CPU provider), ' + (f'{threads} thread' if threads else 'all cores'):<58} "
                  f"{rate:>15.2f} {'-':>13}")
        for isolate in (False, True):
            backend, network, whole = page_rates(models, picture, isolate, args.repeat)
            print(f"{backend:<58} {network:>15.2f} {whole:>13.2f}")
    return 0


def ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


def web_version() -> str:
    package = json.loads((Path(__file__).parent / "web" / "package.json").read_text())
    return package["dependencies"]["onnxruntime-web"]


def random_picture(path: Path, size: str, seed: int) -> Path:
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise InputError(f"--size {size}: expected WIDTHxHEIGHT, e.g. 1024x768") from None
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


if __name__ == "__main__":
    sys.exit(run_command(main))
