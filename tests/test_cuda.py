"""The GPU verification kit: mixed precision, CUDA graphs, determinism and exact resume, the
GPU-resident, mapped and pinned data paths, inference commands and NCCL, all on CUDA.

    python -m pytest -q -rs tests/test_cuda.py       # .ci/gpu runs this, then bench.py

Every test is marked `cuda` and skipped where PyTorch sees no GPU (tests/test_gpu_paths.py checks the
same code paths on a CPU). Runs that set global CUDA state (--deterministic, --compile, torchrun) are
separate processes; runs that share that state share one process, as each start costs a CUDA context.
"""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import cache
import dataset
import evaluate
import export
import predict
from conftest import ROOT, TINY, assert_same, make_dataset, train
from generator import load_generator
from utils import amp_dtype

pytestmark = pytest.mark.cuda
CUDA = ["--device", "cuda"]  # after TINY's --device cpu, so it is the one argparse keeps
STATE = ("G", "D", "opt_G", "opt_D", "sched_G", "sched_D", "scaler", "rng", "step", "epoch")
GRAPH_STEPS = 8  # CUDA graphs: step 1 warms up, step 2 records, steps 3-8 replay

# train.main over several runs in one process: argv is a JSON list of argument lists. With --counters
# it also counts, through the CUDA-graph tree manager, the graphs recorded and the recorded graphs
# replayed, and prints them with inductor's skip count and dynamo's number of compiled graphs.
RUNS = """
import json, sys
import torch
from torch._dynamo.utils import counters
from torch._inductor import cudagraph_trees
import train
from config import parse_config
calls = {"record_function": 0, "execute_node": 0}
for name in calls:
    def counted(self, *args, _name=name, _original=getattr(cudagraph_trees.CUDAGraphTreeManager, name), **kw):
        calls[_name] += 1
        return _original(self, *args, **kw)
    setattr(cudagraph_trees.CUDAGraphTreeManager, name, counted)
for argv in json.loads(sys.argv[1]):
    train.main(parse_config(argv))
print(json.dumps({"recorded": calls["record_function"], "replayed": calls["execute_node"],
                  "skips": counters["inductor"]["cudagraph_skips"], "graphs": counters["stats"]["unique_graphs"]}))
"""


def run(*args, timeout=90) -> str:
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def train_runs(*runs, timeout=90) -> dict:
    """train.py runs (argument lists, tiny widths on the GPU) one after the other in one fresh process;
    returns the CUDA-graph counts (see RUNS)."""
    argv = [[*TINY, *CUDA, *map(str, r)] for r in runs]
    return json.loads(run("-c", RUNS, json.dumps(argv), timeout=timeout).strip().splitlines()[-1])


def torchrun(nproc: int, *args) -> str:
    return run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", nproc, "train.py",
               *TINY, *CUDA, *args)


def last(run_dir) -> dict:
    """A run's last.pt read as a machine without a GPU would: no map_location."""
    return torch.load(f"{run_dir}/last.pt", weights_only=True)


def losses(run_dir) -> list[list[float]]:
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [[r["loss_D"], r["loss_G_gan"], r["loss_G_l1"]] for r in rows if "loss_D" in r]


