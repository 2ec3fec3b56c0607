"""Training: exact resume, crash safety, checkpoint contents and the real-data smoke run. One 6-step
run is shared by the module: the reference that resumed runs must reproduce, and the run folder whose
contents are checked.

    python -m pytest -q tests/test_train.py
"""
import contextlib
import io
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, TINY, assert_same, make_dataset, train

STATE = ("G", "D", "opt_G", "opt_D", "sched_G", "sched_D", "scaler", "rng", "step", "epoch")


def training_rows(run_dir):
    """metrics.jsonl without the validation rows (tests/test_validation.py checks those)."""
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss_D" in r]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """6 uninterrupted steps on 4 training pairs (step 4 ends epoch 1) from the in-memory cache: the
    data folder, the run folder, its last checkpoint and what the run printed."""
    root = tmp_path_factory.mktemp("straight")
    data = make_dataset(root / "data")
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        ckpt = train("--data-root", data, "--run-dir", root / "a", "--max-steps", 6, "--data-cache", "memory")
    return SimpleNamespace(data=data, run=root / "a", ckpt=ckpt, said=said.getvalue())


@pytest.mark.parametrize("first", [3, 4])  # 4 training pairs: step 4 ends epoch 1
def test_resume_is_bit_identical(tmp_path, straight, first):
    train("--data-root", straight.data, "--run-dir", tmp_path / "b", "--max-steps", first)
    resumed = train("--data-root", straight.data, "--run-dir", tmp_path / "b", "--max-steps", 6)
    assert resumed["step"] == 6 and resumed["epoch"] == 1
    assert_same({k: straight.ckpt[k] for k in STATE}, {k: resumed[k] for k in STATE})


def test_resume_never_starts_over_and_explicit_path_continues(tmp_path, straight):
    shutil.copytree(straight.run, tmp_path / "a")  # a run folder at step 6
    fresh = train("--data-root", straight.data, "--run-dir", tmp_path / "a", "--max-steps", 1, "--resume", "never")
    assert fresh["step"] == 1
    cont = train("--data-root", straight.data, "--run-dir", tmp_path / "b", "--max-steps", 3,
                 "--resume", tmp_path / "a" / "last.pt")
    assert cont["step"] == 3


def test_checkpoint_contents_and_run_folder(straight):
    ckpt, run = straight.ckpt, straight.run
    assert ckpt["version"] == 1 and set(STATE) <= ckpt.keys()
    assert ckpt["config"]["ngf"] == 8 and isinstance(ckpt["config"], dict)
    assert {"python", "numpy", "torch"} <= ckpt["rng"][0].keys()
    g = torch.load(run / "G.pt", weights_only=True)
    assert_same(g["G"], ckpt["G"])
    rows = training_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss_D", "loss_G_gan", "loss_G_l1", "lr", "seconds", "epoch"} <= rows[0].keys()
    assert json.loads((run / "config.json").read_text())["max_steps"] == 6
    assert (run / "samples" / "step_0000006.png").is_file()  # the last step's grid
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*tmp*"))


def test_lr_is_constant_then_decays_linearly(tmp_path, data):
    train("--data-root", data, "--run-dir", tmp_path / "r", "--epochs", 1, "--epochs-decay", 2)
    rows = training_rows(tmp_path / "r")
    lrs = {r["step"]: r["lr"] for r in rows}  # logged after the step, so the epoch-end rows show the next lr
    assert lrs[1] == lrs[3] == 2e-4
    assert lrs[4] == pytest.approx(2e-4 * 2 / 3) and lrs[8] == pytest.approx(2e-4 / 3)
    assert max(r["step"] for r in rows) == 12


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def wait_until(condition, p, seconds=120, poll=0.005):
    """Wait until condition() holds or the process p has ended; a hang guard, not a measurement."""
    deadline = time.monotonic() + seconds
    while not condition() and p.poll() is None:
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(poll)


def test_sigkill_at_random_moments_never_corrupts_and_rerun_continues(tmp_path):
    """Four runs killed with SIGKILL once each has saved a checkpoint of its own (a save follows every
    step): two at a random moment within the next second (in a step, a save or between), two the
    moment the next checkpoint's temp file appears (inside a save: writing, syncing or renaming).
    last.pt stays loadable and never goes back, and the same command then finishes the run bit for
    bit as an uninterrupted one."""
    data = make_dataset(tmp_path / "data", n_train=6)
    run = tmp_path / "crash"
    args = ["--data-root", data, "--run-dir", run, *TINY, "--save-every", "1", "--max-steps", 24]
    rnd, step = random.Random(0), 0

    def inode():
        return (run / "last.pt").stat().st_ino if (run / "last.pt").exists() else None

    for kill in range(4):
        before, temps = inode(), set(run.glob(".last.pt.*.tmp"))
        p = subprocess.Popen([sys.executable, "train.py", *map(str, args)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: inode() not in (None, before), p)  # its own first save: training is under way
        if kill % 2:
            wait_until(lambda: set(run.glob(".last.pt.*.tmp")) - temps, p, poll=0.001)
        else:
            time.sleep(rnd.uniform(0.0, 1.0))
        assert p.poll() is None, "the run ended before it was killed"
        p.kill()
        p.wait()
        ckpt = torch.load(run / "last.pt", weights_only=True)
        assert ckpt["step"] >= max(step, 1)
        step = ckpt["step"]
    assert step < 24 and run_cli(*args).returncode == 0
    straight = train("--data-root", data, "--run-dir", tmp_path / "ref", "--max-steps", 24)
    crashed = torch.load(run / "last.pt", weights_only=True)
    assert_same({k: straight[k] for k in STATE}, {k: crashed[k] for k in STATE})


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=6)
    p = subprocess.Popen([sys.executable, "train.py", "--data-root", str(data), "--run-dir",
                          str(tmp_path / "r"), *TINY], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "r" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    assert "stopped by signal" in out
    step = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"]
    assert step >= 1


def test_smoke_on_real_maps_sample(tmp_path, maps_sample):
    ckpt = train("--data-root", maps_sample, "--run-dir", tmp_path / "r", "--max-steps", 30,
                 "--log-every", 10, "--sample-every", 30)
    rows = training_rows(tmp_path / "r")
    assert ckpt["step"] == 30 and len(rows) == 3
    assert rows[-1]["loss_G_l1"] < rows[0]["loss_G_l1"]  # it learns something in 30 steps
    assert (tmp_path / "r" / "samples" / "step_0000030.png").is_file()


def test_mapped_cache_resumes_exactly_as_memory(tmp_path, straight, monkeypatch, capsys):
    """3 steps from the mapped file + 3 more chosen by auto (forced to the file) = 6 steps from memory."""
    import cache
    assert "data cache: memory (--data-cache memory)" in straight.said
    data = tmp_path / "data"
    shutil.copytree(straight.data, data)  # a folder of its own for the mapped file
    train("--data-root", data, "--run-dir", tmp_path / "b", "--max-steps", 3, "--data-cache", "disk")
    monkeypatch.setattr(cache, "CACHE_SHARE", 0.0)
    resumed = train("--data-root", data, "--run-dir", tmp_path / "b", "--max-steps", 6)
    assert "data cache: disk (auto: " in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "config.json").read_text())["resolved"]["data_cache"] == "disk"
    assert len(list((data / ".cache" / "train").glob("*.u8"))) == 1
    assert_same({k: straight.ckpt[k] for k in STATE}, {k: resumed[k] for k in STATE})
