"""Where the features meet: a grey generator (--output-nc 1) in the app, with --vector and with the
browser export; a Stop while predict.py --vector vectorises; --calibrate's folder; the browser's int8
model, exported and run by the page; the servers' --port."""
import numpy as np
import pytest
import torch
from PIL import Image

rasterio = pytest.importorskip("rasterio")

import predict  # noqa: E402
import raster  # noqa: E402
from cli import Cancelled, InputError  # noqa: E402
from conftest import make_geotiff, map_picture  # noqa: E402
from generator import Generator, init_weights  # noqa: E402
from test_raster import write_tif  # noqa: E402


@pytest.fixture(scope="module")
def grey_out(tmp_path_factory):
    """G.pt of an 8-wide generator with random weights that takes RGB and draws grey (1 band), and an
    RGB GeoTIFF for it."""
    folder = tmp_path_factory.mktemp("grey_out")
    torch.manual_seed(0)
    torch.save({"G": init_weights(Generator(3, 1, ngf=8)).state_dict(), "config": {"ngf": 8}}, folder / "G.pt")
    return folder / "G.pt", make_geotiff(folder / "scene.tif", 96, 64)


def test_app_shows_a_grey_map_as_grey_and_offers_no_layers(grey_out, tmp_path):
    """The app's previews read the result's bands as bands.pick_bands does (one band shown as grey),
    the COG keeps its one band, and the layers are left out with a note naming why."""
    app = pytest.importorskip("app")
    weights, scene = grey_out
    models = app.Models({"grey": str(weights)}, "cpu", backend="torch")
    args = predict.parser().parse_args(["--weights", "-", "--input", str(scene), "--out", "-", "--eval"])
    r = app.translate_file(models, scene, "grey", args, lambda *a, **k: None, tmp_path)
    after = np.asarray(r["after"])
    assert r["after"].mode == "RGB" and (after[..., 0] == after[..., 1]).all() and (after[..., 1] == after[..., 2]).all()
    with rasterio.open(r["tif"]) as ds:
        assert ds.count == 1 and np.array_equal(ds.read(1), after[..., 0])
    assert r["gpkg"] is None and "no GIS layers" in r["note"] and "not a grey image" in r["note"]


def test_predict_vector_refuses_a_grey_generator_before_any_work(grey_out, tmp_path):
    weights, scene = grey_out
    with pytest.raises(InputError, match="^--vector: .* draws grey"):
        predict.main(["--weights", str(weights), "--input", str(scene), "--out", str(tmp_path / "out"), "--eval",
                      "--device", "cpu", "--vector"])
    assert not (tmp_path / "out").exists()


def test_web_export_refuses_a_grey_generator_in_one_line(grey_out, tmp_path):
    import export
    weights, _ = grey_out
    with pytest.raises(InputError, match="the page runs RGB generators"):
        export.main(["--weights", str(weights), "--web", str(tmp_path / "g.onnx"), "--device", "cpu"])
    assert list(tmp_path.iterdir()) == []


def test_a_stop_while_vectorising_keeps_the_map_and_leaves_no_layers(grey_out, tmp_path, monkeypatch):
    """predict.py --vector asks its cancel hook while it vectorises too (here a stand-in engine draws a
    known map, and the hook says stop once that map is written): Cancelled says the map stands, and
    no GeoPackage or temp file is left."""
    scene = write_tif(tmp_path / "scene.tif", np.full((3, 300, 300), 90, np.uint8))
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def draw_map(G, path, out_dir, opts, **kw):
        return write_tif(out_dir / f"{path.stem}.tif", map_picture(300, 300))

    monkeypatch.setattr(raster, "predict_file", draw_map)
    _, opts = predict.parse(["--weights", "-", "--input", str(scene), "--out", str(out_dir), "--eval"])
    G = Generator(ngf=8)
    with pytest.raises(Cancelled, match="^.*scene.tif: enough while vectorising; the map is written"):
        predict.translate_files(G, [scene], out_dir, opts, 0, 1, lambda: "enough" if any(out_dir.iterdir()) else None,
                                layers=True)
    assert [p.name for p in out_dir.iterdir()] == ["scene.tif"]


def test_an_empty_calibrate_folder_is_named_as_calibrate(tmp_path):
    """--calibrate's folder is listed as --input's is, and a bad one is named by its own flag."""
    import export
    torch.manual_seed(0)
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8}}, tmp_path / "G.pt")
    (tmp_path / "empty").mkdir()
    scene = make_geotiff(tmp_path / "scene.tif", 64, 64)
    calibrate = ["--int8", "--calibrate", str(tmp_path / "empty"), "--device", "cpu"]
    with pytest.raises(InputError, match="^--calibrate .*empty: no images"):
        predict.main(["--weights", str(tmp_path / "G.pt"), "--input", str(scene), "--out", str(tmp_path / "out"),
                      "--eval", "--backend", "onnxruntime", *calibrate])
    with pytest.raises(InputError, match="^--calibrate .*empty: no images"):
        export.main(["--weights", str(tmp_path / "G.pt"), "--web", str(tmp_path / "g.onnx"), *calibrate])


