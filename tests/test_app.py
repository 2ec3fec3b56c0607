"""The web app (app.py): its API gives predict.py's map, serves concurrent clients, answers bad uploads
with a message and keeps serving, bounds every request's work and time, stops work its client left,
shows no server path, and works in a real browser. One server is shared by the module."""
import contextlib
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cli import Cancelled
from conftest import ROOT, SHARED_SAMPLE, free_port, launch_chromium, make_geotiff, map_picture, tiny_generator

gr = pytest.importorskip("gradio", reason="the app needs gradio (pip install -r requirements.txt)")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import QueueError  # noqa: E402

import app  # noqa: E402
import predict  # noqa: E402

MAX_MEGAPIXELS = 20  # the server's bound on a request's work in these tests
MAX_UPLOAD_MB = 1
QUEUE = 4
LONG = {"mode": "paper", "tta": True}  # on a long scene: a tile at a time, 8 passes each


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


def long_scene(path: Path) -> Path:
    """15 MP (under the bound) of one colour, a few kB as PNG: with LONG, about 150 rows of 3 tiles, 8
    passes each, much longer than a test waits."""
    Image.new("RGB", (512, 30000), (90, 120, 80)).save(path)
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
    """The app on a free local port with a tiny random generator kept in a private folder outside
    weights/ (as `--weights /somewhere/private/r1/G.pt`), or $SAT2MAP_APP_WEIGHTS (a trained G.pt, for
    the docs screenshot: see test_page_in_a_real_browser). Under weights/: a run whose G.pt is not a
    generator."""
    root = tmp_path_factory.mktemp("app")
    weights = os.environ.get("SAT2MAP_APP_WEIGHTS") or tiny_generator(root / "private" / "r1" / "G.pt")
    (root / "weights" / "broken").mkdir(parents=True)
    (root / "weights" / "broken" / "G.pt").write_text("not a generator\n")
    examples = SHARED_SAMPLE if SHARED_SAMPLE.is_dir() else None
    demo = app.build_app(str(weights), root / "weights", "cpu", examples, MAX_MEGAPIXELS, queue=QUEUE)
    url = app.launch(demo, port=free_port(), max_upload_mb=MAX_UPLOAD_MB, block=False)
    yield SimpleNamespace(url=url, weights=weights, root=root)
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


@pytest.fixture
def runs(monkeypatch):
    """What each translation that reached the engine did, in order: ("done" or the reason it was
    stopped, tiles done, tiles in all)."""
    outcomes, original = [], app.raster.predict_file

    def spy(*args, progress=None, **kw):
        done = [0, None]

        def count(tiles, total):
            done[:] = tiles, total
            progress(tiles, total)
        try:
            out = original(*args, progress=count, **kw)
        except Cancelled as e:
            outcomes.append((str(e), *done))
            raise
        outcomes.append(("done", *done))
        return out

    monkeypatch.setattr(app.raster, "predict_file", spy)
    return outcomes


def wait_for(condition, seconds=60):
    """Wait until condition() holds; a hang guard, not a measurement."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


def translate_and_leave(url: str, src: Path, **params):
    """Start /translate on src through Gradio's raw queue API, as a browser does (upload, join the
    queue, read the event stream), and drop the connection once the first tile row is reported."""
    import httpx
    with httpx.Client(base_url=url, timeout=60) as http:
        with src.open("rb") as f:
            uploaded = http.post("gradio_api/upload", files={"files": (src.name, f)}).json()[0]
        config = http.get("config").json()
        fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "translate")
        label = next(c["props"]["value"] for c in config["components"] if c["props"].get("label") == "Model")
        values = {"mode": "paper", "seed": 0, "tta": False, "scale": 1.0, "gsd": None, "bands": "", "stretch": "",
                  "value_range": "", **params}
        data = [{"path": uploaded, "orig_name": src.name, "meta": {"_type": "gradio.FileData"}}, *values.values(),
                label]
        session = uuid.uuid4().hex
        http.post("gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                 "trigger_id": None, "event_data": None}).raise_for_status()
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                assert "process_completed" not in line, line
                if '"unit":"tiles"' in line.replace(" ", ""):
                    return  # closing the stream and the client drops the connection


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
        assert str(server.root) not in status
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
    import rasterio.shutil
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(picture(tmp_path / "whole.png", 256, 256).read_bytes()[:3000])
    large = tmp_path / "large.png"
    Image.new("RGB", (5000, 5000), (90, 120, 80)).save(large)  # over the server's megapixel limit
    nodata = tmp_path / "empty.tif"
    with rasterio.open(nodata, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8", nodata=0) as ds:
        ds.write(np.zeros((3, 64, 64), np.uint8))
    vrt = tmp_path / "vrt.tif"  # a VRT, which GDAL reads whatever its name: its pixels are a file of the server
    rasterio.shutil.copy(make_geotiff(tmp_path / "server_file.tif", 64, 64), vrt, driver="VRT")
    for bad, words in ((text, "not an image"), (truncated, "cannot decode"), (large, "megapixels"),
                       (nodata, "nodata"), (vrt, "not a GeoTIFF")):
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


def label_of(weights) -> str:
    """The page's label of a model outside weights/: its run folder and file."""
    return "/".join(Path(weights).resolve().parts[-2:])


