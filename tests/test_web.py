"""The static page in web/ (ONNX Runtime Web in a worker, geotiff.js) and its model (export.py --web).
The page, served on 127.0.0.1 with a tiny exported model, gives predict.py's map for a real sample tile,
a picture of several tiles and a 16-bit GeoTIFF (on the input's grid, border masked), answers bad files
with a message and keeps working, runs multi-threaded where cross-origin isolated, and sends no request
anywhere but 127.0.0.1. One export, one server and one browser page are shared by the module.
docs/web.png, with a trained G.pt (its run folder names the model): SAT2MAP_WEB_WEIGHTS=weights/maps/G.pt
SAT2MAP_WEB_SCREENSHOT=docs/web.png python -m pytest -q tests/test_web.py -k several"""
import hashlib
import json
import os
import shutil
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

import bands
import export
import int8
import predict
import web_export
from cli import InputError
from conftest import ROOT, SHARED_SAMPLE, launch_chromium, tiny_generator

sys.path.insert(0, str(ROOT / "web"))
import serve  # noqa: E402  (web/serve.py)

VENDOR = ROOT / "web" / "vendor"
LEVELS = 3  # the page against predict.py: float16 weights, WASM against torch arithmetic


def sample_halves(n: int) -> list[Image.Image]:
    """The satellite halves (256x256) of the last n real sample pairs by name: those that
    docs/training.md's sample24 split holds out, so that the docs' screenshot shows pictures its
    generator never saw."""
    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"real maps sample not found at {SHARED_SAMPLE}")
    pairs = sorted(SHARED_SAMPLE.glob("*.png"))[-n:]
    return [Image.open(p).convert("RGB").crop((0, 0, 256, 256)) for p in pairs]


