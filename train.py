"""Train pix2pix (satellite -> map) with exact, crash-proof resume.

    python train.py                                   # paper settings on data/maps
    python train.py --data-root data/facades --name facades --direction BtoA
    torchrun --nproc_per_node 4 train.py              # one process per GPU

Stopping is safe at any moment (Ctrl-C and SIGTERM save first; SIGKILL loses at most the steps since
the last save): running the same command again continues from RUN_DIR/last.pt, bit for bit.
"""
import json
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import dataset
from config import ARCH_FIELDS, Config, parse_config
from discriminator import Discriminator
from generator import Generator, init_weights, inference
from utils import (amp_dtype, atomic_save, fail, gather_objects, init_distributed, pick_device,
                   rng_state, safe_load, save_grid, seed_everything, set_rng_state)

CKPT_VERSION = 1

# ----------------------------------------------------------------------------------------------------
# Helpers


def gan_loss(pred: torch.Tensor, real: bool, mode: str) -> torch.Tensor:
    """Vanilla GAN (BCE on logits) or LSGAN (MSE) against an all-real or all-fake target."""
    target = torch.ones_like(pred) if real else torch.zeros_like(pred)
    if mode == "lsgan":
        return F.mse_loss(pred, target)
    return F.binary_cross_entropy_with_logits(pred, target)


def lr_lambda(cfg: Config):
    """Constant for cfg.epochs epochs, then linear towards 0 over cfg.epochs_decay epochs (official rule)."""
    return lambda epoch: 1.0 - max(0, epoch + 1 - cfg.epochs) / float(cfg.epochs_decay + 1)


def to_pair(batch: torch.Tensor, cfg: Config, device, memory_format):
    """uint8 (B, 6, H, W) -> real_A, real_B float in [-1, 1] on device, ordered by --direction."""
    x = batch.to(device, non_blocking=True).float().div_(127.5).sub_(1)
    x = x.contiguous(memory_format=memory_format)
    a, b = x[:, :3], x[:, 3:]
    return (a, b) if cfg.direction == "AtoB" else (b, a)


def load_data(cfg: Config, rank: int):
    """Train source (cached uint8 pairs or the PIL dataset) and the fixed validation batch for samples."""
    root = Path(cfg.data_root)
    if not root.exists() and root.name in dataset.DATASETS and rank == 0:
        print(f"{root} not found: downloading the {root.name} dataset into {root.parent}")
        dataset.download_dataset(root.name, root.parent)
    if dist.is_initialized():
        dist.barrier()  # the others wait for rank 0's download and disk cache
    full_scan = cfg.data_cache == "off"  # the cache build decodes everything anyway
    pairs = dataset.open_split(root, "train", cfg.skip_bad, full=full_scan)
    val_split = "val" if (root / "val").is_dir() else "train"
    val_pairs = dataset.open_split(root, val_split, True, full=False)
    if cfg.data_cache == "off":
        train = dataset.PILPairs(pairs, cfg.load_size, cfg.crop_size)
    else:
        cache_dir = root / ".cache" / "train" if cfg.data_cache == "disk" else None
        if dist.is_initialized() and rank != 0:
            dist.barrier()  # wait for rank 0 to write the disk cache, then read it
        train = dataset.CachedPairs(pairs, cfg.load_size, cache_dir, cfg.skip_bad)
        if dist.is_initialized() and rank == 0:
            dist.barrier()
    return train, sample_batch(val_pairs, cfg)


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
        fail(f"{cfg.data_root}: no decodable validation pair for the sample grid")
    return torch.stack(out)


def epoch_batches(train, rows: torch.Tensor, cfg: Config):
    """uint8 batches for this process's plan rows (steps, B, 4), decoded in workers on the PIL path."""
    if isinstance(train, dataset.CachedPairs):
        return (train.batch(r, cfg.crop_size) for r in rows)
    return iter(torch.utils.data.DataLoader(
        train, batch_sampler=[[tuple(k) for k in r.tolist()] for r in rows],
        num_workers=cfg.workers, pin_memory=torch.cuda.is_available()))


