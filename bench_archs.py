"""Compare the --netG generators on equal terms: parameters, training and inference speed, and the
validation metrics after the same number of steps (paper settings otherwise).

    python bench_archs.py --data-root ../shared/maps_sample --steps 300 --device cpu

DATA_ROOT is a flat folder of AB images: the first 24 by sorted name become train/, the last 6 val/
(symbolic links in --work), the split of the README's CPU walkthrough. Each generator trains with
`train.py --netG NAME` for --steps steps; training img/s is train.py's own figure (validation and
saving excluded), inference img/s is the --eval mode at --infer-batch x 256 x 256 (as predict.py
--eval runs it, bf16 where the device runs it fast), and the validation metrics are the run's last
validation (evaluate.py's, paper test-time mode). Prints a Markdown table, then one JSON line.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

import dataset
import train
from bench import measure
from cli import InputError, command_parser, run_command
from config import add_device, parse_config
from generator import NETG, load_generator
from utils import amp_dtype, pick_device

METRICS = ("l1", "psnr", "ssim", "acc10", "miou_structure")


def make_split(source: Path, work: Path, n_val: int = 6) -> Path:
    """WORK/data/{train,val} as links to SOURCE's images: all but the last n_val sorted names, then those."""
    files = dataset.images_in(source)
    if len(files) <= n_val:
        raise InputError(f"--data-root {source}: {len(files)} images, need more than {n_val}")
    root = work / "data"
    for split, chosen in (("train", files[:-n_val]), ("val", files[-n_val:])):
        (root / split).mkdir(parents=True, exist_ok=True)
        for f in chosen:
            link = root / split / f.name
            if not link.exists():
                os.symlink(f.resolve(), link)
    return root


def infer_rate(G, device, batch: int, min_time: float) -> float:
    """Images per second of G in eval mode on a batch of 256x256 inputs, with predict.py's precision."""
    dtype = amp_dtype("auto", device) or torch.float32
    G = G.eval().to(device, dtype).to(memory_format=torch.channels_last)
    x = (torch.rand(batch, 3, 256, 256, device=device) * 2 - 1).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        median, _ = measure(lambda: G(x), 2, min_time)
    return batch / median


def run_arch(netG: str, root: Path, work: Path, args) -> dict:
    """Train one generator from scratch and measure it; returns one table row."""
    run_dir = work / netG
    cfg = parse_config(["--data-root", str(root), "--run-dir", str(run_dir), "--netG", netG, "--resume", "never",
                        "--max-steps", str(args.steps), "--log-every", str(args.steps), "--val-every", str(args.steps),
                        "--sample-every", str(args.steps), "--save-every", str(args.steps), "--device", args.device,
                        "--ngf", str(args.ngf), "--ndf", str(args.ngf), *args.train_args])
    train.main(cfg)
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    loss = [r for r in rows if "img_per_s" in r][-1]
    val = [r for r in rows if "val_l1" in r][-1]
    G, _ = load_generator(run_dir / "G.pt")
    return {"netG": netG, "params": sum(p.numel() for p in G.parameters()), "train_img_per_s": loss["img_per_s"],
            "infer_img_per_s": infer_rate(G, pick_device(args.device), args.infer_batch, args.min_time),
            "steps": val["step"], **{k: val[f"val_{k}"] for k in METRICS}}


def main(argv=None):
    p = command_parser("Train and measure each --netG generator on the same data and steps.")
    p.add_argument("--data-root", required=True, help="flat folder of AB images (e.g. ../shared/maps_sample)")
    p.add_argument("--steps", type=int, default=300, help="training steps per generator")
    p.add_argument("--archs", default=",".join(NETG), help="comma-separated --netG names")
    p.add_argument("--ngf", type=int, default=64, help="--ngf and --ndf (64: the full-size networks)")
    p.add_argument("--infer-batch", type=int, default=4, help="images per inference call")
    p.add_argument("--min-time", type=float, default=5.0, help="seconds of inference timing per generator")
    p.add_argument("--work", help="folder for the split and the runs (default a new temp folder)")
    p.add_argument("train_args", nargs="*", help="further train.py flags, after --")
    add_device(p)
    args = p.parse_args(argv)
    archs = args.archs.split(",")
    bad = [a for a in archs if a not in NETG]
    if bad or args.steps < 1:
        p.error(f"--archs: unknown {', '.join(bad)} (expected {', '.join(NETG)})" if bad else "--steps: at least 1")
    work = Path(args.work or tempfile.mkdtemp(prefix="sat2map-archs-"))
    root = make_split(Path(args.data_root), work)
    results = [run_arch(a, root, work, args) for a in archs]
    print(f"\ndevice: {pick_device(args.device)}, {torch.get_num_threads()} threads, {args.steps} steps, "
          f"validation on {len(dataset.images_in(root / 'val'))} pairs")
    print("| netG | parameters | train img/s | infer img/s | val_l1 | psnr | ssim | acc10 | miou_structure |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['netG']} | {r['params']:,} | {r['train_img_per_s']:.2f} | {r['infer_img_per_s']:.2f} | "
              f"{r['l1']:.4f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['acc10']:.3f} | "
              + (f"{r['miou_structure']:.3f} |" if r["miou_structure"] is not None else "- |"))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
