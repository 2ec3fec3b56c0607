"""Benchmark the training step and inference against a plain reference, in one run on one machine;
and (--data) the data path against dataset size.

    python bench.py --device cpu --quick        # under a minute on a 2-core CPU
    python bench.py --device cuda --json        # the full table, targets, then one JSON line
    python bench.py --device cuda --compile reduce-overhead --json   # CUDA graphs, as .ci/gpu runs it
    python bench.py --data --sizes 1000,4000,16000                    # memory vs mapped file vs size

Reference: eager float32, contiguous memory, the PIL data path (decode + resize every step),
PyTorch's default Adam, no compile. Ours: the train.py defaults for training (cached uint8 pairs
jittered on the device, --channels-last auto (channels-last on a GPU, contiguous on a CPU), the --amp
auto autocast (utils.amp_dtype: bf16 where the device runs it fast, fp16 with a GradScaler on GPUs
before compute capability 8), fused Adam, in bf16 on a CPU the U-Net's small convolutions as matrix
products (smallconv.py; a row times them on oneDNN instead)) and, for
inference, what predict.py --eval runs with --backend (default auto: the path its probe found fastest
on this machine; on a GPU, the weights in the --amp auto dtype, channels-last), plus --compile (torch).
On a CPU every inference path is a row of its own, timed as the tile engine runs it (tiles.run_tiles):
torch float32 (contiguous, channels-last), torch bf16 where the CPU runs it natively, ONNX Runtime
float32 and int8 (QDQ, per-channel, calibrated on random tiles). The hardware class (torch's CPU
capability; bf16, VNNI, AMX) is printed first and sets the CPU targets.
Times are torch.utils.benchmark medians with their interquartile range over repeated blocks; the
device's peak in each dtype is a large matmul timed in the same run (int8: torch._int_mm, int8 in and
int32 out), and each row reports its share of the peak of its own dtype. FLOPs are counted with
torch.utils.flop_counter (an int8 row does as many operations); figures are the full-size U-Net-256 at
256x256.
"""
import argparse
import copy
import itertools
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import backends
import cache
import dataset
import int8
import probe
import smallconv
from backends import PRECISIONS, Choice
from cli import command_parser, run_command
from config import Config, add_device
from discriminator import Discriminator
from generator import Generator, init_weights, load_generator
from memory import keep_freed_buffers
from tiles import run_tiles
from train import gan_step, to_pair, training_layout
from utils import amp_dtype, pick_device, set_determinism

# Pass marks. CPU: against the reference on the same machine, by hardware class: with native bf16
# (AVX512-BF16 or AMX) or without; and int8 against float32 (both on ONNX Runtime) where the CPU has
# VNNI or AMX-INT8. One H100: absolute rates, and data loading must deliver DATA_MARGIN times what the
# training step consumes, so it never limits it.
CPU_TARGETS = {"bf16": {"train_speedup": 2.0, "infer_speedup": 2.5},
               "no bf16": {"train_speedup": 1.0, "infer_speedup": 1.4}}
INT8_TARGET = 2.0
TARGETS = {"cuda": {"train_img_per_s": 300, "train_speedup": 3.0, "infer_img_per_s": 3000, "data_margin": 5.0}}


def measure(fn, warmup: int, min_time: float) -> tuple[float, float]:
    """Median seconds per call of fn() and the interquartile range, over blocks of calls that
    torch.utils.benchmark sizes to take min_time in all (it synchronises CUDA around each block)."""
    # Imported here: on a machine without CUDA the import logs a CUDA_HOME warning, and --help must
    # print nothing but help
    import torch.utils.benchmark as benchmark
    for _ in range(warmup):
        fn()
    # num_threads: Timer runs on one thread unless told, which is not how training runs
    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_time)
    return m.median, m.iqr


