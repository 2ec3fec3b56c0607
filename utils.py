"""Small helpers shared by train.py, evaluate.py, predict.py and bench.py.

Seeding and RNG state, device choice, atomic saves and safe loads, image <-> tensor conversion,
sample grids, and the few torch.distributed calls the trainer needs.
"""
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torchvision.utils import make_grid


def fail(message: str):
    """Exit with a one-line error instead of a traceback (for bad input, not for bugs)."""
    raise SystemExit(f"error: {message}")


# ----------------------------------------------------------------------------------------------------
# Randomness


def seed_everything(seed: int):
    """Seed python, numpy and torch (CPU and every CUDA device) together."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state as tensors and plain data, so `weights_only=True` can load it."""
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
        "python_version": random.getstate()[0],
        "numpy": {k: v for k, v in zip(("kind", "keys", "pos", "has_gauss", "cached"), np.random.get_state())},
        "torch": torch.get_rng_state(),
    }
    state["numpy"]["keys"] = torch.from_numpy(state["numpy"]["keys"].astype(np.int64))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    """Inverse of rng_state()."""
    random.setstate((state["python_version"], tuple(state["python"][:-1]), state["python"][-1]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------
# Devices


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for 'auto'; a named device must exist."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device is visible to PyTorch (use --device cpu or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        fail("--device mps: MPS is not available on this machine (use --device cpu or auto)")
    if name == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def amp_dtype(amp: str, device: torch.device):
    """The autocast dtype for --amp, or None for float32. 'auto' picks bf16 where it is fast."""
    if amp == "auto":
        fast = device.type == "cuda" and torch.cuda.is_bf16_supported()
        fast = fast or (device.type == "cpu" and torch.backends.mkldnn.is_available()
                        and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        amp = "bf16" if fast else "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


# ----------------------------------------------------------------------------------------------------
# Files


def atomic_save(obj, path):
    """torch.save to a temp file in the same folder, fsync, then os.replace: a crash at any instant
    leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def safe_load(path, what="checkpoint"):
    """torch.load with weights_only=True (files from the internet must not run code), with a clear
    error for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        fail(f"{path}: no such {what} file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        fail(f"{path}: not a readable PyTorch {what} ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    if not isinstance(obj, dict):
        fail(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------------------------------
# Images


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float tensor (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1


def to_image(x: torch.Tensor) -> Image.Image:
    """Tensor (3, H, W) in [-1, 1] -> PIL RGB image, rounded to the nearest uint8."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def save_grid(rows, path, nrow=None):
    """Save image tensors in [-1, 1] (N, 3, H, W) as one PNG grid, nrow images per row."""
    x = torch.cat([r.detach().float().cpu() for r in rows])
    grid = make_grid(x, nrow=nrow or len(rows), padding=2, normalize=True, value_range=(-1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy()).save(tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# torch.distributed (torchrun)


def init_distributed() -> tuple[int, int]:
    """Join the torchrun process group if there is one; returns (rank, world size)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def gather_objects(obj) -> list:
    """Every rank's obj, in rank order (just [obj] without torch.distributed)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
