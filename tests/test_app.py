"""The web app (app.py): its API gives predict.py's map, serves concurrent clients, answers bad uploads
with a message and keeps serving, and works in a real browser. One server is shared by the module."""
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_SAMPLE, map_picture

gr = pytest.importorskip("gradio", reason="the app needs gradio (pip install -r requirements.txt)")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import QueueError  # noqa: E402

import app  # noqa: E402
import predict  # noqa: E402

CHROMIUM = os.environ.get("SAT2MAP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_MEGAPIXELS = 1  # the server's PNG/JPEG limit in these tests
MAX_UPLOAD_MB = 1
QUEUE = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_generator(path: Path, seed=0):
    """A G.pt of an 8-wide generator with random weights and running statistics, so that eval and
    paper mode give different maps."""
    import torch
    from generator import Generator, init_weights
    torch.manual_seed(seed)
    G = init_weights(Generator(ngf=8))
    for m in G.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2)
    path.parent.mkdir(parents=True)
    torch.save({"G": G.state_dict(), "config": {"ngf": 8, "direction": "AtoB"}}, path)
    return path


def picture(path: Path, w=300, h=200, seed=0) -> Path:
    """A satellite stand-in: a real sample's input half where the sample is here, else noise."""
    samples = sorted(SHARED_SAMPLE.glob("*.png"))
    if samples:
        pair = Image.open(samples[seed % len(samples)]).convert("RGB")
        img = pair.crop((0, 0, pair.width // 2, pair.height)).resize((w, h))
    else:
        img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    img.save(path)
    return path


def pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def run_predict(weights, src, out, *flags) -> Path:
    assert predict.main(["--weights", str(weights), "--input", str(src), "--out", str(out), *flags]) == 0
    return Path(out)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free local port with a tiny random generator, or $SAT2MAP_APP_WEIGHTS (a trained
    G.pt, for the docs screenshot: see test_page_in_a_real_browser)."""
    root = tmp_path_factory.mktemp("app")
    weights = os.environ.get("SAT2MAP_APP_WEIGHTS") or tiny_generator(root / "weights" / "tiny" / "G.pt")
    examples = SHARED_SAMPLE if SHARED_SAMPLE.is_dir() else None
    demo = app.build_app(str(weights), root / "weights", "cpu", examples, MAX_MEGAPIXELS, queue=QUEUE)
    url = app.launch(demo, port=free_port(), max_upload_mb=MAX_UPLOAD_MB, block=False)
    yield SimpleNamespace(url=url, weights=weights, root=root)
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


def test_api_gives_predicts_map_in_either_mode(server, client, tmp_path):
    src = picture(tmp_path / "scene.png")  # 300x200: two tile columns, padded rows
    for mode, flags in (("eval", ["--eval"]), (None, [])):  # None: the API's default, the paper mode
        kw = {} if mode is None else {"mode": mode}
        png, (before, after), shown, tif, status, gpkg = client.predict(image=handle_file(src), api_name="/translate",
                                                                        **kw)
        expected = pixels(run_predict(server.weights, src, tmp_path / (mode or "paper"), *flags) / "scene.png")
        assert np.array_equal(pixels(png), expected), mode
        assert np.array_equal(pixels(shown), expected) and np.array_equal(pixels(after), expected)
        assert np.array_equal(pixels(before), np.asarray(Image.open(src).convert("RGB")))
        assert tif is None and gpkg is None and "300×200 px" in status and "MP/s" in status
    paper = pixels(tmp_path / "paper" / "scene.png")
    assert not np.array_equal(paper, pixels(tmp_path / "eval" / "scene.png"))  # the mode reached the engine


def test_four_clients_at_once_get_their_own_maps(server, tmp_path):
    srcs = [picture(tmp_path / f"in{i}.png", 256, 256, seed=i) for i in range(4)]
    run_predict(server.weights, tmp_path, tmp_path / "out", "--eval")

    def ask(src):
        return Client(server.url, verbose=False).predict(image=handle_file(src), mode="eval", api_name="/translate")[0]

    with ThreadPoolExecutor(4) as pool:
        maps = list(pool.map(ask, srcs))
    for src, png in zip(srcs, maps):
        assert np.array_equal(pixels(png), pixels(tmp_path / "out" / src.name)), src.name


def test_georeferenced_input_gives_predicts_cog_and_a_png_of_it(server, client, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin
    rgb = np.asarray(Image.open(picture(tmp_path / "p.png", 200, 150)).convert("RGB")).transpose(2, 0, 1)
    src = tmp_path / "scene.tif"
    with rasterio.open(src, "w", driver="GTiff", width=200, height=150, count=3, dtype="uint8",
                       crs="EPSG:3857", transform=from_origin(1000, 2000, 1.5, 1.5)) as ds:
        ds.write(rgb)
    png, _, _, tif, status, gpkg = client.predict(image=handle_file(src), mode="eval", api_name="/translate")
    expected = run_predict(server.weights, src, tmp_path / "out", "--eval") / "scene.tif"
    with rasterio.open(tif) as got, rasterio.open(expected) as want:
        assert got.crs == want.crs and got.transform == want.transform
        assert np.array_equal(got.read(), want.read())
        assert np.array_equal(pixels(png), got.read().transpose(1, 2, 0))
    assert (gpkg is None) == ("no GIS layers" in status)  # a random generator's map may be no map


def test_georeferenced_map_comes_with_its_gis_layers(client, tmp_path, monkeypatch):
    """The GeoPackage offered beside the COG holds vector.py's layers of that map (a stand-in engine
    draws a known map on the upload's grid)."""
    rasterio = pytest.importorskip("rasterio")
    raw = pytest.importorskip("pyogrio.raw")
    import vector
    from rasterio.transform import from_origin
    src = tmp_path / "scene.tif"
    profile = dict(driver="GTiff", width=400, height=300, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(500000, 4000000, 0.5, 0.5))
    with rasterio.open(src, "w", **profile) as ds:
        ds.write(np.full((3, 300, 400), 90, np.uint8))

    def draw_map(G, path, out_dir, opts, **kw):
        with rasterio.open(out_dir / f"{path.stem}.tif", "w", **profile) as ds:
            ds.write(map_picture(300, 400))
        return out_dir / f"{path.stem}.tif"

    monkeypatch.setattr(app.raster, "predict_file", draw_map)
    _, _, _, tif, status, gpkg = client.predict(image=handle_file(src), mode="eval", api_name="/translate")
    assert gpkg is not None and "no GIS layers" not in status
    vector.vectorise(tif, tmp_path / "direct.gpkg")
    for layer in ("road", "centerlines"):
        got, want = (raw.read(f, layer=layer) for f in (gpkg, tmp_path / "direct.gpkg"))
        assert len(got[2]) == 1 and list(got[2]) == list(want[2]) and got[0]["crs"] == want[0]["crs"] == "EPSG:32633"


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(client, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(picture(tmp_path / "whole.png", 256, 256).read_bytes()[:3000])
    large = tmp_path / "large.png"
    Image.new("RGB", (1100, 1000), (90, 120, 80)).save(large)  # over the server's megapixel limit
    nodata = tmp_path / "empty.tif"
    with rasterio.open(nodata, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", nodata=0) as ds:
        ds.write(np.zeros((3, 64, 64), np.uint8))
    for bad, words in ((text, "not an image"), (truncated, "cannot decode"), (large, "megapixels"),
                       (nodata, "nodata")):
        with pytest.raises(AppError) as e:
            client.predict(image=handle_file(bad), mode="eval", api_name="/translate")
        assert words in str(e.value) and bad.stem in str(e.value), str(e.value)
        assert "/tmp" not in str(e.value) and "gradio" not in str(e.value)  # no server paths
    with pytest.raises(AppError, match="bands"):
        client.predict(image=handle_file(tmp_path / "whole.png"), bands="1,x", api_name="/translate")
    with pytest.raises(Exception):  # only the server's own models: no path can be named
        client.predict(image=handle_file(tmp_path / "whole.png"), weights="/etc/passwd", api_name="/translate")
    huge = tmp_path / "huge.png"
    huge.write_bytes(os.urandom(2 * MAX_UPLOAD_MB << 20))
    with pytest.raises(Exception, match="(?i)size|large"):
        client.predict(image=handle_file(huge), mode="eval", api_name="/translate")
    png = client.predict(image=handle_file(tmp_path / "whole.png"), mode="eval", api_name="/translate")[0]
    assert pixels(png).shape == (256, 256, 3)


def test_full_queue_says_try_again(client, tmp_path, monkeypatch):
    """With the running translation held, the queue fills up: the requests past it are told at once to
    try again, and every accepted one completes when the translation goes on."""
    gate, original = threading.Event(), app.raster.predict_file
    monkeypatch.setattr(app.raster, "predict_file", lambda *a, **kw: gate.wait(60) and original(*a, **kw))
    src = picture(tmp_path / "q.png", 64, 64)
    jobs = [client.submit(image=handle_file(src), mode="eval", api_name="/translate") for _ in range(QUEUE + 2)]
    deadline = time.monotonic() + 30
    while not any(job.done() for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # a second refusal, if the running one had not left the queue yet
    refused = [job for job in jobs if job.done()]
    gate.set()
    assert 1 <= len(refused) <= 2
    for job in refused:
        with pytest.raises(QueueError, match="try again"):
            job.result()
    for job in jobs:
        if job not in refused:
            assert pixels(job.result(timeout=60)[0]).shape == (64, 64, 3)


def test_page_in_a_real_browser(server, tmp_path):
    """Headless Chromium uploads a sample, presses Translate and waits for the map; the screenshot goes
    to $SAT2MAP_SCREENSHOT or the test's folder. docs/app.png: SAT2MAP_APP_WEIGHTS=weights/maps/G.pt
    SAT2MAP_SCREENSHOT=docs/app.png python -m pytest tests/test_app.py -k browser"""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (Python package)")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SAT2MAP_CHROMIUM)")
    src = picture(tmp_path / "tile.png", 256, 256, seed=3)
    shot = Path(os.environ.get("SAT2MAP_SCREENSHOT") or tmp_path / "app.png")
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        except sync_api.Error as e:
            pytest.skip(f"Chromium at {CHROMIUM} does not start headless: {str(e).splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url, timeout=60_000)
            page.locator("input[type=file]").first.set_input_files(str(src))
            page.get_by_role("button", name="Translate").click()
            page.locator("#status").get_by_text("MP/s").wait_for(timeout=60_000)
            images = page.locator("#slider img")
            images.last.wait_for(timeout=30_000)
            assert images.count() == 2 and images.last.evaluate("img => img.complete && img.naturalWidth") == 256
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
