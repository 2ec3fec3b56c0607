"""What this CPU can do, and `--backend auto`'s choice: a short probe that times the inference paths
available here on the engine's own batches, once per machine, model and tile setting.

    python -c "import probe; print(probe.hardware().describe())"
    python predict.py --weights sat2map --input scene.tif --out out/ --eval      # probes on first use

The candidates: torch float32 (contiguous and channels-last), torch bf16 channels-last where the CPU
runs bf16 natively and --amp is auto, ONNX Runtime float32 where it is installed, and with --int8 ONNX
Runtime int8 where the CPU has VNNI or AMX-INT8 and its measured cost is within
backends.INT8_MAX_MEAN_LEVELS. The record of each probe is kept in CACHE/probe.json under a key naming
the CPU (model, torch's capability, its bf16/VNNI/AMX flags), the torch and onnxruntime versions, the
threads, the model's architecture, the tile and the batch. The hardware reader and the timer are
parameters, so tests show the choice with fakes (docs/performance.md#auto).
"""
import copy
import json
import platform
import time
from dataclasses import dataclass

import torch

import backends
from backends import Choice
from durable import atomic_write_text
from generator import channels
from tiles import run_tiles
from utils import amp_dtype

CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx512_vnni", "avx_vnni")
# Timed calls per candidate, after one warm-up call: at least PROBE_CALLS, and more until PROBE_SECONDS
# are spent, so that a moment's load elsewhere is not taken for the speed; the quickest counts
PROBE_CALLS = 2
PROBE_SECONDS = 0.5
PROBE_TILES = 4  # tiles per timed call at most (the engine's batch if smaller): the probe stays short
PROBE_ENTRIES = 64  # records kept in probe.json, newest first


@dataclass(frozen=True)
class Hardware:
    """The CPU as the backends see it."""
    cpu: str  # model name
    capability: str  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    flags: tuple  # which of CPU_FLAGS it has
    bf16: bool  # torch runs bf16 natively here (utils.amp_dtype's test)

    @property
    def vnni(self) -> bool:
        return "avx512_vnni" in self.flags or "avx_vnni" in self.flags

    @property
    def amx(self) -> bool:
        return any(f.startswith("amx") for f in self.flags)

    @property
    def int8(self) -> bool:
        """int8 dot products in hardware (VNNI or AMX-INT8): where int8 convolutions pay."""
        return self.vnni or "amx_int8" in self.flags

    def describe(self) -> str:
        yes = {True: "yes", False: "no"}
        return (f"{self.cpu}: torch capability {self.capability}; bf16 {yes[self.bf16]}, VNNI {yes[self.vnni]}, "
                f"AMX {yes[self.amx]}")


def hardware() -> Hardware:
    """This CPU: its model and flags from /proc/cpuinfo (none elsewhere), torch's capability."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return Hardware(name, torch.backends.cpu.get_cpu_capability(), tuple(f for f in CPU_FLAGS if f in flags),
                    amp_dtype("auto", torch.device("cpu")) == torch.bfloat16)


# ----------------------------------------------------------------------------------------------------
# The candidates, and the quickest of them


def int8_note(hw: Hardware, onnxruntime: bool, cost) -> str | None:
    """Why auto leaves int8 out here, or None where it is a candidate. cost: its int8.Cost."""
    if not onnxruntime:
        return "int8 left out: onnxruntime is not installed"
    if not hw.int8:
        return "int8 left out: this CPU has no VNNI or AMX-INT8, where int8 convolutions do not pay"
    if cost is not None and not cost.mean <= backends.INT8_MAX_MEAN_LEVELS:
        return (f"int8 left out: it costs {cost.mean:.2f} levels on average, over the bound of "
                f"{backends.INT8_MAX_MEAN_LEVELS:g}")
    return None


def candidates(hw: Hardware, amp: str, onnxruntime: bool, int8: bool, int8_cost=None) -> tuple[list, list]:
    """(the paths auto may take on this CPU, notes on what it left out). int8: --int8 was given."""
    paths = [Choice("torch", "float32"), Choice("torch", "float32", True)]
    notes = []
    if amp == "auto" and hw.bf16:
        paths.append(Choice("torch", "bfloat16", True))
    if onnxruntime:
        paths.append(Choice("onnxruntime", "float32"))
    else:
        notes.append("onnxruntime is not installed")
    if int8:
        note = int8_note(hw, onnxruntime, int8_cost)
        if note is None:
            paths.append(Choice("onnxruntime", "int8"))
        elif onnxruntime:
            notes.append(note)
    return paths, notes


def time_net(net, x: torch.Tensor) -> float:
    """Seconds of the quickest call of the engine's eval step (tiles.run_tiles) on the tiles x, after
    one warm-up call: of PROBE_CALLS calls, or as many as PROBE_SECONDS take."""
    places, times = [(0, 0)] * len(x), []
    with net.inference(False, 0):
        run_tiles(net, x, places, False, 0, len(x), False)
        while len(times) < PROBE_CALLS or sum(times) < PROBE_SECONDS:
            start = time.perf_counter()
            run_tiles(net, x, places, False, 0, len(x), False)
            times.append(time.perf_counter() - start)
    return min(times)


def probe_key(hw: Hardware, G, config: dict, tile: int, batch: int) -> str:
    """What a probe's result depends on, as the key of its record."""
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return json.dumps({"cpu": hw.cpu, "capability": hw.capability, "flags": list(hw.flags), "bf16": hw.bf16,
                       "torch": torch.__version__, "onnxruntime": ort_version, "threads": torch.get_num_threads(),
                       "model": {**{k: config.get(k) for k in ("netG", "ngf", "norm")},
                                 "channels": list(channels(G))},
                       "tile": tile, "batch": batch}, sort_keys=True)


