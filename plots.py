"""Training curves: smoothed losses and validation metrics against step, from RUN_DIR/metrics.jsonl.

    python plots.py weights/maps/metrics.jsonl weights/maps/curves.png

train.py redraws RUN_DIR/curves.png as it logs rows (see `Curves`).
"""
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, and no GUI event loop in the trainer
import matplotlib.pyplot as plt  # noqa: E402

from cli import InputError, command_parser, run_command  # noqa: E402
from durable import replace_durably  # noqa: E402

# One panel per group of keys that share a scale; panels without data are left out
PANELS = [
    ("GAN losses", ["loss_D", "loss_G_gan"]),
    ("L1 (train loss, val)", ["loss_G_l1", "val_l1"]),
    ("val PSNR (dB)", ["val_psnr"]),
    ("val RMSE (0-255)", ["val_rmse"]),
    ("val SSIM, pixel accuracy", ["val_ssim", "val_acc5", "val_acc10"]),
    ("val structure IoU", ["val_miou_structure", "val_iou_road", "val_iou_highway", "val_iou_water",
                           "val_iou_park"]),
    ("val FID", ["val_fid"]),
]
SMOOTH = 0.6  # EMA weight of the past for the training losses (each row is already a logged mean)


def read_rows(path) -> list[dict]:
    """The rows of a metrics.jsonl (JSON objects with a step); a torn last line (a crash mid-write)
    and anything else that is not such a row is ignored."""
    rows = []
    for line in Path(path).read_bytes().splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


def ema(values, weight=SMOOTH):
    """Exponential moving average, debiased at the start like TensorBoard's smoothing."""
    out, acc = [], 0.0
    for i, v in enumerate(values, 1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight ** i))
    return out


def plot_curves(rows: list[dict], path) -> bool:
    """Draw the panels that have data into a PNG at path, written through a temp file. Returns
    False, writing nothing, when no panel has data."""
    series = {}
    for r in rows:
        for k, v in r.items():
            if isinstance(v, (int, float)) and v == v and k != "step":  # v == v: not NaN
                series.setdefault(k, ([], []))
                series[k][0].append(r["step"])
                series[k][1].append(v)
    panels = [(title, [k for k in keys if k in series]) for title, keys in PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return False
    cols = min(3, len(panels))
    rows_n = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for i, key in enumerate(keys):
            steps, values = series[key]
            color = f"C{i}"
            if key.startswith("val_"):
                ax.plot(steps, values, "o-", color=color, ms=3, lw=1.2, label=key)
            else:  # training means are noisy: faint raw values under their smoothed curve
                ax.plot(steps, values, color=color, alpha=0.25, lw=0.8)
                ax.plot(steps, ema(values), color=color, lw=1.5, label=f"{key} (smoothed)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14 / rows_n, top=1 - 0.1 / rows_n, wspace=0.25,
                        hspace=0.45)  # fixed margins: tight_layout would double the drawing time
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=90)
        replace_durably(tmp, path)
    except OSError as e:  # name the file asked for, not our temp file
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return True


class Curves:
    """Keeps a run's curves.png current as rows are logged. A redraw (~0.2 s) is skipped while drawing
    would take more than `share` of the elapsed time, so a fast run with frequent rows is not slowed
    down; a later row or the end of the run (finish) catches up."""

    def __init__(self, log_path, out, share=0.05):
        self.log_path, self.out, self.share = Path(log_path), Path(out), share
        self.start, self.drawing, self.pending = time.perf_counter(), 0.0, False

    def update(self, force=False):
        self.pending = True
        if force or self.drawing <= self.share * (time.perf_counter() - self.start):
            t0 = time.perf_counter()
            plot_curves(read_rows(self.log_path), self.out)
            self.drawing += time.perf_counter() - t0
            self.pending = False

    def finish(self):
        if self.pending:
            self.update(force=True)


def main(argv=None):
    p = command_parser("Draw training curves from a run's metrics.jsonl.")
    p.add_argument("metrics", help="RUN_DIR/metrics.jsonl")
    p.add_argument("out", help="PNG to write")
    args = p.parse_args(argv)
    metrics, out = Path(args.metrics), Path(args.out)
    if metrics.is_dir():
        raise InputError(f"{metrics}: is a folder; expected its metrics.jsonl")
    if not metrics.is_file():
        raise InputError(f"{metrics}: no such metrics file")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; expected a PNG file name")
    if not out.parent.is_dir():
        raise InputError(f"{out}: folder {out.parent} does not exist")
    rows = read_rows(metrics)
    if not rows:
        kind = "a binary file" if b"\0" in metrics.read_bytes()[:4096] else "no rows to plot"
        raise InputError(f"{metrics}: {kind} (expected one JSON object with a step per line, as train.py "
                         f"writes to RUN_DIR/metrics.jsonl)")
    if not plot_curves(rows, out):
        raise InputError(f"{metrics}: {len(rows)} row(s), but none holds a loss or validation metric to plot")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run_command(main))