def rgb(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def predicted(exported, src: Path, out: Path) -> Path:
    """predict.py --eval --backend onnxruntime on src (with --int8 where the browser model is int8,
    calibrated on the same folder), the reference the page must equal."""
    int8_flags = ["--int8", "--calibrate", str(exported.calibrate)] if exported.calibrate else []
    assert predict.main(["--weights", str(exported.weights), "--input", str(src), "--out", str(out), "--eval",
                         "--backend", "onnxruntime", "--device", "cpu", *int8_flags]) == 0
    return out / next(p.name for p in out.iterdir() if p.stem == src.stem)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny generator (or $SAT2MAP_WEB_WEIGHTS, for the docs screenshot) and its browser model in a
    models/ folder, through export.py --web."""
    root = tmp_path_factory.mktemp("web")
    given = os.environ.get("SAT2MAP_WEB_WEIGHTS")
    # the tiny one with maps of some contrast, so that 3 levels mean something
    weights = Path(given) if given else tiny_generator(root / "tiny" / "G.pt", gain=0.09)
    name = weights.resolve().parent.name
    (root / "models").mkdir()
    calibrate = None
    if given:  # a full-size generator is int8 on the page, calibrated on the held-out satellite halves
        calibrate = root / "satellite"
        calibrate.mkdir()
        for i, half in enumerate(sample_halves(6)):
            half.save(calibrate / f"{i}.png")
    assert export.main(["--weights", str(weights), "--web", str(root / "models" / f"{name}.onnx"), "--device", "cpu",
                        *(["--calibrate", str(calibrate)] if calibrate else [])]) is None
    card = json.loads((root / "models" / f"{name}.json").read_text())
    return SimpleNamespace(root=root, weights=weights, models=root / "models", name=name,
                           calibrate=calibrate if card["precision"] == "int8" else None)


def test_export_writes_float16_weights_and_a_card(exported):
    import onnx
    import onnxruntime as ort
    import torch
    from generator import load_generator
    card = json.loads((exported.models / f"{exported.name}.json").read_text())
    model = onnx.load(str(exported.models / f"{exported.name}.onnx"))
    kinds = {init.data_type for init in model.graph.initializer if init.dims and np.prod(init.dims) > 1}
    assert kinds == {onnx.TensorProto.FLOAT16}  # every weight; Casts bring them back to float32
    assert card["precision"] == "fp16" and card["bytes"] == (exported.models / card["model"]).stat().st_size
    assert card["weights"]["sha256"] == hashlib.sha256(exported.weights.read_bytes()).hexdigest()
    assert (card["name"], card["direction"], card["tile"], card["overlap"], card["mode"]) == (exported.name, "AtoB", 256, 64, "eval")
    G = load_generator(exported.weights)[0].eval()
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        want = int8.levels(G(x)).numpy()
    got = int8.levels(torch.from_numpy(ort.InferenceSession(str(exported.models / card["model"])).run(None, {"satellite": x.numpy()})[0])).numpy()
    diff = card["difference_from_float32"]
    assert 0 < np.abs(got - want).max() <= 2 and diff["max_levels"] <= 2 and 0 < diff["mean_levels"] < 0.1
    index = json.loads((exported.models / "index.json").read_text())
    assert [(m["name"], m["card"], m["model"]) for m in index["models"]] == [(exported.name, card["name"] + ".json", card["model"])]


def test_over_the_bound_needs_int8_in_one_line(exported, monkeypatch, tmp_path):
    from generator import load_generator
    G, config = load_generator(exported.weights)
    monkeypatch.setattr(web_export, "MAX_BYTES", 1000)  # as the full-size U-Net's 109 MB is over 60 MB
    with pytest.raises(InputError, match="in float16, over the page's") as e:
        web_export.export_web(G, config, exported.weights, tmp_path / "big.onnx")
    assert "int8" in str(e.value) and not list(tmp_path.iterdir())
    if "quantizer" not in str(e.value):  # issue 22 merged: the int8 model still needs tiles to calibrate on
        assert "--calibrate FOLDER" in str(e.value)


def test_tile_plan_mirrors_tiles_py():
    """web/tiles.js's tile starts, reflection padding and Hann window, run by Node, against tiles.py's."""
    import subprocess
    import torch
    import tiles
    if not shutil.which("node"):
        pytest.skip("Node.js is not installed (it comes with npm)")
    sizes = [1, 2, 3, 5, 64, 100, 255, 256, 257, 300, 700]
    script = ("import {tileStarts, padIndex, hannWindow} from './web/tiles.js';"
              f"const sizes = {sizes};"
              "console.log(JSON.stringify({starts: sizes.map((n) => tileStarts(n, 256, 64)),"
              "pads: sizes.filter((n) => n <= 256).map((n) => Array.from(padIndex(n, 256))),"
              "window: Array.from(hannWindow(256))}));")
    r = subprocess.run(["node", "--input-type=module", "-e", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    js = json.loads(r.stdout)
    assert js["starts"] == [tiles.tile_starts(n, 256, 64) for n in sizes]
    for n, pad in zip([n for n in sizes if n <= 256], js["pads"]):
        index = torch.arange(n, dtype=torch.float32).view(1, 1, 1, n)
        assert pad == tiles.pad_reflect(index, 1, 256)[0, 0, 0].long().tolist(), n
    assert np.allclose(js["window"], tiles.window(256, "cpu").flatten().numpy(), atol=1e-7)


# ----------------------------------------------------------------------------------------------------
# The page in headless Chromium


@pytest.fixture(scope="module")
def browser(exported):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (Python package)")
    if not (VENDOR / "ort.wasm.bundle.min.mjs").is_file():
        why = "npm is not installed" if not shutil.which("npm") else "web/vendor/ is empty"
        pytest.skip(f"{why}: run `npm ci` in web/ (it copies ONNX Runtime Web and geotiff.js into web/vendor/)")
    with sync_api.sync_playwright() as p:
        chromium = launch_chromium(p)
        context = chromium.new_context(accept_downloads=True, viewport={"width": 1100, "height": 900})
        requests = []
        context.on("request", lambda r: requests.append(r.url))  # the page's and its workers'
        yield SimpleNamespace(context=context, requests=requests)
        chromium.close()


def open_page(browser, exported, isolate: bool):
    """The page from a fresh server on a free 127.0.0.1 port, its model loaded."""
    httpd = serve.server(models=exported.models, isolate=isolate, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    page = browser.context.new_page()
    page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/")
    page.locator("#backend").get_by_text(f"model: {exported.name}").wait_for(timeout=60_000)
    return page, httpd


@pytest.fixture(scope="module")
def page(browser, exported):
    """The page as python -m http.server serves it: not cross-origin isolated."""
    page, httpd = open_page(browser, exported, isolate=False)
    yield page
    page.close()
    httpd.shutdown()


def translate(page, src: Path, out: Path, link="#png", bands="") -> Path:
    """Choose src, press Translate, wait for the result and download it (the PNG, or `link`)."""
    page.evaluate("delete document.getElementById('status').dataset.tiles")
    page.fill("#bands", bands)
    page.set_input_files("#file", str(src))
    page.click("#translate")
    page.wait_for_function("document.getElementById('status').dataset.tiles", timeout=60_000)
    assert page.locator("#message").text_content() == ""
    with page.expect_download() as download:
        page.click(link)
    download.value.save_as(out)
    return out


def test_sample_tile_equals_predict(page, exported, tmp_path):
    src = tmp_path / "tile.png"
    sample_halves(1)[0].save(src)
    got = rgb(translate(page, src, tmp_path / "page.png"))
    want = rgb(predicted(exported, src, tmp_path / "out"))
    assert got.shape == want.shape == (256, 256, 3) and np.abs(got - want).max() <= LEVELS
    assert want.std() > 10  # a map with contrast, so that equality within 3 levels says something
    assert exported.name in page.locator("#model").text_content()  # listed from models/index.json


def test_picture_of_several_tiles_equals_predict(page, exported, tmp_path):
    mosaic = Image.new("RGB", (768, 512))
    for i, half in enumerate(sample_halves(6)):
        mosaic.paste(half, (256 * (i % 3), 256 * (i // 3)))
    src = tmp_path / "mosaic.png"
    mosaic.crop((0, 0, 700, 500)).save(src)
    got = rgb(translate(page, src, tmp_path / "page.png"))
    want = rgb(predicted(exported, src, tmp_path / "out"))
    assert got.shape == (500, 700, 3) and np.abs(got - want).max() <= LEVELS
    status = page.locator("#status").text_content()
    assert "700×500 px, 12 tiles" in status and "MP/s" in status and "WASM SIMD, 1 thread" in status
    assert f"model {exported.name}" in status
    shot = Path(os.environ.get("SAT2MAP_WEB_SCREENSHOT") or tmp_path / "web.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def exact_limits(ds, chosen, low, high, path):
    """bands.stretch_limits over every valid pixel, as the page takes them (predict.py samples)."""
    data = ds.read(chosen)
    valid = bands.valid_mask(ds, chosen, None)
    lo = np.array([np.percentile(band[valid], low) for band in data])
    hi = np.array([np.percentile(band[valid], high) for band in data])
    return lo, np.maximum(hi, lo + 1e-6), int(valid.sum())


def test_16_bit_geotiff_gives_a_geotiff_on_its_grid(page, exported, tmp_path, monkeypatch):
    """Blue, green, red, near infrared in uint16, EPSG:32633, a nodata border: the page picks bands
    3,2,1 by colour interpretation, stretches them and writes the map on the input's grid."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.enums import ColorInterp
    from rasterio.transform import from_origin
    rgb8 = np.asarray(sample_halves(2)[1].resize((300, 200))).transpose(2, 0, 1).astype(np.uint16)
    bands = np.concatenate([rgb8[::-1] * 12 + 300, rgb8[:1] * 9 + 100]).astype(np.uint16)
    bands[:, :12], bands[:, :, -20:] = 0, 0
    src = tmp_path / "scene.tif"
    with rasterio.open(src, "w", driver="GTiff", width=300, height=200, count=4, dtype="uint16", nodata=0,
                       crs="EPSG:32633", transform=from_origin(500_000, 4_100_000, 0.6, 0.6)) as ds:
        ds.write(bands)
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    got = translate(page, src, tmp_path / "page.tif", link="#tif")
    monkeypatch.setattr("bands.stretch_limits", exact_limits)
    want = predicted(exported, src, tmp_path / "out")
    with rasterio.open(got) as g, rasterio.open(want) as w, rasterio.open(src) as s:
        assert (g.width, g.height, g.crs, g.transform) == (s.width, s.height, s.crs, s.transform)
        assert g.crs.to_epsg() == 32633
        valid = s.dataset_mask() > 0
        assert np.array_equal(g.dataset_mask() > 0, valid) and not valid[:12].any() and valid.any()
        assert np.abs(g.read([1, 2, 3]).astype(int) - w.read().astype(int))[:, valid].max() <= LEVELS


def drop(page, path: Path):
    """Drop a file on the page's drop zone, as a person drags one from their files."""
    transfer = page.evaluate_handle("([name, bytes]) => { const t = new DataTransfer(); "
                                    "t.items.add(new File([new Uint8Array(bytes)], name)); return t; }",
                                    [path.name, list(path.read_bytes())])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.locator("#chosen").get_by_text(path.name).wait_for(timeout=10_000)


def test_bad_files_get_a_message_and_the_next_translation_works(page, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 6000)).save(huge)  # 48 megapixels, a 1-bit PNG of a few kB
    for bad, words in ((text, "not a PNG, JPEG or TIFF"), (huge, "over this page's limit of 40")):
        if bad is text:
            drop(page, bad)  # through the drop zone, the picker's sibling
        else:
            page.set_input_files("#file", str(bad))
        page.click("#translate")
        page.locator("#message").get_by_text(words).wait_for(timeout=30_000)
        assert bad.name in page.locator("#message").text_content()
        assert page.locator("#translate").is_enabled()
    src = tmp_path / "after.png"
    sample_halves(1)[0].save(src)
    assert rgb(translate(page, src, tmp_path / "page.png")).shape == (256, 256, 3)
    assert page.locator("#message").text_content() == ""


def test_cross_origin_isolated_page_runs_wasm_threads(browser, exported, tmp_path):
    page, httpd = open_page(browser, exported, isolate=True)
    try:
        assert "threads" in page.locator("#backend").text_content()  # this machine has 2 cores or more
        src = tmp_path / "tile.png"
        sample_halves(1)[0].save(src)
        got = rgb(translate(page, src, tmp_path / "page.png"))
        assert np.abs(got - rgb(predicted(exported, src, tmp_path / "out"))).max() <= LEVELS
    finally:
        page.close()
        httpd.shutdown()


def test_no_request_leaves_127_0_0_1(browser, page, exported):
    """Every request of the tests above, the workers' included (the model, ONNX Runtime's wasm)."""
    web = [u for u in browser.requests if urlsplit(u).scheme not in ("blob", "data")]
    assert any(u.endswith(f"/models/{exported.name}.onnx") for u in web) and any(u.endswith(".wasm") for u in web)
    assert {urlsplit(u).hostname for u in web} == {"127.0.0.1"}, sorted(set(web))