def test_work_over_the_bound_is_refused_before_any_and_the_next_request_is_served(client, runs, tmp_path):
    """A sparse 30000 x 30000 GeoTIFF (tens of kB), --gsd 0.01 on a 10 m scene (a million times its
    pixels), --scale 64 on a 4096 x 4096 PNG and --scale 5 on a 1000 x 1000 one (both under the bound
    as they are): each is refused within 5 s in one line naming its sizes and the limit, before any of
    it reached the engine, and the next request is served."""
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new("RGB", (4096, 4096), (90, 120, 80)).save(big)
    Image.new("RGB", (1000, 1000), (90, 120, 80)).save(small)
    sparse = make_geotiff(tmp_path / "sparse.tif", 30000, 30000, sparse=True)
    cases = [(sparse, {}, "30000x30000 px is 900.0 megapixels"),
             (make_geotiff(tmp_path / "ten.tif", 64, 64, res=10), {"gsd": 0.01},
              "64x64 px translated at 64000x64000 px (--gsd 0.01) is 4096.0 megapixels"),
             (big, {"scale": 64}, "4096x4096 px translated at 262144x262144 px (--scale 64)"),
             (small, {"scale": 5}, "1000x1000 px translated at 5000x5000 px (--scale 5) is 25.0 megapixels")]
    assert sparse.stat().st_size < 100_000
    for src, params, words in cases:
        job = client.submit(image=handle_file(src), mode="eval", api_name="/translate", **params)
        with pytest.raises(AppError) as e:
            job.result(timeout=5)
        assert str(e.value).startswith(f"{src.name}: {words}"), str(e.value)
        assert str(e.value).endswith("over the limit of 20 megapixels (--max-megapixels)"), str(e.value)
    assert runs == []
    png = client.predict(image=handle_file(picture(tmp_path / "next.png", 256, 256)), mode="eval",
                         api_name="/translate")[0]
    assert pixels(png).shape == (256, 256, 3) and runs == [("done", 1, 1)]


def test_a_client_that_leaves_mid_scene_frees_the_slot(server, client, runs, tmp_path):
    """A client drops its connection once the first tile row of a long scene is reported: the engine
    stops at its next tile, and a second client gets its map instead of waiting for the scene."""
    translate_and_leave(server.url, long_scene(tmp_path / "long.png"), **LONG)
    src = picture(tmp_path / "next.png", 256, 256)
    png = client.submit(image=handle_file(src), mode="eval", api_name="/translate").result(timeout=60)[0]
    assert pixels(png).shape == (256, 256, 3)
    (reason, done, total), second = runs
    assert reason == "the client left" and 0 < done < total and second[0] == "done"


def tiles_done(job) -> int:
    """Tiles reported done so far by a running /translate job."""
    progress = job.status().progress_data or []
    return progress[-1].index or 0 if progress and progress[-1].unit == "tiles" else 0


def test_stop_ends_this_sessions_translation_and_nobody_elses(server, runs, tmp_path):
    """/stop (the page's Stop button) from another client leaves a translation running; from the
    client's own session it stops it at the next tile with a message."""
    mine, other = Client(server.url, verbose=False), Client(server.url, verbose=False)
    job = mine.submit(image=handle_file(long_scene(tmp_path / "long.png")), api_name="/translate", **LONG)
    wait_for(lambda: tiles_done(job) > 0)
    other.predict(api_name="/stop")
    done = tiles_done(job)
    wait_for(lambda: tiles_done(job) > done)  # still running
    mine.predict(api_name="/stop")
    with pytest.raises(AppError, match="^long.png: stopped: the Stop button was pressed$"):
        job.result(timeout=60)
    (reason, done, total), = runs
    assert reason == "the Stop button was pressed" and done < total


def test_time_limit_ends_a_long_request_with_a_message(server, runs, tmp_path):
    """--max-seconds 2: a long scene is stopped at its next tile after 2 s, with a message naming the
    limit; the same server then serves the next request."""
    demo = app.build_app(str(server.weights), server.root / "weights", "cpu", None, MAX_MEGAPIXELS, queue=QUEUE,
                         max_seconds=2)
    url = app.launch(demo, port=free_port(), max_upload_mb=MAX_UPLOAD_MB, block=False)
    try:
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match=r"^long.png: stopped: over the time limit of 2 s \(--max-seconds\)$"):
            client.predict(image=handle_file(long_scene(tmp_path / "long.png")), api_name="/translate", **LONG)
        png = client.predict(image=handle_file(picture(tmp_path / "next.png", 256, 256)), mode="eval",
                             api_name="/translate")[0]
        assert pixels(png).shape == (256, 256, 3)
    finally:
        demo.close()
    (reason, done, total), second = runs
    assert reason.startswith("over the time limit") and done < total and second[0] == "done"


