"""The command-line convention every command shares, and the rough edges around it: --help shows each
default once, renamed flags still work, nothing is left behind, files are as readable as the umask
says, and unreadable rasters, bad val splits and silent servers end in one clear line."""
import csv
import json
import os
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

import evaluate
import export
import generator
import predict
import durable
import train as train_mod
import utils
from cli import InputError
from config import parse_config
from conftest import ROOT, make_ab, make_dataset, train
from generator import Generator, init_weights

COMMANDS = {"predict": predict.main, "evaluate": evaluate.main, "export": export.main,
            "train": lambda argv: parse_config(argv)}


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "G.pt"
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8}}, path)
    return path


def help_of(command, capsys) -> str:
    with pytest.raises(SystemExit):
        COMMANDS[command](["--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_each_default_once_and_every_command_has_device_and_seed(command, capsys):
    text = help_of(command, capsys)
    assert "(default: None)" not in text
    assert "--device {auto,cpu,cuda,mps} auto: cuda, then mps, then cpu (default: auto)" in text
    options = text.split("options:", 1)[1]
    assert options.split("--seed SEED", 1)[1].split("(default: ", 1)[1].startswith("0)")
    if command == "predict":  # its help states the default itself: not again after it
        assert "png otherwise)" in text and "png otherwise) (default" not in text
        assert "--weights WEIGHTS G.pt, last.pt or G_best.pt of a run" in text


def test_renamed_flags_still_work_with_a_notice(tmp_path, weights, capsys):
    make_ab(tmp_path / "in.png", w=64, h=64)
    assert predict.main(["--weights", str(weights), "--input", str(tmp_path / "in.png"),
                         "--output", str(tmp_path / "o"), "--eval"]) == 0
    assert (tmp_path / "o" / "in.png").is_file()
    assert "notice: --output is now --out" in capsys.readouterr().err
    with pytest.raises(InputError, match="no such generator file"):  # parsed: --onnx filled --out
        export.main(["--weights", str(tmp_path / "missing.pt"), "--onnx", str(tmp_path / "g.onnx")])
    assert "notice: --onnx is now --out" in capsys.readouterr().err
    assert "--onnx" not in help_of("export", capsys) and "--output" not in help_of("predict", capsys)


def test_bench_help_prints_only_help():
    r = subprocess.run([sys.executable, "bench.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: bench.py") and r.stderr == ""


def test_evaluate_input_folder_and_per_image_ious(tmp_path, weights):
    make_ab(tmp_path / "pairs" / "only.png", w=512, h=256)
    evaluate.main(["--weights", str(weights), "--input", str(tmp_path / "pairs"), "--out", str(tmp_path / "ev"),
                   "--eval"])
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    (row,) = csv.DictReader(open(tmp_path / "ev" / "per_image.csv"))
    ious = [k for k in metrics if "iou" in k]
    assert len(ious) == 6 and metrics["split"] == "pairs" and metrics["images"] == 1
    for k in ious:  # one image: its own IoUs are the split's
        assert row[k] == "" if metrics[k] is None else float(row[k]) == pytest.approx(metrics[k])
    road = torch.full((1, 3, 8, 8), 252 / 127.5 - 1)  # the road colour everywhere: no other class in either
    own = evaluate.StructureIoU().update(road, road)
    assert own["iou_road"] == 1 and own["iou_water"] is None and own["miou_structure"] == 1


def test_a_folder_that_cannot_be_synced_still_gets_the_file(tmp_path, monkeypatch):
    """Some network and FUSE file systems refuse to fsync a folder; the file is in place by then, and
    the command must not fail (a download would otherwise be fetched again)."""
    import errno
    import stat
    fsync = os.fsync

    def refuse_folders(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        fsync(fd)

    monkeypatch.setattr(utils.os, "fsync", refuse_folders)
    durable.atomic_write_text(tmp_path / "config.json", "{}")
    assert (tmp_path / "config.json").read_text() == "{}" and os.listdir(tmp_path) == ["config.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        utils.atomic_save({"x": torch.zeros(1)}, tmp_path / "last.pt")
        durable.atomic_write_text(tmp_path / "config.json", "{}")
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"last.pt": 0o666 & ~umask, "config.json": 0o666 & ~umask, "plain": 0o666 & ~umask}


def test_nothing_left_behind_when_nothing_was_written(tmp_path, weights, monkeypatch, capsys):
    (tmp_path / "bad.png").write_text("not a picture")
    out = tmp_path / "new" / "out"
    assert predict.main(["--weights", str(weights), "--input", str(tmp_path / "bad.png"), "--out", str(out)]) == 1
    assert "skipped" in capsys.readouterr().err and not (tmp_path / "new").exists()
    monkeypatch.chdir(tmp_path)

    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(InputError, match="host not found"):
        generator.load_generator("sat2map")
    assert not (tmp_path / "weights").exists()


def test_onnx_file_as_weights_never_suggests_unsafe_loading(tmp_path):
    from onnx import TensorProto, helper, save
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 256, 256]) for n in ("satellite", "map")]
    graph = helper.make_graph([helper.make_node("Tanh", ["satellite"], ["map"])], "G", io[:1], io[1:])
    save(helper.make_model(graph, producer_name="pytorch"), tmp_path / "g.onnx")
    (tmp_path / "g.bin").write_bytes((tmp_path / "g.onnx").read_bytes())  # named by its content, not suffix
    for name in ("g.onnx", "g.bin"):
        with pytest.raises(InputError) as e:
            generator.load_generator(tmp_path / name)
        assert "it is an ONNX model" in str(e.value) and "weights_only" not in str(e.value)


def geotiff(path, size=256):
    import rasterio
    from affine import Affine
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(1, 0, 500000, 0, -1, 4000000)) as dst:
        dst.write(np.random.default_rng(0).integers(0, 256, (3, size, size), dtype=np.uint8))
    return path


def test_unreadable_raster_pixels_name_the_file_and_the_cause(tmp_path, weights, capsys):
    whole = geotiff(tmp_path / "whole.tif").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.tif").write_bytes(whole[: len(whole) // 2])
    bands = "".join(f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">'
                    f'gone.tif</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>'
                    for b in (1, 2, 3))
    (tmp_path / "in" / "lost.vrt").write_text(f'<VRTDataset rasterXSize="256" rasterYSize="256">'
                                              f'<SRS>EPSG:32633</SRS><GeoTransform>500000, 1, 0, 4000000, 0, -1'
                                              f'</GeoTransform>{bands}</VRTDataset>')
    assert predict.main(["--weights", str(weights), "--input", str(tmp_path / "in"), "--out",
                         str(tmp_path / "o"), "--eval"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'in' / 'cut.tif'}: cannot read its pixels: " in err and "(is the file complete?)" in err
    assert f"{tmp_path / 'in' / 'lost.vrt'}: cannot read its pixels: " in err
    assert f"{tmp_path / 'in' / 'gone.tif'}: No such file or directory" in err and "Read failed" not in err


def test_a_val_split_of_bad_images_names_the_val_split(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=2, n_val=2)
    for f in (data / "val").iterdir():
        f.write_bytes(b"")
    with pytest.raises(InputError) as e:
        train("--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 1)
    assert str(e.value).startswith(f"{data / 'val'}: every pair is bad") and "--no-validate" in str(e.value)
    assert "train on" not in str(e.value)
    cfg = parse_config(["--data-root", str(data), "--no-validate", "--data-cache", "off"])
    _, val_pairs = train_mod.load_data(cfg, 0, torch.device("cpu"))
    assert [p.name for p in val_pairs] == ["000", "001"]  # the sample grids show training pairs
