"""Train pix2pix (satellite -> map) with exact, crash-proof resume.

    python train.py                                   # paper settings on data/maps
    python train.py --data-root data/facades --name facades --direction BtoA
    python train.py --val-every 500 --best-metric miou_structure --tensorboard
    torchrun --nproc_per_node 4 train.py              # one process per GPU
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --master-addr HOST --master-port 29500 train.py

Stopping is safe at any moment (Ctrl-C and SIGTERM save first; SIGKILL loses at most the steps since
the last save): running the same command again continues from RUN_DIR/last.pt, bit for bit.
"""
import copy
import json
import signal
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import cache
import dataset
import evaluate
import fid
import plots
from config import ARCH_FIELDS, METRIC_GOALS, Config, parse_config, saved_arch
from discriminator import define_D
from generator import define_G, inference, init_weights, size_multiple
from losses import gan_loss, gradient_penalty, make_scheduler
from utils import (InputError, all_agree, amp_dtype, atomic_save, atomic_write_text, broadcast_buffers,
                   first_line, gather_objects, init_distributed, local_rank, pick_device, protect_output,
                   rng_state, run_command, safe_load, save_grid, seed_everything, set_determinism,
                   set_rng_state)

CKPT_VERSION = 1
# What a training checkpoint holds besides the state_dict of each object in main's `state`
CKPT_KEYS = ("version", "step", "epoch", "config", "rng", "data")
# Added to `state` later: a checkpoint without them still resumes, with their fresh state
NEWER_KEYS = ("best",)

# ----------------------------------------------------------------------------------------------------
# Helpers


def to_pair(batch: torch.Tensor, cfg: Config, device, memory_format):
    """uint8 (B, 6, H, W) -> real_A, real_B float in [-1, 1] on device, ordered by --direction."""
    x = batch.to(device, non_blocking=True).float().div_(127.5).sub_(1)
    x = x.contiguous(memory_format=memory_format)
    a, b = x[:, :3], x[:, 3:]
    return (a, b) if cfg.direction == "AtoB" else (b, a)


def load_data(cfg: Config, rank: int, device):
    """Train source (cached uint8 pairs or the PIL dataset) and the val split's pairs (train/ where
    there is no val/), for sample grids and validation."""
    root = Path(cfg.data_root)
    if not root.exists() and root.name in dataset.DATASETS and local_rank() == 0:
        print(f"{root} not found: downloading the {root.name} dataset into {root.parent}")
        dataset.download_dataset(root.name, root.parent)
    if dist.is_initialized():
        dist.barrier()  # the others wait for their node's download
    full_scan = cfg.data_cache == "off"  # the cache build decodes everything anyway
    pairs = dataset.open_split(root, "train", cfg.skip_bad, full=full_scan)[:cfg.max_dataset_size or None]
    val_pairs = dataset.open_split(root, "val" if (root / "val").is_dir() else "train", True, full=False)
    size, crop = dataset.preprocess_plan(pairs, cfg.preprocess, cfg.load_size, cfg.crop_size, size_multiple(cfg.netG))
    if size is None and cfg.batch_size > 1:
        raise InputError(f"--preprocess {cfg.preprocess}: the pairs of {root / 'train'} come out in differing "
                         f"sizes, which cannot share a batch: use --batch-size 1 or another --preprocess")
    where, why = cache.choose(cfg.data_cache, len(pairs), size, device) if size else ("off", "pairs of differing sizes")
    if rank == 0:
        print(f"data cache: {where} ({why})")
    if where == "off":
        sizer = partial(dataset.preprocess_size, mode=cfg.preprocess, load=cfg.load_size, crop=cfg.crop_size,
                        multiple=size_multiple(cfg.netG))
        train = dataset.PILPairs(pairs, size, crop, sizer)
    else:
        cache_dir = root / ".cache" / "train" if where == "disk" else None
        # one build per node, the node's other processes then map what it wrote; in memory each
        # process decodes its own copy, so nobody waits
        shared = dist.is_initialized() and where == "disk"
        builder = local_rank() == 0
        if shared and not builder:
            dist.barrier()
        train = cache.CachedPairs(pairs, size, cache_dir, cfg.skip_bad, crop=crop)
        if shared and builder:
            dist.barrier()
    return train, val_pairs