def matmul_peak(device, precision: str, min_time: float) -> float:
    """TFLOP/s (TOP/s for int8) of a large square matmul: the most this device gives in this dtype,
    measured now. int8: torch._int_mm (int8 operands, int32 results)."""
    n = 8192 if device.type == "cuda" else 4096
    if precision == "int8":
        a, b = (torch.randint(-128, 128, (n, n), device=device, dtype=torch.int8) for _ in range(2))
        median, _ = measure(lambda: torch._int_mm(a, b), 2, min_time)
    else:
        dtype = {v: k for k, v in PRECISIONS.items()}[precision]
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        median, _ = measure(lambda: a @ b, 2, min_time)
    return 2 * n ** 3 / median / 1e12


def make_pairs(folder: Path, n: int, size=(1200, 600), quality=90) -> list:
    """n synthetic JPEG pairs (default the size of the maps set, so decoding costs what it would)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    noise = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    for i in range(n):
        if not (folder / f"{i:06d}.jpg").exists():
            Image.fromarray(np.roll(noise, i * 7, axis=1)).save(folder / f"{i:06d}.jpg", quality=quality)
    return dataset.list_pairs(folder.parent, folder.name)[0]


def train_setup(device, fast: bool, compile_mode: str, cfg: Config, ngf=64):
    if fast and device.type == "cpu":
        keep_freed_buffers()  # as train.py; for the rest of the process: every later row runs with it
    torch.manual_seed(0)
    G, D = init_weights(Generator(3, 3, ngf)).to(device), init_weights(Discriminator(6, ngf)).to(device)
    fmt = training_layout(cfg.channels_last, device)[0] if fast else torch.contiguous_format
    G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
    adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True if fast else None)
    opt_G, opt_D = torch.optim.Adam(G.parameters(), **adam), torch.optim.Adam(D.parameters(), **adam)
    dtype = amp_dtype("auto", device) if fast else None
    G_train, D_train = G, D
    if fast and compile_mode != "off":
        G_train = torch.compile(G, mode=None if compile_mode == "default" else compile_mode)
        D_train = torch.compile(D, mode=None if compile_mode == "default" else compile_mode)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # as train.py
    return G, D, G_train, D_train, opt_G, opt_D, scaler, dtype, fmt


def data_source(pairs, device, fast, cfg, cache_dir=None):
    """get(i) -> uint8 batch of one jittered pair: ours from the cache (on the GPU unless mapped, then
    pinned and copied one ahead as train.py does), the reference through PIL."""
    plan = dataset.jitter_plan(len(pairs), 0, 0, cfg.load_size, cfg.crop_size, True)
    if fast:
        cached = cache.CachedPairs(pairs, cfg.load_size, cache_dir)
        if cache_dir is None:
            cached.to(device)
            return lambda i: cached.batch(plan[i % len(plan)][None], cfg.crop_size)
        rows = (plan[i % len(plan)][None] for i in itertools.count())
        stream = cache.prefetch((cached.batch(r, cfg.crop_size) for r in rows), device)
        return lambda i: next(stream)
    pil = dataset.PILPairs(pairs, cfg.load_size, cfg.crop_size)
    return lambda i: pil[tuple(plan[i % len(plan)])][None]


def counter():
    """A call counter, so every timed call takes the next plan row."""
    n = [0]

    def next_i():
        n[0] += 1
        return n[0]
    return next_i


def bench_train(pairs, device, fast, compile_mode, warmup, min_time, cfg, cache_dir=None, ngf=64):
    """The whole step, data included: (median s, IQR s, FLOPs of one step, dtype, data median s)."""
    G, D, G_train, D_train, opt_G, opt_D, scaler, dtype, fmt = train_setup(device, fast, compile_mode, cfg, ngf)
    get, i = data_source(pairs, device, fast, cfg, cache_dir), counter()

    def step():
        real_A, real_B = to_pair(get(i()), cfg, device, fmt)
        return gan_step(G_train, D_train, D, opt_G, opt_D, scaler, real_A, real_B, cfg, dtype, device)

    median, iqr = measure(step, warmup, min_time)
    data_median, _ = measure(lambda: to_pair(get(i()), cfg, device, fmt), 2, min_time / 4)
    with FlopCounterMode(display=False) as fc:
        real_A, real_B = to_pair(get(0), cfg, device, fmt)
        gan_step(G, D, D, opt_G, opt_D, scaler, real_A, real_B, cfg, dtype, device)
    return median, iqr, fc.get_total_flops(), dtype, data_median


def bench_infer(device, fast, compile_mode, batch, warmup, min_time):
    torch.manual_seed(0)
    G = init_weights(Generator()).to(device).eval()
    fmt = torch.channels_last if fast else torch.contiguous_format
    G = G.to(memory_format=fmt)
    dtype = amp_dtype("auto", device) if fast else None
    G = G.to(dtype or torch.float32)  # as predict.py --amp auto: the weights themselves, no per-call casts
    run = torch.compile(G, mode=None if compile_mode == "default" else compile_mode) if fast and compile_mode != "off" else G
    x = (torch.rand(batch, 3, 256, 256, device=device) * 2 - 1).to(dtype or torch.float32).contiguous(memory_format=fmt)
    with torch.inference_mode():
        median, iqr = measure(lambda: run(x), warmup, min_time)
        with FlopCounterMode(display=False) as fc:
            G(x)
    return median, iqr, fc.get_total_flops() / batch, dtype


def bench_paths(hw, batch, warmup, min_time, backend, use_int8, calibration=None) -> tuple[dict, Choice]:
    """The CPU's inference paths, each timed as the tile engine runs it (tiles.run_tiles, eval mode)
    on a batch of random tiles through the full-size U-Net with random weights: ({label: (median s,
    IQR s, precision)}, the choice predict.py --eval --backend BACKEND [--int8] makes here for that
    model). int8 calibrates on `calibration` (tiles), else on random tiles of its own."""
    torch.manual_seed(0)
    tiles = torch.rand(batch + int8.CALIBRATION_TILES, 3, 256, 256) * 2 - 1
    x, calibration = tiles[:batch], tiles[batch:] if calibration is None else calibration
    paths = [Choice("torch", "float32"), Choice("torch", "float32", True)]
    paths += [Choice("torch", "bfloat16", True)] * hw.bf16
    paths += [Choice("onnxruntime", "float32"), Choice("onnxruntime", "int8")] * backends.onnxruntime_available()
    times = {}
    with tempfile.TemporaryDirectory() as tmp:  # the weights, and the exports cached beside them
        weights = Path(tmp) / "G.pt"
        torch.save({"G": init_weights(Generator()).state_dict()}, weights)
        G, config = load_generator(weights)
        for path in paths:
            net = backends.open_net(path, copy.deepcopy(G), weights, config, lambda _: calibration, log=print)
            with net.inference(False, 0):
                median, iqr = measure(partial(run_tiles, net, x, [(0, 0)] * batch, False, 0, batch, False),
                                      warmup, min_time)
            times[path.label] = median, iqr, path.precision
            del net
        del G
        _, _, choice = backends.load(weights, "cpu", backend, True, "auto", use_int8, lambda _: calibration, 256,
                                     batch, log=print)
    return times, choice


def check_targets(device, fig: dict, hw) -> dict:
    """{name: {value, target, pass}} for this device kind's targets (a CPU's by its hardware class)."""
    targets = dict(TARGETS.get(device.type, {}))
    if device.type == "cpu":
        targets = dict(CPU_TARGETS["bf16" if hw.bf16 else "no bf16"])
        if hw.int8 and "int8_speedup" in fig:
            targets["int8_speedup"] = INT8_TARGET
    out = {}
    for name, target in targets.items():
        value = fig["data_img_per_s"] / fig["train_img_per_s"] if name == "data_margin" else fig[name]
        out[name] = {"value": value, "target": target, "pass": value >= target}
    return out


def ours_infer(device, hw, args, batch, warmup, min_time, flops) -> tuple[tuple, dict, Choice]:
    """Ours inference, (median s, IQR s, FLOPs per image, precision), every CPU path's row
    ({label: (median, IQR, precision)}) and what ours runs. On a GPU, or with --compile: the torch
    path of predict.py (--amp auto, channels-last), compiled."""
    if device.type != "cpu" or args.compile != "off":
        median, iqr, flops, dtype = bench_infer(device, True, args.compile, batch, warmup, min_time)
        why = f"--compile {args.compile} runs on torch" if args.compile != "off" else f"the device is {device.type}"
        choice = backends.torch_choice("auto", device, True, why)
        return (median, iqr, flops, PRECISIONS[dtype or torch.float32]), {}, choice
    calibration = int8.folder_tiles(args.calibrate) if args.calibrate else None
    times, choice = bench_paths(hw, batch, warmup, min_time, args.backend, args.int8, calibration)
    return (*times[choice.label][:2], flops, choice.precision), times, choice


def main_speed(args):
    set_determinism(args.deterministic)  # as train.py: cudnn.benchmark unless --deterministic
    device = pick_device(args.device)
    backends.check_device(args.backend, device)
    gpu = device.type == "cuda"
    hw = probe.hardware() if device.type == "cpu" else None
    warmup = 2 if not gpu else 30 if args.compile != "off" else 10
    min_time = (2.0 if args.quick else 10.0) if not gpu else (1.0 if args.quick else 3.0)
    batch = args.infer_batch or (64 if gpu else 4)
    cfg = Config(data_cache="memory", compile=args.compile)
    ref_cfg = Config(data_cache="off")
    with tempfile.TemporaryDirectory() as tmp:
        pairs = make_pairs(Path(tmp) / "train", 8)
        ref_t = bench_train(pairs, device, False, "off", 2 if not gpu else 5, min_time, ref_cfg)
        our_t = bench_train(pairs, device, True, args.compile, warmup, min_time, cfg)
        # the other memory layout, so the table shows what --channels-last auto chose against
        other = "on" if training_layout("auto", device)[0] == torch.contiguous_format else "off"
        other_t = bench_train(pairs, device, True, args.compile, warmup, min_time,
                              Config(data_cache="memory", compile=args.compile, channels_last=other))
        onednn_t = None
        if device.type == "cpu" and our_t[3] == torch.bfloat16:  # where smallconv's matmul route runs
            with smallconv.route("onednn"):
                onednn_t = bench_train(pairs, device, True, args.compile, warmup, min_time, cfg)
        mapped_data = bench_train(pairs, device, True, "off", 1, min_time / 4, cfg, Path(tmp) / "cache", ngf=8)[4]
    ref_i = bench_infer(device, False, "off", batch, 2, min_time)
    our_i, paths, choice = ours_infer(device, hw, args, batch, warmup, min_time, ref_i[2])
    train_precision = PRECISIONS[our_t[3] or torch.float32]
    rows = [("reference train", 1, ref_t, "float32", ref_t),
            (f"train channels-last {other}", 1, other_t, train_precision, ref_t),
            ("ours train", 1, our_t, train_precision, ref_t), ("reference infer", batch, ref_i, "float32", ref_i)]
    if onednn_t is not None:
        rows.insert(2, ("train small convolutions on oneDNN", 1, onednn_t, train_precision, ref_t))
    rows += [(f"infer {label}", batch, (median, iqr, ref_i[2]), precision, ref_i)
             for label, (median, iqr, precision) in paths.items()]
    rows += [("ours infer", batch, our_i, our_i[3], ref_i)]
    peaks = {precision: matmul_peak(device, precision, min_time / 2) for precision in {row[3] for row in rows}}
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, compile {args.compile}")
    if hw is not None:
        print(f"hardware: {hw.describe()}; targets of the {'bf16' if hw.bf16 else 'no bf16'} class"
              + (", and int8 against float32" if hw.int8 else ""))
    print("peak (matmul, measured now): " + ", ".join(f"{p} {tf:.2f} {'TOP' if p == 'int8' else 'TFLOP'}/s"
                                                      for p, tf in peaks.items()))
    print(f"ours train: {train_precision}, {training_layout('auto', device)[1]}")
    print(f"ours infer: {choice}")
    print(f"{'mode':<36}{'batch':>6}{'img/s':>10}{'IQR %':>7}{'GFLOP/s':>10}{'% peak':>8}{'x ref':>7}")
    shares = {}
    for mode, b, (median, iqr, flops, *_), precision, ref in rows:
        ips, gflops = b / median, b / median * flops / 1e9
        shares[mode] = gflops / 1e3 / peaks[precision]
        print(f"{mode:<36}{b:>6}{ips:>10.2f}{100 * iqr / median:>7.1f}{gflops:>10.1f}"
              f"{100 * shares[mode]:>8.1f}{ref[0] / median:>7.2f}")
    fig = {"device": name, "train_img_per_s": 1 / our_t[0], "ref_train_img_per_s": 1 / ref_t[0],
           "train_speedup": ref_t[0] / our_t[0], "infer_img_per_s": batch / our_i[0],
           "ref_infer_img_per_s": batch / ref_i[0], "infer_speedup": ref_i[0] / our_i[0],
           "train_gflop": our_t[2] / 1e9, "infer_gflop": our_i[2] / 1e9,
           "compile": args.compile, "infer_batch": batch, "deterministic": args.deterministic,
           "train_iqr_pct": 100 * our_t[1] / our_t[0], "infer_iqr_pct": 100 * our_i[1] / our_i[0],
           "ref_train_iqr_pct": 100 * ref_t[1] / ref_t[0], "ref_infer_iqr_pct": 100 * ref_i[1] / ref_i[0],
           "data_img_per_s": 1 / our_t[4], "mapped_data_img_per_s": 1 / mapped_data,
           "ref_data_img_per_s": 1 / ref_t[4], "peak_tflops": peaks, "peak_share": shares,
           "infer_backend": choice.as_dict(), "infer_paths_img_per_s": {k: batch / v[0] for k, v in paths.items()}}
    if onednn_t is not None:
        fig["train_small_conv_onednn_img_per_s"] = 1 / onednn_t[0]
    if hw is not None:
        fig.update(hardware=hw.describe(), hardware_class="bf16" if hw.bf16 else "no bf16")
    if "onnxruntime int8" in paths:
        fig["int8_speedup"] = paths["onnxruntime float32"][0] / paths["onnxruntime int8"][0]
    print(f"FLOPs: train step {our_t[2] / 1e9:.1f} GFLOP, inference {our_i[2] / 1e9:.1f} GFLOP/img")
    print(f"data alone: {fig['data_img_per_s']:.0f} img/s from memory, {fig['mapped_data_img_per_s']:.0f} img/s "
          f"from the mapped file, {fig['ref_data_img_per_s']:.1f} img/s through PIL (reference)")
    fig["targets"] = check_targets(device, fig, hw)
    for key, t in fig["targets"].items():
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {key} {t['value']:.2f} (target >= {t['target']})")
    if args.json:
        print(json.dumps(fig))
    return 0 if all(t["pass"] for t in fig["targets"].values()) else 1


# ----------------------------------------------------------------------------------------------------
# --data: decode throughput, step time and memory against dataset size, memory vs mapped file


def memory_now() -> dict:
    """GB of this process: peak resident set (VmHWM), and now its private (anonymous) and file-backed
    (page cache, shared with every process of the node) resident pages."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024 / 1e9
    return out


