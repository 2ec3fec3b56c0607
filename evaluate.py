"""Evaluate a generator on a split: sample grids, pixel metrics, map-structure IoU, FID and KID.

    python evaluate.py --weights weights/maps/G.pt --data-root data/maps --split val --out eval/
    python evaluate.py --weights sat2map --eval --out eval/sat2map
    python evaluate.py --weights weights/maps/G_best.pt --input my_pairs/ --out eval/mine
    python evaluate.py --weights sat2map --fid --inception-weights pt_inception-2015-12-05-6726825d.pth --out eval/

Writes OUT/grid_input.png, grid_output.png, grid_target.png (3x8), grid_triplets.png (input | output |
target per row), metrics.json, per_image.csv (pixel metrics, structure IoUs and GIS figures per image),
and prints a table. Metrics are defined in docs/evaluation.md; `evaluate_pairs` computes them, here and in
train.py's validation (which leaves out the GIS figures). A generator of grey images (--output-nc 1)
gets the pixel metrics; the structure classes and the GIS figures are colours of RGB maps. The official
test.py's options work too (official.py).
"""
import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import shapely
import torch
import torch.nn.functional as F
from tqdm import tqdm

import backends
import dataset
import fid
import int8
import official
import vector
from cli import InputError, command_parser, run_command
from config import WEIGHTS_HELP, add_device
from durable import atomic_write_text
from generator import channels, tta
from palette import CLASSES, PARK, WATER, classify
from utils import as_rgb, pick_device, save_grid


