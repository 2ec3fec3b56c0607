"""Inference backends: ONNX Runtime against torch through the tile engine, the export cache, int8, the
backend flags' one-line errors, and what `auto` chooses (fake timers and capabilities: nothing here is
timed).

    python -m pytest -q tests/test_backends.py
"""
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import backends
import evaluate
import export
import int8
import predict
import probe
import raster
import tiles
from backends import Choice, OrtNet, TorchNet
from conftest import SHARED_SAMPLE
from generator import Generator, init_weights

FAKE_CPU = probe.Hardware("Fake CPU", "AVX2", (), False)  # no bf16, no VNNI, no AMX
FAKE_VNNI = probe.Hardware("Fake CPU", "AVX512", ("avx512_vnni",), False)


def save_weights(path: Path, seed: int) -> Path:
    """A tiny generator whose outputs span the levels (init gain 0.1), so level differences show."""
    torch.manual_seed(seed)
    torch.save({"G": init_weights(Generator(ngf=8), "normal", 0.1).state_dict(), "config": {"ngf": 8}}, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """G.pt and its float32 export, made once for the module."""
    path = save_weights(tmp_path_factory.mktemp("backends") / "G.pt", 0)
    backends.load(path, "cpu", "onnxruntime", eval_mode=True, log=None)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A real satellite tile of the maps sample (256 x 256) and a 700 x 500 image resized from it."""
    if not SHARED_SAMPLE.is_dir():
        pytest.skip(f"real maps sample not found at {SHARED_SAMPLE}")
    folder = tmp_path_factory.mktemp("inputs")
    pair = Image.open(sorted(SHARED_SAMPLE.glob("*.png"))[0]).convert("RGB")
    tile = pair.crop((0, 0, 256, 256))
    tile.save(folder / "tile.png")
    tile.resize((700, 500), Image.BICUBIC).save(folder / "scene.png")
    return folder


def label_of(net) -> str:
    """The Choice label a net runs (for the fake timers)."""
    if isinstance(net, OrtNet):
        return "onnxruntime int8" if net.path.name.endswith(".int8.onnx") else "onnxruntime float32"
    layout = " channels-last" if net.memory_format == torch.channels_last else ""
    return f"torch {backends.PRECISIONS[net.dtype]}{layout}"


def fake_timer(seconds: dict, seen: list | None = None):
    """A probe timer that reads each path's seconds from a table (and notes which it was asked)."""
    def timer(net, x):
        label = label_of(net)
        if seen is not None:
            seen.append(label)
        return seconds[label]
    return timer


def export_of(weights: Path) -> Path:
    """The float32 export cached beside the weights."""
    [path] = [p for p in weights.parent.glob(f"{weights.name}.*.onnx") if not p.name.endswith(".int8.onnx")]
    return path


def levels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


# ----------------------------------------------------------------------------------------------------
# ONNX Runtime against torch, through the tile engine


def test_onnxruntime_equals_torch_eval_within_a_level(weights, inputs, tmp_path, capsys):
    outs = {}
    for backend in ("torch", "onnxruntime"):
        assert predict.main(["--weights", str(weights), "--input", str(inputs), "--out", str(tmp_path / backend),
                             "--eval", "--amp", "off", "--backend", backend, "--device", "cpu"]) == 0
        summary = capsys.readouterr().out.strip().splitlines()[-1]
        assert summary.startswith("translated 2 of 2 input(s)") and f"with {backend} float32" in summary
        outs[backend] = {name: levels(tmp_path / backend / name) for name in ("tile.png", "scene.png")}
    for name, torch_out in outs["torch"].items():
        assert torch_out.shape == outs["onnxruntime"][name].shape
        assert torch_out.std() > 20  # a picture, not a flat field: the comparison means something
        assert np.abs(torch_out - outs["onnxruntime"][name]).max() <= 1, name


def test_changed_weights_make_a_new_export_and_the_stale_one_is_never_used(weights, tmp_path, monkeypatch):
    path = tmp_path / "G.pt"
    shutil.copy(weights, path)
    old_export = export_of(weights)
    shutil.copy(old_export, tmp_path)  # named by the content: the copy is the same weights' export
    monkeypatch.setattr(export, "export", lambda *a: pytest.fail("exported again although cached"))
    net, _, _ = backends.load(path, "cpu", "onnxruntime", eval_mode=True, log=None)
    assert net.path == tmp_path / old_export.name
    monkeypatch.undo()

    save_weights(path, 1)  # the same file, other weights
    net, _, choice = backends.load(path, "cpu", "onnxruntime", eval_mode=True, log=None)
    assert choice.label == "onnxruntime float32" and net.path.parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["G.pt", net.path.name]  # the stale one gone, no temp file
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    new_torch, _, _ = backends.load(path, "cpu", "torch", eval_mode=True, amp="off")
    old_torch, _, _ = backends.load(weights, "cpu", "torch", eval_mode=True, amp="off")
    got = int8.levels(tiles.run_tiles(net, x, [(0, 0)] * 2, False, 0, 2, False))
    with new_torch.inference(False, 0), old_torch.inference(False, 0):
        new = int8.levels(tiles.run_tiles(new_torch, x, [(0, 0)] * 2, False, 0, 2, False))
        old = int8.levels(tiles.run_tiles(old_torch, x, [(0, 0)] * 2, False, 0, 2, False))
    assert (got - new).abs().max() <= 1 and (got - old).abs().max() > 50


def test_an_unwritable_weights_folder_sends_models_to_the_cache_folder(tmp_path, monkeypatch):
    path = tmp_path / "run" / "G.pt"
    path.parent.mkdir()
    path.write_bytes(b"weights")
    monkeypatch.setenv(backends.CACHE_VARIABLE, str(tmp_path / "cache"))
    mkstemp = tempfile.mkstemp

    def refuse_run_folder(dir=None, **kw):
        if Path(dir) == path.parent:
            raise PermissionError(13, "Permission denied", str(dir))
        return mkstemp(dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", refuse_run_folder)
    made = backends.cached_model(path, "onnx", {"opset": 18}, lambda p: p.write_bytes(b"model"))
    assert made.parent == tmp_path / "cache" / "onnx" and made.read_bytes() == b"model"
    assert re.fullmatch(r"[0-9a-f]{8}-G\.pt\.[0-9a-f]{16}-[0-9a-f]{10}\.onnx", made.name)
    assert backends.cached_model(path, "onnx", {"opset": 18}, lambda p: pytest.fail("made twice")) == made
    assert backends.cached_model(path, "onnx", {"opset": 20}, lambda p: p.write_bytes(b"b")) != made  # settings count


# ----------------------------------------------------------------------------------------------------
# int8


def test_int8_is_static_qdq_per_channel_and_reports_its_cost(weights, inputs, tmp_path, capsys):
    argv = ["--weights", str(weights), "--input", str(inputs), "--eval", "--int8", "--backend", "onnxruntime",
            "--device", "cpu"]
    assert predict.main(argv + ["--out", str(tmp_path / "int8")]) == 0
    said = capsys.readouterr().out
    # 16 calibration tiles over 2 files: 8 of scene.png's 3 x 4, and tile.png's one
    cost = re.search(r"int8 cost on 9 calibration tiles, against float32: mean ([\d.]+) levels, max (\d+); "
                     r"structure classes agree on ([\d.]+)% of pixels \(structure IoU (n/a|[\d.]+)\)", said)
    assert cost and 0 < float(cost[1]) <= float(cost[2]) and float(cost[3]) > 90, said
    assert "with onnxruntime int8 (--backend onnxruntime)" in said
    [model] = weights.parent.glob("G.pt.*.int8.onnx")
    graph = onnx.load(str(model)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weight_scales = [init for init in graph.initializer if init.name.endswith("_scale") and len(init.dims) == 1
                     and init.dims[0] > 1]
    assert weight_scales  # one scale per output channel

    # the same tiles find it cached; other calibration tiles make another, and the first goes
    calibration = int8.calibration_tiles(raster.input_files(inputs), raster.Options(tiles.Engine()))
    assert len(calibration) == 9
    again, _ = int8.open_int8(export_of(weights), weights, calibration)
    assert again.path == model
    other, _ = int8.open_int8(export_of(weights), weights, calibration.flip(-1))
    assert other.path != model and not model.exists()


def test_quantize_int8_keeps_the_picture(weights, tmp_path):
    fp32 = export_of(weights)
    x = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = int8.quantize_int8(fp32, tmp_path / "g8.onnx", x.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g8.onnx"]  # nothing else left behind
    cost = int8.cost(OrtNet(fp32), OrtNet(out), x)
    with torch.no_grad():
        spread = int8.levels(OrtNet(fp32)(x)).std().item()
    # int8 moves a pixel by a few levels, a small part of how far the picture's pixels spread
    assert cost.tiles == 4 and 0 < cost.mean < spread / 10 and cost.agree > 0.9, (cost, spread)


# ----------------------------------------------------------------------------------------------------
# The flags


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("flags, says", [
    (["--int8", "--backend", "torch", "--eval"], "--int8 runs on onnxruntime, not torch"),
    (["--int8", "--backend", "auto"], "--int8 needs --eval: the paper mode runs on torch"),
    (["--backend", "onnxruntime"], "--backend onnxruntime needs --eval"),
])
def test_backend_flags_that_contradict_are_one_line(command, flags, says, tmp_path, capsys):
    main = {"predict": predict.main, "evaluate": evaluate.main}[command]
    with pytest.raises(SystemExit) as e:
        main(["--weights", str(tmp_path / "G.pt"), "--input", str(tmp_path), "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and says in err, err


# ----------------------------------------------------------------------------------------------------
# auto


def test_candidates_follow_the_hardware():
    labels = lambda paths: [p.label for p in paths]  # noqa: E731
    paths, notes = probe.candidates(FAKE_CPU, "auto", True, True)
    assert labels(paths) == ["torch float32", "torch float32 channels-last", "onnxruntime float32"]
    assert notes == ["int8 left out: this CPU has no VNNI or AMX-INT8, where int8 convolutions do not pay"]
    bf16 = probe.Hardware("Fake CPU", "AVX512", ("avx512_bf16",), True)
    assert "torch bfloat16 channels-last" in labels(probe.candidates(bf16, "auto", True, False)[0])
    assert "torch bfloat16 channels-last" not in labels(probe.candidates(bf16, "off", True, False)[0])  # --amp off
    no_ort = probe.candidates(FAKE_CPU, "auto", False, True)[0]
    assert labels(no_ort) == ["torch float32", "torch float32 channels-last"]
    costly = int8.Cost(8, 1.5, 9, 0.99, 0.9)
    paths, notes = probe.candidates(FAKE_VNNI, "auto", True, True, costly)
    assert "onnxruntime int8" not in labels(paths) and "costs 1.50 levels on average" in notes[0]
    cheap = int8.Cost(8, 0.1, 3, 0.999, 0.98)
    assert labels(probe.candidates(FAKE_VNNI, "auto", True, True, cheap)[0])[-1] == "onnxruntime int8"


@pytest.mark.parametrize("fastest", ["onnxruntime float32", "torch float32 channels-last"])
def test_auto_picks_the_faster_path_and_keeps_the_record(fastest, weights, tmp_path, monkeypatch):
    monkeypatch.setenv(backends.CACHE_VARIABLE, str(tmp_path))
    seconds = {"torch float32": 3.0, "torch float32 channels-last": 2.0, "onnxruntime float32": 2.0, fastest: 1.0}
    seen = []
    net, _, choice = backends.load(weights, "cpu", "auto", eval_mode=True, amp="off", log=None, hardware=FAKE_CPU,
                                   timer=fake_timer(seconds, seen))
    assert choice.label == fastest and label_of(net) == fastest and choice.why.startswith("auto: the fastest of 3")
    assert sorted(seen) == sorted(seconds)
    # the record of this machine decides next time: nothing is timed again
    net, _, again = backends.load(weights, "cpu", "auto", eval_mode=True, amp="off", log=None, hardware=FAKE_CPU,
                                  timer=lambda *a: pytest.fail("probed again"))
    assert again == choice and (tmp_path / "probe.json").is_file()


def test_auto_never_takes_a_path_that_is_not_here(weights, tmp_path, monkeypatch):
    monkeypatch.setenv(backends.CACHE_VARIABLE, str(tmp_path))
    fastest_everywhere = {"torch float32": 3.0, "torch float32 channels-last": 2.0, "onnxruntime float32": 0.5,
                          "torch bfloat16 channels-last": 0.1, "onnxruntime int8": 0.1}
    # no bf16, no VNNI: neither is measured, however fast the timer would say they are
    seen = []
    _, _, choice = backends.load(weights, "cpu", "auto", eval_mode=True, int8=True, log=None, hardware=FAKE_CPU,
                                 timer=fake_timer(fastest_everywhere, seen),
                                 calibrate=lambda config: pytest.fail("int8 made"))
    assert choice.label == "onnxruntime float32"
    assert sorted(seen) == ["onnxruntime float32", "torch float32", "torch float32 channels-last"]
    assert "no VNNI or AMX-INT8" in choice.why
    # no onnxruntime: torch only
    monkeypatch.setattr(backends, "onnxruntime_available", lambda: False)
    monkeypatch.setenv(backends.CACHE_VARIABLE, str(tmp_path / "elsewhere"))
    net, _, choice = backends.load(weights, "cpu", "auto", eval_mode=True, log=None, hardware=FAKE_CPU,
                                   timer=fake_timer(fastest_everywhere))
    assert choice.label == "torch float32 channels-last" and isinstance(net, TorchNet)
    assert "onnxruntime is not installed" in choice.why
    # the paper mode and a GPU: torch, and nothing measured
    never = lambda *a: pytest.fail("probed")  # noqa: E731
    _, _, choice = backends.load(weights, "cpu", "auto", eval_mode=False, amp="off", log=None, hardware=FAKE_CPU,
                                 timer=never)
    assert choice == Choice("torch", "float32", False, backends.PAPER_ON_TORCH)
    gpu = backends.fixed_choice("auto", True, "off", False, torch.device("cuda"))
    assert gpu.backend == "torch" and "device is cuda" in gpu.why
    with pytest.raises(backends.InputError, match="runs on the CPU here"):
        backends.check_device("onnxruntime", torch.device("cuda"))
