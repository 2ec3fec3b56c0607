"""torchrun: 2 CPU processes with gloo train, checkpoint on rank 0 and resume exactly, on one node and
across two "nodes" (two torchrun launches on 127.0.0.1) alike. Each launch costs seconds, so the two
runs that start from nothing are made once for the module: 4 steps on one node (the reference), and 2
steps on two nodes, which each test continues in a copy, on one node and on two.

    python -m pytest -q tests/test_distributed.py
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, TINY, assert_same, make_dataset

# PYTHONFAULTHANDLER: a process that dies of a signal (an abort in C++) prints where each thread was
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def torchrun(*args):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "train.py", *TINY, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(*args) -> str:
    """Two torchrun launches of one process each, node ranks 0 and 1, meeting on 127.0.0.1 exactly as
    two machines would (static rendezvous: --node-rank, --master-addr, --master-port). Returns the
    output of both."""
    port = free_port()
    launches = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank",
                                  str(node), "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
                                  "--master-port", str(port), "train.py", *TINY, *map(str, args)],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
                for node in (0, 1)]
    outs = []
    try:
        for p in launches:
            outs.append(p.communicate(timeout=120)[0])
    except subprocess.TimeoutExpired:
        for q in launches:
            q.kill()
        said = [q.communicate()[0][-12000:] for q in launches]
        pytest.fail(f"two nodes did not finish in 120 s; node 0 said:\n{said[0]}\nnode 1 said:\n{said[1]}")
    for p, out in zip(launches, outs):
        assert p.returncode == 0, out[-4000:]
    return "\n".join(outs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """4 steps of 2 processes on one node from memory: the run every other run here must reproduce; and
    2 steps on two nodes, each building the mapped cache in the shared data folder at the same time (as
    on a shared file system): the run folder the tests continue, and what the launches printed."""
    tmp = tmp_path_factory.mktemp("runs")
    data = make_dataset(tmp / "data", n_train=6)  # 3 steps per epoch at 2 x batch 1
    one = torchrun("--data-root", data, "--run-dir", tmp / "a", "--max-steps", 4)
    two = two_nodes("--data-root", data, "--run-dir", tmp / "at2", "--max-steps", 2, "--data-cache", "disk")
    return SimpleNamespace(data=data, a=torch.load(tmp / "a" / "last.pt", weights_only=True), at2=tmp / "at2",
                           one_node_said=one, two_nodes_said=two)


def test_two_processes_train_and_resume_exactly(tmp_path, runs):
    """One node continues the two nodes' run from step 2 and ends where its own uninterrupted run
    ended: both train alike, and resuming is exact."""
    a = runs.a
    assert runs.one_node_said.count("done at step 4") == 1  # rank 0 alone reports
    shutil.copytree(runs.at2, tmp_path / "b")
    out = torchrun("--data-root", runs.data, "--run-dir", tmp_path / "b", "--max-steps", 4)
    assert "resuming from" in out and out.count("done at step 4") == 1
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4 and len(a["rng"]) == 2
    assert not torch.equal(a["rng"][0]["torch"], a["rng"][1]["torch"])  # own dropout stream per process
    for key in ("G", "D", "opt_G", "opt_D", "rng"):
        assert_same(a[key], b[key], key)
    rows = [json.loads(r) for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss_D" in r] == [1, 2, 3, 4]  # rank 0 logs; nothing twice
    assert [r["step"] for r in rows if "val_l1" in r] == [2, 3, 4]  # rank 0 validates: each epoch, each end


def test_two_nodes_train_what_one_node_trains_and_resume(tmp_path, runs):
    """Two nodes continue their own run from step 2 (from the mapped cache they built together); the
    result is still bit for bit the one-node run from memory."""
    a = runs.a
    assert runs.two_nodes_said.count("done at step 2") == 1
    shutil.copytree(runs.at2, tmp_path / "b")
    out = two_nodes("--data-root", runs.data, "--run-dir", tmp_path / "b", "--max-steps", 4, "--data-cache", "disk")
    assert "resuming from" in out
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert b["step"] == 4 and b["config"]["data_cache"] == "disk"
    for key in ("G", "D", "opt_G", "opt_D", "sched_G", "rng"):
        assert_same(a[key], b[key], key)
