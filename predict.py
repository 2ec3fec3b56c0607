"""Translate satellite images of any size into maps with a trained or pretrained generator.

    python predict.py --weights weights/maps/G.pt --input photo.jpg --output out/
    python predict.py --weights sat2map --input folder/ --output out/ --eval --scale 0.43

Images larger than one tile run as overlapping tiles blended with a smooth window, so no seams
show; sizes that are not a multiple of the tile are padded by reflection and cropped back.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import dataset
from generator import Generator, inference, load_generator_state
from utils import fail, pick_device, safe_load, to_image, to_tensor

PRETRAINED_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/models-pytorch/{}.pth"
PRETRAINED = {"sat2map": "AtoB", "map2sat": "BtoA"}  # official maps generators and their direction


def load_generator(weights: str, device="cpu") -> tuple[Generator, dict]:
    """A ready Generator from a training checkpoint, a G.pt, an official pix2pix file, or the name of
    an official pretrained generator (downloaded once into weights/). Returns (G, config dict)."""
    path = Path(weights)
    if weights in PRETRAINED and not path.exists():
        path = Path("weights") / f"{weights}.pth"
        if not path.exists():
            try:
                dataset.fetch(PRETRAINED_URL.format(weights), path)
            except dataset.DataError as e:
                fail(f"{e}; place the file at {path} by hand to use it offline")
    state = safe_load(path, "generator")
    config = state.get("config", {}) if "G" in state else {}
    config.setdefault("direction", PRETRAINED.get(path.stem, "AtoB"))
    G = Generator(3, 3, config.get("ngf", 64), config.get("norm", "batch"), config.get("dropout", 0.5))
    try:
        load_generator_state(G, state.get("G", state), str(path))
    except ValueError as e:
        if path.stem in PRETRAINED and "G" not in state:
            path.unlink()  # a bad download: fetch it again next time
        fail(str(e))
    return G.to(device), config


def pad_reflect(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pad (N, C, H, W) at the bottom and right to (h, w) by reflection (repeated for tiny images)."""
    while x.shape[-2] < h or x.shape[-1] < w:
        dh, dw = min(h - x.shape[-2], x.shape[-2] - 1), min(w - x.shape[-1], x.shape[-1] - 1)
        x = F.pad(x, (0, dw, 0, dh), mode="reflect")
    return x


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets covering [0, size) with at least `overlap` px shared; the last one ends at size."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def window(tile: int, device) -> torch.Tensor:
    """Separable Hann window, strictly positive so every pixel has weight even at the image border."""
    w = torch.hann_window(tile + 2, periodic=False, device=device)[1:-1]
    return (w[:, None] * w[None, :])[None, None]


def translate(G, x: torch.Tensor, tile=256, overlap=64, paper=True, seed=0, batch=8) -> torch.Tensor:
    """G over one image (1, 3, H, W) in [-1, 1] of any size; returns (1, 3, H, W).
    In the paper's test-time mode every tile is its own batch, as in training with batch 1 (BatchNorm
    uses that tile's statistics); with --eval tiles are batched."""
    _, _, H, W = x.shape
    ph, pw = max(H, tile), max(W, tile)  # larger sizes need no padding: the last tile ends at the edge
    xp = pad_reflect(x, ph, pw)
    ys, xs = tile_starts(ph, tile, overlap), tile_starts(pw, tile, overlap)
    boxes = [(y, x0) for y in ys for x0 in xs]
    out = torch.zeros_like(xp)
    weight = torch.zeros_like(xp[:, :1])
    win = window(tile, x.device)
    step = 1 if paper else batch
    with inference(G, paper=paper, seed=seed):
        for i in range(0, len(boxes), step):
            chunk = boxes[i:i + step]
            y_hat = G(torch.cat([xp[..., y:y + tile, x0:x0 + tile] for y, x0 in chunk]))
            for (y, x0), t in zip(chunk, y_hat):
                out[..., y:y + tile, x0:x0 + tile] += t.float() * win[0]
                weight[..., y:y + tile, x0:x0 + tile] += win[0]
    return (out / weight)[..., :H, :W]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1], allow_abbrev=False)
    p.add_argument("--weights", required=True, help="last.pt, G.pt, an official .pth, or sat2map / map2sat")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="folder for the translated PNGs (same file stems)")
    p.add_argument("--eval", action="store_true", help="running BatchNorm statistics, no dropout "
                   "(deterministic); default is the paper's test-time mode, seeded")
    p.add_argument("--seed", type=int, default=0, help="seed of the paper mode's dropout")
    p.add_argument("--tile", type=int, default=256, help="tile size in px, a multiple of 256")
    p.add_argument("--overlap", type=int, default=64, help="px shared by neighbouring tiles")
    p.add_argument("--scale", type=float, default=1.0, help="resize inputs by this factor first "
                   "(maps were trained on 600 px tiles shown at 256 px: 256/600 = 0.43 matches that zoom)")
    p.add_argument("--batch", type=int, default=8, help="tiles per forward pass with --eval")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to run")
    args = p.parse_args(argv)
    if args.tile % 256 or not 0 <= args.overlap < args.tile:
        p.error("--tile must be a multiple of 256 and --overlap in [0, tile)")
    if args.scale <= 0:
        p.error("--scale must be positive")
    device = pick_device(args.device)
    G, _ = load_generator(args.weights, device)
    src = Path(args.input)
    files = dataset.images_in(src) if src.is_dir() else [src]
    if not files or not src.exists():
        fail(f"{src}: no images found (expected an image file or a folder of .jpg/.jpeg/.png)")
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for f in tqdm(files, desc="translate", unit="img"):
        try:
            img = dataset.load_rgb(f)
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            print(f"\n{f}: skipped, not a readable image ({str(e).splitlines()[0][:120]})", file=sys.stderr)
            failed += 1
            continue
        if args.scale != 1.0:
            img = img.resize((max(1, round(img.width * args.scale)), max(1, round(img.height * args.scale))),
                             Image.BICUBIC)
        y = translate(G, to_tensor(img)[None].to(device), args.tile, args.overlap, not args.eval, args.seed,
                      args.batch)
        to_image(y[0]).save(out_dir / f"{f.stem}.png")
    print(f"translated {len(files) - failed} of {len(files)} image(s) into {out_dir}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
