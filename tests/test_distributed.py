"""torchrun: 2 CPU processes with gloo train, checkpoint on rank 0 and resume exactly."""
import json
import subprocess
import sys

import torch

from conftest import ROOT, TINY, assert_same, make_dataset


def torchrun(*args):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "train.py", *TINY, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def test_two_processes_train_and_resume_exactly(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=6)  # 3 steps per epoch at 2 x batch 1
    torchrun("--data-root", data, "--run-dir", tmp_path / "a", "--max-steps", 4)
    out = torchrun("--data-root", data, "--run-dir", tmp_path / "b", "--max-steps", 2)
    assert out.count("done at step 2") == 1  # rank 0 alone reports
    out = torchrun("--data-root", data, "--run-dir", tmp_path / "b", "--max-steps", 4)
    assert "resuming from" in out
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4 and len(a["rng"]) == 2
    assert not torch.equal(a["rng"][0]["torch"], a["rng"][1]["torch"])  # own dropout stream per process
    for key in ("G", "D", "opt_G", "opt_D", "rng"):
        assert_same(a[key], b[key], key)
    rows = [json.loads(r) for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss_D" in r] == [1, 2, 3, 4]  # rank 0 logs; nothing twice
    assert [r["step"] for r in rows if "val_l1" in r] == [2, 3, 4]  # rank 0 validates: each epoch, each end
