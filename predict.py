"""Translate satellite images of any size into maps with a trained or pretrained generator.

    python predict.py --weights weights/maps/G.pt --input photo.jpg --out out/
    python predict.py --weights sat2map --input folder/ --out out/ --eval --scale 0.43
    python predict.py --weights sat2map --input data/maps/val --pairs --out out/

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
from config import WEIGHTS_HELP, add_device, command_parser
from generator import inference, load_generator
from utils import InputError, pick_device, run_command, save_image, to_image, to_tensor

def pad_reflect(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pad (N, C, H, W) at the bottom and right to (h, w) by reflection (repeated for tiny images)."""
    if min(x.shape[-2:]) == 1:  # a 1-px side has nothing to reflect: repeat it once, then reflect
        x = F.pad(x, (0, int(x.shape[-1] < w and x.shape[-1] == 1), 0, int(x.shape[-2] < h and x.shape[-2] == 1)),
                  mode="replicate")
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


def input_files(src: Path) -> list[Path]:
    """The images to translate: one file, or a folder's images (sorted)."""
    if src.is_dir():
        files = dataset.images_in(src)
        if not files:
            raise InputError(f"--input {src}: no .jpg/.jpeg/.png images in this folder")
        return files
    if not src.is_file():
        raise InputError(f"--input {src}: no such file or folder")
    return [src]


def input_half(img: Image.Image, pairs: bool, direction: str, path: Path) -> Image.Image:
    """With --pairs, the direction's input half of an A|B image; otherwise the whole image (with a
    hint when it looks like a pair)."""
    if not pairs:
        if img.width == 2 * img.height:
            print(f"note: {path} is exactly twice as wide as high; if it is an A|B pair, pass --pairs "
                  f"to translate only its input half", file=sys.stderr)
        return img
    if img.width % 2:
        raise dataset.DataError(f"{path}: odd width {img.width} (--pairs expects A|B halves of equal width)")
    half = img.width // 2
    return img.crop((0, 0, half, img.height) if direction == "AtoB" else (half, 0, img.width, img.height))


def main(argv=None):
    p = command_parser(__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--out", required=True, help="folder for the translated PNGs (same file stems)")
    p.add_argument("--pairs", action="store_true", help="inputs are A|B pairs (a dataset split): "
                   "translate only the input half that --direction names")
    p.add_argument("--direction", choices=["AtoB", "BtoA"], help="with --pairs: which half is the input "
                   "(default: the weights' direction)")
    p.add_argument("--eval", action="store_true", help="running BatchNorm statistics, no dropout "
                   "(deterministic); default is the paper's test-time mode, seeded")
    p.add_argument("--seed", type=int, default=0, help="seed of the paper mode's dropout")
    p.add_argument("--tile", type=int, default=256, help="tile size in px, a multiple of 256")
    p.add_argument("--overlap", type=int, default=64, help="px shared by neighbouring tiles")
    p.add_argument("--scale", type=float, default=1.0, help="resize inputs by this factor first "
                   "(maps were trained on 600 px tiles shown at 256 px: 256/600 = 0.43 matches that zoom)")
    p.add_argument("--batch", type=int, default=8, help="tiles per forward pass with --eval")
    add_device(p)
    args = p.parse_args(argv)
    if args.tile < 256 or args.tile % 256:
        p.error(f"--tile {args.tile}: expected a positive multiple of 256")
    if not 0 <= args.overlap < args.tile:
        p.error(f"--overlap {args.overlap}: expected a value in [0, --tile)")
    if not 0 < args.scale <= 64:
        p.error(f"--scale {args.scale}: expected a factor in (0, 64]")
    if args.batch < 1:
        p.error(f"--batch {args.batch}: expected at least 1")
    files = input_files(Path(args.input))
    device = pick_device(args.device)
    G, config = load_generator(args.weights, device)
    direction = args.direction or config["direction"]
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: is a file, expected a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for f in tqdm(files, desc="translate", unit="img"):
        try:
            img = input_half(dataset.load_rgb(f), args.pairs, direction, f)
        except dataset.DataError as e:
            tqdm.write(f"{e}: skipped", file=sys.stderr)
            failed += 1
            continue
        if args.scale != 1.0:
            img = img.resize((max(1, round(img.width * args.scale)), max(1, round(img.height * args.scale))),
                             Image.BICUBIC)
        y = translate(G, to_tensor(img)[None].to(device), args.tile, args.overlap, not args.eval, args.seed,
                      args.batch)
        save_image(to_image(y[0]), out_dir / f"{f.stem}.png")
    print(f"translated {len(files) - failed} of {len(files)} image(s) into {out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_command(main))