def gaussian_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of Wang et al. 2004 per image: 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, data
    range 1, computed per RGB channel over valid windows and averaged. x, y in [0, 1], (N, 3, H, W)."""
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5 ** 2))
    g = (g / g.sum()).to(x)
    k = (g[:, None] * g[None, :]).expand(x.shape[1], 1, 11, 11)
    blur = lambda t: F.conv2d(t, k, groups=x.shape[1])  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean((1, 2, 3))


def pixel_metrics(fake: torch.Tensor, real: torch.Tensor) -> dict:
    """Per-image metrics for (N, C, H, W) in [-1, 1], RGB or grey; each value a tensor (N,)."""
    fake, real = fake.float().clamp(-1, 1), real.float().clamp(-1, 1)
    f255, r255 = (fake + 1) * 127.5, (real + 1) * 127.5
    err = (f255 - r255).abs()
    mse01 = ((fake - real) / 2).pow(2).mean((1, 2, 3))
    pixels = fake.shape[2] * fake.shape[3]
    return {
        "l1": (fake - real).abs().mean((1, 2, 3)),  # in [-1, 1] units, like the training loss
        "psnr": 10 * torch.log10(1 / mse01.clamp_min(1e-10)),
        "ssim": gaussian_ssim((fake + 1) / 2, (real + 1) / 2),
        "rmse": (err.pow(2).sum((1, 2, 3)) / pixels).sqrt(),  # GcGAN protocol: channels summed
        "acc5": (err.amax(1) < 5).float().mean((1, 2)),
        "acc10": (err.amax(1) < 10).float().mean((1, 2)),
    }


class StructureIoU:
    """Per-class IoU accumulated over the whole split (intersections and unions summed over images)."""

    def __init__(self):
        self.inter = torch.zeros(len(CLASSES), dtype=torch.float64)
        self.union = torch.zeros(len(CLASSES), dtype=torch.float64)

    def update(self, fake, real) -> dict:
        """Add one batch to the split's sums; returns the batch's own IoUs (as result() does)."""
        return self.add(classify(fake).cpu(), classify(real).cpu())

    def add(self, cf, cr) -> dict:
        """update() on class maps (N, H, W) already made by classify."""
        inter = torch.tensor([((cf == i) & (cr == i)).sum() for i in range(len(CLASSES))], dtype=torch.float64)
        union = torch.tensor([((cf == i) | (cr == i)).sum() for i in range(len(CLASSES))], dtype=torch.float64)
        self.inter += inter
        self.union += union
        return ious(inter, union)

    def result(self) -> dict:
        return ious(self.inter, self.union)


def ious(inter, union) -> dict:
    """iou_<class> per class and their mean over the structure classes (not background); None for a
    class absent from both output and target."""
    iou = {f"iou_{n}": (inter[i] / union[i]).item() if union[i] else None for i, n in enumerate(CLASSES)}
    structure = [iou[f"iou_{n}"] for n in CLASSES[1:] if iou[f"iou_{n}"] is not None]
    iou["miou_structure"] = sum(structure) / len(structure) if structure else None
    return iou


MATCH_PX = 2.0  # road length counts as found when within this many px of a road of the other map


class GISFigures:
    """The GIS figures of vector.py's layers, per image and over the split: road length (centerlines,
    road and highway, in px), its completeness (share of the target's length within MATCH_PX of the
    output's) and correctness (share of the output's within MATCH_PX of the target's), water and park
    area (polygons, px^2). Both maps are vectorised alike, with vector.py's default settings."""
    KEYS = ("road_len", "road_len_target", "road_complete", "road_correct", "water_area", "water_area_target",
            "park_area", "park_area_target")

    def __init__(self):
        self.rows, self.matched, self.matched_target = [], 0.0, 0.0

    def update(self, fake, real) -> dict:
        """Add one image (1, 3, H, W) in [-1, 1]; returns its figures."""
        fake_layers, real_layers = (vector.layers(classify(x)[0].cpu().numpy().astype(np.uint8)) for x in (fake, real))
        roads = [shapely.union_all([g for _, g in layers.lines]) for layers in (fake_layers, real_layers)]
        lengths = [r.length for r in roads]
        matched = roads[0].intersection(roads[1].buffer(MATCH_PX)).length
        matched_target = roads[1].intersection(roads[0].buffer(MATCH_PX)).length
        self.matched, self.matched_target = self.matched + matched, self.matched_target + matched_target
        row = {"road_len": lengths[0], "road_len_target": lengths[1],
               "road_complete": matched_target / lengths[1] if lengths[1] else None,
               "road_correct": matched / lengths[0] if lengths[0] else None}
        for name, c in (("water", WATER), ("park", PARK)):
            for suffix, layers in (("", fake_layers), ("_target", real_layers)):
                row[f"{name}_area{suffix}"] = sum(g.area for k, g in layers.polygons if k == c)
        self.rows.append(row)
        return row

    def result(self) -> dict:
        """Lengths and areas averaged over the images; completeness and correctness over the split's
        total lengths (None where there is no road to measure)."""
        mean = {k: sum(r[k] for r in self.rows) / len(self.rows) for k in self.KEYS if "road_c" not in k}
        total, total_target = (sum(r[k] for r in self.rows) for k in ("road_len", "road_len_target"))
        return {**mean, "road_complete": self.matched_target / total_target if total_target else None,
                "road_correct": self.matched / total if total else None}


def evaluate_pairs(G, pairs, direction="AtoB", device="cpu", paper=True, seed=0, keep=(), inception=None,
                   desc=None, use_tta=False, gis=False):
    """Translate every pair at 256x256 (one image per call, as the paper tests) and measure it. The
    halves are decoded with the channels G takes and gives (generator.channels); the structure IoUs are
    measured for RGB outputs only, and so are the GIS figures (GISFigures) where gis is set.

    paper=True is the paper's test-time mode with dropout seeded by seed + index (generator.inference:
    G's running statistics and the caller's RNG streams are left as they were). inception (from
    fid.load_inception) adds fid, kid and kid_std; use_tta averages each output over the 8 flips and
    rotations of its input (generator.tta). Returns (metrics, rows, kept): split-level metrics
    (pixel metrics averaged over images, IoUs over the split), one row per image (its pixel
    metrics and its own IoUs), and
    {index: (real_A, fake_B, real_B)} on the CPU for the indices in keep. Undecodable pairs are skipped.
    G: a generator module or a net of backends.py."""
    device, G = torch.device(device), backends.as_net(G)
    halves = dataset.pair_channels(direction, *channels(G))
    rows, kept, feats = [], {}, ([], [])
    rgb = channels(G)[1] == 3
    iou, figures = StructureIoU() if rgb else None, GISFigures() if gis and rgb else None
    for i, pair in enumerate(tqdm(pairs, desc=desc, unit="img", disable=desc is None)):
        try:
            x = dataset.decode_pair(pair, 256, halves)[None].to(device).float() / 127.5 - 1
        except dataset.DataError as e:
            print(f"skipped: {e}")
            continue
        a, b = x[:, :halves[0]], x[:, halves[0]:]
        real_A, real_B = (a, b) if direction == "AtoB" else (b, a)
        with G.inference(paper, seed + i):
            fake_B = tta(G, real_A, separate=paper) if use_tta else G(real_A).float()
        m = pixel_metrics(fake_B, real_B)
        rows.append({"name": pair.name, **{k: v.item() for k, v in m.items()},
                     **(iou.update(fake_B, real_B) if iou is not None else {}),
                     **(figures.update(fake_B, real_B) if figures is not None else {})})
        if inception is not None:
            feats[0].append(fid.features(inception, as_rgb(fake_B)))
            feats[1].append(fid.features(inception, as_rgb(real_B)))
        if i in keep:
            kept[i] = (real_A.cpu(), fake_B.cpu(), real_B.cpu())
    if not rows:
        raise InputError(f"{len(pairs)} pair(s), none could be evaluated")
    metrics = {k: sum(r[k] for r in rows) / len(rows) for k in m}
    if iou is not None:
        metrics.update(iou.result())  # over the split, not a mean of the images' IoUs
    if figures is not None:
        metrics.update(figures.result())
    if inception is not None:
        metrics.update(fid.scores(np.concatenate(feats[0]), np.concatenate(feats[1])))
    return metrics, rows, kept


def parser():
    """evaluate.py's flags, and the official test.py's spellings (official.py)."""
    p = command_parser("Evaluate a pix2pix generator on a split: grids, pixel metrics, structure IoU.")
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    p.add_argument("--input", help="a folder of A|B pair images (or A/ and B/) to evaluate, instead of "
                   "--data-root and --split")
    p.add_argument("--data-root", help="dataset folder (default: data/maps)")
    p.add_argument("--split", help="split folder to evaluate (default: val)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-pairs", type=int, default=0, help="evaluate the first N pairs by sorted name (0: all)")
    p.add_argument("--samples", type=int, default=24, help="images in the grids (3 rows of 8 for 24)")
    p.add_argument("--random-samples", action="store_true", help="pick the grid images at random with --seed "
                   "(default: the first by sorted name)")
    p.add_argument("--seed", type=int, default=0, help="seed of the paper mode's dropout (and of --random-samples)")
    p.add_argument("--eval", action="store_true", help="running BatchNorm statistics, no dropout")
    p.add_argument("--tta", action="store_true", help="average the output over the 8 flips/rotations of each input")
    p.add_argument("--direction", choices=["AtoB", "BtoA"], help="override the weights' direction")
    p.add_argument("--fid", action="store_true", help="also FID and KID of the outputs against the targets")
    p.add_argument("--inception-weights", default=None, help=f"{fid.WEIGHTS_NAME} for --fid "
                   "(default: the torch hub cache, where pytorch-fid keeps it)")
    p.add_argument("--no-gis", action="store_true", help="leave out the GIS figures (road length, completeness, "
                   "correctness, water and park area: vector.py's layers of output and target)")
    backends.add_flags(p, "--eval", "default: the input halves of the pairs")
    add_device(p)
    return official.register(p, "evaluate")


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.samples < 1:
        p.error(f"--samples {args.samples}: expected at least 1")
    if args.max_pairs < 0:
        p.error(f"--max-pairs {args.max_pairs}: expected 0 (all) or a positive count")
    root, split = data_folder(args, p)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, expected a folder")
    device = pick_device(args.device)
    inception = fid.load_inception(args.inception_weights, device) if args.fid else None
    pairs = dataset.open_split(root, split, skip_bad=True)[:args.max_pairs or None]
    G, config, choice = backends.load(args.weights, device, args.backend, args.eval, "off", args.int8,
                                      lambda config: calibration_tiles(args, pairs, config), batch=1)
    official.check_generator(config, args.expect, args.weights)
    direction = args.direction or config["direction"]
    if args.random_samples:
        chosen = set(torch.randperm(len(pairs), generator=torch.Generator().manual_seed(args.seed))[:args.samples].tolist())
    else:
        chosen = set(range(min(args.samples, len(pairs))))
    out.mkdir(parents=True, exist_ok=True)
    try:
        metrics, rows, kept = evaluate_pairs(G, pairs, direction, device, paper=not args.eval, seed=args.seed,
                                             keep=chosen, inception=inception, use_tta=args.tta,
                                             desc=f"evaluate {split}", gis=not args.no_gis)
    except InputError as e:
        raise InputError(f"{Path(root) / split}: {e}") from None
    grid = {key: [kept[i][k] for i in sorted(kept)] for k, key in enumerate(("input", "output", "target"))}
    if kept:  # every pair chosen for the grids may have been undecodable
        for key, images in grid.items():
            save_grid([torch.cat(images)], out / f"grid_{key}.png", nrow=8)
        triplets = torch.stack([as_rgb(torch.cat(grid[k])) for k in ("input", "output", "target")], 1).flatten(0, 1)
        save_grid([triplets], out / "grid_triplets.png", nrow=3)
    else:
        print("warning: none of the pairs chosen for the grids could be decoded; no grids written", file=sys.stderr)
    metrics.update({"images": len(rows), "split": split, "weights": args.weights,
                    "mode": "eval" if args.eval else "paper", "backend": str(choice)})
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "per_image.csv", table.getvalue())
    width = max(len(k) for k in metrics) + 2
    print(f"{'metric':<{width}}{'value':>10}")
    for k, v in metrics.items():
        if isinstance(v, float) or v is None:
            print(f"{k:<{width}}{'n/a' if v is None or math.isnan(v) else f'{v:.4f}':>10}")
    print(f"ran on {choice}; wrote grids, metrics.json and per_image.csv to {out}")


