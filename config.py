"""Every training setting in one place, with the paper's defaults (Isola et al. 2017, arXiv 1611.07004).

    python train.py --help

Each field is a `--kebab-case` flag of train.py; unknown flags are errors. The resolved config is
printed at start and saved as RUN_DIR/config.json. cli.py's `Parser` is every command's command line:
it also takes each flag spelt with underscores (--load_size is --load-size), and official.py adds the
official pix2pix spellings.
"""
import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from cli import Parser, command_parser
from discriminator import NETD
from generator import INIT_TYPES, NETG, size_multiple
from losses import GAN_MODES, LR_POLICIES

# --preprocess choices of the official code (data/base_dataset.py semantics; see dataset.preprocess_size)
PREPROCESS = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")


DEVICES = ["auto", "cpu", "cuda", "mps"]
# The validation metrics of evaluate.py and which way is better: any of them can pick G_best.pt
METRIC_GOALS = {"l1": "min", "psnr": "max", "ssim": "max", "rmse": "min", "acc5": "max", "acc10": "max",
                "iou_background": "max", "iou_road": "max", "iou_highway": "max", "iou_water": "max",
                "iou_park": "max", "miou_structure": "max", "fid": "min", "kid": "min"}


def opt(default, help, **kw):
    """A config field whose help text doubles as its comment."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    # data
    data_root: str = opt("data/maps", "folder with train/ and val/ (AB images or A/ + B/); "
                         "data/<name> of a known dataset is downloaded when missing")
    direction: str = opt("AtoB", "AtoB: left/A (satellite) -> right/B (map); BtoA flips it",
                         choices=["AtoB", "BtoA"])
    preprocess: str = opt("resize_and_crop", "resize_and_crop: resize both halves to --load-size square, then a "
                          "random --crop-size crop; crop: crop only; scale_width: width to --load-size "
                          "(aspect kept); scale_width_and_crop: that, then crop; none: keep the size, "
                          "rounded to the nearest multiple --netG needs (official pix2pix semantics)",
                          choices=list(PREPROCESS))
    load_size: int = opt(286, "jitter: resize both halves to this size ...")
    crop_size: int = opt(256, "... then take a random crop of this size (and a random flip)")
    max_dataset_size: int = opt(0, "train on the first N training pairs of the sorted list (0: all)")
    flip: bool = opt(True, "random horizontal flip (--no-flip turns it off)")
    shuffle: bool = opt(True, "a seeded shuffle of the pairs every epoch (--no-shuffle: sorted order; the "
                        "jitter stays random)")
    input_nc: int = opt(3, "channels of the input (A with --direction AtoB): 3 for RGB, 1 for grey "
                        "(panchromatic, SAR, DEM)", choices=[1, 3])
    output_nc: int = opt(3, "channels of the output (B with --direction AtoB): 3 for RGB, 1 for grey",
                         choices=[1, 3])
    data_cache: str = opt("auto", "memory: decode and resize every pair once and jitter uint8 tensors "
                          "on the training device; disk: the same pixels in a file under DATA_ROOT/.cache, "
                          "memory-mapped and shared by a node's processes (for sets larger than memory); "
                          "auto: memory when the decoded set takes at most half the available RAM (per "
                          "process of the node) and, on a GPU, half its memory, else disk; off: decode "
                          "with PIL every step", choices=["auto", "memory", "disk", "off"])
    workers: int = opt(2, "DataLoader worker processes for --data-cache off")
    skip_bad: bool = opt(False, "skip unreadable or malformed images instead of refusing to start")
    allow_data_change: bool = opt(False, "resume even though the number of training pairs changed "
                                  "(the data order then differs from an uninterrupted run)")
    # model
    netG: str = opt("unet_256", "generator: the paper's U-Net-256, the official U-Net-128, or the official "
                    "ResNet generator with 9 or 6 residual blocks", choices=list(NETG))
    netD: str = opt("basic", "discriminator: basic is the paper's 70x70 PatchGAN; n_layers the same with "
                    "--n-layers-D stride-2 layers; pixel a 1x1 PatchGAN", choices=list(NETD))
    n_layers_D: int = opt(3, "stride-2 layers of the n_layers discriminator")
    ngf: int = opt(64, "generator width (filters in its first layer)")
    ndf: int = opt(64, "discriminator width (filters in its first layer)")
    norm: str = opt("batch", "normalisation layer of G and D", choices=["batch", "instance", "none"])
    dropout: float = opt(0.5, "dropout in the U-Net's decoder blocks next to the innermost one (3 for "
                         "unet_256, 2 for unet_128) or in every residual block of a ResNet generator "
                         "(--no-dropout: 0, none at all)", off_flag="--no-dropout")
    init_type: str = opt("normal", "weight initialisation of G and D", choices=list(INIT_TYPES))
    init_gain: float = opt(0.02, "scale of the normal, xavier and orthogonal initialisations")
    sync_bn: bool = opt(False, "SyncBatchNorm across processes under torchrun")
    # optimisation
    batch_size: int = opt(1, "images per optimizer step and process")
    lr: float = opt(2e-4, "Adam learning rate")
    beta1: float = opt(0.5, "Adam beta1")
    beta2: float = opt(0.999, "Adam beta2")
    lambda_l1: float = opt(100.0, "weight of the L1 term in the generator loss")
    gan_mode: str = opt("vanilla", "vanilla: BCE with logits; lsgan: least squares; wgangp: Wasserstein "
                        "loss with the gradient penalty", choices=list(GAN_MODES))
    lambda_gp: float = opt(10.0, "weight of the WGAN-GP gradient penalty with --gan-mode wgangp (0: the "
                           "official pix2pix model's plain WGAN loss, no penalty)")
    epochs: int = opt(100, "epochs at the initial learning rate")
    epochs_decay: int = opt(100, "further epochs with the learning rate decaying linearly to 0")
    lr_policy: str = opt("linear", "linear: the paper's schedule above; step: x0.1 every --lr-decay-iters "
                         "epochs; plateau: x0.2 after 5 epochs without a 1%% better mean L1 loss; cosine: "
                         "cosine annealing to 0 over --epochs epochs", choices=list(LR_POLICIES))
    lr_decay_iters: int = opt(50, "epochs between decays of --lr-policy step")
    max_steps: int = opt(0, "stop after this many optimizer steps in total (0: no limit)")
    seed: int = opt(0, "seed of weights, data order, jitter and dropout")
    # speed
    device: str = opt("auto", "auto: cuda, then mps, then cpu", choices=DEVICES)
    amp: str = opt("auto", "mixed precision; auto: bf16 where the device runs it fast, else off",
                   choices=["auto", "bf16", "fp16", "off"])
    channels_last: str = opt("auto", "NHWC memory format; auto: on a GPU, off on a CPU (where it trains "
                             "slower; docs/performance.md)", choices=["auto", "on", "off"])
    deterministic: bool = opt(False, "deterministic kernels only (cuDNN, cuBLAS; cudnn.benchmark off) so a "
                              "GPU run repeats bit for bit; costs speed (see docs/training.md)")
    compile: str = opt("off", "torch.compile the networks; reduce-overhead adds CUDA graphs",
                       choices=["off", "default", "reduce-overhead", "max-autotune"])
    # bookkeeping
    name: str = opt("", "run name; default the data root's folder name (data/facades -> facades)")
    checkpoints_dir: str = opt("weights", "folder that holds the run folders (RUN_DIR is CHECKPOINTS_DIR/NAME)")
    run_dir: str = opt("", "run folder for checkpoints, samples and logs (default CHECKPOINTS_DIR/NAME)")
    resume: str = opt("auto", "auto: continue from RUN_DIR/last.pt if it exists; last: from RUN_DIR/last.pt, "
                      "which must exist; never; or a path")
    save_every: int = opt(1000, "save RUN_DIR/last.pt every N steps (and at the end, and on SIGINT)")
    save_epoch_every: int = opt(0, "also keep the generator of every N-th epoch's end as RUN_DIR/G_epoch<E>.pt "
                                "(0: none)")
    sample_every: int = opt(1000, "save a grid of validation samples every N steps")
    log_every: int = opt(100, "append losses to RUN_DIR/metrics.jsonl every N steps")
    num_samples: int = opt(8, "validation pairs in the sample grid")
    tensorboard: bool = opt(False, "also write the logged scalars and sample grids to RUN_DIR/tb "
                            "(needs the tensorboard package)")
    # validation
    validate: bool = opt(True, "measure evaluate.py's metrics on validation pairs during training "
                         "(--no-validate turns it off; training is the same either way)")
    val_every: int = opt(0, "validate every N steps and at the end (0: at the end of every epoch)")
    val_samples: int = opt(100, "validation pairs, spread evenly over the sorted val split (0: all)")
    best_metric: str = opt("l1", "validation metric that picks RUN_DIR/G_best.pt (l1, rmse, fid, kid: "
                           "lower is better; the others higher)", choices=list(METRIC_GOALS))
    val_fid: bool = opt(False, "also FID and KID in validation (needs the Inception weights file)")
    inception_weights: str = opt("", "the FID Inception weights pt_inception-2015-12-05-6726825d.pth "
                                 "(default: the torch hub cache, where pytorch-fid keeps it)")

    def __post_init__(self):
        self.name = self.name or Path(self.data_root).resolve().name or "run"
        self.run_dir = self.run_dir or str(Path(self.checkpoints_dir) / self.name)
        checks = {
            "--load-size": self.load_size >= self.crop_size or self.preprocess not in ("resize_and_crop", "scale_width_and_crop"),
            "--crop-size": self.crop_size >= size_multiple(self.netG) and self.crop_size % size_multiple(self.netG) == 0,
            "--max-dataset-size": self.max_dataset_size >= 0,
            "--n-layers-D": 1 <= self.n_layers_D <= 8,
            "--init-gain": math.isfinite(self.init_gain) and self.init_gain > 0,
            "--lambda-gp": math.isfinite(self.lambda_gp) and self.lambda_gp >= 0,
            "--lr-decay-iters": self.lr_decay_iters >= 1,
            "--lr-policy": self.lr_policy != "cosine" or self.epochs >= 1,
            "--batch-size": self.batch_size >= 1,
            "--epochs": self.epochs >= 0 and self.epochs_decay >= 0 and self.epochs + self.epochs_decay > 0,
            "--max-steps": self.max_steps >= 0,
            "--save-every": min(self.save_every, self.sample_every, self.log_every) >= 1,
            "--save-epoch-every": self.save_epoch_every >= 0,
            "--dropout": 0.0 <= self.dropout < 1.0,
            "--ngf": self.ngf >= 1 and self.ndf >= 1,
            "--lr": math.isfinite(self.lr) and self.lr > 0,
            "--beta1": 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
            "--lambda-l1": math.isfinite(self.lambda_l1) and self.lambda_l1 >= 0,
            "--workers": self.workers >= 0,
            "--num-samples": self.num_samples >= 1,
            "--val-every": self.val_every >= 0 and self.val_samples >= 0,
            "--best-metric": self.val_fid or self.best_metric not in ("fid", "kid"),
            "--val-samples": not (self.val_fid and self.val_samples == 1),
        }
        expected = {
            "--load-size": f"at least --crop-size ({self.crop_size})",
            "--crop-size": f"a multiple of {size_multiple(self.netG)} (what --netG {self.netG} divides)",
            "--max-dataset-size": "0 (all pairs) or a positive count",
            "--n-layers-D": "1 to 8 layers",
            "--init-gain": "a positive scale",
            "--lambda-gp": "a weight >= 0",
            "--lr-decay-iters": "at least 1 epoch",
            "--lr-policy": "cosine anneals over --epochs, which must be at least 1",
            "--batch-size": "at least 1",
            "--epochs": "--epochs and --epochs-decay >= 0, not both 0",
            "--max-steps": "0 (no limit) or a positive step count",
            "--save-every": "--save-every, --sample-every and --log-every all >= 1",
            "--save-epoch-every": "0 (none) or a positive number of epochs",
            "--dropout": "a probability in [0, 1)",
            "--ngf": "--ngf and --ndf >= 1",
            "--lr": "a positive learning rate",
            "--beta1": "--beta1 and --beta2 in [0, 1)",
            "--lambda-l1": "a weight >= 0",
            "--workers": "0 or more worker processes",
            "--num-samples": "at least 1",
            "--val-every": "--val-every and --val-samples >= 0 (0: the default)",
            "--best-metric": f"--val-fid with --best-metric {self.best_metric}, or another metric",
            "--val-samples": "0 (all) or at least 2 with --val-fid (KID needs two images)",
        }
        bad = [f"{flag}: expected {expected[flag]}" for flag, ok in checks.items() if not ok]
        if bad:
            raise ValueError("; ".join(bad))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Settings that fix the shape of the networks: a checkpoint only continues under the same values.
ARCH_FIELDS = ("netG", "netD", "n_layers_D", "ngf", "ndf", "norm", "dropout", "input_nc", "output_nc")


def saved_arch(saved: dict, key: str):
    """A checkpoint's value of an ARCH_FIELDS key; checkpoints from before the key was added hold the
    default, which was then the only choice."""
    return saved.get(key, Config.__dataclass_fields__[key].default)


WEIGHTS_HELP = ("G.pt, last.pt or G_best.pt of a run, an official pix2pix *_net_G.pth (any --netG), or an official "
                "pretrained name: sat2map, map2sat, facades_label2photo, edges2shoes, edges2handbags, day2night "
                "(downloaded once into weights/)")


def add_device(parser: Parser):
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto: cuda, then mps, then cpu")


def build_parser(cls=Config, description=None) -> Parser:
    """One `--kebab-case` flag per dataclass field, with its help text and default."""
    parser = command_parser(description)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=f.metadata["help"],
                                choices=f.metadata.get("choices"))
        if "off_flag" in f.metadata:  # the official code's boolean form: sets the field to 0
            parser.add_argument(f.metadata["off_flag"], dest=f.name, action="store_const", const=type(f.default)(0),
                                default=argparse.SUPPRESS, help=f"the official boolean form of {flag} 0")
    return parser


def parse_config(argv=None) -> Config:
    """Parse flags (ours, or the official pix2pix spellings) into a Config; unknown flags and bad
    values exit with a one-line error."""
    import official  # it builds on this module
    parser = official.register(build_parser(description="Train pix2pix (satellite -> map)."), "train")
    args = parser.parse_args(argv)  # argparse already rejects unknown flags, naming them
    try:
        return Config(**vars(args))
    except ValueError as e:
        parser.error(str(e))
