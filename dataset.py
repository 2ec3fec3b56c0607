"""Paired images for pix2pix: listing, checking, decoding, jitter, download and the data CLI.

    python dataset.py download maps --root data      # fetch, verify and unpack data/maps
    python dataset.py check data/maps                # report every bad file of every split
    python dataset.py combine A_DIR B_DIR OUT_DIR    # write side-by-side AB images

Two layouts: `ROOT/<split>/*.jpg` holding A|B side by side (A left), or `ROOT/<split>/A` and
`ROOT/<split>/B` with matching file stems. Both halves go through one decode function: convert to
RGB (or grey, for --input-nc / --output-nc 1), resize each half to a square (bicubic, as in the
official code), keep as uint8. Jitter (random crop and flip, same for both halves) is applied to those
uint8 tensors, so the cached path and the PIL path produce the same pixels for the same jitter
parameters. cache.py keeps the decoded pairs in
memory or in a memory-mapped file under ROOT/.cache, for sets larger than memory.
"""
import os
import shutil
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from cli import InputError, command_parser, first_line, run_command
from download import DownloadError, fetch, sha256sum
from durable import ordinary_mode
from utils import save_image

IMG_EXTS = (".jpg", ".jpeg", ".png")
MIN_HALF = 16  # px; smaller halves cannot be a real training pair
# PIL refuses images over ~179 MP as possible decompression bombs. Training images are small, so that
# guard stays for them; predict.py raises it deliberately (--max-megapixels) for trusted scenes.
MAX_PIXELS = 178_956_970
Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, with a message that says what to do
ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
MODES = ("1", "RGB", "L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "I;16", "I;16L", "I;16B", "I")
BASE_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/"
DATASETS = ("maps", "facades", "cityscapes", "edges2shoes", "edges2handbags", "night2day")
# split -> (number of images, (width, height)) of the official archives we can vouch for
LAYOUTS = {"maps": {"train": (1096, (1200, 600)), "val": (1098, (1200, 600))}}


class DataError(InputError):
    """Bad data on disk; the message names the files and what was expected."""


class Pair(NamedTuple):
    name: str
    a: Path  # the AB image, or the A image in the A/B layout
    b: Path | None  # None in the AB layout


# ----------------------------------------------------------------------------------------------------
# Listing and checking


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTS and p.is_file())


def dangling_links(folder: Path) -> list[tuple[Path, str]]:
    """Image names that are symbolic links to nothing: reported, never silently skipped."""
    return [(p, f"broken symbolic link (to {os.readlink(p)})") for p in sorted(folder.iterdir())
            if p.suffix.lower() in IMG_EXTS and p.is_symlink() and not p.exists()]


def list_pairs(root, split) -> tuple[list[Pair], list[tuple[Path, str]]]:
    """The pairs of ROOT/split in either layout, and the problems found listing them."""
    root, folder = Path(root), Path(root) / split
    if not root.is_dir():
        raise DataError(f"{root}: data root not found (expected a folder with train/ and val/; "
                        f"`python dataset.py download maps --root {root.parent}` fetches the maps set)")
    if not folder.is_dir():
        raise DataError(f"{folder}: split folder not found (expected {root}/{split}/ with AB images "
                        f"or A/ and B/ subfolders)")
    if (folder / "A").is_dir() and (folder / "B").is_dir():
        a = {p.stem: p for p in images_in(folder / "A")}
        b = {p.stem: p for p in images_in(folder / "B")}
        pairs = [Pair(s, a[s], b[s]) for s in sorted(a.keys() & b.keys())]
        problems = [(a[s], f"no matching image in {folder / 'B'}") for s in sorted(a.keys() - b.keys())]
        problems += [(b[s], f"no matching image in {folder / 'A'}") for s in sorted(b.keys() - a.keys())]
        problems += dangling_links(folder / "A") + dangling_links(folder / "B")
    else:
        pairs, problems = [Pair(p.stem, p, None) for p in images_in(folder)], dangling_links(folder)
    if not pairs and not problems:
        raise DataError(f"{folder}: no images (expected {', '.join(IMG_EXTS)} files, A|B side by side, "
                        f"or A/ and B/ subfolders)")
    return pairs, problems