def records(path) -> dict:
    """probe.json's records by key; none where it is missing or unreadable (it is only a cache)."""
    try:
        book = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in book.items() if isinstance(v, dict)} if isinstance(book, dict) else {}


def measured(key: str, paths: list, make_net, x: torch.Tensor, timer, log=None) -> dict:
    """{label: seconds per batch} of every path: this machine's record under `key` where it holds
    them all, else measured now, one path after the other, and recorded."""
    book_path = backends.cache_folder() / "probe.json"
    book = records(book_path)
    known = book.get(key, {}).get("seconds", {})
    if all(p.label in known for p in paths):
        return known
    seconds = {}
    for p in paths:
        net = make_net(p)
        seconds[p.label] = timer(net, x)
        del net
    book = {key: {"seconds": seconds, "probed": time.strftime("%Y-%m-%d %H:%M")},
            **{k: v for k, v in book.items() if k != key}}
    try:
        atomic_write_text(book_path, json.dumps(dict(list(book.items())[:PROBE_ENTRIES]), indent=1) + "\n")
    except OSError as e:
        if log:
            log(f"note: the probe's record could not be kept in {book_path} ({e.strerror or e}); "
                "it runs again next time")
    if log:
        rates = ", ".join(f"{label} {len(x) / s:.2f}" for label, s in sorted(seconds.items(), key=lambda kv: kv[1]))
        log(f"auto: probed {len(paths)} paths on this machine, tiles/s on batches of {len(x)}, fastest first: {rates}")
    return seconds


def auto_choice(G, weights, config: dict, amp: str, int8: bool, calibrate, tile: int, batch: int, log,
                hw: Hardware, timer) -> tuple[Choice, object]:
    """auto's choice for --eval on the CPU, and the int8 net when int8 is chosen (it was made to
    measure its cost). The fastest candidate by this machine's probe record, or by a probe now."""
    onnxruntime = backends.onnxruntime_available()
    int8_net = cost = None
    if int8 and int8_note(hw, onnxruntime, None) is None:
        import int8 as int8_module
        fp32 = backends.exported(G, weights, config, log)
        int8_net, cost = int8_module.open_int8(fp32, weights, calibrate(config), log)
    paths, notes = candidates(hw, amp, onnxruntime, int8, cost)

    def make_net(path: Choice):
        if path.precision == "int8":
            return int8_net
        return backends.open_net(path, copy.deepcopy(G) if path.backend == "torch" else G, weights, config, log=log)

    x = torch.rand(min(batch, PROBE_TILES), channels(G)[0], tile, tile,
                   generator=torch.Generator().manual_seed(0)) * 2 - 1
    seconds = measured(probe_key(hw, G, config, tile, batch), paths, make_net, x, timer, log)
    best = min(paths, key=lambda p: seconds[p.label])
    why = "; ".join([f"auto: the fastest of {len(paths)} paths measured on this machine", *notes])
    return best.because(why), int8_net if best.precision == "int8" else None
