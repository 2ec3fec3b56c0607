"""Inference: official weights, metrics, tiled prediction, evaluation, ONNX export, torch.hub."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import evaluate
import predict
import tiles
from conftest import ROOT, SHARED_SAMPLE, make_ab, run_main
from generator import Generator, init_weights, load_generator_state


class OfficialBlock(nn.Module):
    """Written from the official layout description: one nesting level with its list in `model`."""

    def __init__(self, outer, inner, in_c=None, sub=None, outermost=False, innermost=False, dropout=False):
        super().__init__()
        in_c = in_c or outer
        down = nn.Conv2d(in_c, inner, 4, 2, 1, bias=False)
        if outermost:
            layers = [down, sub, nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down, nn.BatchNorm2d(inner), sub, nn.ReLU(True),
                      nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer)]
            layers += [nn.Dropout(0.5)] if dropout else []
        self.outermost = outermost
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class OfficialUnet(nn.Module):
    def __init__(self, ngf=64):
        super().__init__()
        b = OfficialBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(3):
            b = OfficialBlock(ngf * 8, ngf * 8, sub=b, dropout=True)
        for outer, inner in ((4, 8), (2, 4), (1, 2)):
            b = OfficialBlock(ngf * outer, ngf * inner, sub=b)
        self.model = OfficialBlock(3, ngf, in_c=3, sub=b, outermost=True)

    def forward(self, x):
        return self.model(x)


def random_official(ngf=64, seed=0):
    torch.manual_seed(seed)
    net = OfficialUnet(ngf)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1, 0.1)
            nn.init.normal_(m.bias, 0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2)
    return net.eval()


def test_official_layout_has_82_keys_and_loads_into_ours():
    official = random_official()
    state = official.state_dict()
    assert len(state) == 82 and "model.model.1.model.1.weight" in state
    ours = load_generator_state(Generator(), {"module." + k: v for k, v in state.items()}, "official").eval()
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours(x), official(x), atol=1e-5)


def test_official_file_reproduced_through_predict_eval(tmp_path):
    official = random_official(ngf=64, seed=1)
    torch.save(official.state_dict(), tmp_path / "latest_net_G.pth")
    img = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(img).save(tmp_path / "in" / "tile.png")
    r = run_main(predict.main, "--weights", tmp_path / "latest_net_G.pth", "--input", tmp_path / "in", "--out",
                 tmp_path / "out", "--eval", "--amp", "off", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    got = np.asarray(Image.open(tmp_path / "out" / "tile.png")).astype(np.float32)
    with torch.no_grad():
        ref = official(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1)[0]
    ref = ((ref.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    assert np.abs(got - ref).max() <= 1.0  # PNG rounding only


def test_bf16_prediction_stays_within_a_few_levels_of_float32(tmp_path):
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8}}, tmp_path / "G.pt")
    make_ab(tmp_path / "in" / "x.png", w=300, h=260)
    outs = {}
    for amp in ("off", "bf16"):
        predict.main(["--weights", str(tmp_path / "G.pt"), "--input", str(tmp_path / "in"), "--out",
                      str(tmp_path / amp), "--eval", "--amp", amp, "--device", "cpu"])
        outs[amp] = np.asarray(Image.open(tmp_path / amp / "x.png")).astype(int)
    diff = np.abs(outs["off"] - outs["bf16"])
    assert 0 < diff.max() <= 8 and diff.mean() < 1.5  # a different precision, not a different picture


def test_mismatching_file_lists_missing_unexpected_and_misshaped():
    state = Generator().state_dict()
    state.pop("down1.conv.weight")
    state["extra.weight"] = torch.zeros(1)
    state["up8.1.bias"] = torch.zeros(5)
    with pytest.raises(ValueError) as e:
        load_generator_state(Generator(), state, "bad.pth")
    msg = str(e.value)
    assert "missing: down1.conv.weight" in msg and "unexpected: extra.weight" in msg
    assert "mis-shaped: up8.1.bias (5,) (expected (3,))" in msg


# ----------------------------------------------------------------------------------------------------
# Metrics against hand-computed values


def test_pixel_metrics_hand_computed():
    real = torch.zeros(1, 3, 16, 16)
    fake = real.clone()
    fake[:, 0] += 10 / 127.5  # +10 in 0-255 units, red channel only
    m = {k: v.item() for k, v in evaluate.pixel_metrics(fake, real).items()}
    assert m["rmse"] == pytest.approx(10.0, rel=1e-5)  # sqrt(sum of 10^2 over pixels / pixels)
    assert m["l1"] == pytest.approx(10 / 127.5 / 3, rel=1e-5)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / ((10 / 255) ** 2 / 3)), rel=1e-4)
    assert m["acc5"] == 0 and m["acc10"] == 0  # largest channel error 10 is not below 10
    fake[:, 1:] += 10 / 127.5
    assert evaluate.pixel_metrics(fake, real)["rmse"].item() == pytest.approx(math.sqrt(300), rel=1e-5)
    near = real + 4 / 127.5
    m = evaluate.pixel_metrics(near, real)
    assert m["acc5"].item() == 1 and m["acc10"].item() == 1
    same = evaluate.pixel_metrics(real, real)
    assert same["ssim"].item() == pytest.approx(1.0) and same["l1"].item() == 0


def test_ssim_of_constant_images_matches_formula():
    a, b = 0.6, 0.2
    x, y = torch.full((1, 3, 16, 16), a * 2 - 1), torch.full((1, 3, 16, 16), b * 2 - 1)
    c1 = 0.01 ** 2
    assert evaluate.pixel_metrics(x, y)["ssim"].item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)


def test_palette_classes_and_constant_prediction_scores_zero():
    colours = [(236, 228, 220), (252, 252, 252), (252, 156, 36), (176, 208, 252), (204, 222, 176), (40, 40, 40)]
    x = torch.tensor(colours, dtype=torch.float32).T.reshape(1, 3, 1, 6) / 127.5 - 1
    assert evaluate.classify(x).flatten().tolist() == [0, 1, 2, 3, 4, 0]
    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"real maps sample not found at {SHARED_SAMPLE}")
    iou = evaluate.StructureIoU()
    for f in sorted(SHARED_SAMPLE.glob("*.png")):
        real = torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))[:, 256:].copy()).permute(2, 0, 1)[None]
        real = real.float() / 127.5 - 1
        beige = torch.tensor([236, 228, 220.0]).view(1, 3, 1, 1).expand_as(real) / 127.5 - 1
        iou.update(beige, real)
    result = iou.result()
    assert result["miou_structure"] == 0 and result["iou_background"] > 0.5
    m = evaluate.pixel_metrics(beige, real)  # on the last pair
    assert 0 < m["acc5"].item() < 1  # the blurry constant still gets pixel credit


# ----------------------------------------------------------------------------------------------------
# Tiled prediction


class LocalNet(nn.Module):
    """A purely local 'generator' (3x3 conv): tiling must reproduce the whole-image result exactly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.conv(x))


