"""The GPU verification kit: mixed precision, CUDA graphs, determinism and exact resume, the
GPU-resident and mapped data paths, inference commands and NCCL, all on CUDA.

    python -m pytest -q -rs tests/test_cuda.py       # .ci/gpu runs this, then bench.py

Every test is marked `cuda` and skipped where PyTorch sees no GPU. Runs that set global CUDA state
(--deterministic, --compile, torchrun) are separate processes.
"""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import cache
import dataset
from conftest import ROOT, TINY, assert_same, make_dataset, train

pytestmark = pytest.mark.cuda
CUDA = ["--device", "cuda"]
STATE = ("G", "D", "opt_G", "opt_D", "sched_G", "sched_D", "scaler", "rng", "step", "epoch")


def run(*args, timeout=300) -> str:
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def train_cli(*args) -> dict:
    """train.py in its own process with tiny widths on the GPU; returns the run's last checkpoint."""
    run("train.py", *TINY, *CUDA, *args)
    run_dir = args[list(args).index("--run-dir") + 1]
    return torch.load(f"{run_dir}/last.pt", weights_only=True)


def losses(run_dir) -> list[list[float]]:
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [[r["loss_D"], r["loss_G_gan"], r["loss_G_l1"]] for r in rows]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, data, amp):
    ckpt = train(*CUDA, "--amp", amp, "--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 6)
    resolved = json.loads((tmp_path / "r" / "config.json").read_text())["resolved"]
    assert resolved["device"].startswith("cuda") and resolved["amp"] == amp and resolved["data_cache"] == "memory"
    assert ckpt["step"] == 6 and all(math.isfinite(v) for row in losses(tmp_path / "r") for v in row)
    if amp == "fp16":  # GradScaler is on and has a finite scale to resume with
        assert ckpt["scaler"]["scale"] > 0 and math.isfinite(ckpt["scaler"]["scale"])
    else:
        assert ckpt["scaler"] == {}
    assert all(t.device.type == "cpu" for t in ckpt["G"].values())  # loads anywhere


def test_compile_reduce_overhead_matches_eager(tmp_path, data):
    """CUDA graphs (torch.compile mode reduce-overhead) against eager, same seed and data. Dropout is
    off: compiled code draws its random numbers differently."""
    args = ["--data-root", data, "--max-steps", 4, "--amp", "bf16", "--dropout", 0]
    train_cli(*args, "--run-dir", tmp_path / "eager")
    train_cli(*args, "--run-dir", tmp_path / "graphs", "--compile", "reduce-overhead")
    eager, graphs = losses(tmp_path / "eager"), losses(tmp_path / "graphs")
    assert len(eager) == len(graphs) == 4
    np.testing.assert_allclose(graphs[:3], eager[:3], rtol=5e-2, atol=1e-3)


def test_deterministic_resume_is_exact_across_data_paths(tmp_path, data):
    """--deterministic: two runs agree bit for bit; 3 steps from the mapped file + 3 resumed equal 6
    steps from GPU memory."""
    common = ["--data-root", data, "--deterministic", "--amp", "bf16"]
    a = train_cli(*common, "--run-dir", tmp_path / "a", "--max-steps", 6, "--data-cache", "memory")
    again = train_cli(*common, "--run-dir", tmp_path / "again", "--max-steps", 6, "--data-cache", "memory")
    assert_same({k: a[k] for k in STATE}, {k: again[k] for k in STATE})
    train_cli(*common, "--run-dir", tmp_path / "b", "--max-steps", 3, "--data-cache", "disk")
    b = train_cli(*common, "--run-dir", tmp_path / "b", "--max-steps", 6, "--data-cache", "disk")
    assert "cuda" in a["rng"][0]
    assert_same({k: a[k] for k in STATE}, {k: b[k] for k in STATE})


def test_gpu_resident_data_path_gives_the_cpu_pixels(tmp_path):
    root = make_dataset(tmp_path / "d", n_train=5)
    pairs, _ = dataset.list_pairs(root, "train")
    plan = dataset.jitter_plan(len(pairs), seed=1, epoch=2, load=286, crop=256, flip=True)
    on_cpu = cache.CachedPairs(pairs, 286).batch(plan, 256)
    on_gpu = cache.CachedPairs(pairs, 286).to("cuda").batch(plan, 256)
    mapped = cache.CachedPairs(pairs, 286, tmp_path / "cache").batch(plan, 256)
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), on_cpu) and torch.equal(mapped, on_cpu)


