"""A training run's folder, and what its checkpoints hold.

    python train.py --run-dir weights/maps        # everything below lands in weights/maps/

    config.json        the config as plain JSON, with a "resolved" section (what `auto` became)
    metrics.jsonl      one JSON row per log interval (losses, lr, img/s) and per validation (val_ metrics)
    curves.png         smoothed training losses and validation metrics against step (plots.py)
    samples/           step_NNNNNNN.png: fixed validation pairs, satellite | generated | map
    tb/                the same scalars and grids for TensorBoard (--tensorboard)
    last.pt            everything needed to continue bit for bit (see `checkpoint`)
    G.pt               the generator alone, for predict.py, evaluate.py, export.py and torch.hub
    G_best.pt          the generator at the best validation value of --best-metric
    G_epoch<E>.pt      the generator at the end of epoch E, every --save-epoch-every epochs

train.py owns the GAN step, the schedule and the loop; `RunDir` owns these files. Only the main
process writes: on the others every writing method returns at once.
"""
import json
from pathlib import Path

import numpy as np

import plots
from cli import InputError, first_line
from config import ARCH_FIELDS, Config, saved_arch
from durable import atomic_write_text
from utils import atomic_save, safe_load, save_grid, set_rng_state

# ----------------------------------------------------------------------------------------------------
# What a checkpoint holds: `checkpoint` builds last.pt; `check_complete`, `load_checkpoint` and
# `restore` read it back

CKPT_VERSION = 1
# last.pt holds "version", these fields, and the state_dict of every object of the training state
# (train.build_state: G, D, opt_G, opt_D, sched_G, sched_D, scaler, best)
CKPT_FIELDS = ("step", "epoch", "config", "rng", "data")
# Objects added to the training state later: a checkpoint without them resumes with their fresh state
OPTIONAL_STATE = ("best",)


def checkpoint(state: dict, **fields) -> dict:
    """The dict saved as last.pt. fields: step, epoch, config (a plain dict), rng (every process's RNG
    states, in rank order), data (seed, steps_per_epoch, pairs: what fixes the data stream)."""
    if sorted(fields) != sorted(CKPT_FIELDS):
        raise TypeError(f"checkpoint() takes the fields {', '.join(CKPT_FIELDS)}, got {', '.join(fields)}")
    return {"version": CKPT_VERSION, **fields, **{key: obj.state_dict() for key, obj in state.items()}}


def generator_file(G_state: dict, config: dict, **extra) -> dict:
    """G.pt (and, with extra fields, G_best.pt): the generator and the config that builds it."""
    return {"version": CKPT_VERSION, "G": G_state, "config": config, **extra}


def check_complete(ckpt: dict, path, state: dict | None = None):
    """The checkpoint's version and fields, and when given the pieces of the training state, are all there."""
    required = ("version", *CKPT_FIELDS, *(k for k in (state or ()) if k not in OPTIONAL_STATE))
    missing = [k for k in required if k not in ckpt]
    if ckpt.get("version") != CKPT_VERSION or missing:
        raise InputError(f"{path}: not a complete sat2map training checkpoint (expected version {CKPT_VERSION}"
                         + (f"; missing {', '.join(missing)})" if missing else f", found {ckpt.get('version')})"))


def check_architecture(ckpt: dict, cfg: Config, path):
    """The checkpoint was trained with the architecture the flags ask for."""
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
    """--resume auto: RUN_DIR/last.pt if present; last: RUN_DIR/last.pt, which must be there (the
    official --continue_train); never: fresh start; else the given path."""
    if cfg.resume == "never":
        return None
    last = Path(cfg.run_dir) / "last.pt"
    if cfg.resume == "last" and not last.exists():
        raise InputError(f"--resume last (--continue_train): {last} not found; nothing to continue (check "
                         f"--name and --checkpoints-dir, or leave the flag out to start this run)")
    if cfg.resume in ("auto", "last"):
        return last if last.exists() else None
    return Path(cfg.resume)


def find_generator(folder: Path, epoch: str) -> Path:
    """The generator file of a run folder that the official --epoch names: latest (G.pt, else the official
    latest_net_G.pth), best (G_best.pt), a number E (G_epoch<E>.pt, else the official <E>_net_G.pth), or
    iter_<N> (the official iter_<N>_net_G.pth)."""
    names = {"latest": ["G.pt"], "best": ["G_best.pt"]}.get(epoch, [f"G_epoch{epoch}.pt"] if epoch.isdigit() else [])
    names.append(f"{epoch}_net_G.pth")
    for name in names:
        if (folder / name).is_file():
            return folder / name
    held = sorted(p.name for p in folder.glob("*") if p.name.startswith("G") and p.suffix == ".pt"
                  or p.name.endswith("_net_G.pth")) if folder.is_dir() else []
    raise InputError(f"--name {folder.name} --epoch {epoch}: no {' or '.join(names)} in {folder}"
                     + (f" (it holds {', '.join(held)})" if held else " (no generator file there)"))