def test_no_server_path_on_the_page_in_config_or_in_errors(server, client, tmp_path):
    """Started with --weights in a private folder outside weights/: the page and /config name that model
    by its run folder and file, and neither they, the API description nor an error about a model
    (Gradio's own choice check included) holds a path of the server's folders."""
    import httpx
    private = str(server.root)  # the private folder and weights/ both lie in it
    html, config, info = (httpx.get(server.url + page, timeout=60).text for page in ("", "config", "gradio_api/info"))
    assert label_of(server.weights) in config
    for text in (html, config, info):
        for folder in (private, str(Path(private).resolve()), os.environ["GRADIO_TEMP_DIR"], str(ROOT)):
            assert folder not in text, folder
    src = picture(tmp_path / "t.png", 64, 64)
    for weights, words in (("broken", "broken: "), ("/etc/passwd", label_of(server.weights))):
        with pytest.raises(Exception) as e:
            client.predict(image=handle_file(src), weights=weights, api_name="/translate")
        assert words in str(e.value) and private not in str(e.value), str(e.value)


def test_each_model_loads_once_and_at_most_n_stay(monkeypatch):
    """Eight requests at once for one model and mode load it once; with room for two, a third model
    unloads the least recently used one, which loads again when it is asked for."""
    loads, gate, entered = [], threading.Event(), []

    def load(self, label, eval_mode):
        loads.append((label, eval_mode))
        gate.wait(10)
        return object(), {"direction": "AtoB"}

    monkeypatch.setattr(app.Models, "load", load)
    models = app.Models({"a": "a", "b": "b", "c": "c"}, "cpu", keep=2)

    def get(_):
        entered.append(1)
        return models.get("a", False)

    with ThreadPoolExecutor(8) as pool:
        got = pool.map(get, range(8))
        wait_for(lambda: len(entered) == 8)
        gate.set()
        assert len({id(G) for G, _ in got}) == 1
    for label in ("b", "a", "c", "a", "b"):  # "a" was used after "b": "c" unloads "b", not "a"
        models.get(label, False)
    assert loads == [("a", False), ("b", False), ("c", False), ("b", False)]
    models.get("a", True)  # the other test-time mode is a model of its own
    assert loads[-1] == ("a", True) and len(models.loaded) == 2


@contextlib.contextmanager
def chromium_page(url: str):
    """Headless Chromium (Playwright) on the app's page; skips, saying why, where it cannot run."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (Python package)")
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, timeout=60_000)
            yield page
        finally:
            browser.close()


def test_page_in_a_real_browser(server, tmp_path):
    """Headless Chromium uploads a sample, presses Translate and waits for the map; the screenshot goes
    to $SAT2MAP_SCREENSHOT or the test's folder. docs/app.png: SAT2MAP_APP_WEIGHTS=weights/maps/G.pt
    SAT2MAP_SCREENSHOT=docs/app.png python -m pytest tests/test_app.py -k browser"""
    src = picture(tmp_path / "tile.png", 256, 256, seed=29)  # the last pair, held out of docs/training.md's sample24
    shot = Path(os.environ.get("SAT2MAP_SCREENSHOT") or tmp_path / "app.png")
    with chromium_page(server.url) as page:
        assert "20 megapixels" in page.locator("#title").inner_text()  # the bounds are stated
        page.locator("input[type=file]").first.set_input_files(str(src))
        page.get_by_role("button", name="Translate").click()
        page.locator("#status").get_by_text("MP/s").wait_for(timeout=60_000)
        images = page.locator("#slider img")
        images.last.wait_for(timeout=30_000)
        assert images.count() == 2 and images.last.evaluate("img => img.complete && img.naturalWidth") == 256
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_stop_button_in_a_real_browser(server, runs, tmp_path):
    """In Chromium: Translate on a long scene, then Stop once tiles are counted: the engine stops at its
    next tile for the Stop button, and the page translates the next upload."""
    with chromium_page(server.url) as page:
        page.locator("input[type=file]").first.set_input_files(str(long_scene(tmp_path / "long.png")))
        page.get_by_label("Test-time augmentation").check()
        page.get_by_role("button", name="Translate").click()
        page.get_by_text("translating").first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Stop").click()
        wait_for(lambda: runs)
        page.get_by_label("Test-time augmentation").uncheck()
        page.get_by_role("button", name="Clear").first.click()
        page.locator("input[type=file]").first.set_input_files(str(picture(tmp_path / "tile.png", 256, 256)))
        page.get_by_role("button", name="Translate").click()
        page.locator("#status").get_by_text("MP/s").wait_for(timeout=60_000)
    (reason, done, total), second = runs
    assert reason == "the Stop button was pressed" and done < total and second[0] == "done"