def all_tensors(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
    return [t for v in values for t in all_tensors(v)]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_saves_cpu_tensors(tmp_path, data, amp):
    ckpt = train(*CUDA, "--amp", amp, "--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 6)
    resolved = json.loads((tmp_path / "r" / "config.json").read_text())["resolved"]
    assert resolved["device"].startswith("cuda") and resolved["amp"] == amp and resolved["data_cache"] == "memory"
    assert ckpt["step"] == 6 and all(math.isfinite(v) for row in losses(tmp_path / "r") for v in row)
    if amp == "fp16":  # GradScaler is on and has a finite scale to resume with
        assert ckpt["scaler"]["scale"] > 0 and math.isfinite(ckpt["scaler"]["scale"])
    else:
        assert ckpt["scaler"] == {}
    g = torch.load(tmp_path / "r" / "G.pt", weights_only=True)  # no map_location: loads anywhere
    assert all(t.device.type == "cpu" for t in all_tensors(ckpt) + all_tensors(g))
    fast_bf16 = torch.cuda.get_device_capability() >= (8, 0)
    assert amp_dtype("auto", torch.device("cuda")) == (torch.bfloat16 if fast_bf16 else torch.float16)


def test_compile_reduce_overhead_replays_graphs_and_matches_eager(tmp_path, data):
    """CUDA graphs (torch.compile mode reduce-overhead) against eager, same seed and data, in one process.
    Graphs are recorded once, replayed at every later step, and none is skipped; G and D are each
    compiled once (D's two inputs share a layout). Dropout is off: compiled code draws its random
    numbers differently."""
    args = ["--data-root", data, "--max-steps", GRAPH_STEPS, "--amp", "bf16", "--dropout", 0, "--no-validate"]
    counts = train_runs([*args, "--run-dir", tmp_path / "eager"],
                        [*args, "--run-dir", tmp_path / "graphs", "--compile", "reduce-overhead"], timeout=180)
    assert counts["skips"] == 0 and counts["recorded"] > 0, counts
    assert counts["replayed"] >= 2 * counts["recorded"], counts  # steps of pure replay, not re-recording
    assert counts["graphs"] == 2, counts  # G and D, no recompilation
    eager, graphs = losses(tmp_path / "eager"), losses(tmp_path / "graphs")
    assert len(eager) == len(graphs) == GRAPH_STEPS
    np.testing.assert_allclose(graphs, eager, rtol=5e-2, atol=2e-3)


@pytest.fixture(scope="module")
def deterministic(tmp_path_factory):
    """--deterministic bf16 runs in one process: 4 steps from GPU memory (the reference), and 2 steps
    from the mapped file resumed to 4."""
    tmp = tmp_path_factory.mktemp("deterministic")
    data = make_dataset(tmp / "data")
    common = ["--data-root", data, "--deterministic", "--amp", "bf16"]
    train_runs([*common, "--run-dir", tmp / "memory", "--max-steps", 4, "--data-cache", "memory"],
               [*common, "--run-dir", tmp / "disk", "--max-steps", 2, "--data-cache", "disk"],
               [*common, "--run-dir", tmp / "disk", "--max-steps", 4, "--data-cache", "disk"])
    return common, last(tmp / "memory"), tmp


def test_deterministic_resume_is_exact_across_data_paths(deterministic):
    """2 steps from the mapped file (pinned, copied ahead) + 2 resumed = 4 steps from GPU memory."""
    _, reference, tmp = deterministic
    resumed = last(tmp / "disk")
    assert "cuda" in reference["rng"][0] and resumed["config"]["data_cache"] == "disk"
    assert_same({k: reference[k] for k in STATE}, {k: resumed[k] for k in STATE})


def test_one_process_nccl_torchrun_matches_plain_run(tmp_path, deterministic):
    common, reference, _ = deterministic
    torchrun(1, *common, "--run-dir", tmp_path / "ddp", "--max-steps", 2)
    assert "resuming from" in torchrun(1, *common, "--run-dir", tmp_path / "ddp", "--max-steps", 4)
    resolved = json.loads((tmp_path / "ddp" / "config.json").read_text())["resolved"]
    assert resolved["backend"] == "nccl" and resolved["world_size"] == 1
    ddp = last(tmp_path / "ddp")
    for key in ("G", "D", "opt_G", "opt_D"):
        assert_same(reference[key], ddp[key], key)


def test_two_gpus_nccl_with_sync_bn_train_and_resume(tmp_path, data):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs, this host has {torch.cuda.device_count()}")
    common = ["--data-root", data, "--sync-bn"]
    torchrun(2, *common, "--run-dir", tmp_path / "r", "--max-steps", 2)
    out = torchrun(2, *common, "--run-dir", tmp_path / "r", "--max-steps", 4)
    assert "resuming from" in out and out.count("done at step 4") == 1
    resolved = json.loads((tmp_path / "r" / "config.json").read_text())["resolved"]
    assert resolved["backend"] == "nccl" and resolved["world_size"] == 2
    ckpt = last(tmp_path / "r")
    assert ckpt["step"] == 4 and len(ckpt["rng"]) == 2 and all(t.device.type == "cpu" for t in all_tensors(ckpt))
    assert all(math.isfinite(v) for row in losses(tmp_path / "r") for v in row)


def test_gpu_resident_and_pinned_data_paths_give_the_cpu_pixels(tmp_path):
    root = make_dataset(tmp_path / "d", n_train=5)
    pairs, _ = dataset.list_pairs(root, "train")
    plan = dataset.jitter_plan(len(pairs), seed=1, epoch=2, load=286, crop=256, flip=True)
    on_cpu = cache.CachedPairs(pairs, 286).batch(plan, 256)
    on_gpu = cache.CachedPairs(pairs, 286).to("cuda").batch(plan, 256)
    mapped = cache.CachedPairs(pairs, 286, tmp_path / "cache").batch(plan, 256)
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), on_cpu) and torch.equal(mapped, on_cpu)
    rows = [plan[i:i + 2] for i in range(0, 4, 2)]
    mapped_pairs = cache.CachedPairs(pairs, 286, tmp_path / "cache")
    copied = list(cache.prefetch((mapped_pairs.batch(r, 256) for r in rows), torch.device("cuda")))
    assert all(b.device.type == "cuda" for b in copied)
    assert torch.equal(torch.cat(copied).cpu(), on_cpu[:4])


def test_predict_evaluate_export_on_cuda_match_the_cpu(tmp_path, data):
    train(*CUDA, "--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 2)
    weights = tmp_path / "r" / "G.pt"
    metrics = {}
    for device in ("cuda", "cpu"):
        evaluate.main(["--weights", str(weights), "--data-root", str(data), "--split", "val", "--eval",
                       "--out", str(tmp_path / f"eval_{device}"), "--device", device])
        metrics[device] = json.loads((tmp_path / f"eval_{device}" / "metrics.json").read_text())
    assert metrics["cuda"]["images"] == metrics["cpu"]["images"] == 2
    assert metrics["cuda"]["l1"] == pytest.approx(metrics["cpu"]["l1"], abs=2e-3)  # TF32 convolutions on the GPU
    maps = {}
    for device, amp in (("cpu", "off"), ("cuda", "off"), ("cuda", "auto")):
        out = tmp_path / f"pred_{device}_{amp}"
        assert predict.main(["--weights", str(weights), "--input", str(data / "val"), "--out", str(out), "--pairs",
                             "--eval", "--amp", amp, "--device", device]) == 0
        maps[device, amp] = np.stack([np.asarray(Image.open(f)).astype(int) for f in sorted(out.glob("*.png"))])
    assert maps["cpu", "off"].shape == (2, 64, 64, 3)
    assert np.abs(maps["cuda", "off"] - maps["cpu", "off"]).max() <= 2  # TF32 and PNG rounding
    low = np.abs(maps["cuda", "auto"] - maps["cpu", "off"])  # bf16 (fp16 below compute capability 8)
    assert low.max() <= 8 and low.mean() < 1.5
    G, _ = load_generator(weights, "cuda")
    export.export(G, tmp_path / "g.onnx")  # traced on the GPU
    assert export.max_difference(G, tmp_path / "g.onnx") < 5e-3


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