def check_compatible(ckpt: dict, cfg: Config, path):
    """A checkpoint continues only under the architecture it was trained with."""
    if ckpt.get("version") != CKPT_VERSION or not {"G", "D", "opt_G", "opt_D", "step"} <= ckpt.keys():
        fail(f"{path}: not a sat2map training checkpoint (version {CKPT_VERSION} with G, D, opt_G, opt_D, step)")
    saved = ckpt.get("config", {})
    diff = [f"--{k.replace('_', '-')} {saved.get(k)} in the checkpoint, {getattr(cfg, k)} now"
            for k in ARCH_FIELDS if saved.get(k) != getattr(cfg, k)]
    if diff:
        fail(f"{path}: checkpoint architecture differs from the flags: {'; '.join(diff)} "
             f"(pass the checkpoint's values, or a new --run-dir)")


def find_resume(cfg: Config) -> Path | None:
    """--resume auto: RUN_DIR/last.pt if present; never: fresh start; else the given path."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        last = Path(cfg.run_dir) / "last.pt"
        return last if last.exists() else None
    return Path(cfg.resume)


def trim_metrics(path: Path, step: int):
    """Drop log rows past the checkpoint we resume from: those steps are about to be redone."""
    if path.exists():
        rows = [r for r in path.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves and exits at the end of the current step."""

    def __init__(self):
        self.set = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        self.set = True

    def agreed(self, device) -> bool:
        """Every process stops at the same step under torchrun."""
        if not dist.is_initialized():
            return self.set
        flag = torch.tensor([float(self.set)], device=device)
        dist.all_reduce(flag)
        return bool(flag.item())