def inspect_image(path: Path, halves: bool, full: bool) -> str | None:
    """What is wrong with one image file, or None. Headers only unless full (which decodes)."""
    if path.stat().st_size == 0:
        return "zero-byte file"
    try:
        with Image.open(path) as img:
            if img.mode not in MODES:
                return f"unexpected mode {img.mode} (expected one of {', '.join(MODES)})"
            w, h = img.size
            if w * h > MAX_PIXELS:
                return f"{w}x{h} is over {MAX_PIXELS / 1e6:.0f} megapixels (a training image is far smaller)"
            if img.getexif().get(0x0112) in ROTATED:
                w, h = h, w  # shown upright, as load_rgb will turn it
            if full:
                img.load()
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return f"truncated or corrupt image ({first_line(e, 120)})"
    if halves and w % 2:
        return f"odd width {w} (an AB image is two halves of equal width)"
    if min(w // 2 if halves else w, h) < MIN_HALF:
        return f"too small: {w}x{h} ({'each half' if halves else 'the image'} must be at least {MIN_HALF} px)"
    return None


def scan(pairs: list[Pair], full: bool) -> list[tuple[Path, str]]:
    """Every problem of every file of the pairs (threads: PIL decodes without the GIL)."""
    files = [(p.a, p.b is None) for p in pairs] + [(p.b, False) for p in pairs if p.b is not None]
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        found = pool.map(lambda f: inspect_image(f[0], f[1], full), files)
        return [(f[0], why) for f, why in zip(files, found) if why]


def drop_bad(pairs, problems, skip_bad: bool, where) -> list[Pair]:
    """Refuse bad data with a per-file report, or (skip_bad) leave those pairs out and say so."""
    if not problems:
        return pairs
    bad = {path for path, _ in problems}
    good = [p for p in pairs if p.a not in bad and p.b not in bad]
    report = "\n".join(f"  {path}: {why}" for path, why in problems)
    if skip_bad:
        print(f"warning: skipping {len(pairs) - len(good)} bad pair(s) in {where}:\n{report}", file=sys.stderr)
        if not good:
            raise DataError(f"{where}: every pair is bad; none of its {len(pairs)} pair(s) is usable")
        return good
    raise DataError(f"{len(problems)} bad file(s) in {where}:\n{report}\n"
                    f"Fix or remove them, or pass --skip-bad to use the {len(good)} good pair(s).")


def open_split(root, split, skip_bad=False, full=False) -> list[Pair]:
    """List and check one split; a bad file stops us here unless skip_bad. A refusal after the quick
    header scan decodes everything first, so one report names every bad file, not just the first kind."""
    pairs, listed = list_pairs(root, split)
    problems = listed + scan(pairs, full)
    if problems and not full and not skip_bad:
        problems = listed + scan(pairs, True)
    return drop_bad(pairs, problems, skip_bad, Path(root) / split)


# ----------------------------------------------------------------------------------------------------
# Decoding and jitter


MODES_OF = {1: "L", 3: "RGB"}  # what an image of 1 or 3 channels is decoded to (--input-nc, --output-nc)


def load_image(path: Path, channels: int = 3, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Decode any supported mode to RGB (3 channels) or grey (1: PIL's luminance, as the official code's
    grayscale), upright as its EXIF orientation says; 16-bit greyscale is scaled to 8 bits, not
    clipped. Anything unreadable raises DataError naming the file."""
    try:
        with Image.open(path) as img:
            if max_pixels and img.width * img.height > max_pixels:
                raise DataError(f"{path}: {img.width}x{img.height} is over {max_pixels / 1e6:.0f} megapixels, "
                                f"PIL's guard against decompression bombs (predict.py --max-megapixels raises "
                                f"it for files you trust)")
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I"):
                arr = np.asarray(img).astype(np.float64)
                img = Image.fromarray((arr * (255 / 65535 if arr.max() > 255 else 1)).round().clip(0, 255)
                                      .astype(np.uint8))
            return img.convert(MODES_OF[channels])
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot decode ({first_line(e, 120)})") from None


def load_rgb(path: Path, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """load_image as RGB."""
    return load_image(path, 3, max_pixels)


def pixels_of(img: Image.Image) -> torch.Tensor:
    """A decoded RGB or grey image as uint8 (C, H, W)."""
    return torch.from_numpy(np.atleast_3d(np.asarray(img, dtype=np.uint8)).copy()).permute(2, 0, 1)


def pair_channels(direction: str, input_nc: int = 3, output_nc: int = 3) -> tuple[int, int]:
    """Channels of the A and the B half: the input's and the output's, the other way round for BtoA."""
    return (input_nc, output_nc) if direction == "AtoB" else (output_nc, input_nc)


def hw(size) -> tuple[int, int]:
    """(height, width) of a size given as one side (a square) or as (height, width)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def decode_pair(pair: Pair, size, channels=(3, 3)) -> torch.Tensor:
    """One pair as uint8 (CA + CB, H, W): A then B, each decoded to its channels (see pair_channels) and
    resized (bicubic) to size, a side (square) or (H, W); a half already of that size is kept as it is."""
    if pair.b is None:
        img = load_image(pair.a, max(channels))
        w, h = img.size
        halves = [img.crop((0, 0, w // 2, h)), img.crop((w // 2, 0, w // 2 * 2, h))]
    else:
        halves = [load_image(pair.a, channels[0]), load_image(pair.b, channels[1])]
    halves = [x if x.mode == MODES_OF[c] else x.convert(MODES_OF[c]) for x, c in zip(halves, channels)]
    height, width = hw(size)
    arrays = [np.atleast_3d(np.asarray(x.resize((width, height), Image.BICUBIC))) for x in halves]
    return torch.from_numpy(np.concatenate(arrays, axis=2)).permute(2, 0, 1).contiguous()


def crop_flip(pixels: torch.Tensor, y: int, x: int, flip: bool, crop) -> torch.Tensor:
    """The paper's jitter on uint8 (..., 6, H, W): a crop window (a side, or (h, w)) at (y, x),
    mirrored if flip."""
    ch, cw = hw(crop)
    out = pixels[..., y:y + ch, x:x + cw]
    return out.flip(-1) if flip else out


def jitter_plan(n: int, seed: int, epoch: int, load, crop, flip: bool, shuffle: bool = True) -> torch.Tensor:
    """Data order and jitter of one epoch as rows (index, y, x, flip): a pure function of
    (seed, epoch), so a resumed run needs only the step count to continue the same stream. load and
    crop are sides or (h, w); load None (pairs of differing sizes) draws offsets from [0, 2^30), which
    PILPairs reduces to each pair's own range. shuffle False keeps the sorted order (the jitter drawn
    is the same)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g) if shuffle else torch.randperm(n, generator=g).sort().values
    if load is None:
        offsets = torch.randint(0, 2 ** 30, (n, 2), generator=g)
    else:
        (lh, lw), (ch, cw) = hw(load), hw(crop)
        if lh - ch == lw - cw:
            offsets = torch.randint(0, lh - ch + 1, (n, 2), generator=g)
        else:
            offsets = torch.stack([torch.randint(0, lh - ch + 1, (n,), generator=g),
                                   torch.randint(0, lw - cw + 1, (n,), generator=g)], 1)
    flips = (torch.rand(n, generator=g) < 0.5) & flip
    return torch.cat([order[:, None], offsets, flips[:, None].long()], 1)


# ----------------------------------------------------------------------------------------------------
# --preprocess: the official code's resize/crop modes (data/base_dataset.py), as a decode size and a
# crop window per pair. resize_and_crop, the paper's, is a fixed square and needs no header reads.


def half_size(pair: Pair) -> tuple[int, int]:
    """(width, height) of the pair's A half as load_rgb shows it (EXIF orientation applied)."""
    with Image.open(pair.a) as img:
        w, h = img.size
        if img.getexif().get(0x0112) in ROTATED:
            w, h = h, w
    return (w // 2, h) if pair.b is None else (w, h)


def nearest_multiple(x: float, m: int) -> int:
    return max(m, int(round(x / m)) * m)


def preprocess_size(pair: Pair, mode: str, load: int, crop: int, multiple: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(decode size, crop window), each (h, w), of one pair under --preprocess mode. scale_width sets
    the width to load and the height by the aspect (at least crop); none keeps the size. Without a crop
    the result is rounded to the nearest multiple the generator needs (the official code rounds to 4)."""
    w, h = half_size(pair)
    if mode == "resize_and_crop":
        return (load, load), (crop, crop)
    if mode.startswith("scale_width") and not (w == load and h >= crop):
        w, h = load, int(max(load * h / w, crop))
    if "crop" in mode:
        if min(w, h) < crop:
            raise DataError(f"{pair.a}: {w}x{h} per half is smaller than --crop-size {crop} "
                            f"(--preprocess {mode} crops without resizing)")
        return (h, w), (crop, crop)
    size = (nearest_multiple(h, multiple), nearest_multiple(w, multiple))
    return size, size


def preprocess_plan(pairs: list[Pair], mode: str, load: int, crop: int, multiple: int):
    """(decode size, crop window) shared by every pair, or (None, None) when they differ (then each
    pair is decoded on its own; see PILPairs)."""
    if mode == "resize_and_crop":
        return load, crop
    sizes = {preprocess_size(p, mode, load, crop, multiple) for p in pairs}
    return sizes.pop() if len(sizes) == 1 else (None, None)


class PILPairs(torch.utils.data.Dataset):
    """The PIL path: decode and resize on every access (in DataLoader workers).
    Keys are (index, y, x, flip) rows of a jitter plan; plain indices give unjittered pairs.
    size None: each pair's own decode size and window from sizer(pair); the plan's offsets are then
    reduced to the pair's range."""

    def __init__(self, pairs, size, crop=None, sizer=None, channels=(3, 3)):
        self.pairs, self.size, self.crop, self.sizer, self.channels = pairs, size, crop or size, sizer, channels

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, key):
        i = key if isinstance(key, int) else int(key[0])
        size, crop = (self.size, self.crop) if self.size is not None else self.sizer(self.pairs[i])
        if isinstance(key, int):
            return decode_pair(self.pairs[i], size, self.channels)
        _, y, x, flip = (int(v) for v in key)
        if self.size is None:
            (lh, lw), (ch, cw) = hw(size), hw(crop)
            y, x = y % (lh - ch + 1), x % (lw - cw + 1)
        return crop_flip(decode_pair(self.pairs[i], size, self.channels), y, x, bool(flip), crop)


# ----------------------------------------------------------------------------------------------------
# Download, verification and safe extraction


def unsafe_members(tar: tarfile.TarFile) -> list[str]:
    """Members we refuse outright: absolute paths, '..', links and device files (stricter than the
    tarfile 'data' filter, which would rewrite some of them instead of refusing)."""
    bad = []
    for m in tar.getmembers():
        name = m.name.replace("\\", "/")
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            bad.append(f"{m.name} (absolute path)")
        elif ".." in name.split("/"):
            bad.append(f"{m.name} (leaves the folder)")
        elif not (m.isfile() or m.isdir()):
            bad.append(f"{m.name} (link or special file)")
    return bad


def layout_differences(folder: Path, layout: dict) -> list[str]:
    """How an unpacked dataset differs from its expected {split: (count, (w, h))}."""
    diffs = []
    for split, (count, size) in layout.items():
        files = images_in(folder / split) if (folder / split).is_dir() else []
        if len(files) != count:
            diffs.append(f"{split}/ has {len(files)} images, expected {count}")
        sizes = {}
        for f in files:
            try:
                with Image.open(f) as img:
                    sizes.setdefault(img.size, f)
            except (OSError, UnidentifiedImageError):
                diffs.append(f"{split}/{f.name} is not a readable image")
        diffs += [f"{split}/{f.name} is {s[0]}x{s[1]}, expected {size[0]}x{size[1]}"
                  for s, f in sizes.items() if s != size]
    return diffs


def install_archive(archive: Path, root: Path, name: str, layout: dict | None = None) -> Path:
    """Check and unpack a <name>.tar.gz into ROOT/<name>, via a temporary folder renamed into place
    only when complete: an interrupted or refused install leaves no partial dataset behind."""
    target = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.unpack-", dir=root))
    try:
        ordinary_mode(tmp, folder=True)  # it may become ROOT/<name> itself
        try:
            with tarfile.open(archive, "r:gz") as tar:
                bad = unsafe_members(tar)  # reads every header: a truncated or corrupt file fails here
                if bad:
                    raise DataError(f"{archive}: refused, unsafe archive members: {', '.join(bad[:5])}")
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{archive}: not a complete gzip tar archive ({e})") from None
        top = [p for p in tmp.iterdir()]
        src = tmp / name if (tmp / name).is_dir() else top[0] if len(top) == 1 and top[0].is_dir() else tmp
        if not (src / "train").is_dir():
            raise DataError(f"{archive}: no {name}/train/ folder inside")
        diffs = layout_differences(src, layout or {})
        if diffs:
            raise DataError(f"{archive}: unexpected contents: {'; '.join(diffs[:10])}")
        os.replace(src, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def download_dataset(name: str, root, url=None, archive=None, sha256=None, layout=None, retries=5,
                     backoff=1.0) -> Path:
    """Fetch (or take --archive), verify and unpack a pix2pix dataset into ROOT/<name>."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if (root / name).exists():
        print(f"{root / name} already exists; remove it to download again")
        return root / name
    layout = LAYOUTS.get(name) if layout is None else layout
    url = url or f"{BASE_URL}{name}.tar.gz"
    local = archive is not None
    archive = Path(archive) if local else root / f"{name}.tar.gz"
    if not local and not archive.exists():
        try:
            fetch(url, archive, retries=retries, backoff=backoff)
        except DownloadError as e:
            raise DataError(f"{e}; without network access, download {url} elsewhere and run "
                            f"`python dataset.py download {name} --root {root} --archive PATH`") from None
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found")
    try:
        if sha256 and sha256sum(archive) != sha256.lower():
            raise DataError(f"{archive}: sha256 {sha256sum(archive)} differs from --sha256 {sha256}")
        target = install_archive(archive, root, name, layout)
    except DataError:
        if not local:
            archive.unlink(missing_ok=True)  # a bad download is useless; the next run fetches it anew
        raise
    if not local:
        archive.unlink()
    print(f"{name} ready in {target}")
    return target


# ----------------------------------------------------------------------------------------------------
# Command line


def combine(a_dir, b_dir, out_dir) -> int:
    """Write OUT_DIR/<stem>.png = A | B for every stem present in both folders; B is resized to A's
    size where they differ. Unmatched names are reported. Returns the number written."""
    a = {p.stem: p for p in images_in(Path(a_dir))}
    b = {p.stem: p for p in images_in(Path(b_dir))}
    for stem in sorted(a.keys() ^ b.keys()):
        print(f"warning: {(a.get(stem) or b.get(stem))}: no matching image in the other folder", file=sys.stderr)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stem in tqdm(sorted(a.keys() & b.keys()), desc="combine"):
        img_a, img_b = load_rgb(a[stem]), load_rgb(b[stem])
        ab = Image.new("RGB", (img_a.width * 2, img_a.height))
        ab.paste(img_a, (0, 0))
        ab.paste(img_b.resize(img_a.size, Image.BICUBIC), (img_a.width, 0))
        save_image(ab, out / f"{stem}.png")
    return len(a.keys() & b.keys())


def check(root) -> int:
    """Decode every image of every split; print each problem and a summary. Returns the bad count."""
    root = Path(root)
    splits = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    if root.is_dir() and images_in(root):
        splits.insert(0, ".")  # a flat folder of AB images counts as one split
    if not splits:
        raise DataError(f"{root}: no split folders (expected {root}/train/ and {root}/val/)")
    n_bad = n_files = 0
    for split in splits:
        pairs, problems = list_pairs(root, split)
        problems += scan(pairs, full=True)
        n_files += len(pairs) + len(problems)
        n_bad += len(problems)
        for path, why in problems:
            print(f"{path}: {why}")
        print(f"{root / split}: {len(pairs)} pairs, {len(problems)} bad file(s)")
    print(f"summary: {n_bad} bad file(s) in {root}" + (" (train.py refuses them unless --skip-bad)" if n_bad else ""))
    return n_bad


def main(argv=None):
    p = command_parser("pix2pix data: download, check, combine.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="fetch, verify and unpack a pix2pix dataset")
    d.add_argument("name", choices=DATASETS, help="dataset name on the pix2pix server")
    d.add_argument("--root", default="data", help="folder that receives ROOT/<name>")
    d.add_argument("--url", help=f"archive URL (default {BASE_URL}<name>.tar.gz): a mirror or local server")
    d.add_argument("--archive", help="install from this local .tar.gz instead of downloading")
    d.add_argument("--sha256", help="refuse the archive unless its SHA-256 is this")
    c = sub.add_parser("check", help="report every bad image of every split")
    c.add_argument("root", help="dataset folder, e.g. data/maps")
    m = sub.add_parser("combine", help="write A|B side-by-side images from A/ and B/ folders")
    for arg in ("a_dir", "b_dir", "out_dir"):
        m.add_argument(arg)
    args = p.parse_args(argv)
    if args.cmd == "download":
        download_dataset(args.name, args.root, args.url, args.archive, args.sha256)
    elif args.cmd == "check":
        return 1 if check(args.root) else 0
    else:
        print(f"wrote {combine(args.a_dir, args.b_dir, args.out_dir)} pairs to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