def data_run(args):
    """One (size, mode) in a fresh process, so its peak memory is its own; prints one JSON line."""
    device = pick_device(args.device)
    cfg = Config(data_cache=args.data_mode, load_size=args.load_size)
    pairs = dataset.list_pairs(args.root, "train")[0][: args.data_size]
    cache_dir = Path(args.root) / ".cache" / "bench" if args.data_mode == "disk" else None
    if cache_dir is not None:
        for f in cache_dir.glob("*.u8"):
            f.unlink()  # time the build, not a reuse
    start = time.perf_counter()  # one long call: a plain clock (benchmark.Timer would run it twice)
    built = cache.CachedPairs(pairs, cfg.load_size, cache_dir)
    build_s = time.perf_counter() - start
    after_build = memory_now()
    step_s, _, _, _, data_s = bench_train(pairs, device, True, "off", 2, args.min_time, cfg, cache_dir, args.ngf)
    held = memory_now()  # with the built set still alive: what holding it costs this process
    del built
    print(json.dumps({"pairs": len(pairs), "mode": args.data_mode, "decoded_gb": len(pairs) * 6 * cfg.load_size ** 2 / 1e9,
                      "decode_pairs_per_s": len(pairs) / build_s, "data_ms": 1e3 * data_s, "step_ms": 1e3 * step_s,
                      "build_peak_gb": after_build["VmHWM"], **{k + "_gb": v for k, v in held.items()}}))


