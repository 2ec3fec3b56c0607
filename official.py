"""The official pix2pix option spellings, and what each becomes in train.py, evaluate.py and predict.py.

    python train.py --dataroot data/maps --name maps_pix2pix --model pix2pix --gpu_ids -1 --print_freq 100
    python evaluate.py --dataroot data/maps --phase val --name maps_pix2pix --epoch latest --results_dir eval/

A command line written for junyanz/pytorch-CycleGAN-and-pix2pix (options/base_options.py,
train_options.py, test_options.py and the pix2pix model's --lambda_L1) works here. Each official
option gets one of three answers from each command (docs/options.md lists them all):
  - the same flag: cli.Parser takes every flag with underscores for hyphens, and ALIASES name the
    flags whose names differ (--dataroot is --data-root);
  - a translation: the hooks below turn the official value into ours (--gpu_ids -1 is --device cpu,
    --print_freq counts images where --log-every counts steps), or accept a value that asks for what
    sat2map does anyway (--pool_size 0, --model pix2pix);
  - one line saying that sat2map has no such thing and what to use instead (--display_id 1, --use_wandb).
train.py answers the official train.py's options; evaluate.py and predict.py the official test.py's.
"""
import argparse
import os
import sys
from pathlib import Path

from cli import InputError
from utils import local_world_size

# Every option of the official parsers, by the script that defines it; "!" marks a switch (no value)
OFFICIAL = {
    "base": ("dataroot", "name", "use_wandb!", "wandb_project_name", "gpu_ids", "checkpoints_dir", "model",
             "input_nc", "output_nc", "ngf", "ndf", "netD", "netG", "n_layers_D", "norm", "init_type",
             "init_gain", "no_dropout!", "dataset_mode", "direction", "serial_batches!", "num_threads",
             "batch_size", "load_size", "crop_size", "max_dataset_size", "preprocess", "no_flip!",
             "display_winsize", "epoch", "load_iter", "verbose!", "suffix"),
    "train": ("display_freq", "display_ncols", "display_id", "display_server", "display_env", "display_port",
              "update_html_freq", "print_freq", "no_html!", "save_latest_freq", "save_epoch_freq",
              "save_by_iter!", "continue_train!", "epoch_count", "phase", "n_epochs", "n_epochs_decay", "beta1",
              "lr", "gan_mode", "pool_size", "lr_policy", "lr_decay_iters", "lambda_L1"),
    "test": ("results_dir", "aspect_ratio", "phase", "eval!", "num_test"),
}
SCRIPT = {"train": "train", "evaluate": "test", "predict": "test"}  # the official script each command stands for

# Official names of our flags where the names differ (hyphenated; underscores are taken anyway)
ALIASES = {
    "train": {"--dataroot": "--data-root", "--num-threads": "--workers", "--n-epochs": "--epochs",
              "--n-epochs-decay": "--epochs-decay", "--lambda-L1": "--lambda-l1",
              "--save-epoch-freq": "--save-epoch-every", "--serial-batches": "--no-shuffle"},
    "evaluate": {"--dataroot": "--data-root", "--phase": "--split", "--results-dir": "--out",
                 "--num-test": "--max-pairs", "--max-dataset-size": "--max-pairs"},
    "predict": {"--dataroot": "--input", "--results-dir": "--out"},
}

ANY = None  # every value is accepted: the option changes nothing here
DISPLAY = ("sat2map has no visdom or HTML display: sample grids go to RUN_DIR/samples/ (--sample-every) and "
           "curves.png, and with --tensorboard to TensorBoard")
NO_DISPLAY = (("0", "-1"), DISPLAY)  # --display_id 0 or -1 switches the official display off, as here
WANDB = "sat2map logs to RUN_DIR/metrics.jsonl and, with --tensorboard, to TensorBoard; it has no wandb logging"
ARCH_AT_TEST = (ANY, "")  # D's and the initialisation's settings: a weights file has no use for them
TILES = ("predict.py translates each image at its own size, in --tile px tiles (the official --preprocess "
         "none); --scale resizes it first")
ONE_SIZE = "evaluate.py resizes each half to 256x256, the paper's test protocol (the official test.py's default)"
SKIP_ALL = "predict.py translates every image of --input; evaluate.py --num_test N takes the first N pairs"

