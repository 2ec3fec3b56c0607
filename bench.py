"""Benchmark the training step and inference against a plain reference, in one run on one machine.

    python bench.py --device cpu --quick        # under a minute on a 2-core CPU
    python bench.py --device cuda --json        # the full table, then one JSON line

Reference: eager float32, contiguous memory, the PIL data path (decode + resize every step),
PyTorch's default Adam, no compile. Ours: the train.py defaults (cached uint8 pairs jittered on the
device, channels-last, bf16 autocast where the device runs it fast, fused Adam), plus --compile.
FLOPs are counted with torch.utils.flop_counter; figures are the full-size U-Net-256 at 256x256.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import dataset
from config import Config
from discriminator import Discriminator
from generator import Generator, init_weights
from train import gan_step, to_pair
from utils import amp_dtype, pick_device

PEAK_TFLOPS = {"H100": {None: 67, torch.bfloat16: 989}, "H200": {None: 67, torch.bfloat16: 989},
               "A100": {None: 19.5, torch.bfloat16: 312}}  # dense, per device; CPU: unknown


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn, steps, warmup, device) -> float:
    """Mean wall time of fn(i) over `steps` calls after `warmup` untimed ones."""
    for i in range(warmup):
        fn(i)
    sync(device)
    t = time.perf_counter()
    for i in range(steps):
        fn(i)
    sync(device)
    return (time.perf_counter() - t) / steps


def make_pairs(folder: Path, n: int) -> list:
    """n synthetic 1200x600 JPEG pairs, the size of the maps set, so decoding costs what it would."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (600, 1200, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return dataset.list_pairs(folder.parent, folder.name)[0]


def train_setup(device, fast: bool, compile_mode: str, cfg: Config):
    torch.manual_seed(0)
    G, D = init_weights(Generator()).to(device), init_weights(Discriminator()).to(device)
    fmt = torch.channels_last if fast else torch.contiguous_format
    G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
    adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True if fast else None)
    opt_G, opt_D = torch.optim.Adam(G.parameters(), **adam), torch.optim.Adam(D.parameters(), **adam)
    dtype = amp_dtype("auto", device) if fast else None
    G_train, D_train = G, D
    if fast and compile_mode != "off":
        G_train = torch.compile(G, mode=None if compile_mode == "default" else compile_mode)
        D_train = torch.compile(D, mode=None if compile_mode == "default" else compile_mode)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    return G, D, G_train, D_train, opt_G, opt_D, scaler, dtype, fmt


def bench_train(pairs, device, fast, compile_mode, steps, warmup, cfg):
    """Images per second of the whole step, data included, and FLOPs of one step."""
    G, D, G_train, D_train, opt_G, opt_D, scaler, dtype, fmt = train_setup(device, fast, compile_mode, cfg)
    plan = dataset.jitter_plan(len(pairs), 0, 0, cfg.load_size, cfg.crop_size, True)
    if fast:
        cached = dataset.CachedPairs(pairs, cfg.load_size).to(device)
        get = lambda i: cached.batch(plan[i % len(plan)][None], cfg.crop_size)  # noqa: E731
    else:
        pil = dataset.PILPairs(pairs, cfg.load_size, cfg.crop_size)
        get = lambda i: pil[tuple(plan[i % len(plan)])][None]  # noqa: E731

    def step(i):
        real_A, real_B = to_pair(get(i), cfg, device, fmt)
        return gan_step(G_train, D_train, D, opt_G, opt_D, scaler, real_A, real_B, cfg, dtype, device)

    seconds = seconds_per_call(step, steps, warmup, device)
    with FlopCounterMode(display=False) as fc:
        step(0)
    return 1 / seconds, fc.get_total_flops(), dtype


def bench_infer(device, fast, compile_mode, batch, steps, warmup):
    torch.manual_seed(0)
    G = init_weights(Generator()).to(device).eval()
    fmt = torch.channels_last if fast else torch.contiguous_format
    G = G.to(memory_format=fmt)
    dtype = amp_dtype("auto", device) if fast else None
    run = torch.compile(G, mode=None if compile_mode == "default" else compile_mode) if fast and compile_mode != "off" else G
    x = (torch.rand(batch, 3, 256, 256, device=device) * 2 - 1).contiguous(memory_format=fmt)
    with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype is not None):
        seconds = seconds_per_call(lambda i: run(x), steps, warmup, device)
        with FlopCounterMode(display=False) as fc:
            G(x)
    return batch / seconds, fc.get_total_flops() / batch, dtype


def main(argv=None):
    p = argparse.ArgumentParser(description="Benchmark training and inference against a reference.")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device to measure")
    p.add_argument("--quick", action="store_true", help="few steps (under a minute on CPU)")
    p.add_argument("--compile", default="off", choices=["off", "default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode for our training step and inference")
    p.add_argument("--infer-batch", type=int, default=0, help="inference batch (default 4 on CPU, 64 on GPU)")
    p.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    steps, warmup = (3, 2) if args.quick else (20, 5) if not gpu else (200, 30)
    batch = args.infer_batch or (64 if gpu else 4)
    cfg = Config(data_cache="memory")
    with tempfile.TemporaryDirectory() as tmp:
        pairs = make_pairs(Path(tmp) / "train", 8)
        ref_train, train_flops, _ = bench_train(pairs, device, False, "off", steps, warmup, cfg)
        our_train, _, train_dtype = bench_train(pairs, device, True, args.compile, steps, warmup, cfg)
    ref_infer, infer_flops, _ = bench_infer(device, False, "off", batch, steps, warmup)
    our_infer, _, infer_dtype = bench_infer(device, True, args.compile, batch, steps, warmup)
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    peaks = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    rows = [("reference train", 1, ref_train, train_flops, None, ref_train),
            ("ours train", 1, our_train, train_flops, train_dtype, ref_train),
            ("reference infer", batch, ref_infer, infer_flops, None, ref_infer),
            ("ours infer", batch, our_infer, infer_flops, infer_dtype, ref_infer)]
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, compile {args.compile}")
    print(f"{'mode':<17}{'batch':>6}{'img/s':>10}{'GFLOP/s':>10}{'% peak':>8}{'x ref':>7}")
    for mode, b, ips, flops, dtype, ref in rows:
        gflops = ips * flops / 1e9
        peak = f"{100 * gflops / 1e3 / peaks[dtype]:.1f}" if peaks else "n/a"
        print(f"{mode:<17}{b:>6}{ips:>10.2f}{gflops:>10.1f}{peak:>8}{ips / ref:>7.2f}")
    print(f"FLOPs: train step {train_flops / 1e9:.1f} GFLOP, inference {infer_flops / 1e9:.1f} GFLOP/img")
    if args.json:
        print(json.dumps({"device": name, "train_img_per_s": our_train, "ref_train_img_per_s": ref_train,
                          "train_speedup": our_train / ref_train, "infer_img_per_s": our_infer,
                          "ref_infer_img_per_s": ref_infer, "infer_speedup": our_infer / ref_infer,
                          "train_gflop": train_flops / 1e9, "infer_gflop": infer_flops / 1e9,
                          "compile": args.compile, "infer_batch": batch}))


if __name__ == "__main__":
    main()