def seam_jump(y, tile=256, overlap=64, size=1000):
    """Mean |difference| between neighbouring columns at tile borders vs everywhere else."""
    d = (y[..., 1:] - y[..., :-1]).abs().mean((0, 1, 2))
    starts = tiles.tile_starts(size, tile, overlap)
    borders = sorted({s - 1 for s in starts[1:]} | {s + tile - 1 for s in starts[:-1]})
    inner = torch.ones_like(d, dtype=torch.bool)
    inner[borders] = False
    return d[borders].mean().item(), d[inner].mean().item()


def real_image(h=700, w=1000):
    if SHARED_SAMPLE.is_dir():
        img = Image.open(sorted(SHARED_SAMPLE.glob("*.png"))[0]).convert("RGB").crop((0, 0, 256, 256))
        return torch.from_numpy(np.asarray(img.resize((w, h), Image.BICUBIC)).copy()).permute(2, 0, 1)[None] / 127.5 - 1
    ramp = torch.linspace(-0.9, 0.9, w).expand(1, 3, h, w)  # tiles must differ, as on a real photo
    return (ramp + 0.1 * torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)


def test_tiled_equals_untiled_for_a_local_net():
    x = real_image()
    net = LocalNet()
    with torch.no_grad():
        whole = net(x)
    tiled = tiles.translate(net, x, paper=False)
    assert tiled.shape == x.shape
    diff = (tiled - whole)[..., 2:-2, 2:-2].abs()
    assert diff.max() < 1e-3 and diff.mean() < 1e-5  # only tile edges differ, where the window is ~0