def main_data(args):
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="sat2map-bench-"))
    print(f"making {max(sizes)} synthetic {2 * args.image}x{args.image} JPEG pairs in {work} ...", flush=True)
    make_pairs(work / "train", max(sizes), (2 * args.image, args.image))
    print(f"{'pairs':>7}{'GB':>7}  {'mode':<7}{'decode/s':>9}{'data ms':>9}{'step ms':>9}"
          f"{'build peak':>11}{'peak RSS':>9}{'anon':>7}{'file':>7}  (GB)")
    results = []
    for n in sizes:
        for mode in ("memory", "disk"):
            r = subprocess.run([sys.executable, __file__, "--data-run", "--root", str(work), "--data-size", str(n),
                                "--data-mode", mode, "--device", args.device, "--load-size", str(args.load_size),
                                "--ngf", str(args.ngf), "--min-time", str(args.min_time)],
                               capture_output=True, text=True, cwd=Path(__file__).parent)
            if r.returncode:
                print(f"{n:>7} {mode}: failed\n{r.stderr[-2000:]}")
                continue
            x = json.loads(r.stdout.strip().splitlines()[-1])
            results.append(x)
            print(f"{x['pairs']:>7}{x['decoded_gb']:>7.2f}  {mode:<7}{x['decode_pairs_per_s']:>9.0f}{x['data_ms']:>9.2f}"
                  f"{x['step_ms']:>9.1f}{x['build_peak_gb']:>11.2f}{x['VmHWM_gb']:>9.2f}{x['RssAnon_gb']:>7.2f}"
                  f"{x['RssFile_gb']:>7.2f}", flush=True)
    print("memory holds the set privately (anon grows with it); the mapped file keeps anon flat and its pages "
          "in the page cache (file), shared by every process of the node and reclaimable")
    if args.json:
        print(json.dumps(results))


