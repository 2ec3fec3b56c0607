"""Train pix2pix (satellite -> map) with exact, crash-proof resume.

    python train.py                                   # paper settings on data/maps
    python train.py --data-root data/facades --name facades --direction BtoA
    python train.py --val-every 500 --best-metric miou_structure --tensorboard
    torchrun --nproc_per_node 4 train.py              # one process per GPU
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --master-addr HOST --master-port 29500 train.py

Stopping is safe at any moment (Ctrl-C and SIGTERM save first; SIGKILL loses at most the steps since
the last save): running the same command again continues from RUN_DIR/last.pt, bit for bit.
This file holds the GAN step, the schedule and the loop (`main`: setup, loop, end); rundir.py owns
the run folder and what a checkpoint holds.
"""
import copy
import signal
import sys
import time
import traceback
from functools import partial
from pathlib import Path

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
import rundir
from cli import InputError, protect_output, run_command
from config import METRIC_GOALS, Config, parse_config
from discriminator import define_D
from generator import define_G, inference, init_weights, size_multiple
from losses import gan_loss, gradient_penalty, make_scheduler
from memory import keep_freed_buffers
from rundir import RunDir
from utils import (all_agree, amp_dtype, as_rgb, broadcast_buffers, end_distributed, gather_objects, init_distributed,
                   local_rank, pick_device, rng_state, seed_everything, set_determinism)

# Under torch.distributed the processes agree on a stop signal every this many steps (and at log points)
STOP_EVERY = 10

# ----------------------------------------------------------------------------------------------------
# Helpers


def to_pair(batch: torch.Tensor, cfg: Config, device, memory_format):
    """uint8 (B, CA + CB, H, W) -> real_A, real_B float in [-1, 1] on device, ordered by --direction."""
    x = batch.to(device, non_blocking=True).float().div_(127.5).sub_(1)
    x = x.contiguous(memory_format=memory_format)
    ca = dataset.pair_channels(cfg.direction, cfg.input_nc, cfg.output_nc)[0]
    a, b = x[:, :ca], x[:, ca:]
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
    try:
        val_pairs = dataset.open_split(root, "val" if (root / "val").is_dir() else "train", True, full=False)
    except dataset.DataError as e:
        if cfg.validate:
            raise dataset.DataError(f"{e}; validation needs it: fix it, or pass --no-validate (sample grids "
                                    f"then show training pairs)") from None
        val_pairs = pairs
    size, crop = dataset.preprocess_plan(pairs, cfg.preprocess, cfg.load_size, cfg.crop_size, size_multiple(cfg.netG))
    channels = dataset.pair_channels(cfg.direction, cfg.input_nc, cfg.output_nc)
    if size is None and cfg.batch_size > 1:
        raise InputError(f"--preprocess {cfg.preprocess}: the pairs of {root / 'train'} come out in differing "
                         f"sizes, which cannot share a batch: use --batch-size 1 or another --preprocess")
    where, why = cache.choose(cfg.data_cache, len(pairs), size, device, sum(channels)) if size else \
        ("off", "pairs of differing sizes")
    if rank == 0:
        print(f"data cache: {where} ({why})")
    if where == "off":
        sizer = partial(dataset.preprocess_size, mode=cfg.preprocess, load=cfg.load_size, crop=cfg.crop_size,
                        multiple=size_multiple(cfg.netG))
        train = dataset.PILPairs(pairs, size, crop, sizer, channels)
    else:
        cache_dir = root / ".cache" / "train" if where == "disk" else None
        # one build per node, the node's other processes then map what it wrote; in memory each
        # process decodes its own copy, so nobody waits
        shared = dist.is_initialized() and where == "disk"
        builder = local_rank() == 0
        if shared and not builder:
            dist.barrier()
        train = cache.CachedPairs(pairs, size, cache_dir, cfg.skip_bad, crop=crop, channels=channels)
        if shared and builder:
            dist.barrier()
    return train, val_pairs


def sample_batch(pairs, cfg: Config) -> torch.Tensor:
    """The first cfg.num_samples decodable pairs, resized to crop_size (no jitter), for sample grids."""
    out = []
    for pair in pairs:
        try:
            out.append(dataset.decode_pair(pair, cfg.crop_size,
                                           dataset.pair_channels(cfg.direction, cfg.input_nc, cfg.output_nc)))
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


