"""A region: the tile engine's overlapped stages, bands translated apart, and predict.py under torchrun
(2 CPU processes, gloo) giving the one-process output."""
import ctypes
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

rasterio = pytest.importorskip("rasterio")

import predict  # noqa: E402
import raster  # noqa: E402
import tiles  # noqa: E402
from conftest import ROOT, make_ab  # noqa: E402
from generator import Generator, init_weights  # noqa: E402
from test_raster import scene, write_tif  # noqa: E402


def generator() -> Generator:
    """ngf 8, with running statistics that are not the identity, so --eval is not trivial."""
    torch.manual_seed(0)
    G = init_weights(Generator(ngf=8))
    for m in G.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2)
    return G


class MaskedSource(tiles.TensorSource):
    """An image with an invalid corner, so shares, fills and skipped tiles all take part."""

    def __init__(self, x):
        super().__init__(x)
        yy, xx = torch.meshgrid(torch.arange(self.height), torch.arange(self.width), indexing="ij")
        self.valid = (yy + xx) >= 300

    def read_raw(self, y0, y1, x0, x1):
        return self.x[:, y0:y1, x0:x1], self.valid[y0:y1, x0:x1].clone()


def run(engine, G, source, rows=None, progress=False):
    sink = tiles.TensorSink(source.height, source.width)
    valid = engine.run(G, source, sink, progress, rows)
    return sink.out, valid


