"""An adversarial corpus over every command: bad input gets one line naming the file or flag, never a
traceback or a hang; odd but valid input (1-px images, 1-bit PNGs, EXIF rotation) just works."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
import evaluate
import export
import plots
import predict
import train as train_mod
from cli import InputError, run_command
from config import parse_config
from conftest import ROOT, make_ab, make_dataset, run_main
from generator import Generator, init_weights

MAINS = {
    "train": lambda argv: train_mod.main(parse_config(argv)),
    "predict": predict.main,
    "evaluate": evaluate.main,
    "export": export.main,
    "dataset": dataset.main,
    "plots": plots.main,
}


@pytest.fixture
def corpus(tmp_path):
    """Files a careless or hostile user might hand us."""
    c = tmp_path / "corpus"
    c.mkdir()
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8}}, c / "G.pt")
    (c / "empty.pt").write_bytes(b"")
    (c / "page.pth").write_text("<html><body>Captive portal: please log in</body></html>")
    torch.save({"G": {"down1.conv.weight": torch.zeros(1)}, "config": {"ngf": 8}}, c / "foreign.pt")
    (c / "a_file").write_text("not a folder")
    make_ab(c / "whole.jpg", w=256, h=128)
    (c / "A").mkdir()
    (c / "B").mkdir()
    (c / "A" / "x.jpg").write_bytes((c / "whole.jpg").read_bytes()[:1500])
    make_ab(c / "B" / "x.jpg", w=128, h=128)
    make_dataset(c / "data", n_train=2, n_val=2)
    make_ab(c / "dup" / "scene.png", w=64, h=64)
    make_ab(c / "dup" / "scene.jpg", w=64, h=64)
    (c / "run").mkdir()
    (c / "run" / "G.pt").write_bytes((c / "G.pt").read_bytes())
    (c / "run" / "last.pt").write_bytes((c / "G.pt").read_bytes())
    (c / "empty_run").mkdir()
    (c / "notes.pt").write_text("101 epochs, lr 2e-4\n")
    (c / "model.onnx").write_bytes(b"\x08\x0a\x12\x07pytorch\x1a\x062.14.1" + bytes(range(256)))
    (c / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (c / "empty.jsonl").write_bytes(b"")
    (c / "prose.jsonl").write_text("loss went down\n")
    (c / "metrics.jsonl").write_text('{"step": 1, "loss_D": 0.7}\n')
    return c


CASES = [
    ("train", ["--lr", "-1"], "--lr: expected a positive learning rate"),
    ("train", ["--lr", "nan"], "--lr: expected a positive learning rate"),
    ("train", ["--beta1", "1.5"], "--beta1: expected --beta1 and --beta2 in [0, 1)"),
    ("train", ["--batch-size", "0"], "--batch-size: expected at least 1"),
    ("train", ["--num-samples", "0"], "--num-samples: expected at least 1"),
    ("train", ["--crop-size", "100"], "--crop-size: expected a multiple of 256"),
    ("train", ["--data-root", "{c}/data", "--run-dir", "{c}/a_file"], "--run-dir {c}/a_file: is a file"),
    ("train", ["--data-root", "{c}/data", "--run-dir", "{c}/r", "--resume", "{c}/empty.pt"], "{c}/empty.pt: empty file"),
    ("train", ["--data-root", "{c}/data", "--run-dir", "{c}/r", "--resume", "{c}/page.pth"],
     "{c}/page.pth: not a readable PyTorch checkpoint"),
    ("train", ["--data-root", "{c}/nowhere", "--run-dir", "{c}/r"], "{c}/nowhere: data root not found"),
    ("train", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ("train", ["--val-fid", "--val-samples", "1"], "--val-samples: expected 0 (all) or at least 2"),
    ("predict", ["--weights", "{c}/G.pt", "--input", "{c}/dup", "--out", "{c}/o"],
     "scene.jpg and scene.png would both be written as scene.*"),
    ("predict", ["--weights", "{c}/missing.pt", "--input", "{c}/whole.jpg", "--out", "{c}/o"],
     "{c}/missing.pt: no such generator file"),
    ("predict", ["--weights", "{c}/page.pth", "--input", "{c}/whole.jpg", "--out", "{c}/o"],
     "{c}/page.pth: not a readable PyTorch generator"),
    ("predict", ["--weights", "{c}/foreign.pt", "--input", "{c}/whole.jpg", "--out", "{c}/o"],
     "{c}/foreign.pt: not a generator with these settings; missing:"),
    ("predict", ["--weights", "{c}/G.pt", "--input", "{c}/nothing.png", "--out", "{c}/o"],
     "--input {c}/nothing.png: no such file or folder"),
    ("predict", ["--weights", "{c}/G.pt", "--input", "{c}/A", "--out", "{c}/a_file"], "--out {c}/a_file: is a file"),
    ("predict", ["--weights", "{c}/G.pt", "--input", "{c}/whole.jpg", "--out", "{c}/o", "--batch", "0"],
     "--batch 0: expected at least 1"),
    ("predict", ["--weights", "{c}/G.pt", "--input", "{c}/whole.jpg", "--out", "{c}/o", "--tile", "100"],
     "--tile 100: expected a positive multiple of 256"),
    ("predict", ["--weights", "{c}/G.pt", "--input", "{c}/whole.jpg", "--out", "{c}/o", "--scale", "0"],
     "--scale 0.0: expected a factor"),
    ("predict", ["--weights", "{c}/G.pt", "--input", "{c}/whole.jpg", "--out", "{c}/o", "--device", "tpu"],
     "argument --device: invalid choice"),
    ("evaluate", ["--weights", "{c}/G.pt", "--data-root", "{c}/data", "--out", "{c}/e", "--samples", "0"],
     "--samples 0: expected at least 1"),
    ("evaluate", ["--weights", "{c}/G.pt", "--data-root", "{c}/data", "--out", "{c}/a_file"],
     "--out {c}/a_file: is a file"),
    ("evaluate", ["--weights", "{c}/G.pt", "--data-root", "{c}/nowhere", "--out", "{c}/e"],
     "{c}/nowhere: data root not found"),
    ("evaluate", ["--weights", "{c}/empty.pt", "--data-root", "{c}/data", "--out", "{c}/e"], "{c}/empty.pt: empty file"),
    ("export", ["--weights", "{c}/G.pt", "--out", "{c}/no/such/folder/g.onnx"], "folder {c}/no/such/folder does not exist"),
    ("export", ["--weights", "{c}/G.pt", "--out", "{c}/A"], "--out {c}/A: is a folder"),
    ("export", ["--weights", "{c}/missing.pt", "--out", "{c}/g.onnx"], "{c}/missing.pt: no such generator file"),
    ("export", ["--weights", "{c}/G.pt", "--out", "{c}/g.onnx", "--int8"], "--int8, --calibrate and --pairs go with --web"),
    ("export", ["--weights", "{c}/G.pt", "--out", "{c}/g.onnx", "--web", "{c}/h.onnx"], "not allowed with argument"),
    ("export", ["--weights", "{c}/G.pt", "--web", "{c}/g.txt"], "--web {c}/g.txt: expected a NAME.onnx file name"),
    ("export", ["--weights", "{c}/G.pt", "--web", "{c}/g.onnx", "--int8"], "--web {c}/g.onnx: int8 weights (--int8)"),
    ("export", ["--weights", "{c}/G.pt", "--web", "{c}/g.onnx", "--calibrate", "{c}/nowhere"],
     "--calibrate {c}/nowhere: expected a folder of satellite pictures or rasters"),
    ("dataset", ["combine", "{c}/A", "{c}/B", "{c}/ab"], "{c}/A/x.jpg: cannot decode"),
    ("dataset", ["check", "{c}/nowhere"], "{c}/nowhere: no split folders"),
    ("dataset", ["combine", "{c}/A", "{c}/B", "{c}/a_file"], "{c}/a_file"),
    ("dataset", ["download", "imagenet"], "invalid choice: 'imagenet'"),
    ("predict", ["--weights", "{c}/run", "--input", "{c}/whole.jpg", "--out", "{c}/o"],
     "{c}/run: is a folder; expected a generator file, such as {c}/run/G.pt or {c}/run/last.pt"),
    ("predict", ["--weights", "{c}/empty_run", "--input", "{c}/whole.jpg", "--out", "{c}/o"],
     "{c}/empty_run: is a folder without a generator file in it; expected a file (G.pt, G_best.pt, last.pt"),
    ("predict", ["--weights", "{c}/notes.pt", "--input", "{c}/whole.jpg", "--out", "{c}/o"],
     "{c}/notes.pt: not a readable PyTorch generator (it is a text file: '101 epochs, lr 2e-4')"),
    ("export", ["--weights", "{c}/model.onnx", "--out", "{c}/h.onnx"],
     "{c}/model.onnx: not a readable PyTorch generator (it is an ONNX model: onnxruntime runs it"),
    ("train", ["--data-root", "{c}/data", "--run-dir", "{c}/r", "--resume", "{c}/run"],
     "{c}/run: is a folder; expected a checkpoint file, such as {c}/run/last.pt"),
    ("evaluate", ["--weights", "{c}/G.pt", "--input", "{c}/data/val", "--split", "val", "--out", "{c}/e"],
     "--input names the folder to evaluate: give it, or --data-root and --split, not both"),
    ("evaluate", ["--weights", "{c}/G.pt", "--input", "{c}/whole.jpg", "--out", "{c}/e"],
     "--input {c}/whole.jpg: no such folder (expected a folder of A|B pair images"),
    ("predict", ["--weigths", "{c}/G.pt", "--input", "{c}/whole.jpg", "--out", "{c}/o"],
     "required: --weights; did you mean --weights?"),
    ("evaluate", ["--weights", "{c}/G.pt", "--data-rot", "{c}/data", "--out", "{c}/e"],
     "unrecognized arguments: --data-rot {c}/data; did you mean --data-root?"),
    ("plots", ["{c}/binary.jsonl", "{c}/c.png"], "{c}/binary.jsonl: a binary file (expected one JSON object"),
    ("plots", ["{c}/empty.jsonl", "{c}/c.png"], "{c}/empty.jsonl: no rows to plot"),
    ("plots", ["{c}/prose.jsonl", "{c}/c.png"], "{c}/prose.jsonl: no rows to plot"),
    ("plots", ["{c}/metrics.jsonl", "{c}/nowhere/c.png"], "{c}/nowhere/c.png: folder {c}/nowhere does not exist"),
    ("plots", ["{c}/metrics.jsonl", "{c}/A"], "{c}/A: is a folder; expected a PNG file name"),
    ("plots", ["{c}/run", "{c}/c.png"], "{c}/run: is a folder; expected its metrics.jsonl"),
]


@pytest.mark.parametrize("command, argv, expected", CASES, ids=[f"{c[0]}:{' '.join(c[1])[:40]}" for c in CASES])
def test_bad_input_gets_one_line(corpus, capsys, command, argv, expected):
    with pytest.raises(SystemExit) as e:
        run_command(MAINS[command], [a.format(c=corpus) for a in argv])
    said = e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err
    assert e.value.code != 0
    first = said.strip().splitlines()[0]
    assert expected.format(c=corpus) in first, said
    assert "Traceback" not in said


def test_predict_never_overwrites_its_input(corpus, capsys):
    make_ab(corpus / "self" / "tile.png", w=64, h=64)
    before = (corpus / "self" / "tile.png").read_bytes()
    argv = ["--weights", str(corpus / "G.pt"), "--input", str(corpus / "self"), "--out", str(corpus / "self")]
    assert predict.main(argv) == 1
    assert "would overwrite the input" in capsys.readouterr().err
    assert (corpus / "self" / "tile.png").read_bytes() == before


def test_a_real_command_line_prints_no_traceback(corpus):
    r = subprocess.run([sys.executable, "predict.py", "--weights", str(corpus / "page.pth"), "--input",
                        str(corpus / "whole.jpg"), "--out", str(corpus / "o")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")


def test_library_calls_raise_instead_of_exiting(corpus):
    with pytest.raises(InputError, match="no such generator file"):
        torch.hub.load(str(ROOT), "generator", source="local", weights=str(corpus / "missing.pt"))
    with pytest.raises(InputError, match="not a readable PyTorch generator"):
        torch.hub.load(str(ROOT), "generator", source="local", weights=str(corpus / "page.pth"))


def test_export_without_onnx_is_one_line(corpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if it were not installed
    with pytest.raises(InputError, match="pip install"):
        export.export(init_weights(Generator(ngf=8)), corpus / "g.onnx")
    assert not (corpus / "g.onnx").exists()


# ----------------------------------------------------------------------------------------------------
# Odd but valid input


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (2, 3)])
def test_predict_handles_one_pixel_sides(corpus, size):
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(corpus / "thin.png")
    r = run_main(predict.main, "--weights", corpus / "G.pt", "--input", corpus / "thin.png", "--out", corpus / "o")
    assert r.returncode == 0, r.stderr
    assert Image.open(corpus / "o" / "thin.png").size == size


def test_predict_tiny_scale_finishes(corpus):
    assert run_command(predict.main, ["--weights", str(corpus / "G.pt"), "--input", str(corpus / "whole.jpg"),
                                      "--out", str(corpus / "o"), "--scale", "1e-6"]) == 0
    assert Image.open(corpus / "o" / "whole.png").size == (1, 1)


def test_predict_pairs_translates_the_input_half(corpus, capsys):
    pair = corpus / "data" / "val" / "000.png"  # 128x64: A | B
    predict.main(["--weights", str(corpus / "G.pt"), "--input", str(pair), "--out", str(corpus / "o"), "--eval"])
    assert Image.open(corpus / "o" / "000.png").size == (128, 64)
    assert "--pairs" in capsys.readouterr().err  # twice as wide as high: the hint
    predict.main(["--weights", str(corpus / "G.pt"), "--input", str(pair), "--out", str(corpus / "p"), "--eval",
                  "--pairs"])
    assert Image.open(corpus / "p" / "000.png").size == (64, 64)
    a_only = Image.open(pair).crop((0, 0, 64, 64))
    a_only.save(corpus / "a_only.png")
    predict.main(["--weights", str(corpus / "G.pt"), "--input", str(corpus / "a_only.png"), "--out",
                  str(corpus / "q"), "--eval"])
    assert np.array_equal(np.asarray(Image.open(corpus / "p" / "000.png")),
                          np.asarray(Image.open(corpus / "q" / "a_only.png")))
    predict.main(["--weights", str(corpus / "G.pt"), "--input", str(pair), "--out", str(corpus / "b"), "--eval",
                  "--pairs", "--direction", "BtoA"])
    assert not np.array_equal(np.asarray(Image.open(corpus / "b" / "000.png")),
                              np.asarray(Image.open(corpus / "p" / "000.png")))


def test_one_bit_png_and_exif_rotation(tmp_path):
    bits = np.zeros((32, 64), bool)
    bits[:, :32] = True
    Image.fromarray(bits).convert("1").save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    assert dataset.inspect_image(tmp_path / "bits.png", True, True) is None
    x = dataset.decode_pair(dataset.Pair("b", tmp_path / "bits.png", None), 32)
    assert x[:3].min() == 255 and x[3:].max() == 0
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 80, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90 degrees clockwise
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert dataset.load_rgb(tmp_path / "phone.jpg").size == (40, 80)
    assert "odd width" not in (dataset.inspect_image(tmp_path / "phone.jpg", True, False) or "")


def test_decompression_bomb_guard_names_the_way_out(tmp_path, monkeypatch):
    make_ab(tmp_path / "big.png", w=64, h=32)
    monkeypatch.setattr(dataset, "MAX_PIXELS", 1000)
    assert "over 0 megapixels" in dataset.inspect_image(tmp_path / "big.png", True, False)
    with pytest.raises(dataset.DataError, match="--max-megapixels"):
        dataset.load_rgb(tmp_path / "big.png", max_pixels=1000)
    assert dataset.load_rgb(tmp_path / "big.png", max_pixels=None).size == (64, 32)


def test_dangling_links_and_all_bad_files_in_one_report(tmp_path):
    root = make_dataset(tmp_path / "d", n_train=3)
    (root / "train" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "train" / "zero.png").write_bytes(b"")
    make_ab(tmp_path / "whole.jpg", w=256, h=128)
    (root / "train" / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:1500])
    with pytest.raises(dataset.DataError) as e:
        dataset.open_split(root, "train")  # the quick header scan alone would miss cut.jpg
    msg = str(e.value)
    assert "3 bad file(s)" in msg and "gone.png: broken symbolic link" in msg
    assert "zero.png: zero-byte file" in msg and "cut.jpg: truncated or corrupt" in msg
