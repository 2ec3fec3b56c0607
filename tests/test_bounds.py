"""bounds.py and the engine's cancel hook: the work an input asks for is read from its header, after
--scale / --gsd, and refused over the limit; a cancelled run stops at its next forward pass in every
mode, and predict.py's Ctrl-C stops at the next tile with nothing half written."""
import os
import signal

import pytest
import torch
from PIL import Image

pytest.importorskip("rasterio")

import bounds  # noqa: E402
import dataset  # noqa: E402
import predict  # noqa: E402
import tiles  # noqa: E402
from cli import Cancelled, InputError, run_command  # noqa: E402
from conftest import make_geotiff  # noqa: E402
from generator import Generator, init_weights  # noqa: E402


def options(*flags):
    return predict.parse(["--weights", "-", "--input", "-", "--out", "-", *map(str, flags)])[1]


def test_work_is_the_larger_of_the_input_and_its_working_grid(tmp_path):
    """Sizes come from the header alone (a PNG cut after its header still has one); --scale, --pairs
    and --gsd give the working grid; the refusal names both sizes and the limit."""
    png = tmp_path / "photo.png"
    Image.new("RGB", (400, 300), (10, 20, 30)).save(png)
    png.write_bytes(png.read_bytes()[:100])  # the header, no pixel data
    assert bounds.work_size(png, options()) == ((400, 300), (400, 300))
    assert bounds.work_size(png, options("--scale", 2.5)) == ((400, 300), (1000, 750))
    assert bounds.work_size(png, options("--pairs", "--scale", 0.5)) == ((400, 300), (100, 150))
    scene = make_geotiff(tmp_path / "scene.tif", 3000, 2000, res=10, sparse=True)  # 10 m/px
    assert bounds.work_size(scene, options("--gsd", 2.5)) == ((3000, 2000), (12000, 8000))
    assert bounds.work_size(scene, options("--gsd", 100)) == ((3000, 2000), (300, 200))
    bounds.check_size(scene, options("--gsd", 2.5, "--max-megapixels", 96))
    with pytest.raises(InputError) as e:
        bounds.check_size(scene, options("--gsd", 2.5, "--max-megapixels", 95.9))
    assert str(e.value) == (f"{scene}: 3000x2000 px translated at 12000x8000 px (--gsd 2.5) is 96.0 megapixels "
                            f"of work, over the limit of 95.9 megapixels (--max-megapixels)")
    # shrinking does not shrink the work: the result is written back on the scene's own grid
    with pytest.raises(InputError, match="3000x2000 px translated at 300x200 px .* 6.0 megapixels"):
        bounds.check_size(scene, options("--gsd", 100, "--max-megapixels", 5))
    with pytest.raises(InputError, match=r"photo.png: 400x300 px translated at 1000x750 px \(--scale 2.5\)"):
        bounds.check_size(png, options("--scale", 2.5, "--max-megapixels", 0.5))


def test_predicts_default_guards_pictures_and_leaves_rasters_unbounded(tmp_path, monkeypatch):
    """predict.py keeps its own default: PIL's decompression-bomb guard on PNG/JPEG (now counting the
    size after --scale too), no limit on a raster, which is read window by window."""
    monkeypatch.setattr(dataset, "MAX_PIXELS", 100_000)
    png = tmp_path / "photo.png"
    Image.new("RGB", (300, 300), (10, 20, 30)).save(png)
    bounds.check_size(png, options())
    with pytest.raises(InputError, match="900x900 px .* over the limit of 0.1 megapixels"):
        bounds.check_size(png, options("--scale", 3))
    huge = make_geotiff(tmp_path / "huge.tif", 30000, 30000, sparse=True)
    bounds.check_size(huge, options("--scale", 4))  # 14.4 gigapixels of work


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    return init_weights(Generator(ngf=8))


@pytest.mark.parametrize("pipeline", [False, True])
@pytest.mark.parametrize("paper", [True, False])
def test_a_cancelled_run_stops_before_its_next_forward_pass(G, pipeline, paper):
    """The hook is asked before every forward pass (a tile in the paper mode, a batch of 2 with --eval),
    with the reader and writer on the calling thread or in threads beside the network: once it says
    stop, not one more pass runs, and Cancelled carries its reason."""
    passes = []
    handle = G.register_forward_hook(lambda *_: passes.append(1))
    engine = tiles.Engine(paper=paper, batch=2, block=512, pipeline=pipeline)
    x = torch.rand(3, 700, 700) * 2 - 1  # 4 x 4 tiles, in two column blocks
    try:
        with pytest.raises(Cancelled, match="^enough$"):
            engine.run(G, tiles.TensorSource(x), tiles.TensorSink(700, 700),
                       cancel=lambda: "enough" if len(passes) >= 5 else None)
    finally:
        handle.remove()
    assert len(passes) == 5


def test_ctrl_c_stops_predict_at_the_next_tile_and_leaves_nothing(tmp_path, monkeypatch):
    """The first Ctrl-C, here sent once the first tile row of the first of two scenes is written, stops
    the engine at its next tile: one line names the scene, no output, working file or folder is left,
    the second scene is not started, and the SIGINT handler is given back."""
    torch.manual_seed(0)
    weights = tmp_path / "G.pt"
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8}}, weights)
    (tmp_path / "in").mkdir()
    for name in ("a.tif", "b.tif"):
        make_geotiff(tmp_path / "in" / name, 600, 600)
    rows = []

    def first_row(self, done, total):
        rows.append(done)
        if len(rows) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(predict.JobProgress, "_tiles", first_row)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as e:
        run_command(predict.main, ["--weights", weights, "--input", tmp_path / "in", "--out", tmp_path / "out",
                                   "--device", "cpu", "--eval", "--batch", "1"])
    assert str(e.value.code) == f"error: {tmp_path / 'in' / 'a.tif'}: interrupted (Ctrl-C); nothing of it was written"
    assert rows == [3] and not (tmp_path / "out").exists()  # 3 x 3 tiles: the second row never reached the writer
    assert signal.getsignal(signal.SIGINT) is handler
