"""Inference backends: the generator as the tile engine runs it, on PyTorch or on ONNX Runtime (float32,
or int8 with --int8), and the loader that picks one (`--backend auto` runs what measures fastest here).

    python predict.py --weights sat2map --input scene.tif --out out/ --eval                    # auto
    python predict.py --weights sat2map --input scene.tif --out out/ --eval --backend onnxruntime --int8

A *net* is what the engine runs: TorchNet (a generator module) or OrtNet (an ONNX Runtime session), each
with `device`, `dtype`, `memory_format`, `inference(paper, seed)` and a call on (N, C, H, W) in [-1, 1].
`load` is the one loader of predict.py, evaluate.py, app.py and bench.py: it returns (net, config,
choice), the Choice saying what runs and why. ONNX Runtime runs an export of the weights, made on first
use beside them (or in the per-user cache folder when that folder is not writable), named by the
weights' content hash and the export settings, so that a stale export is never opened; int8.py makes
the int8 model, probe.py measures for `auto` (docs/performance.md#inference-backends).
"""
import contextlib
import copy
import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from cli import InputError
from durable import ordinary_mode, replace_durably
from generator import channels, inference, load_generator, weights_path
from utils import amp_dtype

BACKENDS = ("auto", "torch", "onnxruntime")
BACKEND_VARIABLE = "SAT2MAP_BACKEND"  # the default of --backend where set (the test suite pins torch)
CACHE_VARIABLE = "SAT2MAP_CACHE"  # the per-user cache folder (exports, the probe's record)
OPSET = 18
EXPORT_VERSION = 2  # raise it when export.export changes what it writes: older exports then go stale
PRECISIONS = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
INT8_MAX_MEAN_LEVELS = 1.0  # auto runs int8 only where it differs from float32 by at most this on average
PAPER_ON_TORCH = ("the paper mode runs on torch: each tile's own batch statistics and dropout drawn from "
                  "--seed, which an export (running statistics, no dropout) does not have")


# ----------------------------------------------------------------------------------------------------
# What the tile engine runs


class TorchNet:
    """A generator module run by PyTorch as the loader prepared it (dtype, memory layout). Eval-mode
    inputs are given channels_last unless the choice says contiguous: so a bare module runs exactly
    as the engine always ran it."""

    def __init__(self, G: nn.Module, channels_last: bool = True):
        self.G = G
        self.in_channels, self.out_channels = channels(G)
        weight = next(G.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def inference(self, paper: bool, seed: int):
        return inference(self.G, paper=paper, seed=seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.G(x)


class OrtNet:
    """An ONNX model run by ONNX Runtime's CPU provider: one InferenceSession, made once, with as many
    threads as torch uses (OMP_NUM_THREADS), so the two backends get the same cores. Eval mode only:
    an export has running statistics and no dropout."""
    device, dtype, memory_format = torch.device("cpu"), torch.float32, torch.contiguous_format

    def __init__(self, path: Path):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        # the export's channel axes are static: (N, C, H, W) with only N, H and W dynamic
        self.in_channels = self.session.get_inputs()[0].shape[1]
        self.out_channels = self.session.get_outputs()[0].shape[1]

    def inference(self, paper: bool, seed: int):
        if paper:
            raise ValueError(f"{self.path}: {PAPER_ON_TORCH}")
        return torch.no_grad()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) float32 on the CPU
        return torch.from_numpy(self.session.run(None, {self.input: x.float().contiguous().numpy()})[0])


def as_net(G):
    """G as a net: a TorchNet or OrtNet as it is, a generator module wrapped in a TorchNet."""
    return G if isinstance(G, (TorchNet, OrtNet)) else TorchNet(G)


# ----------------------------------------------------------------------------------------------------
# What to run, and why


@dataclass(frozen=True)
class Choice:
    """A way to run the generator (backend, precision, and for torch the memory layout), and why it
    was chosen; it goes into predict's summary line and metrics.json."""
    backend: str = "torch"
    precision: str = "float32"  # float32, bfloat16, float16 or int8
    channels_last: bool = False
    why: str = ""

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}" + (" channels-last" if self.channels_last else "")

    def because(self, why: str) -> "Choice":
        return dataclasses.replace(self, why=why)

    def as_dict(self) -> dict:
        return {"label": self.label, **dataclasses.asdict(self)}

    def __str__(self):
        return f"{self.label} ({self.why})" if self.why else self.label


def torch_choice(amp: str, device, eval_mode: bool, why: str) -> Choice:
    """The torch path predict.py has always run: --amp's dtype, channels-last with --eval (the paper
    mode stays contiguous, as its dropout masks follow the layout and must match evaluate.py's)."""
    return Choice("torch", PRECISIONS[amp_dtype(amp, device) or torch.float32], eval_mode, why)


