"""Never lose a run, and the paper's test-time mode: pipes, signals, stop rows, refused resumes.

    python -m pytest -q tests/test_robustness.py
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn

from cli import InputError
from config import parse_config
from conftest import ROOT, TINY, make_ab, make_dataset, train
from generator import Generator, inference, init_weights


# ----------------------------------------------------------------------------------------------------
# The paper's test-time mode


def trained_looking_generator():
    """A generator without dropout whose running statistics are far from any batch's statistics, so
    that normalising with them or with the batch gives clearly different outputs."""
    torch.manual_seed(0)
    G = init_weights(Generator(ngf=8, dropout=0.0))
    for m in G.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.2, 3)
            m.num_batches_tracked.fill_(1000)
    return G


def test_paper_mode_uses_batch_statistics_and_leaves_no_trace():
    G = trained_looking_generator()
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    before = {k: v.clone() for k, v in G.state_dict().items()}
    reference = trained_looking_generator().train()  # same weights: train mode = batch statistics
    with torch.no_grad():
        batch_stats = reference(x)
    with inference(G, paper=True):
        paper = G(x)
    with inference(G, paper=False):
        running = G(x)
    assert torch.allclose(paper, batch_stats, atol=1e-6)
    assert (paper - running).abs().max() > 0.05  # --eval is a different mode, not a rounding apart
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert G.training and all(m.running_mean is not None for m in G.modules() if isinstance(m, nn.BatchNorm2d))


def test_paper_mode_restores_buffers_after_an_exception():
    G = trained_looking_generator().eval()
    with pytest.raises(RuntimeError):
        with inference(G, paper=True):
            raise RuntimeError("boom")
    assert not G.training
    assert all(m.running_var is not None for m in G.modules() if isinstance(m, nn.BatchNorm2d))


# ----------------------------------------------------------------------------------------------------
# Pipes, signals and what a stopped run leaves behind


def rows(run_dir):
    """The training rows of metrics.jsonl (validation rows carry val_ metrics instead of losses)."""
    return [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss_D" in row]


def test_closed_pipe_then_ctrl_c_still_saves_with_a_stop_row_and_grid(tmp_path):
    """`python train.py | tee log`, then Ctrl-C: tee is gone before the trainer's next write."""
    data = make_dataset(tmp_path / "data", n_train=6)
    run = tmp_path / "r"
    p = subprocess.Popen([sys.executable, "train.py", "--data-root", str(data), "--run-dir", str(run), *TINY,
                          "--log-every", "1000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while not (run / "samples" / "step_0000000.png").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # a few steps
    p.stdout.close()  # the reader dies first, as tee does on Ctrl-C
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=90) == 0
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] >= 1
    assert rows(run)[-1]["step"] == ckpt["step"]  # a metrics row at the step where it stopped
    assert (run / "samples" / f"step_{ckpt['step']:07d}.png").is_file()
    assert (run / "samples" / "step_0000000.png").is_file()


def test_output_to_a_closed_pipe_never_stops_training(tmp_path):
    """`python train.py | head -1`: the reader leaves at once; the run still completes and saves."""
    data = make_dataset(tmp_path / "data")
    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    p = subprocess.Popen([sys.executable, "train.py", "--data-root", str(data), "--run-dir", str(tmp_path / "r"),
                          *TINY, "--max-steps", "6"], cwd=ROOT, stdout=reader.stdin, stderr=reader.stdin)
    reader.stdin.close()
    assert p.wait(timeout=120) == 0
    reader.wait(timeout=10)
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"] == 6


def test_sighup_from_a_closed_terminal_saves(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=6)
    run = tmp_path / "r"
    p = subprocess.Popen([sys.executable, "train.py", "--data-root", str(data), "--run-dir", str(run), *TINY],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGHUP)
    assert p.wait(timeout=90) == 0
    assert torch.load(run / "last.pt", weights_only=True)["step"] == rows(run)[-1]["step"]


# ----------------------------------------------------------------------------------------------------
# Resume refusals leave the run folder untouched