def epoch_batches(train, rows: torch.Tensor, cfg: Config, device):
    """uint8 batches on device for this process's plan rows (steps, B, 4), decoded in workers on the PIL
    path; each copied to the GPU from pinned memory while the step before it runs (cache.prefetch)."""
    if isinstance(train, cache.CachedPairs):
        return cache.prefetch((train.batch(r, train.crop) for r in rows), device)
    return cache.prefetch(iter(torch.utils.data.DataLoader(
        train, batch_sampler=[[tuple(k) for k in r.tolist()] for r in rows],
        num_workers=cfg.workers, pin_memory=device.type == "cuda")), device)


class StopFlag:
    """Set by SIGINT, SIGTERM or SIGHUP (a closed terminal); the loop saves and exits at a step every
    process agrees on. install() takes the three signals, restore() gives back the handlers it found:
    a process that calls main (a test, a notebook) stays stoppable after the run."""

    def __init__(self):
        self.set, self.previous = False, {}

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self.previous[sig] = signal.signal(sig, self.handle)

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def handle(self, signum, frame):
        self.set = True

    def agreed(self, step: int, log_every: int, device) -> bool:
        """True on every process once any process got a signal: all stop at the same step. Alone, the
        flag is read after every step. Under torch.distributed the processes compare flags (an
        all-reduce the host must wait for) only at log points and every STOP_EVERY steps, the same
        steps on every process, so a signal costs up to STOP_EVERY - 1 more steps, all saved."""
        if dist.is_initialized() and step % STOP_EVERY and step % log_every:
            return False
        return not all_agree(not self.set, device)


def gan_step(G_train, D_train, D, opt_G, opt_D, scaler, real_A, real_B, cfg: Config, dtype, device):
    """One optimizer step of D, then of G. G_train/D_train may be DDP- or compile-wrapped; D is the
    bare module. Returns the three losses as tensors (no host sync)."""
    if cfg.compile in ("reduce-overhead", "max-autotune"):  # the two modes that record CUDA graphs
        torch.compiler.cudagraph_mark_step_begin()  # a new iteration: last step's graph outputs may be reused
    # (1) Update D: real pairs -> 1, generated pairs -> 0; G gets no gradient here
    with torch.autocast(device.type, dtype, enabled=dtype is not None):
        fake_B = G_train(real_A)
        loss_D_fake = gan_loss(D_train(real_A, fake_B.detach()).float(), False, cfg.gan_mode)
        # real_B in fake_B's dtype and strides: a compiled D then runs one graph for both, instead of
        # being compiled again (with dynamic strides) for a float channel slice. D sees the same values:
        # under autocast its first convolution rounds to that dtype anyway.
        real_B_D = torch.empty_like(fake_B).copy_(real_B)
        loss_D_real = gan_loss(D_train(real_A, real_B_D).float(), True, cfg.gan_mode)
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