def gan_step(G_train, D_train, D, opt_G, opt_D, scaler, real_A, real_B, cfg: Config, dtype, device):
    """One optimizer step of D, then of G. G_train/D_train may be DDP- or compile-wrapped; D is the
    bare module. Returns the three losses as tensors (no host sync)."""
    # (1) Update D: real pairs -> 1, generated pairs -> 0; G gets no gradient here
    with torch.autocast(device.type, dtype, enabled=dtype is not None):
        fake_B = G_train(real_A)
        loss_D_fake = gan_loss(D_train(real_A, fake_B.detach()).float(), False, cfg.gan_mode)
        loss_D_real = gan_loss(D_train(real_A, real_B).float(), True, cfg.gan_mode)
        loss_D = 0.5 * (loss_D_fake + loss_D_real)  # halved: D learns slower than G (paper 3.3)
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
    rank, world = init_distributed()
    is_main = rank == 0
    device = pick_device(cfg.device)
    run_dir = Path(cfg.run_dir)
    resume = find_resume(cfg)
    if is_main:
        print(cfg.to_json())
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.to_json() + "\n")
    ckpt = None
    if resume is not None:
        ckpt = safe_load(resume)
        check_compatible(ckpt, cfg, resume)

    try:
        train, val = load_data(cfg, rank)
    except dataset.DataError as e:
        fail(str(e))
    if isinstance(train, dataset.CachedPairs) and device.type == "cuda":
        train.to(device)  # jitter runs on the GPU: one tensor slice per image, no host work per step

    # Models, optimizers and schedules exactly as the paper sets them
    torch.manual_seed(cfg.seed)  # same initial weights on every process
    G = init_weights(Generator(3, 3, cfg.ngf, cfg.norm, cfg.dropout)).to(device)
    D = init_weights(Discriminator(6, cfg.ndf, cfg.norm)).to(device)
    seed_everything(cfg.seed + rank)  # then a dropout stream of its own per process
    if cfg.sync_bn and world > 1:
        G, D = (nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in (G, D))
    memory_format = torch.channels_last if cfg.channels_last != "off" else torch.contiguous_format
    G, D = G.to(memory_format=memory_format), D.to(memory_format=memory_format)
    adam = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cpu", "cuda") or None)
    opt_G, opt_D = torch.optim.Adam(G.parameters(), **adam), torch.optim.Adam(D.parameters(), **adam)
    sched_G = torch.optim.lr_scheduler.LambdaLR(opt_G, lr_lambda(cfg))
    sched_D = torch.optim.lr_scheduler.LambdaLR(opt_D, lr_lambda(cfg))
    dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    step = 0
    if ckpt is not None:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        opt_G.load_state_dict(ckpt["opt_G"])
        opt_D.load_state_dict(ckpt["opt_D"])
        sched_G.load_state_dict(ckpt["sched_G"])
        sched_D.load_state_dict(ckpt["sched_D"])
        scaler.load_state_dict(ckpt["scaler"])
        rngs = ckpt["rng"]
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
        step = ckpt["step"]
        if is_main:
            print(f"resuming from {resume} at step {step}")
            trim_metrics(run_dir / "metrics.jsonl", step)
    G_train, D_train = G, D
    if world > 1:
        G_train = DistributedDataParallel(G, device_ids=[device.index] if device.type == "cuda" else None)
        D_train = DistributedDataParallel(D, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile != "off":
        G_train = torch.compile(G_train, mode=None if cfg.compile == "default" else cfg.compile)
        D_train = torch.compile(D_train, mode=None if cfg.compile == "default" else cfg.compile)

    steps_per_epoch = len(train) // (cfg.batch_size * world)
    if steps_per_epoch == 0:
        fail(f"{cfg.data_root}: {len(train)} training pairs, fewer than one step of "
             f"--batch-size {cfg.batch_size} x {world} process(es)")
    total = (cfg.epochs + cfg.epochs_decay) * steps_per_epoch
    end = min(total, cfg.max_steps) if cfg.max_steps else total

    def save():
        """last.pt holds everything needed to continue bit for bit; G.pt is for inference."""
        rngs = gather_objects(rng_state())
        if not is_main:
            return
        state = {"version": CKPT_VERSION, "step": step, "epoch": step // steps_per_epoch,
                 "G": G.state_dict(), "D": D.state_dict(), "opt_G": opt_G.state_dict(),
                 "opt_D": opt_D.state_dict(), "sched_G": sched_G.state_dict(),
                 "sched_D": sched_D.state_dict(), "scaler": scaler.state_dict(),
                 "config": cfg.to_dict(), "rng": rngs,
                 "data": {"seed": cfg.seed, "steps_per_epoch": steps_per_epoch, "pairs": len(train)}}
        atomic_save(state, run_dir / "last.pt")
        atomic_save({"version": CKPT_VERSION, "G": G.state_dict(), "config": cfg.to_dict()}, run_dir / "G.pt")

    def sample():
        """Fixed validation pairs, condition | generated | target, in the paper's test-time mode."""
        if not is_main:
            return
        real_A, real_B = to_pair(val, cfg, device, memory_format)
        with inference(G, paper=True, seed=cfg.seed):
            fake_B = G(real_A)
        grid = torch.stack([real_A, fake_B, real_B], 1).flatten(0, 1)
        save_grid([grid], run_dir / "samples" / f"step_{step:07d}.png", nrow=3)

    stop = StopFlag()
    log_path = run_dir / "metrics.jsonl"
    sums = torch.zeros(3, device=device)  # running loss sums, read back only when logged
    t_log, n_log, t_start = time.perf_counter(), 0, time.perf_counter()
    bar = tqdm(total=end, initial=step, disable=not is_main, unit="step", dynamic_ncols=True)
    while step < end and not stop.set:
        epoch, first = divmod(step, steps_per_epoch)
        plan = dataset.jitter_plan(len(train), cfg.seed, epoch, cfg.load_size, cfg.crop_size, cfg.flip)
        rows = plan[: steps_per_epoch * cfg.batch_size * world].view(steps_per_epoch, world, cfg.batch_size, 4)
        for batch in epoch_batches(train, rows[first:, rank], cfg):
            real_A, real_B = to_pair(batch, cfg, device, memory_format)

            loss_D, loss_G_gan, loss_G_l1 = gan_step(G_train, D_train, D, opt_G, opt_D, scaler,
                                                     real_A, real_B, cfg, dtype, device)
            step += 1
            sums += torch.stack([loss_D, loss_G_gan, loss_G_l1]).float()
            n_log += 1
            bar.update(1)
            if step % steps_per_epoch == 0:
                sched_G.step()
                sched_D.step()
            if step % cfg.log_every == 0 or step == end:
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
                    with open(log_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    bar.set_postfix(epoch=epoch + 1, D=f"{means[0]:.3f}", G_gan=f"{means[1]:.3f}",
                                    G_l1=f"{means[2]:.3f}")
                sums.zero_()
                t_log, n_log = now, 0
            if step % cfg.sample_every == 0 or step == end:
                sample()
            stopping = stop.agreed(device)
            if step % cfg.save_every == 0 or step == end or stopping:
                save()
            if stopping or step >= end:
                break
    bar.close()
    if is_main:
        why = "stopped by signal" if stop.set else "done"
        print(f"{why} at step {step}/{total}; checkpoint {run_dir / 'last.pt'}, generator {run_dir / 'G.pt'}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(parse_config(sys.argv[1:]))
