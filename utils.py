"""Small helpers shared by train.py, evaluate.py, predict.py and bench.py.

Seeding and RNG state, device choice, atomic saves and safe loads, image <-> tensor conversion,
sample grids, and the few torch.distributed calls the trainer needs.
"""
import copy
import gc
import os
import random
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, ImageDraw, ImageFont

from cli import InputError, first_line
from durable import atomic_write, replace_durably


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
        for i, s in enumerate(state["cuda"][:torch.cuda.device_count()]):  # resumable on fewer GPUs
            torch.cuda.set_rng_state(s, i)


# ----------------------------------------------------------------------------------------------------
# Devices


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for 'auto'; a named device must exist."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to PyTorch (use --device cpu or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps: MPS is not available on this machine (use --device cpu or auto)")
    if name == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def set_determinism(deterministic: bool):
    """--deterministic: only deterministic kernels (cuDNN and cuBLAS included), cuDNN autotuning off, so
    a CUDA run repeats bit for bit. Otherwise let cuDNN pick the fastest convolution for our fixed
    shapes. cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it starts, so this runs before any CUDA work."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if deterministic != torch.are_deterministic_algorithms_enabled():  # only a change: the call imports
        torch.use_deterministic_algorithms(deterministic)  # torch._inductor, a second at every start
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def amp_dtype(amp: str, device: torch.device):
    """The autocast (training) or weight (inference) dtype for --amp, or None for float32. 'auto': bf16
    where the device runs it fast, fp16 on older CUDA GPUs, else float32.

    On CUDA that is bf16 from compute capability 8 (A100, H100, RTX 30xx on); below it (V100, T4)
    fp16, with a GradScaler in training: cuDNN has no bf16 convolutions there, and
    torch.cuda.is_bf16_supported() would still say yes, as it counts emulation."""
    if amp == "auto":
        if device.type == "cuda":
            amp = "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"
        elif device.type == "cpu" and torch.backends.mkldnn.is_available() \
                and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            amp = "bf16"
        else:
            amp = "off"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


# ----------------------------------------------------------------------------------------------------
# Files


def to_cpu(obj):
    """obj with every tensor in its nested dicts, lists and tuples moved to the CPU (CPU tensors are
    kept, not copied); dict subclasses keep their type and attributes (a state_dict's _metadata)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        out = copy.copy(obj)
        for key, value in obj.items():
            out[key] = to_cpu(value)
        return out
    if type(obj) in (list, tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def atomic_save(obj, path):
    """torch.save of obj's tensors moved to the CPU (see to_cpu), atomically (see atomic_write): a file
    saved by a GPU run loads with a plain torch.load on a machine without one, as released pix2pix
    files do. Resuming loses nothing: load_state_dict copies each value to its module's device."""
    obj = to_cpu(obj)
    atomic_write(path, lambda f: torch.save(obj, f))


RUN_FILES = {"generator": ("G.pt", "G_best.pt", "last.pt"), "checkpoint": ("last.pt",)}  # what a run folder holds


def safe_load(path, what="checkpoint"):
    """torch.load with weights_only=True (files from the internet must not run code), with a clear
    error for a missing, truncated or foreign file, or a run folder given for one of its files."""
    path = Path(path)
    if path.is_dir():
        raise InputError(folder_given(path, what))
    if not path.is_file():
        raise InputError(f"{path}: no such {what} file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file, not a PyTorch {what}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: not a readable PyTorch {what} ({unreadable_because(path, e)})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def folder_given(path: Path, what: str) -> str:
    """The error for a folder where a file was expected: which of a run's files to give instead."""
    names = RUN_FILES.get(what, ())
    present = [str(path / n) for n in names if (path / n).is_file()]
    if present:
        return f"{path}: is a folder; expected a {what} file, such as {' or '.join(present)}"
    if names:
        return f"{path}: is a folder without a {what} file in it; expected a file ({', '.join(names)} of a run)"
    return f"{path}: is a folder; expected the {what} file"


def unreadable_because(path: Path, error: Exception) -> str:
    """Why torch.load failed on path, in words: what the file is instead, or torch's own first line
    (never its advice to load with weights_only=False, which would let the file run code)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if path.suffix.lower() == ".onnx" or (head[:1] == b"\x08" and head[2:3] in (b"\x12", b"\x1a", b"\x3a")):
        return "it is an ONNX model: onnxruntime runs it; PyTorch needs the weights it was exported from"
    if all(b >= 32 or b in (9, 10, 13) for b in head):
        text = (head.decode("utf-8", "replace").strip().splitlines() or [""])[0][:60]
        return f"it is a text file: {text!r}"
    if "weights_only" in str(error) or "Weights only" in str(error):
        return ("it holds Python objects besides tensors and plain data, which are never loaded since "
                "they can run code; save a state_dict instead")
    return f"{type(error).__name__}: {first_line(error, 200)}"


# ----------------------------------------------------------------------------------------------------
# Images


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float tensor (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1


def to_image(x: torch.Tensor) -> Image.Image:
    """Tensor (3, H, W) in [-1, 1] -> PIL RGB image, rounded to the nearest uint8."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def as_rgb(x: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) with 3 channels; a grey one (C = 1) repeated into three, for grids and FID."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def save_image(img: Image.Image, path, **kw):
    """img.save to a temp file next to path, then replace_durably: a reader never sees half an image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        img.save(tmp, **kw)
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_grid(rows, path, nrow=None, titles=None, caption=None) -> Image.Image:
    """Save image tensors in [-1, 1] (N, 3, H, W) as one PNG grid, nrow images per row; titles name
    the columns and caption (e.g. the step) leads a header strip above them. Returns the image."""
    from torchvision.utils import make_grid  # here, not above: torchvision's import (its models, and
    # torch._dynamo through them) would double the start of every command that draws no grid
    x = torch.cat([r.detach().float().cpu() for r in rows])
    grid = make_grid(x, nrow=nrow or len(rows), padding=2, normalize=True, value_range=(-1, 1))
    img = Image.fromarray(grid.mul(255).round().byte().permute(1, 2, 0).numpy())
    if titles or caption:
        img = with_header(img, titles or [], caption, cell=x.shape[-1] + 2)
    save_image(img, path)
    return img


def with_header(img: Image.Image, titles, caption, cell: int, height: int = 22) -> Image.Image:
    """img under a white strip: caption at the left, titles centred on columns `cell` pixels wide."""
    out = Image.new("RGB", (img.width, img.height + height), "white")
    out.paste(img, (0, height))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=14)
    for i, title in enumerate(titles):
        draw.text((2 + i * cell + cell // 2, height // 2), title, fill="black", font=font, anchor="mm")
    if caption:
        draw.text((4, height // 2), caption, fill=(90, 90, 90), font=font, anchor="lm")
    return out


# ----------------------------------------------------------------------------------------------------
# torch.distributed (torchrun)


def backend_for(device_kind: str) -> str:
    """The process-group backend for the device type training runs on: NCCL for CUDA tensors, gloo for
    the rest (CPU tensors through NCCL fail, even on a node that has GPUs)."""
    return "nccl" if device_kind == "cuda" else "gloo"


def init_distributed(device_name: str = "auto") -> tuple[int, int]:
    """Join the torchrun process group if there is one (even of one process, so that a one-GPU
    torchrun exercises NCCL as a larger one does); returns (rank, world size). The backend follows
    the device --device resolves to (backend_for). RANK and WORLD_SIZE count every process on every
    node; LOCAL_RANK numbers the processes of this node and picks its GPU."""
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        return 0, 1
    backend = backend_for(pick_device(device_name).type)  # resolves auto; a missing device is one line
    if backend == "nccl":
        local, count = local_rank(), torch.cuda.device_count()
        if local >= count:
            raise InputError(f"LOCAL_RANK {local}: this node has {count} visible GPU(s); start at most "
                             f"{count} processes per node (torchrun --nproc-per-node {count})")
        torch.cuda.set_device(local)
    # Long enough for a node's first process to build the data cache of a large set while the others
    # wait in a barrier (NCCL's default is 10 minutes)
    dist.init_process_group(backend, timeout=timedelta(hours=1))
    return dist.get_rank(), dist.get_world_size()


def end_distributed():
    """Leave torch.distributed, if this process joined it. DDP wrappers are reference cycles that keep
    the process group alive after destroy_process_group; collected first, while the interpreter is
    whole, the group really closes its connections and joins its threads here, instead of at the
    interpreter's exit, where Gloo can abort a process whose run was already saved."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def local_rank() -> int:
    """This process's number on its node (torchrun's LOCAL_RANK), 0 outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", 0))


def local_world_size() -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE), 1 outside torchrun."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def all_agree(flag: bool, device) -> bool:
    """True only if flag is true on every process (just flag without torch.distributed)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_buffers(*modules):
    """Give every process rank 0's buffers (BatchNorm running statistics): what a checkpoint saves is
    then what every process holds."""
    if dist.is_initialized():
        for m in modules:
            for b in m.buffers():
                dist.broadcast(b, 0)


def gather_objects(obj) -> list:
    """Every rank's obj, in rank order (just [obj] without torch.distributed)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