def test_predict_evaluate_export_on_cuda(tmp_path, data):
    train(*CUDA, "--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 2)
    weights = tmp_path / "r" / "G.pt"
    for device in ("cuda", "cpu"):
        run("evaluate.py", "--weights", weights, "--data-root", data, "--split", "val", "--eval",
            "--out", tmp_path / f"eval_{device}", "--device", device)
    on_gpu, on_cpu = (json.loads((tmp_path / f"eval_{d}" / "metrics.json").read_text()) for d in ("cuda", "cpu"))
    assert on_gpu["images"] == on_cpu["images"] == 2
    assert on_gpu["l1"] == pytest.approx(on_cpu["l1"], abs=2e-3)  # TF32 convolutions on the GPU
    image = sorted((data / "val").iterdir())[0]
    run("predict.py", "--weights", weights, "--input", image, "--out", tmp_path / "pred", "--device", "cuda")
    assert list((tmp_path / "pred").glob("*.png"))
    run("export.py", "--weights", weights, "--out", tmp_path / "g.onnx")
    import onnxruntime as ort
    from generator import load_generator
    G, _ = load_generator(weights, "cuda")
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref = G.eval()(x.cuda()).cpu().numpy()
    got = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"]).run(None, {"satellite": x.numpy()})[0]
    assert np.abs(got - ref).max() < 5e-3


def test_one_process_nccl_torchrun_matches_plain_run(tmp_path, data):
    common = [*TINY, *CUDA, "--data-root", data, "--deterministic", "--amp", "bf16"]
    run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "train.py", *common,
        "--run-dir", tmp_path / "ddp", "--max-steps", 2)
    out = run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "train.py", *common,
              "--run-dir", tmp_path / "ddp", "--max-steps", 4)
    assert "resuming from" in out
    resolved = json.loads((tmp_path / "ddp" / "config.json").read_text())["resolved"]
    assert resolved["backend"] == "nccl" and resolved["world_size"] == 1
    plain = train_cli("--data-root", data, "--deterministic", "--amp", "bf16", "--run-dir", tmp_path / "plain",
                      "--max-steps", 4)
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    for key in ("G", "D", "opt_G", "opt_D"):
        assert_same(plain[key], ddp[key], key)


def test_tile_engine_on_cuda_gives_the_cpu_result(tmp_path):
    """tiles.translate of a CUDA tensor (its mask stays on the host) and predict.py's overlapped raster
    path (pinned copies, the writer waiting only for its row) agree with the CPU to TF32 rounding."""
    from generator import Generator, init_weights
    from test_raster import scene, write_tif
    import rasterio
    import tiles
    torch.manual_seed(0)
    G = init_weights(Generator(ngf=8))
    x = torch.rand(1, 3, 500, 600, generator=torch.Generator().manual_seed(1)) * 2 - 1
    on_cpu = tiles.translate(G, x, paper=False)
    on_gpu = tiles.translate(G.cuda(), x.cuda(), paper=False)
    assert on_gpu.device.type == "cuda" and (on_gpu.cpu() - on_cpu).abs().max() < 2e-2
    torch.save({"G": G.cpu().state_dict(), "config": {"ngf": 8}}, tmp_path / "G.pt")
    src = write_tif(tmp_path / "in" / "s.tif", scene(h=700, w=900)[0], nodata=0)
    out = {}
    for device in ("cuda", "cpu"):
        run("predict.py", "--weights", tmp_path / "G.pt", "--input", src, "--out", tmp_path / device, "--eval",
            "--amp", "off", "--block", "256", "--bands", "3,2,1", "--device", device)
        with rasterio.open(tmp_path / device / "s.tif") as ds:
            out[device] = ds.read().astype(int), ds.dataset_mask()
    assert np.array_equal(out["cuda"][1], out["cpu"][1])
    assert np.abs(out["cuda"][0] - out["cpu"][0]).max() <= 2
