"""Validation during training: val_ rows, G_best.pt, curves.png, exact resume, and an unchanged trajectory."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import train as train_mod
from cli import InputError
from config import METRIC_GOALS, parse_config
from conftest import assert_same, train
from generator import load_generator

STATE = ("G", "D", "opt_G", "opt_D", "sched_G", "sched_D", "scaler", "rng", "step", "epoch")


def rows_of(run_dir):
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(rows):
    return [(r["step"], r["loss_D"], r["loss_G_gan"], r["loss_G_l1"]) for r in rows if "loss_D" in r]


def test_validation_writes_rows_best_and_curves_without_changing_training(tmp_path, data, inception_file):
    plain = train("--data-root", data, "--run-dir", tmp_path / "plain", "--max-steps", 6, "--no-validate")
    ckpt = train("--data-root", data, "--run-dir", tmp_path / "val", "--max-steps", 6, "--val-every", 3,
                 "--val-fid", "--inception-weights", inception_file, "--sample-every", 3)
    # Bit-identical training state: validation touches neither RNG streams nor BatchNorm statistics
    assert_same({k: plain[k] for k in STATE}, {k: ckpt[k] for k in STATE})
    rows = rows_of(tmp_path / "val")
    assert losses(rows) == losses(rows_of(tmp_path / "plain"))
    val = [r for r in rows if "val_l1" in r]
    assert [r["step"] for r in val] == [3, 6]  # one in epoch 1 (steps 1-4), one in epoch 2
    assert {f"val_{k}" for k in METRIC_GOALS} | {"val_kid_std", "val_images", "val_seconds"} <= val[0].keys()
    assert val[0]["val_images"] == 2 and val[0]["val_fid"] > 0

    best = torch.load(tmp_path / "val" / "G_best.pt", weights_only=True)
    assert best["metric"] == "l1" and best["value"] == min(r["val_l1"] for r in val)
    assert best["step"] == next(r["step"] for r in val if r["val_l1"] == best["value"])
    assert ckpt["best"] == {"metric": "l1", "value": best["value"], "step": best["step"]}
    assert {"version", "G", "config"} <= best.keys() and best["config"]["ngf"] == 8
    G, config = load_generator(tmp_path / "val" / "G_best.pt")
    if best["step"] == 6:
        assert_same(best["G"], ckpt["G"])
    # The same numbers as evaluate.py on those weights (paper mode, seed 0)
    evaluate.main(["--weights", str(tmp_path / "val" / "G_best.pt"), "--data-root", str(data), "--out",
                   str(tmp_path / "ev"), "--device", "cpu"])
    measured = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert measured["l1"] == pytest.approx(best["value"], rel=1e-6)
    assert measured["psnr"] == pytest.approx(best["val"]["psnr"], rel=1e-6)

    with Image.open(tmp_path / "val" / "curves.png") as img:
        assert img.format == "PNG" and img.width > 500
    assert not (tmp_path / "plain" / "G_best.pt").exists()
    assert not any(k.startswith("val_") for r in rows_of(tmp_path / "plain") for k in r)
    # Sample grids carry a header strip: column titles and the step
    with Image.open(tmp_path / "val" / "samples" / "step_0000003.png") as img:
        assert img.size == (3 * 258 + 2, 2 * 258 + 2 + 22)
        header = torch.from_numpy(np.asarray(img.convert("L").crop((0, 0, img.width, 22))).copy())
        assert (header < 128).any() and (header == 255).float().mean() > 0.5
    assert not list((tmp_path / "val").glob(".*tmp*"))


def test_resume_keeps_best_and_does_not_duplicate_validation_rows(tmp_path, data):
    args = ("--data-root", data, "--val-every", 3)  # 4 training pairs: step 4 ends epoch 1
    straight = train(*args, "--run-dir", tmp_path / "a", "--max-steps", 6)
    run = tmp_path / "b"
    train(*args, "--run-dir", run, "--max-steps", 3)
    shutil.copy(run / "last.pt", tmp_path / "at3.pt")
    train(*args, "--run-dir", run, "--max-steps", 6)
    resumed = train(*args, "--run-dir", run, "--max-steps", 6, "--resume", tmp_path / "at3.pt")  # redo 4-6
    rows = rows_of(run)
    assert [r["step"] for r in rows if "val_l1" in r] == [3, 6]
    assert [r[0] for r in losses(rows)] == list(range(1, 7))
    assert_same({k: straight[k] for k in (*STATE, "best")}, {k: resumed[k] for k in (*STATE, "best")})
    best_a, best_b = (torch.load(d / "G_best.pt", weights_only=True) for d in (tmp_path / "a", run))
    assert_same({k: best_a[k] for k in ("G", "step", "value", "val")},
                {k: best_b[k] for k in ("G", "step", "value", "val")}, "G_best")

    # The best so far comes from the checkpoint: one no later validation beats stays, with its file
    ckpt = torch.load(tmp_path / "at3.pt", weights_only=True)
    ckpt["best"] = {"metric": "l1", "value": -1.0, "step": 2}
    torch.save(ckpt, tmp_path / "unbeatable.pt")
    before = (run / "G_best.pt").read_bytes()
    kept = train(*args, "--run-dir", run, "--max-steps", 6, "--resume", tmp_path / "unbeatable.pt")
    assert kept["best"] == {"metric": "l1", "value": -1.0, "step": 2}
    assert (run / "G_best.pt").read_bytes() == before
    # A checkpoint written before the best was kept still resumes; the best starts afresh
    del ckpt["best"]
    torch.save(ckpt, tmp_path / "older.pt")
    fresh = train(*args, "--run-dir", run, "--max-steps", 6, "--resume", tmp_path / "older.pt")
    assert fresh["best"]["step"] == 6 and [r["step"] for r in rows_of(run) if "val_l1" in r] == [3, 6]


def test_default_validates_each_epoch_and_at_the_end(tmp_path, data):
    train("--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 6, "--val-samples", 1)  # 4 pairs
    val = [r for r in rows_of(tmp_path / "r") if "val_l1" in r]
    assert [(r["step"], r["val_images"]) for r in val] == [(4, 1), (6, 1)]


def test_best_metric_direction_and_flags(capsys):
    low, high = train_mod.BestMetric("l1"), train_mod.BestMetric("psnr")
    assert [low.update(v, s) for s, v in enumerate([0.5, 0.6, 0.4, None, float("nan")])] == \
        [True, False, True, False, False]
    assert [high.update(v, s) for s, v in enumerate([20.0, 19.0, 21.0])] == [True, False, True]
    assert low.state_dict() == {"metric": "l1", "value": 0.4, "step": 2} and high.step == 2
    other = train_mod.BestMetric("ssim")
    other.load_state_dict(low.state_dict())  # another metric's best does not carry over
    assert other.value is None
    with pytest.raises(SystemExit):
        parse_config(["--best-metric", "fid"])
    assert "--best-metric: expected --val-fid with --best-metric fid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(["--best-metric", "accuracy"])
    assert "invalid choice: 'accuracy'" in capsys.readouterr().err


def test_val_fid_and_tensorboard_fail_in_one_line_before_training(tmp_path, data, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(InputError, match="pt_inception-2015-12-05-6726825d.pth"):
        train("--data-root", data, "--run-dir", tmp_path / "r", "--val-fid")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
        with pytest.raises(InputError, match="--tensorboard: the tensorboard package is not installed"):
            train("--data-root", data, "--run-dir", tmp_path / "r", "--tensorboard")
    assert not (tmp_path / "r").exists()


def test_tensorboard_gets_scalars_and_grids(tmp_path, data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train("--data-root", data, "--run-dir", tmp_path / "r", "--tensorboard", "--max-steps", 2,
          "--val-every", 2, "--sample-every", 2)
    events = EventAccumulator(str(tmp_path / "r" / "tb"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss_D", "train/loss_G_l1", "val/l1", "val/miou_structure"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val/l1")] == [2] and "samples" in tags["images"]