@pytest.fixture(scope="module")
def at2(tmp_path_factory):
    """A folder with data/ (4 training pairs) and r/, a 2-step run on it, made once: the tests that
    continue it or change it work on a copy (copy_of), the others only read it."""
    root = tmp_path_factory.mktemp("at2")
    train("--data-root", make_dataset(root / "data"), "--run-dir", root / "r", "--max-steps", 2)
    return root


def copy_of(at2, tmp_path):
    """The 2-step run and its data, copied into tmp_path: (data folder, run folder)."""
    shutil.copytree(at2, tmp_path, dirs_exist_ok=True)
    return tmp_path / "data", tmp_path / "r"


def test_refused_resume_does_not_rewrite_config(tmp_path, at2):
    data, run = copy_of(at2, tmp_path)
    saved = (run / "config.json").read_text()
    with pytest.raises(InputError, match="architecture differs"):
        train("--data-root", data, "--run-dir", run, "--ngf", 16)
    assert (run / "config.json").read_text() == saved


def test_changed_dataset_is_refused_unless_allowed(tmp_path, at2):
    data, run = copy_of(at2, tmp_path)
    make_ab(data / "train" / "new.png", seed=9)
    with pytest.raises(InputError) as e:
        train("--data-root", data, "--run-dir", run, "--max-steps", 4)
    assert "trained on 4 pairs" in str(e.value) and "now has 5" in str(e.value)
    assert "--allow-data-change" in str(e.value)
    ckpt = train("--data-root", data, "--run-dir", run, "--max-steps", 4, "--allow-data-change")
    assert ckpt["step"] == 4 and ckpt["data"]["pairs"] == 5


def test_resume_after_a_torn_metrics_row(tmp_path, at2):
    data, run = copy_of(at2, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss_D": 0.')  # the crash came in mid-write
    train("--data-root", data, "--run-dir", run, "--max-steps", 3)
    assert [r["step"] for r in rows(run)] == [1, 2, 3]


def test_checkpoint_missing_pieces_and_empty_file_are_named(tmp_path, at2):
    data, ckpt = at2 / "data", torch.load(at2 / "r" / "last.pt", weights_only=True)
    del ckpt["sched_G"], ckpt["scaler"]
    torch.save(ckpt, tmp_path / "partial.pt")
    with pytest.raises(InputError, match="missing sched_G, scaler"):
        train("--data-root", data, "--run-dir", tmp_path / "x", "--resume", tmp_path / "partial.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(InputError, match="empty.pt: empty file"):
        train("--data-root", data, "--run-dir", tmp_path / "x", "--resume", tmp_path / "empty.pt")
    assert not (tmp_path / "x").exists()


def test_name_defaults_to_data_folder_and_config_shows_resolved_auto(at2):
    assert parse_config(["--data-root", "data/facades"]).run_dir == "weights/facades"
    assert parse_config(["--data-root", "data/maps/"]).name == "maps"
    assert parse_config(["--name", "x"]).run_dir == "weights/x"
    resolved = json.loads((at2 / "r" / "config.json").read_text())["resolved"]
    assert resolved["device"] == "cpu" and resolved["amp"] in ("bf16", "off")
    assert resolved["channels_last"] == "off" and resolved["why"]["channels_last"].startswith("auto: contiguous on a CPU")
    assert resolved["why"]["amp"].startswith("auto: ")


def test_non_utf8_file_names_train_and_check(tmp_path, data):
    name = os.fsdecode(b"\xff\xfebad-name.png")
    make_ab(data / "train" / name, seed=5)
    ckpt = train("--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 2, "--data-cache", "disk")
    assert ckpt["data"]["pairs"] == 5
    r = subprocess.run([sys.executable, "dataset.py", "check", str(data)], cwd=ROOT, capture_output=True,
                       timeout=120)
    assert r.returncode == 0 and b"Traceback" not in r.stderr
    assert b"0 bad file(s)" in r.stdout


def test_a_failing_validation_never_stops_training(tmp_path, data, monkeypatch, capsys):
    import evaluate

    def broken(*args, **kwargs):
        raise InputError("val: 1 pair(s), none could be evaluated")

    monkeypatch.setattr(evaluate, "evaluate_pairs", broken)
    ckpt = train("--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 4, "--val-every", 2)
    assert ckpt["step"] == 4 and "validation at step 2 skipped" in capsys.readouterr().err
