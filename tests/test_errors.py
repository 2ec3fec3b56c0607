"""Bad input gets a one-line error naming the file or flag and what was expected."""
import subprocess
import sys

import pytest
import torch

from cli import InputError
from config import parse_config
from conftest import ROOT, make_ab, make_dataset, train


def error_of(*args) -> str:
    with pytest.raises(InputError) as e:
        train(*args)
    return str(e.value)


def plant(data, name, content=None, **kw):
    path = data / "train" / name
    if content is None:
        make_ab(path, **kw)
    else:
        path.write_bytes(content)
    return path


def truncated_jpeg(tmp_path):
    make_ab(tmp_path / "whole.jpg", w=256, h=128)
    return (tmp_path / "whole.jpg").read_bytes()[:1500]


@pytest.mark.parametrize("case, expected", [
    ("zero", "zero-byte file"),
    ("text", "not an image PIL can read"),
    ("odd", "odd width 129"),
    ("tiny", "too small: 20x10"),
    ("truncated", "cannot decode"),
])
def test_bad_files_are_named_with_the_problem(tmp_path, data, case, expected):
    path = {"zero": lambda: plant(data, "bad.png", b""),
            "text": lambda: plant(data, "bad.jpg", b"this is not a jpeg"),
            "odd": lambda: plant(data, "bad.png", w=129),
            "tiny": lambda: plant(data, "bad.png", w=20, h=10),
            "truncated": lambda: plant(data, "bad.jpg", truncated_jpeg(tmp_path))}[case]()
    msg = error_of("--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 1)
    assert str(path) in msg and expected in msg and "--skip-bad" in msg


def test_missing_root_split_and_empty_folder(tmp_path):
    assert "data root not found" in error_of("--data-root", tmp_path / "nowhere", "--run-dir", tmp_path / "r")
    (tmp_path / "d").mkdir()
    msg = error_of("--data-root", tmp_path / "d", "--run-dir", tmp_path / "r")
    assert f"{tmp_path / 'd' / 'train'}: split folder not found" in msg
    (tmp_path / "d" / "train").mkdir()
    assert "no images" in error_of("--data-root", tmp_path / "d", "--run-dir", tmp_path / "r")


def test_unknown_flag_and_bad_value(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--learning-rate", "1"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --learning-rate" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        parse_config(["--crop-size", "300"])
    assert "--crop-size: expected a multiple of 256" in capsys.readouterr().err


def test_resume_from_something_that_is_not_a_checkpoint(tmp_path, data):
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    assert f"{junk}: not a readable PyTorch checkpoint" in error_of(
        "--data-root", data, "--run-dir", tmp_path / "r", "--resume", junk)
    torch.save({"weights": torch.zeros(1)}, junk)
    assert "not a complete sat2map training checkpoint" in error_of(
        "--data-root", data, "--run-dir", tmp_path / "r", "--resume", junk)
    assert "no such checkpoint file" in error_of(
        "--data-root", data, "--run-dir", tmp_path / "r", "--resume", tmp_path / "missing.pt")


def test_architecture_mismatch_names_the_settings(tmp_path, data):
    train("--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 1)
    msg = error_of("--data-root", data, "--run-dir", tmp_path / "r", "--ngf", 16, "--norm", "instance")
    assert "--ngf 8 in the checkpoint, 16 now" in msg and "--norm batch in the checkpoint, instance now" in msg


def test_cli_error_is_one_line_without_traceback(tmp_path):
    data = make_dataset(tmp_path / "data")
    (data / "train" / "000.png").write_bytes(b"")
    r = subprocess.run([sys.executable, "train.py", "--data-root", str(data), "--run-dir", str(tmp_path / "r")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[0] == "error: 1 bad file(s) in " + str(data / "train") + ":"
    assert f"{data / 'train' / '000.png'}: zero-byte file" in r.stderr