@pytest.fixture(scope="module")
def int8_web(tmp_path_factory):
    """A tiny generator (maps with contrast), two satellite pictures to calibrate on, and the int8
    browser model export.py --web --int8 makes of it in a models/ folder."""
    from conftest import tiny_generator
    import export
    root = tmp_path_factory.mktemp("int8_web")
    weights = tiny_generator(root / "tiny" / "G.pt", gain=0.09)
    (root / "calibrate").mkdir()
    for i in range(2):
        noise = np.random.default_rng(i).integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(noise).save(root / "calibrate" / f"{i}.png")
    (root / "models").mkdir()
    export.main(["--weights", str(weights), "--web", str(root / "models" / "q.onnx"), "--int8", "--calibrate",
                 str(root / "calibrate"), "--device", "cpu"])
    return root, weights


def test_web_export_makes_an_int8_model_calibrated_on_its_folder(int8_web):
    """export.py --web --int8 (the path of every generator over 60 MB in float16) quantizes with
    int8.quantize_int8 on the calibration tiles and says so in the card and the folder's index."""
    import json
    import onnx
    root, _ = int8_web
    card = json.loads((root / "models" / "q.json").read_text())
    assert card["precision"] == "int8" and card["difference_from_float32"]["measured_on"].startswith("2 tiles")
    ops = {node.op_type for node in onnx.load(root / "models" / "q.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "ConvTranspose" not in ops  # SubPixelUp
    assert json.loads((root / "models" / "index.json").read_text())["models"][0]["precision"] == "int8"


def test_the_page_runs_the_int8_model_as_predict_does(int8_web, tmp_path):
    """The static page (ONNX Runtime Web, WASM) on the int8 model gives predict.py --backend onnxruntime
    --int8's map, calibrated on the same pictures, within the page's 3 levels."""
    import threading
    from conftest import ROOT, launch_chromium
    sync_api = pytest.importorskip("playwright.sync_api")
    if not (ROOT / "web" / "vendor" / "ort.wasm.bundle.min.mjs").is_file():
        pytest.skip("web/vendor/ is empty: run `npm ci` in web/")
    import sys
    sys.path.insert(0, str(ROOT / "web"))
    import serve
    root, weights = int8_web
    src = root / "calibrate" / "0.png"
    httpd = serve.server(models=root / "models", isolate=False, quiet=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as p:
            chromium = launch_chromium(p)
            page = chromium.new_context(accept_downloads=True).new_page()
            page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/")
            page.locator("#backend").get_by_text("model: q").wait_for(timeout=60_000)
            page.set_input_files("#file", str(src))
            page.click("#translate")
            page.wait_for_function("document.getElementById('status').dataset.tiles", timeout=60_000)
            with page.expect_download() as download:
                page.click("#png")
            download.value.save_as(tmp_path / "page.png")
            chromium.close()
    finally:
        httpd.shutdown()
    assert predict.main(["--weights", str(weights), "--input", str(src), "--out", str(tmp_path / "out"), "--eval",
                         "--backend", "onnxruntime", "--int8", "--calibrate", str(root / "calibrate"),
                         "--device", "cpu"]) == 0
    got, want = (np.asarray(Image.open(f).convert("RGB")).astype(int) for f in (tmp_path / "page.png",
                                                                              tmp_path / "out" / "0.png"))
    assert got.shape == want.shape == (256, 256, 3) and np.abs(got - want).max() <= 3 and want.std() > 10


@pytest.mark.parametrize("command", ["app", "serve"])
def test_a_port_out_of_range_is_one_line(command, capsys):
    """The two servers (the app, web/serve.py) refuse a port they cannot bind before starting."""
    import sys
    from conftest import ROOT
    sys.path.insert(0, str(ROOT / "web"))
    module = pytest.importorskip(command)
    with pytest.raises(SystemExit) as stop:
        module.main(["--port", "99999"])
    assert stop.value.code == 2 and "--port 99999: expected a port number from 0 to 65535" in capsys.readouterr().err


def test_a_paper_mode_request_parses_whatever_the_servers_backend(monkeypatch, tmp_path):
    """$SAT2MAP_BACKEND=onnxruntime is the app's eval mode's backend (Models); a request's own flags,
    parsed by predict's parser, must not refuse the paper mode for it."""
    app = pytest.importorskip("app")
    monkeypatch.setenv("SAT2MAP_BACKEND", "onnxruntime")
    args = app.request_args(tmp_path / "tile.png", 64, mode="paper", seed=3, bands=" ")
    assert (args.eval, args.seed, args.bands, args.max_megapixels) == (False, 3, None, 64)