def build_state(cfg: Config, device, rank: int, world: int, dtype, memory_format) -> dict:
    """G, D, their optimizers and LR schedules, the AMP scaler and the best validation value so far,
    exactly as the paper sets them. This dict is the training state: last.pt holds the state_dict of
    each object in it (rundir.checkpoint), so adding state is one line here."""
    torch.manual_seed(cfg.seed)  # same initial weights on every process
    G = init_weights(define_G(cfg.netG, cfg.ngf, cfg.norm, cfg.dropout, cfg.input_nc, cfg.output_nc),
                     cfg.init_type, cfg.init_gain).to(device)
    D = define_D(cfg.netD, cfg.ndf, cfg.n_layers_D, cfg.norm, cfg.input_nc + cfg.output_nc)  # sees A and B
    D = init_weights(D, cfg.init_type, cfg.init_gain).to(device)
    seed_everything(cfg.seed + rank)  # then a dropout stream of its own per process
    if cfg.sync_bn and world > 1:
        G, D = (nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in (G, D))
    G, D = G.to(memory_format=memory_format), D.to(memory_format=memory_format)
    adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cpu", "cuda") or None)
    opt_G, opt_D = torch.optim.Adam(G.parameters(), **adam), torch.optim.Adam(D.parameters(), **adam)
    sched_G, sched_D = make_scheduler(opt_G, cfg), make_scheduler(opt_D, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return {"G": G, "D": D, "opt_G": opt_G, "opt_D": opt_D, "sched_G": sched_G, "sched_D": sched_D,
            "scaler": scaler, "best": BestMetric(cfg.best_metric)}


def wrap(G, D, cfg: Config, device):
    """The modules the GAN step calls: under torch.distributed wrapped in DDP (also for one process, so
    a one-GPU torchrun runs the multi-GPU code), then compiled with --compile."""
    G_train, D_train = G, D
    if dist.is_initialized():
        ids = [device.index] if device.type == "cuda" else None
        G_train, D_train = DistributedDataParallel(G, device_ids=ids), DistributedDataParallel(D, device_ids=ids)
    if cfg.compile != "off":
        mode = None if cfg.compile == "default" else cfg.compile
        G_train, D_train = torch.compile(G_train, mode=mode), torch.compile(D_train, mode=mode)
    return G_train, D_train


def training_layout(channels_last: str, device) -> tuple[torch.memory_format, str]:
    """--channels-last as a memory format, and why. auto: channels-last on a GPU (its convolutions run
    NHWC); contiguous on a CPU, where oneDNN's convolution backward is slower channels-last: a training
    step of the full-size models took 1.22-1.31x less time contiguous in float32, on AVX-512 and AVX2
    alike, and 1.10-1.13x less in bf16 (docs/performance.md#what-auto-chooses-for-training)."""
    if channels_last != "auto":
        return (torch.channels_last if channels_last == "on" else torch.contiguous_format), f"--channels-last {channels_last}"
    if device.type == "cpu":
        return torch.contiguous_format, "auto: contiguous on a CPU, where it trains faster than channels-last"
    return torch.channels_last, f"auto: channels-last on {device.type}"


def amp_reason(amp: str, dtype, device) -> str:
    """Why --amp became dtype, for config.json."""
    if amp != "auto":
        return f"--amp {amp}"
    if dtype is None:
        return f"auto: float32, as {device.type} has no fast bf16 here"
    return f"auto: {str(dtype)[6:]}, which this {device.type} runs natively"


def resolved_settings(cfg: Config, device, dtype, memory_format, world: int, train) -> dict:
    """What each `auto` became (device, amp, channels-last, data cache) and why, and the process group,
    for config.json."""
    cached = isinstance(train, cache.CachedPairs)
    return {"device": str(device), "amp": {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype],
            "channels_last": "on" if memory_format == torch.channels_last else "off", "world_size": world,
            "backend": dist.get_backend() if dist.is_initialized() else "none",
            "data_cache": "disk" if cached and train.mapped else "memory" if cached else "off",
            "why": {"amp": amp_reason(cfg.amp, dtype, device),
                    "channels_last": training_layout(cfg.channels_last, device)[1]}}


def epoch_plan(train, epoch: int, steps_per_epoch: int, world: int, cfg: Config) -> torch.Tensor:
    """The epoch's shuffled order and jitter as (steps, process, batch, 4) rows: a pure function of
    (seed, epoch, number of pairs, number of processes), so the step says where the data stream is."""
    plan = dataset.jitter_plan(len(train), cfg.seed, epoch, train.size, train.crop, cfg.flip, cfg.shuffle)
    return plan[: steps_per_epoch * cfg.batch_size * world].view(steps_per_epoch, world, cfg.batch_size, 4)


class LossMeter:
    """Running sums of the three losses, kept on the device and read back only when a row is logged
    (the loop's one host-device sync), and the training throughput since the last row."""

    def __init__(self, device):
        self.sums = torch.zeros(3, device=device)
        self.n = 0
        self.t_log = self.t_start = time.perf_counter()

    def add(self, *losses: torch.Tensor):
        self.sums += torch.stack(losses).float()
        self.n += 1

    def exclude(self, seconds: float):
        """Leave time spent outside training (validation) out of img_per_s."""
        self.t_log += seconds

    def row(self, step: int, steps_per_epoch: int, lr: float, images_per_step: int) -> dict:
        """metrics.jsonl's row for the steps since the last row, averaged over every process."""
        if dist.is_initialized():
            dist.all_reduce(self.sums)
            self.sums /= dist.get_world_size()
        means = (self.sums / self.n).tolist()
        now = time.perf_counter()
        row = {"step": step, "epoch": step / steps_per_epoch, "loss_D": means[0], "loss_G_gan": means[1],
               "loss_G_l1": means[2], "lr": lr, "img_per_s": self.n * images_per_step / (now - self.t_log),
               "seconds": now - self.t_start}
        self.sums.zero_()
        self.t_log, self.n = now, 0
        return row


def sample_grid(G, val: torch.Tensor, cfg: Config, device, memory_format) -> torch.Tensor:
    """The fixed validation pairs as rows of condition | generated | target (3N, 3, H, W; grey shown as
    RGB), generated in the paper's test-time mode, which leaves G's state and every RNG stream untouched."""
    real_A, real_B = to_pair(val, cfg, device, memory_format)
    with inference(G, paper=True, seed=cfg.seed):
        fake_B = G(real_A)
    return torch.stack([as_rgb(real_A), as_rgb(fake_B), as_rgb(real_B)], 1).flatten(0, 1)


def validate(G, pairs: list, cfg: Config, device, memory_format, inception) -> tuple[dict, int]:
    """evaluate.py's metrics on the validation pairs, in its paper test-time mode, and the number of
    images measured. G's state and every RNG stream are left untouched."""
    # Dropout masks follow the memory layout: a contiguous copy reports exactly what evaluate.py
    # reports for the saved weights
    G_val = G if memory_format == torch.contiguous_format else \
        copy.deepcopy(G).to(memory_format=torch.contiguous_format)
    metrics, rows, _ = evaluate.evaluate_pairs(G_val, pairs, cfg.direction, device, paper=True, seed=cfg.seed,
                                               inception=inception)
    return metrics, len(rows)


# ----------------------------------------------------------------------------------------------------
# Training


def main(cfg: Config):
    """Train as cfg says; the signal handlers the run takes are given back however it ends, so a
    process that calls main (a test, a notebook) stays stoppable afterwards."""
    stop = StopFlag()
    try:
        fit(cfg, stop)
    except BaseException as e:
        traceback.clear_frames(e.__traceback__)  # the frames' DDP wrappers too can go before the group
        raise
    finally:
        stop.restore()
        end_distributed()


def fit(cfg: Config, stop: StopFlag):
    # Setup: processes and device, the run folder and where to resume, data, models
    protect_output()  # a closed pipe or terminal must never stop training or skip the final save
    set_determinism(cfg.deterministic)  # before any CUDA work: cuBLAS reads its setting when it starts
    rank, world = init_distributed(cfg.device)
    is_main = rank == 0
    device = pick_device(cfg.device)
    if device.type == "cpu":
        keep_freed_buffers()  # the step's big tensors come back every step: fresh pages cost 4-13% of it
    run = RunDir(cfg, is_main)  # writes nothing yet: a refused start leaves the folder as it was
    resume = rundir.find_resume(cfg)
    ckpt = rundir.load_checkpoint(resume, cfg) if resume is not None else None  # refused before the data
    dtype = amp_dtype(cfg.amp, device)
    memory_format = training_layout(cfg.channels_last, device)[0]
    inception = fid.load_inception(cfg.inception_weights or None, device) \
        if is_main and cfg.validate and cfg.val_fid else None
    train, val_split = load_data(cfg, rank, device)
    val = sample_batch(val_split, cfg)
    val_pairs = validation_pairs(val_split, cfg) if is_main and cfg.validate else []
    if ckpt is not None:
        rundir.check_same_data(ckpt, len(train), cfg, resume)
    if isinstance(train, cache.CachedPairs) and not train.mapped and device.type == "cuda":
        train.to(device)  # jitter runs on the GPU: one tensor slice per image, no host work per step
    state = build_state(cfg, device, rank, world, dtype, memory_format)
    G, D, opt_G, opt_D, best = (state[k] for k in ("G", "D", "opt_G", "opt_D", "best"))
    step = rundir.restore(ckpt, state, resume, rank) if ckpt is not None else 0
    run.start(cfg, resolved_settings(cfg, device, dtype, memory_format, world, train), resume, step)
    G_train, D_train = wrap(G, D, cfg, device)
    steps_per_epoch = len(train) // (cfg.batch_size * world)
    if steps_per_epoch == 0:
        raise InputError(f"{cfg.data_root}: {len(train)} training pairs, fewer than one step of "
                         f"--batch-size {cfg.batch_size} x {world} process(es)")
    total = (cfg.epochs + cfg.epochs_decay) * steps_per_epoch
    end = min(total, cfg.max_steps) if cfg.max_steps else total
    val_every = cfg.val_every or steps_per_epoch

    # The loop: one GAN step, then what is due at this step (log row, validation, sample grid, save)
    stop.install()  # only now: Ctrl-C during a long cache build still stops at once
    meter = LossMeter(device)
    if step == 0 and is_main:
        run.samples(sample_grid(G, val, cfg, device, memory_format), step, cfg.direction)  # the untrained G
    bar = tqdm(total=end, initial=step, disable=not is_main, unit="step", dynamic_ncols=True)
    stopping = False  # agreed by every process; a signal before the first step still ends in a save
    while step < end and not stopping:
        epoch, first = divmod(step, steps_per_epoch)
        plan = epoch_plan(train, epoch, steps_per_epoch, world, cfg)
        for batch in epoch_batches(train, plan[first:, rank], cfg, device):
            real_A, real_B = to_pair(batch, cfg, device, memory_format)
            losses = gan_step(G_train, D_train, D, opt_G, opt_D, state["scaler"], real_A, real_B, cfg, dtype, device)
            meter.add(*losses)
            step += 1
            bar.update(1)
            if cfg.lr_policy == "plateau":  # its metric: the epoch's mean L1 loss
                state["sched_G"].observe(losses[2])
                state["sched_D"].observe(losses[2])
            if step % steps_per_epoch == 0:
                state["sched_G"].step()
                state["sched_D"].step()
            stopping = stop.agreed(step, cfg.log_every, device)
            last = stopping or step == end
            if step % cfg.log_every == 0 or last:
                row = meter.row(step, steps_per_epoch, opt_G.param_groups[0]["lr"], cfg.batch_size * world)
                run.log(row)
                bar.set_postfix(epoch=epoch + 1, D=f"{row['loss_D']:.3f}", G_gan=f"{row['loss_G_gan']:.3f}",
                                G_l1=f"{row['loss_G_l1']:.3f}")
            if is_main and cfg.validate and (step % val_every == 0 or step == end):
                t0 = time.perf_counter()
                try:
                    metrics, n = validate(G, val_pairs, cfg, device, memory_format, inception)
                except InputError as e:  # a validation problem must not cost the steps since the last save
                    tqdm.write(f"warning: validation at step {step} skipped: {e}", file=sys.stderr)
                else:
                    seconds = time.perf_counter() - t0
                    meter.exclude(seconds)  # img_per_s counts training only
                    run.log({"step": step, "epoch": step / steps_per_epoch,
                             **{f"val_{k}": v for k, v in metrics.items()}, "val_images": n, "val_seconds": seconds})
                    if best.update(metrics.get(cfg.best_metric), step):
                        run.save_best(G.state_dict(), cfg.to_dict(), step, cfg.best_metric, best.value, metrics)
            if is_main and (step % cfg.sample_every == 0 or last):
                run.samples(sample_grid(G, val, cfg, device, memory_format), step, cfg.direction)
            if cfg.save_epoch_every and step % (cfg.save_epoch_every * steps_per_epoch) == 0:
                run.save_epoch(G.state_dict(), cfg.to_dict(), step // steps_per_epoch)
            if step % cfg.save_every == 0 or last:
                broadcast_buffers(G, D)  # the running statistics saved are rank 0's, and now every process's
                run.save(state, step=step, epoch=step // steps_per_epoch, config=cfg.to_dict(),
                         rng=gather_objects(rng_state()),  # every process's, in rank order
                         data={"seed": cfg.seed, "steps_per_epoch": steps_per_epoch, "pairs": len(train)})
            if last:
                break

    # The end
    bar.close()
    run.close()
    if is_main:
        print(f"{'stopped by signal' if stopping else 'done'} at step {step}/{total}; "
              f"checkpoint {run.last}, generator {run.generator}")
        if best.step is not None:
            print(f"best val_{cfg.best_metric} {best.value:.4f} at step {best.step}: {run.best}")
    if dist.is_initialized():
        dist.barrier()  # nobody leaves while another process still writes its part of the last save


if __name__ == "__main__":
    run_command(lambda argv: main(parse_config(argv)), sys.argv[1:])
