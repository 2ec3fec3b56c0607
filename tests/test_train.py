"""Training: exact resume, crash safety, checkpoint contents and the real-data smoke run."""
import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY, assert_same, make_dataset, train

STATE = ("G", "D", "opt_G", "opt_D", "sched_G", "sched_D", "scaler", "rng", "step", "epoch")


def training_rows(run_dir):
    """metrics.jsonl without the validation rows (tests/test_validation.py checks those)."""
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss_D" in r]


@pytest.mark.parametrize("first", [3, 4])  # 4 training pairs: step 4 ends epoch 1
def test_resume_is_bit_identical(tmp_path, data, first):
    straight = train("--data-root", data, "--run-dir", tmp_path / "a", "--max-steps", 6)
    train("--data-root", data, "--run-dir", tmp_path / "b", "--max-steps", first)
    resumed = train("--data-root", data, "--run-dir", tmp_path / "b", "--max-steps", 6)
    assert resumed["step"] == 6 and resumed["epoch"] == 1
    assert_same({k: straight[k] for k in STATE}, {k: resumed[k] for k in STATE})


def test_resume_never_starts_over_and_explicit_path_continues(tmp_path, data):
    train("--data-root", data, "--run-dir", tmp_path / "a", "--max-steps", 2)
    fresh = train("--data-root", data, "--run-dir", tmp_path / "a", "--max-steps", 1, "--resume", "never")
    assert fresh["step"] == 1
    cont = train("--data-root", data, "--run-dir", tmp_path / "b", "--max-steps", 3,
                 "--resume", tmp_path / "a" / "last.pt")
    assert cont["step"] == 3


def test_checkpoint_contents_and_run_folder(tmp_path, data):
    ckpt = train("--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 5, "--sample-every", 5)
    assert ckpt["version"] == 1 and set(STATE) <= ckpt.keys()
    assert ckpt["config"]["ngf"] == 8 and isinstance(ckpt["config"], dict)
    assert {"python", "numpy", "torch"} <= ckpt["rng"][0].keys()
    g = torch.load(tmp_path / "r" / "G.pt", weights_only=True)
    assert_same(g["G"], ckpt["G"])
    rows = training_rows(tmp_path / "r")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert {"loss_D", "loss_G_gan", "loss_G_l1", "lr", "seconds", "epoch"} <= rows[0].keys()
    assert json.loads((tmp_path / "r" / "config.json").read_text())["max_steps"] == 5
    assert (tmp_path / "r" / "samples" / "step_0000005.png").is_file()
    assert not list((tmp_path / "r").glob("*.tmp"))


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


def test_sigkill_at_random_moments_never_corrupts_and_rerun_continues(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=6)
    args = ["--data-root", data, "--run-dir", tmp_path / "crash", *TINY, "--save-every", "1", "--max-steps", 40]
    rnd = random.Random(0)
    for _ in range(5):
        p = subprocess.Popen([sys.executable, "train.py", *map(str, args)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(3.0, 6.0))  # import + setup takes ~2-3 s; then it saves after every step
        p.send_signal(signal.SIGKILL)
        p.wait()
        if (tmp_path / "crash" / "last.pt").exists():
            ckpt = torch.load(tmp_path / "crash" / "last.pt", weights_only=True)
            assert ckpt["step"] >= 1
    assert run_cli(*args).returncode == 0
    straight = train("--data-root", data, "--run-dir", tmp_path / "ref", "--max-steps", 40)
    crashed = torch.load(tmp_path / "crash" / "last.pt", weights_only=True)
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


def test_mapped_cache_resumes_exactly_as_memory(tmp_path, data, monkeypatch, capsys):
    """3 steps from the mapped file + 3 more chosen by auto (forced to the file) = 6 steps from memory."""
    import cache
    straight = train("--data-root", data, "--run-dir", tmp_path / "a", "--max-steps", 6, "--data-cache", "memory")
    assert "data cache: memory (--data-cache memory)" in capsys.readouterr().out
    train("--data-root", data, "--run-dir", tmp_path / "b", "--max-steps", 3, "--data-cache", "disk")
    monkeypatch.setattr(cache, "CACHE_SHARE", 0.0)
    resumed = train("--data-root", data, "--run-dir", tmp_path / "b", "--max-steps", 6)
    assert "data cache: disk (auto: " in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "config.json").read_text())["resolved"]["data_cache"] == "disk"
    assert len(list((data / ".cache" / "train").glob("*.u8"))) == 1
    assert_same({k: straight[k] for k in STATE}, {k: resumed[k] for k in STATE})