def test_overlapped_stages_and_bands_give_the_sequential_result_bit_for_bit():
    G = generator()
    source = MaskedSource(torch.rand(3, 500, 600, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    ys, _, cols = tiles.Engine(block=256).plan(500, 600)
    total = len(ys) * sum(map(len, cols))
    for paper in (False, True):
        calls = []
        engine = tiles.Engine(paper=paper, seed=3, block=256, pipeline=False)
        want, want_valid = run(engine, G, source)
        engine.pipeline = True
        got, got_valid = run(engine, G, source, progress=lambda *a: calls.append(a))
        assert torch.equal(got, want) and got_valid == want_valid == int(source.valid.sum())
        assert calls[-1] == (total, total) and [d for d, _ in calls] == sorted(d for d, _ in calls)
        bands = engine.bands(500, 600, 3)
        assert len(bands) == 3 and bands[0][0] == 0 and bands[-1][1] == 500
        sink, valid = tiles.TensorSink(500, 600), 0
        for band in bands:  # each band alone, into the same sink: the whole result exactly
            valid += engine.run(G, source, sink, rows=band)
        assert torch.equal(sink.out, want) and valid == want_valid


class Boom(RuntimeError):
    pass


class FailingSource(tiles.TensorSource):
    def read_raw(self, y0, y1, x0, x1):
        if y0 > 0:
            raise Boom("source")
        return super().read_raw(y0, y1, x0, x1)


class FailingSink(tiles.TensorSink):
    def write(self, y, x, rgb, valid):
        if y > 0:
            raise Boom("sink")
        super().write(y, x, rgb, valid)


@pytest.mark.parametrize("pipeline", [True, False])
def test_an_error_in_the_reader_writer_or_network_reaches_the_caller(pipeline):
    G = generator()
    x = torch.rand(3, 600, 600) * 2 - 1
    engine = tiles.Engine(paper=False, block=256, pipeline=pipeline)
    before = threading.active_count()
    with pytest.raises(Boom, match="source"):
        engine.run(G, FailingSource(x), tiles.TensorSink(600, 600))
    with pytest.raises(Boom, match="sink"):
        engine.run(G, tiles.TensorSource(x), FailingSink(600, 600))

    def broken(*_):
        raise Boom("network")
    G.register_forward_pre_hook(broken)
    with pytest.raises(Boom, match="network"):
        engine.run(G, tiles.TensorSource(x), tiles.TensorSink(600, 600))
    assert threading.active_count() == before  # no stage left running


class ThreadSink(tiles.TensorSink):
    def write(self, y, x, rgb, valid):
        self.thread = threading.current_thread().name
        super().write(y, x, rgb, valid)


def test_the_stages_overlap_where_a_core_is_free(monkeypatch):
    """auto overlaps reading and writing with the network on a GPU, and on a CPU only where the
    network's threads leave a core to the reader and writer."""
    monkeypatch.setattr(tiles.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    cpu = torch.device("cpu")
    for threads, overlap in ((4, False), (3, True), (1, True)):
        monkeypatch.setattr(torch, "get_num_threads", lambda n=threads: n)
        assert tiles.overlap_pays(cpu) == overlap
    assert tiles.overlap_pays(torch.device("cuda"))
    x = torch.rand(3, 300, 300) * 2 - 1
    for pays, thread in ((True, "tiles-write"), (False, "MainThread")):
        monkeypatch.setattr(tiles, "overlap_pays", lambda device, pays=pays: pays)
        sink = ThreadSink(300, 300)
        tiles.Engine(paper=False).run(generator(), tiles.TensorSource(x), sink)
        assert sink.thread == thread


# In a fresh interpreter: a heap that earlier code left with big free chunks would serve a buffer
# without mapping it whatever the threshold
ALLOCATOR_CHILD = """
import ctypes, sys, threading
import numpy as np, torch
sys.path.insert(0, "tests")
import tiles
from test_region import generator

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Mallinfo2
G, x = generator(), torch.rand(3, 300, 300) * 2 - 1

def translate(pipeline):
    tiles.Engine(paper=False, pipeline=pipeline).run(G, tiles.TensorSource(x), tiles.TensorSink(300, 300))

for pipeline, thread in ((True, "main"), (False, "other"), (False, "main")):
    if thread == "main":
        translate(pipeline)
    else:
        t = threading.Thread(target=translate, args=(pipeline,))
        t.start()
        t.join()
    before = mallinfo2().hblkhd  # bytes in buffers mapped on their own
    buf = np.ones(4 << 20, np.uint8)
    print(pipeline, thread, mallinfo2().hblkhd - before >= 4 << 20)
    del buf
"""


def test_the_engine_keeps_freed_buffers_alone_and_hands_them_back_in_threads():
    """Alone in the main thread, the engine has glibc keep what it frees (a 4 MB buffer then comes
    from the heap, with no fresh pages); with its stages overlapped, or run from another thread (the
    app's requests), it has every big buffer mapped on its own and handed back when freed."""
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("needs glibc 2.33 or later (mallinfo2)")
    r = subprocess.run([sys.executable, "-c", ALLOCATOR_CHILD], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:3] == ["True main True", "False other True", "False main False"], r.stdout


def test_the_mask_stays_on_the_host_when_the_image_is_on_a_device():
    """A source on another device than the host (here `meta`): the reader pads the image where it lives
    and decides from the host mask, never mixing the two (tiles.translate of a CUDA tensor crashed so)."""
    source = tiles.TensorSource(torch.empty(3, 300, 400, device="meta"))
    image, valid = source.read(0, 256, 0, 400)
    assert image.device.type == "meta" and valid.device.type == "cpu" and valid.dtype == torch.bool
    engine = tiles.Engine(block=256)
    ys, blocks, cols = engine.plan(300, 400)
    rows = list(engine._read(source, ys, blocks, cols, 0, len(ys), torch.device("meta"), {"read": 0, "scale": 0}))
    assert len(rows) == len(ys) * len(blocks)
    assert all(r.tiles.device.type == "meta" and r.valid.device.type == "cpu" for r in rows)
    assert all(r.shares == [1.0] * len(r.places) for r in rows)


# ----------------------------------------------------------------------------------------------------
# predict.py under torchrun


def torchrun(*args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "predict.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def same_outputs(a, b):
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())  # every output once, no part or temp file left
    for name in names:
        if name.endswith(".png"):
            assert np.array_equal(np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name))), name
            continue
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            assert x.profile == y.profile and x.overviews(1) == y.overviews(1), name
            assert np.array_equal(x.read(), y.read()) and np.array_equal(x.dataset_mask(), y.dataset_mask()), name
            levels = len(x.overviews(1))
        for level in range(levels):
            with rasterio.open(a / name, overview_level=level) as x, rasterio.open(b / name, overview_level=level) as y:
                assert np.array_equal(x.read(), y.read()) and np.array_equal(x.read_masks(1), y.read_masks(1)), name
    return names


def test_two_processes_write_what_one_writes(tmp_path):
    torch.save({"G": generator().state_dict(), "config": {"ngf": 8}}, tmp_path / "G.pt")
    folder = tmp_path / "in"
    make_ab(folder / "a.png", w=300, h=200)
    make_ab(folder / "b.png", w=120, h=90, seed=1)
    make_ab(folder / "c.jpg", w=520, h=310, seed=2)
    (folder / "bad.png").write_bytes(b"nope")
    write_tif(folder / "scene.tif", scene(h=700, w=900)[0], nodata=0)
    common = ["--weights", tmp_path / "G.pt", "--input", folder, "--eval", "--amp", "off", "--block", "256",
              "--bands", "3,2,1"]
    _, opts = predict.parse(list(map(str, common + ["--out", tmp_path])))
    work = predict.share_work(raster.input_files(folder), opts, 2)
    assert [part for i, part, _ in work[0] if part] == [(0, 2)] and [part for i, part, _ in work[1] if part] == [(1, 2)]
    assert sorted(i for units in work for i, part, _ in units if not part) == [0, 1, 2, 3]  # the rest goes whole

    assert predict.main([*map(str, common), "--out", str(tmp_path / "one")]) == 1
    r = torchrun(*common, "--out", tmp_path / "two")
    assert r.returncode != 0 and "Traceback" not in r.stdout
    bad = f"{folder / 'bad.png'}: not an image PIL can read: skipped"
    assert (r.stdout + r.stderr).count(bad) == 1, r.stderr[-3000:]
    assert r.stdout.count("translated 4 of 5 input(s)") == 1
    assert same_outputs(tmp_path / "one", tmp_path / "two") == ["a.png", "b.png", "c.png", "scene.tif"]