# Values accepted as they are (ANY: every value), with the line for any other; None: no value at all
ACCEPT = {
    "train": {
        "model": (("pix2pix",), "sat2map trains the pix2pix model only; CycleGAN and the others are the "
                  "official code's"),
        "dataset_mode": (("aligned",), "sat2map trains on aligned pairs (A|B images, or A/ and B/ folders)"),
        "pool_size": (("0",), "pix2pix's D judges each generated image once (--pool_size 0, what the official "
                      "pix2pix model sets); a history of generated images is CycleGAN's"),
        "epoch": (("latest",), "train.py continues from RUN_DIR/last.pt, the latest state (--epoch latest); "
                  "G_epoch<E>.pt holds a generator alone, for evaluate.py and predict.py --epoch E"),
        "load_iter": (("0",), "sat2map keeps no checkpoint per iteration; train.py continues from RUN_DIR/last.pt"),
        "phase": (("train",), "train.py trains on DATA_ROOT/train: point --data-root at a folder whose train/ "
                  "holds the pairs"),
        "display_id": NO_DISPLAY, "no_html": (ANY, ""),
        "display_ncols": ((), DISPLAY), "display_server": ((), DISPLAY), "display_env": ((), DISPLAY),
        "display_port": ((), DISPLAY), "display_winsize": ((), DISPLAY), "update_html_freq": ((), DISPLAY),
        "use_wandb": ((), WANDB), "wandb_project_name": ((), WANDB),
        "save_by_iter": ((), "sat2map keeps RUN_DIR/last.pt (every --save-every steps), G_best.pt and, with "
                         "--save-epoch-every, G_epoch<E>.pt, not a file per iteration"),
        "verbose": ((), "sat2map always prints the resolved config; print(define_G(...)) shows a network"),
        "suffix": ((), "give the run's whole name with --name"),
    },
    "test": {
        "model": (("pix2pix", "test"), "sat2map runs pix2pix generators (--model pix2pix, or test)"),
        "ndf": ARCH_AT_TEST, "netD": ARCH_AT_TEST, "n_layers_D": ARCH_AT_TEST, "init_type": ARCH_AT_TEST,
        "init_gain": ARCH_AT_TEST, "serial_batches": (ANY, ""), "no_flip": (ANY, ""), "num_threads": (ANY, ""),
        "aspect_ratio": (("1",), "outputs keep the input's shape; predict.py --scale resizes"),
        "display_id": NO_DISPLAY, "display_winsize": ((), DISPLAY),
        "use_wandb": ((), WANDB), "wandb_project_name": ((), WANDB),
        "verbose": ((), "sat2map prints what it does; print(define_G(...)) shows a network"),
        "suffix": ((), "give the run's whole name with --name"),
    },
    "evaluate": {
        "batch_size": (("1",), "evaluate.py translates one image per call, as the paper and the official "
                       "test.py do"),
        "dataset_mode": (("aligned",), "evaluate.py measures A|B pairs (aligned); predict.py translates single "
                         "images"),
        "load_size": (("256",), ONE_SIZE), "crop_size": (("256",), ONE_SIZE),
        "preprocess": (("resize_and_crop", "scale_width"), ONE_SIZE),
    },
    "predict": {
        "batch_size": (("1",), "predict.py runs --batch tiles per pass with --eval, one in the paper's mode"),
        "preprocess": (("none",), TILES), "load_size": ((), TILES), "crop_size": ((), TILES),
        "max_dataset_size": ((), SKIP_ALL), "num_test": ((), SKIP_ALL),
    },
}
# Official options these hooks translate, by command
TRANSLATED = {
    "train": {"gpu_ids", "print_freq", "display_freq", "save_latest_freq", "continue_train", "epoch_count"},
    "evaluate": {"gpu_ids", "name", "checkpoints_dir", "epoch", "load_iter", "netG", "ngf", "norm", "no_dropout",
                 "input_nc", "output_nc"},
    "predict": {"gpu_ids", "name", "checkpoints_dir", "epoch", "load_iter", "netG", "ngf", "norm", "no_dropout",
                "input_nc", "output_nc", "dataset_mode", "phase"},
}
# The official frequencies count training images; ours count optimizer steps
FREQUENCIES = {"print_freq": "--log-every", "display_freq": "--sample-every", "save_latest_freq": "--save-every"}
# The generator's settings a test-time official flag names: checked against the weights file
GENERATOR = {"netG": str, "ngf": int, "norm": str, "input_nc": int, "output_nc": int}