def prepare_torch(G: nn.Module, choice: Choice) -> nn.Module:
    """G (in place) in the choice's dtype and memory layout."""
    G = G.to({v: k for k, v in PRECISIONS.items()}[choice.precision])
    return G.to(memory_format=torch.channels_last) if choice.channels_last else G


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def default_backend() -> str:
    """--backend's default: $SAT2MAP_BACKEND where set, else auto."""
    value = os.environ.get(BACKEND_VARIABLE) or "auto"
    if value not in BACKENDS:
        raise InputError(f"${BACKEND_VARIABLE}={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


def add_flags(p, runs: str = "--eval", calibration: str = "default: tiles of --input itself",
              eval_mode=lambda args: args.eval):
    """--backend, --int8 and --calibrate, as every command that runs the generator has them, checked
    when the command line is parsed (check_flags: a contradiction is a one-line usage error). runs: what
    they apply to; calibration: what --int8 calibrates on without --calibrate; eval_mode(args): whether
    the command runs the eval mode (its --eval by default)."""
    p.add_argument("--backend", choices=BACKENDS, default=default_backend(), help=(
        f"what runs the generator (default: ${BACKEND_VARIABLE}, else auto). auto: the paper mode on torch; "
        f"{runs} on the fastest path measured on this machine (a short probe at first use, cached per "
        "machine); onnxruntime: an ONNX export of the weights, made once and cached beside them"))
    p.add_argument("--int8", action="store_true", help=f"{runs}: an int8 model (static quantization, "
                   "calibrated on --calibrate); with auto, only where the CPU has VNNI or AMX-INT8 and it "
                   f"costs at most {INT8_MAX_MEAN_LEVELS:g} level of 255 on average")
    p.add_argument("--calibrate", metavar="FOLDER", help=f"--int8: images whose tiles calibrate it ({calibration})")
    # a command without --amp runs torch's default precision, which never contradicts these flags
    p.hooks.append(lambda args: check_flags(args.backend, eval_mode(args), getattr(args, "amp", "auto"), args.int8,
                                            args.calibrate))


def check_flags(backend: str, eval_mode: bool, amp: str, int8: bool, calibrate) -> None:
    """Refuse contradictory backend flags in one line each (InputError)."""
    if int8 and backend == "torch":
        raise InputError("--int8 runs on onnxruntime, not torch: use --backend auto or onnxruntime with it")
    if int8 and not eval_mode:
        raise InputError(f"--int8 needs --eval: {PAPER_ON_TORCH}")
    if backend == "onnxruntime" and not eval_mode:
        raise InputError(f"--backend onnxruntime needs --eval: {PAPER_ON_TORCH}")
    if (int8 or backend == "onnxruntime") and amp in ("bf16", "fp16"):
        raise InputError(f"--amp {amp} is torch's: onnxruntime runs float32 (int8 with --int8); "
                         f"leave --amp at auto or off")
    if calibrate is not None and not int8:
        raise InputError(f"--calibrate {calibrate}: calibrates --int8; add --int8 or leave it out")
    if calibrate is not None and not Path(calibrate).is_dir():
        raise InputError(f"--calibrate {calibrate}: no such folder (expected a folder of images)")


def check_device(backend: str, device: torch.device) -> None:
    """Refuse --backend onnxruntime where it cannot run: without onnxruntime, or on a GPU."""
    if backend != "onnxruntime":
        return
    if device.type != "cpu":
        raise InputError(f"--backend onnxruntime runs on the CPU here, and the device is {device.type}: "
                         f"add --device cpu, or use --backend torch")
    if not onnxruntime_available():
        raise InputError("--backend onnxruntime: onnxruntime is not installed (pip install -r requirements.txt)")


def fixed_choice(backend: str, eval_mode: bool, amp: str, int8: bool, device) -> Choice | None:
    """The choice that needs no measuring, or None where auto measures."""
    if backend == "torch":
        return torch_choice(amp, device, eval_mode, "--backend torch")
    if not eval_mode:
        return torch_choice(amp, device, False, PAPER_ON_TORCH)
    if device.type != "cpu":
        return torch_choice(amp, device, True, f"auto: onnxruntime runs on the CPU here, the device is {device.type}")
    if backend == "onnxruntime":
        return Choice("onnxruntime", "int8" if int8 else "float32", why="--backend onnxruntime")
    if amp in ("bf16", "fp16"):
        return torch_choice(amp, device, True, f"auto: --amp {amp} runs on torch")
    return None


# ----------------------------------------------------------------------------------------------------
# The cache of exports: beside the weights, else in the per-user cache folder


def cache_folder() -> Path:
    """The per-user cache folder: $SAT2MAP_CACHE, else $XDG_CACHE_HOME/sat2map, else ~/.cache/sat2map."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sat2map"


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def model_places(weights: Path) -> list[tuple[Path, str]]:
    """(folder, file-name prefix) where the models made from `weights` live: beside it, then in the
    cache folder under a prefix naming its full path (two G.pt of different runs do not meet)."""
    where = hashlib.sha256(str(weights.resolve()).encode()).hexdigest()[:8]
    return [(weights.parent, weights.name), (cache_folder() / "onnx", f"{where}-{weights.name}")]


def cached_model(weights: Path, kind: str, settings: dict, make, log=None) -> Path:
    """The model of `kind` ("onnx", or "int8.onnx") made from the weights file with these settings:
    found under its name, PREFIX.<weights hash>-<settings hash>.<kind>, or made now by make(path) into
    a temp file put in place durably. Making one removes that weights file's other models of the same
    kind (stale ones, or int8 models calibrated on other tiles): one of each kind stays."""
    name = f"{file_digest(weights)[:16]}-{settings_digest(settings)[:10]}.{kind}"
    places = model_places(weights)
    for folder, prefix in places:
        if (folder / f"{prefix}.{name}").is_file():
            return folder / f"{prefix}.{name}"
    for i, (folder, prefix) in enumerate(places):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{prefix}.", suffix=".tmp")
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and i + 1 < len(places):
                continue  # the weights' folder is not ours to write: the cache folder is
            raise
        os.close(fd)
        path = folder / f"{prefix}.{name}"
        try:
            make(Path(tmp))
            ordinary_mode(tmp)  # readable by whoever else runs these weights, as the weights are
            replace_durably(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        stale = re.compile(re.escape(prefix) + r"\.[0-9a-f]{16}-[0-9a-f]{10}\." + re.escape(kind))
        for old in folder.glob(f"{prefix}.*.{kind}"):
            if old != path and stale.fullmatch(old.name):
                old.unlink(missing_ok=True)
        if log:
            log(f"made the {kind} model of {weights.name} once: cached as {path}")
        return path


def exported(G: nn.Module, weights: Path, config: dict, log=None, opset: int = OPSET) -> Path:
    """The float32 ONNX export of G (eval mode) from the weights file, made once (export.export,
    checked against torch) and cached; the ONNX Runtime backends' and the browser model's."""
    import export
    settings = {"version": EXPORT_VERSION, "opset": opset, "mode": "eval",
                **{k: config.get(k) for k in ("netG", "ngf", "norm", "dropout")}}

    def make(path: Path):
        cpu = copy.deepcopy(G).float().cpu()  # export puts the module in eval mode: a copy, not G
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter's own progress lines
            export.export(cpu, path, opset)
        diff = export.max_difference(cpu, path, shape=(1, channels(cpu)[0], 256, 256))
        if diff > 1e-4:
            raise InputError(f"{weights}: its ONNX export differs from PyTorch by {diff:.2e} (limit 1e-4)")
    return cached_model(weights, "onnx", settings, make, log)


# ----------------------------------------------------------------------------------------------------
# The loader


def open_net(choice: Choice, G: nn.Module, weights: Path, config: dict, calibrate=None, log=None):
    """The net that runs `choice`: G itself prepared for torch (in place), or an ONNX Runtime session
    on the cached export (int8: quantized on calibrate(), the tiles, and its cost printed)."""
    if choice.backend == "torch":
        return TorchNet(prepare_torch(G, choice), choice.channels_last)
    fp32 = exported(G, weights, config, log)
    if choice.precision != "int8":
        return OrtNet(fp32)
    import int8
    return int8.open_int8(fp32, weights, calibrate(config), log)[0]


def load(weights, device, backend: str = "auto", eval_mode: bool = False, amp: str = "auto", int8: bool = False,
         calibrate=None, tile: int = 256, batch: int = 8, log=print, hardware=None, timer=None):
    """(net, config, choice): the generator of `weights` on `device` as `backend` runs it.

    eval_mode: --eval (else the paper mode, always on torch). amp: --amp, torch's precision. int8: an
    int8 model (onnxruntime; with auto, where probe.int8_note allows it). calibrate: calibrate(config)
    gives the calibration tiles (N, C, t, t) in [-1, 1]; called only where int8 is made. tile, batch:
    what the engine will run, which auto's probe times. log: where lines for the user go (None: nowhere).
    hardware, timer: probe.hardware and probe.time_net by default (tests give fakes)."""
    check_flags(backend, eval_mode, amp, int8, None)
    if int8 and calibrate is None:
        raise ValueError("int8 needs calibration tiles: pass calibrate")
    device = torch.device(device)
    check_device(backend, device)
    path = weights_path(weights)
    G, config = load_generator(path, device)
    choice = fixed_choice(backend, eval_mode, amp, int8, device)
    if choice is None:
        import probe
        choice, int8_net = probe.auto_choice(G, path, config, amp, int8, calibrate, tile, batch, log,
                                             hardware or probe.hardware(), timer or probe.time_net)
        if int8_net is not None:
            return int8_net, config, choice
    return open_net(choice, G, path, config, calibrate, log), config, choice