def sample_batch(pairs, cfg: Config) -> torch.Tensor:
    """The first cfg.num_samples decodable pairs, resized to crop_size (no jitter), for sample grids."""
    out = []
    for pair in pairs:
        try:
            out.append(dataset.decode_pair(pair, cfg.crop_size))
        except dataset.DataError as e:
            print(f"warning: not used for samples: {e}", file=sys.stderr)
        if len(out) == cfg.num_samples:
            break
    if not out:
        raise InputError(f"{cfg.data_root}: no decodable validation pair for the sample grid")
    return torch.stack(out)


def validation_pairs(pairs: list, cfg: Config) -> list:
    """The pairs validation measures: --val-samples of the val split's pairs, spread evenly over its
    sorted names, the same ones at every validation."""
    n = cfg.val_samples
    return pairs if n == 0 or n >= len(pairs) else [pairs[i * len(pairs) // n] for i in range(n)]


class BestMetric:
    """Best validation value of one metric so far and its step; in last.pt, so a resumed run keeps it."""

    def __init__(self, metric: str):
        self.metric, self.value, self.step = metric, None, None

    def update(self, value, step: int) -> bool:
        """Record value if it beats the best so far; True when it does."""
        if value is None or value != value:  # an IoU of a class absent everywhere, or NaN
            return False
        better = max if METRIC_GOALS[self.metric] == "max" else min
        if self.value is not None and better(value, self.value) == self.value:
            return False
        self.value, self.step = value, step
        return True

    def state_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "step": self.step}

    def load_state_dict(self, state: dict):
        if state["metric"] == self.metric:  # another --best-metric now: its best starts over
            self.value, self.step = state["value"], state["step"]


def tensorboard_writer(cfg: Config):
    """The SummaryWriter class for --tensorboard, else None; checked before anything is written."""
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("--tensorboard: the tensorboard package is not installed (pip install tensorboard)") from None
    return SummaryWriter


def epoch_batches(train, rows: torch.Tensor, cfg: Config):
    """uint8 batches for this process's plan rows (steps, B, 4), decoded in workers on the PIL path."""
    if isinstance(train, cache.CachedPairs):
        return (train.batch(r, train.crop) for r in rows)
    return iter(torch.utils.data.DataLoader(
        train, batch_sampler=[[tuple(k) for k in r.tolist()] for r in rows],
        num_workers=cfg.workers, pin_memory=torch.cuda.is_available()))


def check_compatible(ckpt: dict, cfg: Config, path, state_keys=()):
    """A checkpoint continues only if it holds every piece of state, under the same architecture."""
    missing = [k for k in CKPT_KEYS + tuple(state_keys) if k not in ckpt]
    if ckpt.get("version") != CKPT_VERSION or missing:
        raise InputError(f"{path}: not a complete sat2map training checkpoint (expected version {CKPT_VERSION}"
                         + (f"; missing {', '.join(missing)})" if missing else f", found {ckpt.get('version')})"))
    saved = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
    diff = [f"--{k.replace('_', '-')} {saved_arch(saved, k)} in the checkpoint, {getattr(cfg, k)} now"
            for k in ARCH_FIELDS if saved_arch(saved, k) != getattr(cfg, k)]
    if diff:
        raise InputError(f"{path}: checkpoint architecture differs from the flags: {'; '.join(diff)} "
                         f"(pass the checkpoint's values, or a new --run-dir)")


def check_same_data(ckpt: dict, pairs: int, cfg: Config, path):
    """The data order is a function of (seed, epoch, number of pairs): a changed dataset would silently
    continue a different stream, so it takes --allow-data-change."""
    saved = ckpt["data"].get("pairs") if isinstance(ckpt["data"], dict) else None
    if saved != pairs and not cfg.allow_data_change:
        raise InputError(f"{path}: the checkpoint was trained on {saved} pairs, {cfg.data_root} now has {pairs}; "
                         f"the data order would change (pass --allow-data-change to continue anyway)")


def find_resume(cfg: Config) -> Path | None:
    """--resume auto: RUN_DIR/last.pt if present; never: fresh start; else the given path."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        last = Path(cfg.run_dir) / "last.pt"
        return last if last.exists() else None
    return Path(cfg.resume)


def trim_metrics(path: Path, step: int):
    """Drop log rows past the checkpoint we resume from (those steps are about to be redone), and a
    row torn by a crash in mid-write."""

    def keep(row: str) -> bool:
        try:
            return json.loads(row)["step"] <= step
        except (ValueError, KeyError, TypeError):
            return False

    if path.exists():
        rows = [r for r in path.read_text(errors="replace").splitlines() if keep(r)]
        atomic_write_text(path, "".join(r + "\n" for r in rows))


class StopFlag:
    """Set by SIGINT, SIGTERM or SIGHUP (a closed terminal); the loop saves and exits at the end of the
    current step."""

    def __init__(self):
        self.set = False
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        self.set = True

    def agreed(self, device) -> bool:
        """True on every process once any process got a signal: all stop at the same step."""
        return not all_agree(not self.set, device)


def gan_step(G_train, D_train, D, opt_G, opt_D, scaler, real_A, real_B, cfg: Config, dtype, device):
    """One optimizer step of D, then of G. G_train/D_train may be DDP- or compile-wrapped; D is the
    bare module. Returns the three losses as tensors (no host sync)."""
    if cfg.compile == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()  # a new iteration: last step's graph outputs may be reused
    # (1) Update D: real pairs -> 1, generated pairs -> 0; G gets no gradient here
    with torch.autocast(device.type, dtype, enabled=dtype is not None):
        fake_B = G_train(real_A)
        loss_D_fake = gan_loss(D_train(real_A, fake_B.detach()).float(), False, cfg.gan_mode)
        loss_D_real = gan_loss(D_train(real_A, real_B).float(), True, cfg.gan_mode)
        loss_D = 0.5 * (loss_D_fake + loss_D_real)  # halved: D learns slower than G (paper 3.3)
        if cfg.gan_mode == "wgangp" and cfg.lambda_gp > 0:
            loss_D = loss_D + gradient_penalty(D, real_A, real_B, fake_B, cfg.lambda_gp)
    opt_D.zero_grad(set_to_none=True)
    scaler.scale(loss_D).backward()
    scaler.step(opt_D)

    # (2) Update G: fool D and stay close to the target in L1. D is frozen and called without its DDP
    # wrapper: its gradients are not needed, so nothing must wait to sync them.
    D.requires_grad_(False)
    with torch.autocast(device.type, dtype, enabled=dtype is not None):
        loss_G_gan = gan_loss(D(real_A, fake_B).float(), True, cfg.gan_mode)
        loss_G_l1 = F.l1_loss(fake_B.float(), real_B)
        loss_G = loss_G_gan + cfg.lambda_l1 * loss_G_l1
    opt_G.zero_grad(set_to_none=True)
    scaler.scale(loss_G).backward()
    scaler.step(opt_G)
    scaler.update()
    D.requires_grad_(True)
    return loss_D.detach(), loss_G_gan.detach(), loss_G_l1.detach()


# ----------------------------------------------------------------------------------------------------
# Training


def main(cfg: Config):
    protect_output()  # a closed pipe or terminal must never stop training or skip the final save
    set_determinism(cfg.deterministic)  # before any CUDA work: cuBLAS reads its setting when it starts
    rank, world = init_distributed()
    is_main = rank == 0
    device = pick_device(cfg.device)
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--run-dir {run_dir}: is a file, expected a folder")
    resume = find_resume(cfg)
    ckpt = None
    if resume is not None:
        ckpt = safe_load(resume)
        check_compatible(ckpt, cfg, resume)  # before the data is loaded: a refusal should come fast
    dtype = amp_dtype(cfg.amp, device)
    memory_format = torch.channels_last if cfg.channels_last != "off" else torch.contiguous_format
    resolved = {"device": str(device), "amp": {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype],
                "channels_last": "on" if memory_format == torch.channels_last else "off", "world_size": world,
                "backend": dist.get_backend() if dist.is_initialized() else "none"}

    SummaryWriter = tensorboard_writer(cfg)
    inception = fid.load_inception(cfg.inception_weights or None, device) \
        if is_main and cfg.validate and cfg.val_fid else None
    train, val_split = load_data(cfg, rank, device)
    val = sample_batch(val_split, cfg)
    val_pairs = validation_pairs(val_split, cfg) if is_main and cfg.validate else []
    mapped = isinstance(train, cache.CachedPairs) and train.mapped
    resolved["data_cache"] = "disk" if mapped else "memory" if isinstance(train, cache.CachedPairs) else "off"
    if ckpt is not None:
        check_same_data(ckpt, len(train), cfg, resume)
    if isinstance(train, cache.CachedPairs) and not mapped and device.type == "cuda":
        train.to(device)  # jitter runs on the GPU: one tensor slice per image, no host work per step

    # Models, optimizers and schedules exactly as the paper sets them
    torch.manual_seed(cfg.seed)  # same initial weights on every process
    G = init_weights(define_G(cfg.netG, cfg.ngf, cfg.norm, cfg.dropout), cfg.init_type, cfg.init_gain).to(device)
    D = init_weights(define_D(cfg.netD, cfg.ndf, cfg.n_layers_D, cfg.norm), cfg.init_type, cfg.init_gain).to(device)
    seed_everything(cfg.seed + rank)  # then a dropout stream of its own per process
    if cfg.sync_bn and world > 1:
        G, D = (nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in (G, D))
    G, D = G.to(memory_format=memory_format), D.to(memory_format=memory_format)
    adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cpu", "cuda") or None)
    opt_G, opt_D = torch.optim.Adam(G.parameters(), **adam), torch.optim.Adam(D.parameters(), **adam)
    sched_G, sched_D = make_scheduler(opt_G, cfg), make_scheduler(opt_D, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    # What a checkpoint holds besides step, RNG, config and data: adding state is one line here
    best = BestMetric(cfg.best_metric)
    state = {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D, "sched_G": sched_G, "sched_D": sched_D,
             "scaler": scaler, "best": best}

    step = 0
    if ckpt is not None:
        check_compatible(ckpt, cfg, resume, tuple(k for k in state if k not in NEWER_KEYS))
        for key, obj in state.items():
            if key in NEWER_KEYS and key not in ckpt:
                continue
            try:
                obj.load_state_dict(ckpt[key])
            except (RuntimeError, ValueError, KeyError, TypeError) as e:
                raise InputError(f"{resume}: its {key} does not fit this run "
                                 f"({first_line(e)})") from None
        rngs = ckpt["rng"]
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
        step = ckpt["step"]
    if is_main:  # only now: a refused resume must leave the run folder as it was
        config_text = json.dumps({**cfg.to_dict(), "resolved": resolved}, indent=2)
        print(config_text)
        atomic_write_text(run_dir / "config.json", config_text + "\n")
        if ckpt is not None:
            print(f"resuming from {resume} at step {step}")
            trim_metrics(run_dir / "metrics.jsonl", step)
    tb = SummaryWriter(str(run_dir / "tb")) if SummaryWriter is not None and is_main else None
    G_train, D_train = G, D
    if dist.is_initialized():  # also for one process, so a one-GPU torchrun runs the multi-GPU code
        G_train = DistributedDataParallel(G, device_ids=[device.index] if device.type == "cuda" else None)
        D_train = DistributedDataParallel(D, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile != "off":
        G_train = torch.compile(G_train, mode=None if cfg.compile == "default" else cfg.compile)
        D_train = torch.compile(D_train, mode=None if cfg.compile == "default" else cfg.compile)

    steps_per_epoch = len(train) // (cfg.batch_size * world)
    if steps_per_epoch == 0:
        raise InputError(f"{cfg.data_root}: {len(train)} training pairs, fewer than one step of "
                         f"--batch-size {cfg.batch_size} x {world} process(es)")
    total = (cfg.epochs + cfg.epochs_decay) * steps_per_epoch
    end = min(total, cfg.max_steps) if cfg.max_steps else total
    val_every = cfg.val_every or steps_per_epoch

    def save():
        """last.pt holds everything needed to continue bit for bit; G.pt is for inference."""
        broadcast_buffers(G, D)  # the running statistics saved are rank 0's, and now every process's
        rngs = gather_objects(rng_state())
        if not is_main:
            return
        ckpt = {"version": CKPT_VERSION, "step": step, "epoch": step // steps_per_epoch,
                "config": cfg.to_dict(), "rng": rngs,
                "data": {"seed": cfg.seed, "steps_per_epoch": steps_per_epoch, "pairs": len(train)},
                **{key: obj.state_dict() for key, obj in state.items()}}
        atomic_save(ckpt, run_dir / "last.pt")
        atomic_save({"version": CKPT_VERSION, "G": G.state_dict(), "config": cfg.to_dict()}, run_dir / "G.pt")

    def sample():
        """Fixed validation pairs, condition | generated | target, in the paper's test-time mode."""
        if not is_main:
            return
        real_A, real_B = to_pair(val, cfg, device, memory_format)
        with inference(G, paper=True, seed=cfg.seed):
            fake_B = G(real_A)
        grid = torch.stack([real_A, fake_B, real_B], 1).flatten(0, 1)
        titles = ["satellite", "generated", "map"]
        img = save_grid([grid], run_dir / "samples" / f"step_{step:07d}.png", nrow=3,
                        titles=titles if cfg.direction == "AtoB" else titles[::-1], caption=f"step {step}")
        if tb is not None:
            tb.add_image("samples", np.asarray(img), step, dataformats="HWC")

    def write_row(row: dict):
        """Append a row to metrics.jsonl, redraw curves.png, and mirror the scalars to TensorBoard."""
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        curves.update()
        if tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    tb.add_scalar(key.replace("val_", "val/", 1) if key.startswith("val_") else f"train/{key}",
                                  value, step)
            tb.flush()

    def validate() -> float:
        """evaluate.py's metrics on the validation pairs in the paper's test-time mode as a val_ row;
        G_best.pt when --best-metric improves. G's state and every RNG stream are left untouched.
        Returns the seconds it took."""
        t0 = time.perf_counter()
        # Dropout masks follow the memory layout: a contiguous copy reports exactly what evaluate.py
        # reports for the saved weights
        G_val = G if memory_format == torch.contiguous_format else \
            copy.deepcopy(G).to(memory_format=torch.contiguous_format)
        metrics, rows, _ = evaluate.evaluate_pairs(G_val, val_pairs, cfg.direction, device, paper=True,
                                                   seed=cfg.seed, inception=inception)
        del G_val
        row = {"step": step, "epoch": step / steps_per_epoch, **{f"val_{k}": v for k, v in metrics.items()},
               "val_images": len(rows), "val_seconds": time.perf_counter() - t0}
        write_row(row)
        if best.update(metrics.get(cfg.best_metric), step):
            atomic_save({"version": CKPT_VERSION, "G": G.state_dict(), "config": cfg.to_dict(), "step": step,
                         "metric": cfg.best_metric, "value": best.value, "val": metrics}, run_dir / "G_best.pt")
        return row["val_seconds"]

    stop = StopFlag()
    log_path = run_dir / "metrics.jsonl"
    curves = plots.Curves(log_path, run_dir / "curves.png")
    sums = torch.zeros(3, device=device)  # running loss sums, read back only when logged
    t_log, n_log, t_start = time.perf_counter(), 0, time.perf_counter()
    if step == 0:
        sample()  # the untrained generator: every later grid is compared with this one
    bar = tqdm(total=end, initial=step, disable=not is_main, unit="step", dynamic_ncols=True)
    stopping = False  # agreed by every process; a signal before the first step still ends in a save
    while step < end and not stopping:
        epoch, first = divmod(step, steps_per_epoch)
        plan = dataset.jitter_plan(len(train), cfg.seed, epoch, train.size, train.crop, cfg.flip)
        rows = plan[: steps_per_epoch * cfg.batch_size * world].view(steps_per_epoch, world, cfg.batch_size, 4)
        for batch in epoch_batches(train, rows[first:, rank], cfg):
            real_A, real_B = to_pair(batch, cfg, device, memory_format)

            loss_D, loss_G_gan, loss_G_l1 = gan_step(G_train, D_train, D, opt_G, opt_D, scaler,
                                                     real_A, real_B, cfg, dtype, device)
            step += 1
            sums += torch.stack([loss_D, loss_G_gan, loss_G_l1]).float()
            n_log += 1
            bar.update(1)
            if cfg.lr_policy == "plateau":  # its metric: the epoch's mean L1 loss
                sched_G.observe(loss_G_l1)
                sched_D.observe(loss_G_l1)
            if step % steps_per_epoch == 0:
                sched_G.step()
                sched_D.step()
            stopping = stop.agreed(device)
            last = stopping or step == end
            if step % cfg.log_every == 0 or last:
                if dist.is_initialized():
                    dist.all_reduce(sums)
                    sums /= world
                means = (sums / n_log).tolist()  # the only host-device sync, once per log interval
                now = time.perf_counter()
                row = {"step": step, "epoch": step / steps_per_epoch, "loss_D": means[0],
                       "loss_G_gan": means[1], "loss_G_l1": means[2], "lr": opt_G.param_groups[0]["lr"],
                       "img_per_s": n_log * cfg.batch_size * world / (now - t_log),
                       "seconds": now - t_start}
                if is_main:
                    write_row(row)
                    bar.set_postfix(epoch=epoch + 1, D=f"{means[0]:.3f}", G_gan=f"{means[1]:.3f}",
                                    G_l1=f"{means[2]:.3f}")
                sums.zero_()
                t_log, n_log = now, 0
            if is_main and cfg.validate and (step % val_every == 0 or step == end):
                try:
                    t_log += validate()  # img_per_s counts training only
                except InputError as e:  # a validation problem must not cost the steps since the last save
                    tqdm.write(f"warning: validation at step {step} skipped: {e}", file=sys.stderr)
            if step % cfg.sample_every == 0 or last:
                sample()
            if step % cfg.save_every == 0 or last:
                save()
            if last:
                break
    bar.close()
    if is_main:
        curves.finish()
        why = "stopped by signal" if stopping else "done"
        print(f"{why} at step {step}/{total}; checkpoint {run_dir / 'last.pt'}, generator {run_dir / 'G.pt'}")
        if best.step is not None:
            print(f"best val_{cfg.best_metric} {best.value:.4f} at step {best.step}: {run_dir / 'G_best.pt'}")
    if tb is not None:
        tb.close()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    run_command(lambda argv: main(parse_config(argv)), sys.argv[1:])
