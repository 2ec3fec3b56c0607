"""Decoded-pair caches: every training pair decoded once to uint8, in memory or in a memory-mapped file.

    python train.py --data-cache disk      # ROOT/.cache/train/pairs-<size>-<key>.u8, built on first use

`CachedPairs` holds (N, 6, S, S) uint8 pairs (fewer planes for grey halves, --input-nc 1) that jitter
as tensor slices. In memory they are one tensor (on the GPU when training there). On disk they are
one file, built by streaming (decode, write, forget), validated by its key and footer on every open,
rebuilt when corrupt, and mapped read-only so that every process of a node shares one copy through
the page cache.
"""
import hashlib
import json
import os
import shutil
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import dataset
from dataset import DataError, crop_flip, drop_bad, hw
from durable import replace_durably
from memory import available_ram
from utils import all_agree, local_world_size

# --data-cache auto keeps the decoded set in memory when it takes at most this share of the available RAM
# (divided among the node's processes, each holding a copy) and of the GPU's memory; the rest of the GPU
# holds the model, activations and allocator slack, the rest of the RAM the page cache and everything else.
CACHE_SHARE = 0.5


def choose(mode: str, n_pairs: int, size, device, planes: int = 6) -> tuple[str, str]:
    """--data-cache auto: memory when the decoded set (pairs of `planes` channels) fits comfortably
    (CACHE_SHARE), else the mapped file. Every process takes the same path. Returns (memory | disk |
    off, the reason)."""
    if mode != "auto":
        return mode, "--data-cache " + mode
    need = n_pairs * planes * hw(size)[0] * hw(size)[1]
    ram = available_ram() // local_world_size()
    fits = need <= CACHE_SHARE * ram
    why = f"{need / 1e9:.2f} GB decoded; {ram / 1e9:.1f} GB RAM available per process"
    if device.type == "cuda":
        gpu = torch.cuda.get_device_properties(device).total_memory
        fits = fits and need <= CACHE_SHARE * gpu
        why += f", {gpu / 1e9:.1f} GB on the GPU"
    choice = "memory" if all_agree(fits, device) else "disk"
    return choice, f"auto: {why}; memory when at most {CACHE_SHARE:.0%} of both"

def label(size) -> int | str:
    """How a decode size (a side, or (h, w) with --preprocess) is written in cache names and footers."""
    return size if isinstance(size, int) else "{}x{}".format(*hw(size))


CACHE_MAGIC = b"SAT2MAP\x01"  # last 8 bytes of a complete mapped cache (format version 1)
DECODE_CHUNK = 256  # pairs decoded before they are written out: bounds the build's memory (~125 MB at 286 px)