def load_checkpoint(path, cfg: Config) -> dict:
    """A checkpoint to resume from, refused at once (before any data is loaded) if it cannot continue
    this run."""
    ckpt = safe_load(path)
    check_complete(ckpt, path)
    check_architecture(ckpt, cfg, path)
    return ckpt


def restore(ckpt: dict, state: dict, path, rank: int) -> int:
    """Load every object of the training state and this process's RNG states; returns the step."""
    check_complete(ckpt, path, state)
    for key, obj in state.items():
        if key in OPTIONAL_STATE and key not in ckpt:
            continue
        try:
            obj.load_state_dict(ckpt[key])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: its {key} does not fit this run ({first_line(e)})") from None
    rngs = ckpt["rng"]
    set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
    return ckpt["step"]


# ----------------------------------------------------------------------------------------------------
# The run folder


def tensorboard_writer(cfg: Config):
    """The SummaryWriter class for --tensorboard, else None; checked before anything is written."""
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("--tensorboard: the tensorboard package is not installed (pip install tensorboard)") from None
    return SummaryWriter


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


class RunDir:
    """The files of one run (see the module docstring). Creating it checks the folder and --tensorboard
    and writes nothing, so a refused start leaves the folder as it was; `start` writes the config."""

    def __init__(self, cfg: Config, is_main: bool):
        self.path, self.is_main = Path(cfg.run_dir), is_main
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--run-dir {self.path}: is a file, expected a folder")
        self.SummaryWriter = tensorboard_writer(cfg)
        self.metrics = self.path / "metrics.jsonl"
        self.last, self.generator, self.best = (self.path / n for n in ("last.pt", "G.pt", "G_best.pt"))
        self.tb = self.curves = None

    def start(self, cfg: Config, resolved: dict, resume: Path | None = None, step: int = 0):
        """Print and write config.json (with `resolved`: what `auto` became); when resuming from `resume`
        at `step`, drop the metrics rows that are about to be redone."""
        if not self.is_main:
            return
        config_text = json.dumps({**cfg.to_dict(), "resolved": resolved}, indent=2)
        print(config_text)
        atomic_write_text(self.path / "config.json", config_text + "\n")
        if resume is not None:
            print(f"resuming from {resume} at step {step}")
            trim_metrics(self.metrics, step)
        self.tb = self.SummaryWriter(str(self.path / "tb")) if self.SummaryWriter is not None else None
        self.curves = plots.Curves(self.metrics, self.path / "curves.png")

    def log(self, row: dict):
        """Append a row to metrics.jsonl, redraw curves.png, and mirror the scalars to TensorBoard."""
        if not self.is_main:
            return
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.curves.update()
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key.replace("val_", "val/", 1) if key.startswith("val_") else f"train/{key}",
                                       value, row["step"])
            self.tb.flush()

    def samples(self, grid, step: int, direction: str):
        """samples/step_NNNNNNN.png from rows of condition | generated | target (N, 3, H, W), titled in
        --direction's terms and captioned with the step."""
        if not self.is_main:
            return
        titles = ["satellite", "generated", "map"]
        img = save_grid([grid], self.path / "samples" / f"step_{step:07d}.png", nrow=3,
                        titles=titles if direction == "AtoB" else titles[::-1], caption=f"step {step}")
        if self.tb is not None:
            self.tb.add_image("samples", np.asarray(img), step, dataformats="HWC")

    def save(self, state: dict, **fields):
        """last.pt (the `checkpoint` of the training state and fields) and G.pt, each written atomically."""
        if not self.is_main:
            return
        ckpt = checkpoint(state, **fields)
        atomic_save(ckpt, self.last)
        atomic_save(generator_file(ckpt["G"], ckpt["config"]), self.generator)

    def save_epoch(self, G_state: dict, config: dict, epoch: int):
        """G_epoch<E>.pt: G.pt's format, kept (the official <E>_net_G.pth of --save_epoch_freq)."""
        if self.is_main:
            atomic_save(generator_file(G_state, config, epoch=epoch), self.path / f"G_epoch{epoch}.pt")

    def save_best(self, G_state: dict, config: dict, step: int, metric: str, value: float, metrics: dict):
        """G_best.pt: G.pt's format plus the step, the metric and its value, and all validation metrics."""
        if not self.is_main:
            return
        atomic_save(generator_file(G_state, config, step=step, metric=metric, value=value, val=metrics), self.best)

    def close(self):
        """Draw the curves a skipped redraw left pending, and close TensorBoard's files."""
        if self.curves is not None:
            self.curves.finish()
        if self.tb is not None:
            self.tb.close()