def calibration_tiles(args, pairs, config: dict) -> torch.Tensor:
    """--int8's calibration tiles: of --calibrate FOLDER (whole images), else the input halves of
    pairs spread over the split (the pairs that cannot be decoded are passed over)."""
    if args.calibrate:
        return int8.folder_tiles(args.calibrate, config["input_nc"])
    direction = args.direction or config["direction"]
    halves = dataset.pair_channels(direction, config["input_nc"], config["output_nc"])
    found = []
    for i in int8.spread(len(pairs))[:int8.CALIBRATION_TILES]:
        try:
            x = dataset.decode_pair(pairs[i], 256, halves).float() / 127.5 - 1
        except dataset.DataError:
            continue
        found.append(x[:halves[0]] if direction == "AtoB" else x[halves[0]:])
    if not found:
        raise InputError(f"{len(pairs)} pair(s), none could be decoded to calibrate --int8 on")
    return torch.stack(found)


def data_folder(args, p) -> tuple[str, str]:
    """(root, split) of the pairs to evaluate: --input FOLDER, or --data-root and --split."""
    if args.input is None:
        return args.data_root or "data/maps", args.split or "val"
    if args.data_root is not None or args.split is not None:
        p.error("--input names the folder to evaluate: give it, or --data-root and --split, not both")
    folder = Path(args.input)
    if not folder.is_dir():
        raise InputError(f"--input {folder}: no such folder (expected a folder of A|B pair images, or A/ and B/)")
    if folder.name in ("", ".", ".."):
        folder = folder.resolve()
    return str(folder.parent), folder.name


if __name__ == "__main__":
    run_command(main)
