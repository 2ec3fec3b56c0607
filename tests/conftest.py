"""Shared fixtures: small generated datasets, the real maps sample, a quick way to train, a command run
in this process, a tiny generator, and headless Chromium for the browser tests."""
import atexit
import contextlib
import io
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_SAMPLE = ROOT.parent / "shared" / "maps_sample"
# --backend's default is torch here: auto would probe this machine and might choose ONNX Runtime,
# whose output differs from torch's by a level, and export every test's weights. Tests of the other
# backends name them. Exports and probe records go to a cache folder of the session's own.
os.environ["SAT2MAP_BACKEND"] = "torch"
os.environ["SAT2MAP_CACHE"] = tempfile.mkdtemp(prefix="sat2map-test-cache-")
atexit.register(shutil.rmtree, os.environ["SAT2MAP_CACHE"], ignore_errors=True)
# --device cpu: the suite is bit-exact on any host, a GPU one included (tests/test_cuda.py passes a
# later --device cuda, which argparse takes instead)
TINY = ["--ngf", "8", "--ndf", "8", "--log-every", "1", "--sample-every", "1000", "--save-every", "1000",
        "--device", "cpu"]


CHROMIUM = os.environ.get("SAT2MAP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_generator(path: Path, seed=0, gain=0.02):
    """A G.pt of an 8-wide generator with random weights and running statistics, so that eval and
    paper mode give different maps. At the default init gain its maps vary by a few levels only; 0.09
    gives them contrast (a standard deviation of about 25 levels)."""
    import torch
    from generator import Generator, init_weights
    torch.manual_seed(seed)
    G = init_weights(Generator(ngf=8), gain=gain)
    for m in G.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2)
    path.parent.mkdir(parents=True)
    torch.save({"G": G.state_dict(), "config": {"ngf": 8, "direction": "AtoB"}}, path)
    return path


def launch_chromium(playwright):
    """Debian's Chromium, headless, through Playwright; skips the test, saying why, where it is missing
    or does not start."""
    from playwright.sync_api import Error
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SAT2MAP_CHROMIUM)")
    try:
        return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    except Error as e:
        pytest.skip(f"Chromium at {CHROMIUM} does not start headless: {str(e).splitlines()[0]}")


def make_ab(path, w=128, h=64, seed=0, mode="RGB"):
    """A side-by-side AB image whose B half is a simple function of A (so there is something to learn)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w // 2, 3), dtype=np.uint8)
    odd = np.zeros((h, w % 2, 3), dtype=np.uint8)  # lets a test plant an odd width
    img = Image.fromarray(np.concatenate([a, 255 - a, odd], 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert(mode).save(path)
    return path


def make_geotiff(path, width, height, res=1.5, sparse=False):
    """An RGB GeoTIFF of noise at `res` m/px (EPSG:3857). sparse: tiled, deflated and no block written,
    so that even 30000 x 30000 px take a few tens of kB on disk."""
    import rasterio
    from rasterio.transform import from_origin
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs="EPSG:3857",
                   transform=from_origin(1000, 2000, res, res))
    if sparse:
        profile.update(tiled=True, blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True)
    with rasterio.open(path, "w", **profile) as ds:
        if not sparse:
            ds.write(np.random.default_rng(0).integers(0, 256, (3, height, width), dtype=np.uint8))
    return Path(path)


def make_dataset(root, n_train=4, n_val=2, **kw):
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            make_ab(Path(root) / split / f"{i:03d}.png", seed=i + (100 if split == "val" else 0), **kw)
    return Path(root)


def map_picture(h=700, w=1100) -> np.ndarray:
    """A map (3, h, w) uint8 in the palette's colours: beige ground, a round lake (radius 90 px at
    x 530, y 500) and a straight road 9 px wide (y = 150 + 0.3 x), so that 512 px blocks and 256 px
    cells cut both."""
    from palette import PALETTE
    yy, xx = np.mgrid[:h, :w]
    rgb = np.empty((3, h, w), np.uint8)
    rgb[:] = np.array(PALETTE["background"][0], np.uint8)[:, None, None]
    rgb[:, (yy - 500) ** 2 + (xx - 530) ** 2 < 90 ** 2] = np.array(PALETTE["water"][0], np.uint8)[:, None]
    rgb[:, np.abs(yy - (150 + 0.3 * xx)) < 4.5] = np.array(PALETTE["road"][0], np.uint8)[:, None]
    return rgb


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped where none is visible; .ci/gpu runs them)")


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible to PyTorch (run .ci/gpu on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "data")


@pytest.fixture
def maps_sample(tmp_path):
    """The 30 real maps pairs as train/ (all) and val/ (first 8), linked, never copied into the repo."""
    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"real maps sample not found at {SHARED_SAMPLE}")
    files = sorted(SHARED_SAMPLE.glob("*.png"))
    for split, chosen in (("train", files), ("val", files[:8])):
        (tmp_path / "maps" / split).mkdir(parents=True)
        for f in chosen:
            os.symlink(f, tmp_path / "maps" / split / f.name)
    return tmp_path / "maps"


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory):
    """A stand-in for the FID Inception weights file: its layout (torchvision's Inception v3 with 1008
    classes, as in the published file) with random weights, scaled so that activations stay finite."""
    import torch
    import torch.nn as nn
    import torchvision
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def train(*args):
    """Run train.main in this process with tiny widths; returns the run folder's last checkpoint."""
    import torch
    import train as train_mod
    from config import parse_config
    cfg = parse_config([*TINY, *map(str, args)])
    train_mod.main(cfg)
    return torch.load(Path(cfg.run_dir) / "last.pt", weights_only=True)


def run_main(main, *args):
    """A command's main(argv) in this process, as `python COMMAND.py ARGS` runs it (cli.run_command),
    where a fresh interpreter proves nothing more: its exit status and what it wrote to stderr, as
    subprocess.run gives them."""
    from cli import run_command
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        try:
            returncode = run_command(main, list(map(str, args))) or 0
        except SystemExit as e:  # the interpreter prints a message given to sys.exit, and exits with 1
            if isinstance(e.code, str):
                print(e.code, file=said)
            returncode = 1 if isinstance(e.code, str) else e.code or 0
    return SimpleNamespace(returncode=returncode, stderr=said.getvalue())


def assert_same(x, y, where="checkpoint"):
    """Bit-identical nested state (dicts, lists, tensors, numbers)."""
    import torch
    if isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            assert_same(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), where
        for i, (a, b) in enumerate(zip(x, y)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    else:
        assert x == y, where