def cache_key(pairs, size: int, channels=(3, 3)) -> str:
    """SHA-256 of the decode size, the halves' channels (unless RGB, so older caches stay valid) and every
    file's name, size and mtime. Names are hashed as the bytes the file system holds (os.fsencode), so
    names that are not valid UTF-8 work too."""
    h = hashlib.sha256(f"v1|{label(size)}{'' if channels == (3, 3) else f'|{channels}'}".encode())
    for p in pairs:
        for f in (p.a, p.b):
            if f is not None:
                st = f.stat()
                h.update(b"\n" + os.fsencode(p.name) + b"|" + os.fsencode(f.name) + f"|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def decode_stream(pairs, size: int, write, desc="decode", channels=(3, 3)) -> list[tuple[int, str]]:
    """Decode pairs in order, DECODE_CHUNK at a time on a thread pool (PIL releases the GIL), and hand
    each good one to write(tensor) before the next chunk starts: never all pairs in memory at once.
    Returns (index, why) for the pairs that could not be decoded."""
    problems = []

    def work(i):
        try:
            return dataset.decode_pair(pairs[i], size, channels)  # via the module, so a test can stand in for it
        except DataError as e:
            problems.append((i, str(e).split(": ", 1)[1]))
            return None

    with ThreadPoolExecutor(os.cpu_count()) as pool, tqdm(total=len(pairs), desc=desc, leave=False) as bar:
        for start in range(0, len(pairs), DECODE_CHUNK):
            for x in pool.map(work, range(start, min(start + DECODE_CHUNK, len(pairs)))):
                if x is not None:
                    write(x)
                bar.update(1)
    return sorted(problems)


def read_footer(path: Path, key: str, n: int, size: int, planes: int = 6) -> tuple[dict | None, str]:
    """The footer of a mapped cache if the file is complete and belongs to these pairs, else (None, why).
    Layout: pixels (kept pairs x planes x size x size uint8) | footer JSON | its length (8 bytes) | magic."""
    try:
        total = path.stat().st_size
        with open(path, "rb") as f:
            if total < 16:
                return None, f"{total} bytes, too short to be a cache"
            f.seek(total - 16)
            tail = f.read(16)
            if tail[8:] != CACHE_MAGIC:
                return None, "no end marker (truncated or not a sat2map cache)"
            length = int.from_bytes(tail[:8], "little")
            if not 0 < length <= total - 16:
                return None, f"footer length {length} does not fit the file"
            f.seek(total - 16 - length)
            meta = json.loads(f.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return None, f"unreadable footer ({e})"
    if not isinstance(meta, dict) or meta.get("key") != key or meta.get("size") != label(size) or meta.get("pairs") != n:
        return None, "written for other files or another --load-size"
    skipped = meta.get("skipped")
    if not isinstance(skipped, list) or not all(isinstance(s, list) and len(s) == 2 for s in skipped):
        return None, "malformed footer"
    expected = (n - len(skipped)) * planes * hw(size)[0] * hw(size)[1] + length + 16
    if total != expected:
        return None, f"{total} bytes, expected {expected}"
    return meta, ""


def remove_stale(cache_dir: Path, size: int, keep: Path):
    """Older caches of this size, and temp files of builds on this host that died (pid gone); a build
    still running, here or on another host sharing the folder, is left alone."""
    for old in cache_dir.glob(f"pairs-{label(size)}-*.u8"):
        if old != keep:
            old.unlink(missing_ok=True)
    host = socket.gethostname()
    for tmp in cache_dir.glob(f".pairs-{label(size)}-*.tmp"):
        rest, pid, _ = tmp.name.rsplit(".", 2)  # .<cache name>.<host>.<pid>.tmp; host names may hold dots
        if rest.endswith(f".{host}") and pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_mapped(pairs, size: int, key: str, path: Path, desc: str, channels=(3, 3)):
    """Stream the decoded pairs into a temp file next to path, add the footer, fsync and rename into
    place: a crash mid-build leaves only a temp file, never a cache that looks complete."""
    need = len(pairs) * sum(channels) * hw(size)[0] * hw(size)[1]
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise DataError(f"{path.parent}: the decoded cache needs {need / 1e9:.1f} GB, {free / 1e9:.1f} GB is free "
                        f"(free space there, or use --data-cache memory / off)")
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            skipped = decode_stream(pairs, size, lambda x: f.write(x.numpy().tobytes()), desc, channels)
            footer = json.dumps({"key": key, "size": label(size), "pairs": len(pairs), "version": 1,
                                 "skipped": [[i, why] for i, why in skipped]}).encode()
            f.write(footer + len(footer).to_bytes(8, "little") + CACHE_MAGIC)
        replace_durably(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class CachedPairs:
    """The fast path: every pair decoded once to uint8 (N, CA + CB, S, S), the halves' channels (see
    dataset.pair_channels). Without cache_dir the pixels are
    one tensor in memory (moved to the GPU by train.py). With cache_dir they are a file there, mapped
    read-only into memory: built once by streaming, validated by its key on every open, shared by all
    processes of a node through the page cache, and never held in process memory as a whole."""

    def __init__(self, pairs, size, cache_dir=None, skip_bad=False, desc="decode", crop=None, channels=(3, 3)):
        where = pairs[0].a.parent if pairs else "data"
        self.size, self.crop = size, crop or size  # decode size and jitter window, as in PILPairs
        self.mapped = cache_dir is not None
        planes = sum(channels)
        if not self.mapped:
            pixels, n = torch.empty((len(pairs), planes, *hw(size)), dtype=torch.uint8), 0

            def put(x):
                nonlocal n
                pixels[n] = x
                n += 1

            problems = decode_stream(pairs, size, put, desc, channels)
            self.pairs = drop_bad(pairs, [(pairs[i].a, why) for i, why in problems], skip_bad, where)
            self.pixels, self.path = pixels[:n], None  # bad pairs (with --skip-bad) leave unused rows at the end
            return
        key = cache_key(pairs, size, channels)
        cache_dir = Path(cache_dir)
        path = cache_dir / f"pairs-{label(size)}-{key[:16]}.u8"
        meta, why = read_footer(path, key, len(pairs), size, planes) if path.exists() else (None, "")
        if meta is None:
            if why:
                print(f"warning: {path}: {why}; rebuilding it", file=sys.stderr)
            cache_dir.mkdir(parents=True, exist_ok=True)
            remove_stale(cache_dir, size, path)
            build_mapped(pairs, size, key, path, desc, channels)
            meta, why = read_footer(path, key, len(pairs), size, planes)
            if meta is None:
                raise DataError(f"{path}: the cache just written does not read back ({why})")
        skipped = {i: why for i, why in meta["skipped"]}
        self.pairs = drop_bad(pairs, [(pairs[i].a, why) for i, why in skipped.items()], skip_bad, where)
        self.pixels = torch.empty((0, planes, *hw(size)), dtype=torch.uint8)
        if self.pairs:
            # mode "c": a private copy-on-write mapping, so torch gets a writable array without a copy;
            # nothing writes to it, so every page stays shared with the page cache
            array = np.memmap(path, dtype=np.uint8, mode="c", shape=(len(self.pairs), planes, *hw(size)))
            self.pixels = torch.from_numpy(array)
        self.path = path

    def __len__(self):
        return len(self.pixels)

    def to(self, device):
        self.pixels = self.pixels.to(device)
        return self

    def batch(self, rows: torch.Tensor, crop) -> torch.Tensor:
        """uint8 (B, CA + CB, crop, crop) (or crop (h, w)) for plan rows (index, y, x, flip), on the pixels' device."""
        return torch.stack([crop_flip(self.pixels[i], y, x, bool(f), crop) for i, y, x, f in rows.tolist()])


def prefetch(batches, device):
    """The batches, one ahead, on device. On CUDA a batch held by the CPU (the mapped file, the
    DataLoader) is pinned and its copy queued without waiting (from pageable memory the host would
    first wait for every queued kernel) before the current one is handed out, so the host prepares
    the next batch while the GPU runs the step. Elsewhere nothing is pinned or copied."""
    ahead = None
    for batch in batches:
        if device.type == "cuda" and batch.device.type == "cpu":
            batch = (batch if batch.is_pinned() else batch.pin_memory()).to(device, non_blocking=True)
        if ahead is not None:
            yield ahead
        ahead = batch
    if ahead is not None:
        yield ahead