def main(argv=None):
    p = command_parser("Benchmark training and inference against a reference, or (--data) the data path "
                       "against dataset size.")
    add_device(p)
    p.add_argument("--quick", action="store_true", help="short timings (under a minute on CPU)")
    p.add_argument("--compile", default="off", choices=["off", "default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode for our training step and inference")
    p.add_argument("--infer-batch", type=int, default=0, help="inference batch (default 4 on CPU, 64 on GPU)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    p.add_argument("--deterministic", action="store_true", help="as train.py --deterministic: what it costs")
    p.add_argument("--data", action="store_true", help="the data path against dataset size instead")
    p.add_argument("--sizes", default="1000,4000,16000", help="--data: numbers of pairs")
    p.add_argument("--image", type=int, default=128, help="--data: height of the synthetic AB images (width 2x)")
    p.add_argument("--load-size", type=int, default=286, help="--data: decoded size of each half")
    p.add_argument("--ngf", type=int, default=64, help="--data: network width for the step time")
    p.add_argument("--min-time", type=float, default=5.0, help="--data: seconds of timing per figure")
    p.add_argument("--work", help="--data: folder for the synthetic pairs (default a new temp folder)")
    backends.add_flags(p, "ours infer", "default: random tiles", eval_mode=lambda args: True)
    p.add_argument("--data-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--data-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data-mode", choices=["memory", "disk"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.data_run:
        return data_run(args)
    if args.data:
        return main_data(args)
    return main_speed(args)


if __name__ == "__main__":
    sys.exit(run_command(main))