class TileStatsNet(LocalNet):
    """Local conv, then normalised by the statistics of the tile it sees: the way BatchNorm with batch
    statistics makes each tile's output depend on the whole tile, which is what causes seams."""

    def forward(self, x):
        return torch.tanh(nn.functional.instance_norm(self.conv(x)))


def test_blending_removes_seams():
    x = real_image()
    net = TileStatsNet()
    hard_border, hard_inner = seam_jump(tiles.translate(net, x, overlap=0, paper=False), overlap=0)
    border, inner = seam_jump(tiles.translate(net, x, overlap=64, paper=False), overlap=64)
    assert hard_border > 1.5 * hard_inner  # the metric sees the seams of unblended tiles
    assert border <= 1.1 * inner  # blended: no step at tile borders
    G = init_weights(Generator(ngf=8))
    border, inner = seam_jump(tiles.translate(G, x, overlap=64, paper=True), overlap=64)
    assert border <= 1.1 * inner


def test_predict_folder_reports_unreadable_and_translates_the_rest(tmp_path):
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8}}, tmp_path / "G.pt")
    make_ab(tmp_path / "in" / "good.png", w=300, h=200)
    make_ab(tmp_path / "in" / "small.jpg", w=60, h=40)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"nope")
    r = run_main(predict.main, "--weights", tmp_path / "G.pt", "--input", tmp_path / "in", "--out", tmp_path / "out",
                 "--scale", "0.5", "--device", "cpu")
    assert r.returncode == 1 and f"{tmp_path / 'in' / 'broken.jpg'}: not an image PIL can read: skipped" in r.stderr
    assert Image.open(tmp_path / "out" / "good.png").size == (150, 100)
    assert Image.open(tmp_path / "out" / "small.png").size == (30, 20)


# ----------------------------------------------------------------------------------------------------
# evaluate.py, ONNX, torch.hub


def test_evaluate_on_real_sample_writes_grids_and_metrics(tmp_path, maps_sample):
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8, "direction": "AtoB"}},
               tmp_path / "G.pt")
    (maps_sample / "val" / "001.png").unlink(missing_ok=True)
    for f in sorted((maps_sample / "train").iterdir())[8:24]:
        (maps_sample / "val" / f.name).symlink_to(f.resolve())
    evaluate.main(["--weights", str(tmp_path / "G.pt"), "--data-root", str(maps_sample), "--out", str(tmp_path / "ev"),
                   "--device", "cpu"])
    for name in ("grid_input", "grid_output", "grid_target"):
        assert Image.open(tmp_path / "ev" / f"{name}.png").size == (8 * 258 + 2, 3 * 258 + 2)
    assert Image.open(tmp_path / "ev" / "grid_triplets.png").size == (3 * 258 + 2, 24 * 258 + 2)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    keys = ["l1", "psnr", "ssim", "rmse", "acc5", "acc10", "iou_background", "iou_road", "iou_highway",
            "iou_water", "iou_park", "miou_structure"]
    assert set(keys) <= metrics.keys() and metrics["images"] == 24
    assert len((tmp_path / "ev" / "per_image.csv").read_text().splitlines()) == 25


def test_onnx_matches_pytorch_and_hub_loads(tmp_path):
    pytest.importorskip("onnxruntime")
    import export
    G = init_weights(Generator(ngf=8))
    for m in G.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2)
    torch.save({"G": G.state_dict(), "config": {"ngf": 8}}, tmp_path / "G.pt")
    r = subprocess.run([sys.executable, "export.py", "--weights", str(tmp_path / "G.pt"), "--out",
                        str(tmp_path / "g.onnx"), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr  # a normal run prints no warnings
    assert export.max_difference(G, tmp_path / "g.onnx", shape=(2, 3, 256, 512)) < 1e-4
    assert export.max_difference(G, tmp_path / "g.onnx", shape=(1, 3, 512, 256)) < 1e-4
    hub = torch.hub.load(str(ROOT), "generator", source="local", weights=str(tmp_path / "G.pt"))
    assert all(torch.equal(a, b) for a, b in zip(hub.state_dict().values(), G.state_dict().values()))