class Given(argparse.Action):
    """Records an official option and its value (None for a switch) in namespace.official, in
    command-line order, for the command's hook."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.__dict__.setdefault("official", []).append((self.dest, values or None))


def catalogue(*scripts: str) -> list[tuple[str, bool]]:
    """(name, takes a value) of every option of the official scripts named, each once."""
    names = dict.fromkeys(n for script in scripts for n in OFFICIAL[script])
    return [(n.rstrip("!"), not n.endswith("!")) for n in names]


def options(command: str) -> list[tuple[str, bool]]:
    """(name, takes a value) of every official option the command's official script has."""
    return catalogue("base", SCRIPT[command])


def register(parser, command: str):
    """Teach a command's parser the official spellings: aliases, hidden options for the rest (never
    listed in --help), and the hook that answers them. Returns the parser."""
    for other, flag in ALIASES[command].items():
        parser.alias(other, flag)
    known = {s for action in parser._actions for s in action.option_strings}
    ours = {n for n, _ in options(command) if parser.spelled(f"--{n}", known) in known}
    elsewhere = catalogue(*(s for s in OFFICIAL if s not in ("base", SCRIPT[command])))
    for name, takes_value in options(command) + elsewhere:
        if name in ours or f"--{name}" in known:
            continue
        flags = dict.fromkeys([f"--{name}", "--" + name.replace("_", "-")])
        parser.add_argument(*flags, action=Given, nargs=None if takes_value else 0, dest=name,
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        known.update(flags)
    if command != "train":  # the official --name (and --checkpoints_dir, --epoch) can name the weights instead
        next(a for a in parser._actions if "--weights" in a.option_strings).required = False
    parser.hooks.append(lambda ns: answer(parser, ns, command))
    return parser


def answer(parser, ns, command: str):
    """Turn the official options recorded in ns into ours, or refuse the first without a meaning here."""
    given = dict(vars(ns).pop("official", []))
    for name, value in given.items():
        if name in TRANSLATED[command]:
            continue
        values, line = ACCEPT[command].get(name) or ACCEPT.get(SCRIPT[command], {}).get(name) or other_script(name)
        if values is not ANY and not (value is not None and any(same(value, v) for v in values)):
            raise InputError(f"--{name}{'' if value is None else ' ' + value}: {line}")
    if "gpu_ids" in given:
        put(parser, ns, "device", gpu_device(given["gpu_ids"], command), "--gpu_ids", "--device")
    (train_options if command == "train" else test_options)(parser, ns, given, command)


def other_script(name: str) -> tuple:
    """The answer to an option of the other official script."""
    if name in dict(catalogue("test")):
        return (), "an option of the official test.py: evaluate.py and predict.py take it"
    return (), "an option of the official train.py: train.py takes it (evaluate.py and predict.py read " \
               "the generator's settings from the weights file)"


def same(value: str, accepted: str) -> bool:
    """Whether a command-line value is an accepted one (numbers compared as numbers: 1.0 is 1)."""
    try:
        return float(value) == float(accepted)
    except ValueError:
        return value == accepted


def put(parser, ns, dest: str, value, official: str, ours: str):
    """Set a flag from an official option, unless our flag was given another value too."""
    if getattr(ns, dest) not in (parser.get_default(dest), value):
        raise InputError(f"{official} and {ours} {getattr(ns, dest)} both set this: give one of them")
    setattr(ns, dest, value)


def integer(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InputError(f"--{name} {value}: expected a whole number") from None


def gpu_device(value: str, command: str) -> str:
    """--device for the official --gpu_ids: -1 the CPU; the GPUs 0..n-1 of a node with one process per
    GPU (0 alone outside torchrun). Other GPUs are picked with CUDA_VISIBLE_DEVICES."""
    try:
        ids = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--gpu_ids {value}: expected GPU numbers such as 0 or 0,1, or -1 for the CPU") from None
    ids = [i for i in ids if i >= 0]  # as in the official code: negative ids leave the CPU
    if not ids:
        return "cpu"
    if ids == list(range(local_world_size())):
        return "cuda"
    if command == "evaluate":
        raise InputError(f"--gpu_ids {value}: evaluate.py runs on one GPU: --gpu_ids 0, with "
                         f"CUDA_VISIBLE_DEVICES={ids[0]} to pick GPU {ids[0]}")
    if len(ids) == 1:
        raise InputError(f"--gpu_ids {value}: pick GPU {ids[0]} with CUDA_VISIBLE_DEVICES={ids[0]} (it is then "
                         f"--gpu_ids 0, or --device cuda)")
    extra = " (--batch-size is then per GPU)" if command == "train" else ""
    raise InputError(f"--gpu_ids {value}: sat2map runs one process per GPU: CUDA_VISIBLE_DEVICES={value} "
                     f"torchrun --nproc-per-node {len(ids)} {command}.py ...{extra}")


def train_options(parser, ns, given: dict, command: str):
    """train.py: the frequencies in steps, --continue_train, --epoch_count."""
    world = int(os.environ.get("WORLD_SIZE", 1))  # torchrun's, known before the process group starts
    per_step = ns.batch_size * world
    for name, flag in FREQUENCIES.items():
        if name in given:
            images = integer(name, given[name])
            if images < per_step or images % per_step:
                raise InputError(f"--{name} {images}: counts training images in the official code, and a step "
                                 f"here takes {per_step} (--batch-size {ns.batch_size} x {world} process(es)): "
                                 f"give a multiple of {per_step}, or {flag} STEPS")
            put(parser, ns, flag[2:].replace("-", "_"), images // per_step, f"--{name}", flag)
    if "continue_train" in given:
        put(parser, ns, "resume", "last", "--continue_train", "--resume")
    count = integer("epoch_count", given.get("epoch_count", "1"))
    if count != 1 and "continue_train" not in given:
        raise InputError(f"--epoch_count {count}: a new run starts at epoch 1; to go on with a run, "
                         f"--continue_train (RUN_DIR/last.pt knows its epoch)")
    if count != 1:
        print(f"notice: --epoch_count {count}: sat2map continues at the step saved in last.pt", file=sys.stderr)


def test_options(parser, ns, given: dict, command: str):
    """evaluate.py and predict.py: the weights from --name, --checkpoints_dir, --epoch and --load_iter;
    the generator's settings to check against the file; predict.py's --dataset_mode and --phase."""
    run = {k: given[k] for k in ("name", "checkpoints_dir", "epoch") if k in given}
    iteration = integer("load_iter", given.get("load_iter", "0"))
    if run or iteration > 0:
        if ns.weights is not None:
            raise InputError("--weights names the generator file; --name, --checkpoints_dir, --epoch and "
                             "--load_iter pick one of a run folder instead: give one or the other")
        if "name" not in run:
            raise InputError("--checkpoints_dir, --epoch and --load_iter pick a file of the run folder "
                             "CHECKPOINTS_DIR/NAME: give --name too")
        import rundir  # only here: predict.py and evaluate.py need it for this alone
        folder = Path(run.get("checkpoints_dir", "weights")) / run["name"]
        ns.weights = str(rundir.find_generator(folder, f"iter_{iteration}" if iteration > 0 else
                                               run.get("epoch", "latest")))
    if ns.weights is None:
        raise InputError("the following arguments are required: --weights")  # as argparse says it
    ns.expect = {k: kind(given[k]) for k, kind in GENERATOR.items() if k in given}
    if "no_dropout" in given:
        ns.expect["dropout"] = 0.0
    if command == "predict" and "dataset_mode" in given:
        if given["dataset_mode"] not in ("single", "aligned"):
            raise InputError(f"--dataset_mode {given['dataset_mode']}: predict.py translates single images "
                             f"(single), or the input half of A|B pairs (aligned, as --pairs)")
        put(parser, ns, "pairs", given["dataset_mode"] == "aligned", "--dataset_mode aligned", "--pairs")
    if command == "predict" and "phase" in given:
        ns.input = str(Path(ns.input) / given["phase"])  # the official test.py reads DATAROOT/PHASE


def check_generator(config: dict, expect: dict, weights):
    """The generator settings official flags named (`expect`, from test_options) are the file's."""
    for key, value in expect.items():
        if config.get(key) != value:
            flag = "--no_dropout" if key == "dropout" else f"--{key} {value}"
            raise InputError(f"{flag}: {weights} holds a generator with {key} {config.get(key)} (evaluate.py "
                             f"and predict.py build it from the file: leave the flag out)")
