"""The official pix2pix spellings (official.py) in train.py, evaluate.py and predict.py, and single-band
data (--input-nc / --output-nc 1) through training, resuming, evaluation, prediction and export."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cog
import dataset
import evaluate
import export
import official
import parts
import predict
import raster
import rundir
import tiles
import train as train_mod
from cli import InputError
from config import Config, parse_config
from conftest import assert_same, make_ab, make_dataset, train
from generator import load_generator

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

FAST = ["--netG", "resnet_6blocks", "--ngf", "8", "--ndf", "8", "--crop-size", "64", "--load-size", "72",
        "--no-validate"]


def refused(parse, argv, phrase, capsys):
    """parse(argv) exits with a usage error of one line that names the flag and says `phrase`."""
    with pytest.raises(SystemExit) as e:
        parse(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert (argv[0] in err or argv[0].replace("_", "-") in err) and phrase in err, err
    assert "unrecognized arguments" not in err, err


# ----------------------------------------------------------------------------------------------------
# train.py: every official option, by what it becomes (a dict of Config values) or its one-line answer

DISPLAY, WANDB, TEST_PY = "no visdom or HTML display", "no wandb logging", "an option of the official test.py"
TRAIN = [
    (["--dataroot", "d"], {"data_root": "d"}),
    (["--name", "r1"], {"name": "r1", "run_dir": "weights/r1"}),
    (["--checkpoints_dir", "ck", "--name", "r1"], {"checkpoints_dir": "ck", "run_dir": "ck/r1"}),
    (["--gpu_ids", "-1"], {"device": "cpu"}),
    (["--gpu_ids", "0"], {"device": "cuda"}),
    (["--gpu_ids", "0,1"], "CUDA_VISIBLE_DEVICES=0,1 torchrun --nproc-per-node 2 train.py"),
    (["--gpu_ids", "2"], "CUDA_VISIBLE_DEVICES=2"),
    (["--gpu_ids", "-1", "--device", "cuda"], "both set this"),
    (["--use_wandb"], WANDB),
    (["--wandb_project_name", "p"], WANDB),
    (["--model", "pix2pix"], {}),
    (["--model", "cycle_gan"], "pix2pix model only"),
    (["--input_nc", "1"], {"input_nc": 1, "output_nc": 3}),
    (["--output_nc", "1"], {"output_nc": 1, "input_nc": 3}),
    (["--input_nc", "4"], "invalid choice"),
    (["--ngf", "32"], {"ngf": 32}),
    (["--ndf", "32"], {"ndf": 32}),
    (["--netD", "pixel"], {"netD": "pixel"}),
    (["--netG", "unet_128"], {"netG": "unet_128"}),
    (["--netG", "unet_512"], "invalid choice: 'unet_512'"),
    (["--n_layers_D", "5"], {"n_layers_D": 5}),
    (["--norm", "instance"], {"norm": "instance"}),
    (["--init_type", "xavier"], {"init_type": "xavier"}),
    (["--init_gain", "0.05"], {"init_gain": 0.05}),
    (["--no_dropout"], {"dropout": 0.0}),
    (["--dataset_mode", "aligned"], {}),
    (["--dataset_mode", "unaligned"], "aligned pairs"),
    (["--direction", "BtoA"], {"direction": "BtoA"}),
    (["--serial_batches"], {"shuffle": False}),
    (["--num_threads", "3"], {"workers": 3}),
    (["--batch_size", "4"], {"batch_size": 4}),
    (["--load_size", "300"], {"load_size": 300}),
    (["--crop_size", "128", "--netG", "unet_128"], {"crop_size": 128, "netG": "unet_128"}),
    (["--max_dataset_size", "5"], {"max_dataset_size": 5}),
    (["--preprocess", "crop"], {"preprocess": "crop"}),
    (["--no_flip"], {"flip": False}),
    (["--display_winsize", "512"], DISPLAY),
    (["--epoch", "latest"], {}),
    (["--epoch", "5"], "continues from RUN_DIR/last.pt"),
    (["--load_iter", "0"], {}),
    (["--load_iter", "3"], "no checkpoint per iteration"),
    (["--verbose"], "prints the resolved config"),
    (["--suffix", "{netG}"], "--name"),
    (["--display_freq", "400"], {"sample_every": 400}),
    (["--display_freq", "5", "--batch_size", "2"], "give a multiple of 2, or --sample-every STEPS"),
    (["--display_ncols", "3"], DISPLAY),
    (["--display_id", "1"], DISPLAY),
    (["--display_id", "0"], {}),
    (["--display_server", "http://localhost"], DISPLAY),
    (["--display_env", "main"], DISPLAY),
    (["--display_port", "8097"], DISPLAY),
    (["--update_html_freq", "1000"], DISPLAY),
    (["--print_freq", "400", "--batch_size", "4"], {"log_every": 100, "batch_size": 4}),
    (["--print_freq", "50", "--log-every", "7"], "both set this"),
    (["--no_html"], {}),
    (["--save_latest_freq", "5000"], {"save_every": 5000}),
    (["--save_epoch_freq", "5"], {"save_epoch_every": 5}),
    (["--save_by_iter"], "not a file per iteration"),
    (["--continue_train"], {"resume": "last"}),
    (["--epoch_count", "1"], {}),
    (["--epoch_count", "3"], "--continue_train"),
    (["--epoch_count", "3", "--continue_train"], {"resume": "last"}),
    (["--phase", "train"], {}),
    (["--phase", "val"], "DATA_ROOT/train"),
    (["--n_epochs", "3"], {"epochs": 3}),
    (["--n_epochs_decay", "4"], {"epochs_decay": 4}),
    (["--beta1", "0.9"], {"beta1": 0.9}),
    (["--lr", "0.001"], {"lr": 0.001}),
    (["--gan_mode", "lsgan"], {"gan_mode": "lsgan"}),
    (["--pool_size", "0"], {}),
    (["--pool_size", "50"], "CycleGAN's"),
    (["--lr_policy", "step"], {"lr_policy": "step"}),
    (["--lr_decay_iters", "7"], {"lr_decay_iters": 7}),
    (["--lambda_L1", "10"], {"lambda_l1": 10.0}),
    (["--results_dir", "r"], TEST_PY),
    (["--aspect_ratio", "1.0"], TEST_PY),
    (["--eval"], TEST_PY),
    (["--num_test", "5"], TEST_PY),
]


@pytest.mark.parametrize("argv, expected", TRAIN, ids=[" ".join(a) for a, _ in TRAIN])
def test_every_official_spelling_in_train(argv, expected, capsys):
    if isinstance(expected, str):
        refused(parse_config, argv, expected, capsys)
        return
    cfg, default = parse_config(argv), Config()
    assert {k: getattr(cfg, k) for k in expected} == expected
    same = {k for k in vars(default) if k not in expected and k not in ("run_dir", "name")}
    assert {k: getattr(cfg, k) for k in same} == {k: getattr(default, k) for k in same}  # nothing else moved


def test_the_train_list_holds_every_official_option():
    names = {n for n, _ in official.catalogue("base", "train", "test")}
    assert {argv[0][2:] for argv, _ in TRAIN} == names
    assert len(names) == 61


def test_help_lists_each_flag_once_and_no_official_spelling(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = capsys.readouterr().out
    flags = {w.strip("[],") for w in text.split() if w.startswith(("--", "[--"))}
    assert {"--checkpoints-dir", "--input-nc", "--output-nc", "--save-epoch-every", "--no-shuffle"} <= flags
    assert not [f for f in flags if "_" in f or f in ("--dataroot", "--lambda-L1", "--n-epochs", "--gpu-ids")]
    listed = [line.split()[0].rstrip(",") for line in text.split("options:")[1].splitlines()
              if line.startswith("  --")]
    assert len(listed) == len(set(listed)) > 50


def test_underscores_work_in_every_command():
    args, _ = predict.parse(["--weights", "w", "--input", "i", "--out", "o", "--max_megapixels", "10"])
    assert args.max_megapixels == 10
    assert evaluate.parser().parse_args(["--weights", "w", "--out", "o", "--data_root", "d"]).data_root == "d"


# ----------------------------------------------------------------------------------------------------
# evaluate.py and predict.py: the official test.py's options


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A checkpoints folder with a sat2map run and an official one (empty files: only names matter here)."""
    ck = tmp_path_factory.mktemp("checkpoints")
    for name in ("ours/G.pt", "ours/G_best.pt", "ours/G_epoch3.pt", "theirs/latest_net_G.pth",
                 "theirs/5_net_G.pth", "theirs/iter_100_net_G.pth"):
        (ck / name).parent.mkdir(exist_ok=True)
        (ck / name).touch()
    return ck


def full(command, argv, ck) -> list[str]:
    """argv with the flags the command requires, where argv does not give them another way."""
    argv = [a.replace("CK", str(ck)) for a in argv]
    picked = {"--name", "--checkpoints_dir", "--epoch", "--load_iter", "--weights"} & set(argv)
    extra = ([] if picked else ["--weights", "w.pt"]) + ([] if "--results_dir" in argv else ["--out", "o"])
    if command == "predict" and "--dataroot" not in argv:
        extra += ["--input", "i"]
    return argv + extra


TEST = [
    ("evaluate", ["--dataroot", "d"], {"data_root": "d"}),
    ("evaluate", ["--phase", "test"], {"split": "test"}),
    ("evaluate", ["--results_dir", "r"], {"out": "r"}),
    ("evaluate", ["--num_test", "5"], {"max_pairs": 5}),
    ("evaluate", ["--max_dataset_size", "5"], {"max_pairs": 5}),
    ("evaluate", ["--name", "ours", "--checkpoints_dir", "CK"], {"weights": "CK/ours/G.pt"}),
    ("evaluate", ["--name", "ours", "--checkpoints_dir", "CK", "--epoch", "best"], {"weights": "CK/ours/G_best.pt"}),
    ("evaluate", ["--name", "ours", "--checkpoints_dir", "CK", "--epoch", "3"], {"weights": "CK/ours/G_epoch3.pt"}),
    ("evaluate", ["--name", "theirs", "--checkpoints_dir", "CK"], {"weights": "CK/theirs/latest_net_G.pth"}),
    ("evaluate", ["--name", "theirs", "--checkpoints_dir", "CK", "--epoch", "5"], {"weights": "CK/theirs/5_net_G.pth"}),
    ("evaluate", ["--name", "theirs", "--checkpoints_dir", "CK", "--load_iter", "100"],
     {"weights": "CK/theirs/iter_100_net_G.pth"}),
    ("evaluate", ["--name", "ours", "--checkpoints_dir", "CK", "--epoch", "7"],
     "no G_epoch7.pt or 7_net_G.pth in"),
    ("evaluate", ["--epoch", "3", "--checkpoints_dir", "CK"], "give --name too"),
    ("evaluate", ["--name", "ours", "--weights", "w.pt"], "give one or the other"),
    ("evaluate", ["--gpu_ids", "-1"], {"device": "cpu"}),
    ("evaluate", ["--gpu_ids", "0,1"], "evaluate.py runs on one GPU"),
    ("evaluate", ["--model", "test"], {}),
    ("evaluate", ["--model", "cycle_gan"], "pix2pix generators"),
    ("evaluate", ["--ndf", "8", "--netD", "pixel", "--n_layers_D", "5", "--init_type", "kaiming"], {}),
    ("evaluate", ["--netG", "unet_128", "--ngf", "8", "--norm", "instance", "--no_dropout", "--input_nc", "1"],
     {"expect": {"netG": "unet_128", "ngf": 8, "norm": "instance", "dropout": 0.0, "input_nc": 1}}),
    ("evaluate", ["--dataset_mode", "aligned"], {}),
    ("evaluate", ["--dataset_mode", "single"], "predict.py translates single images"),
    ("evaluate", ["--serial_batches", "--no_flip", "--num_threads", "4"], {}),
    ("evaluate", ["--batch_size", "1"], {}),
    ("evaluate", ["--batch_size", "4"], "one image per call"),
    ("evaluate", ["--load_size", "256", "--crop_size", "256", "--preprocess", "resize_and_crop"], {}),
    ("evaluate", ["--crop_size", "128"], "256x256"),
    ("evaluate", ["--display_id", "0"], {}),
    ("evaluate", ["--display_winsize", "512"], DISPLAY),
    ("evaluate", ["--use_wandb"], WANDB),
    ("evaluate", ["--aspect_ratio", "1.0"], {}),
    ("evaluate", ["--aspect_ratio", "2"], "--scale"),
    ("evaluate", ["--eval", "--direction", "BtoA"], {"eval": True, "direction": "BtoA"}),
    ("evaluate", ["--lr", "0.1"], "an option of the official train.py"),
    ("evaluate", ["--continue_train"], "an option of the official train.py"),
    ("predict", ["--dataroot", "d"], {"input": "d"}),
    ("predict", ["--dataroot", "d", "--phase", "val"], {"input": str(Path("d") / "val")}),
    ("predict", ["--dataset_mode", "aligned"], {"pairs": True}),
    ("predict", ["--dataset_mode", "single"], {"pairs": False}),
    ("predict", ["--dataset_mode", "unaligned"], "single images (single)"),
    ("predict", ["--results_dir", "r"], {"out": "r"}),
    ("predict", ["--name", "ours", "--checkpoints_dir", "CK", "--epoch", "latest"], {"weights": "CK/ours/G.pt"}),
    ("predict", ["--gpu_ids", "0,1"], "CUDA_VISIBLE_DEVICES=0,1 torchrun --nproc-per-node 2 predict.py"),
    ("predict", ["--num_test", "5"], "every image of --input"),
    ("predict", ["--batch_size", "4"], "--batch tiles per pass"),
    ("predict", ["--preprocess", "none"], {}),
    ("predict", ["--load_size", "286"], "at its own size"),
    ("predict", ["--pool_size", "0"], "an option of the official train.py"),
]


def parse_test(command):
    return (evaluate.parser() if command == "evaluate" else predict.parser()).parse_args


@pytest.mark.parametrize("command, argv, expected", TEST, ids=[f"{c} {' '.join(a)}" for c, a, _ in TEST])
def test_official_spellings_in_evaluate_and_predict(command, argv, expected, runs, capsys):
    argv = full(command, argv, runs)
    if isinstance(expected, str):
        refused(parse_test(command), argv, expected, capsys)
        return
    args = parse_test(command)(argv)
    expected = {k: v.replace("CK", str(runs)) if isinstance(v, str) else v for k, v in expected.items()}
    assert {k: getattr(args, k) for k in expected} == expected


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_every_official_option_parses_or_gets_one_line_in_test_commands(command, runs, capsys):
    """Each option of all three official scripts, with a value of the right kind: parsed, or one line that
    names it (never argparse's unrecognized arguments)."""
    for name, takes_value in official.catalogue("base", "train", "test"):
        argv = full(command, [f"--{name}", *(["1"] if takes_value else [])], runs)
        try:
            parse_test(command)(argv)
        except SystemExit as e:
            err = capsys.readouterr().err
            assert e.code == 2 and err.count("\n") == 1 and f"--{name}" in err, err
            assert "unrecognized" not in err, err


def test_architecture_flags_are_checked_against_the_weights(tmp_path):
    from generator import Generator, init_weights
    torch.save({"G": init_weights(Generator(ngf=8)).state_dict(), "config": {"ngf": 8}}, tmp_path / "G.pt")
    _, config = load_generator(tmp_path / "G.pt")
    official.check_generator(config, {"netG": "unet_256", "ngf": 8, "input_nc": 3}, "G.pt")
    with pytest.raises(InputError, match="--netG resnet_9blocks: G.pt holds a generator with netG unet_256"):
        official.check_generator(config, {"netG": "resnet_9blocks"}, "G.pt")
    with pytest.raises(InputError, match="--no_dropout: G.pt holds a generator with dropout 0.5"):
        official.check_generator(config, {"dropout": 0.0}, "G.pt")


# ----------------------------------------------------------------------------------------------------
# An official command line end to end: train, continue, evaluate an epoch, predict


def test_an_official_command_line_trains_continues_evaluates_and_predicts(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_train=2, n_val=1)
    ck = tmp_path / "checkpoints"
    command = ["--dataroot", data, "--name", "maps_pix2pix", "--checkpoints_dir", ck, "--model", "pix2pix",
               "--gpu_ids", "-1", "--netG", "resnet_6blocks", "--ngf", 8, "--ndf", 8, "--norm", "batch",
               "--load_size", 72, "--crop_size", 64, "--direction", "AtoB", "--dataset_mode", "aligned",
               "--pool_size", 0, "--gan_mode", "vanilla", "--lambda_L1", 100, "--n_epochs", 1,
               "--n_epochs_decay", 1, "--print_freq", 1, "--display_freq", 1000, "--save_latest_freq", 1,
               "--save_epoch_freq", 1, "--display_id", 0, "--no_html", "--batch_size", 1, "--num_threads", 0,
               "--lr_policy", "linear", "--no-validate"]
    train_mod.main(parse_config([*map(str, command), "--max-steps", "2"]))  # one epoch, then stopped
    run = ck / "maps_pix2pix"
    assert sorted(p.name for p in run.glob("G*.pt")) == ["G.pt", "G_epoch1.pt"]
    train_mod.main(parse_config([*map(str, command), "--continue_train", "--epoch_count", "2"]))
    assert "resuming from" in capsys.readouterr().out
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["config"]["log_every"] == 1 and ckpt["config"]["save_every"] == 1
    assert [json.loads(r)["step"] for r in open(run / "metrics.jsonl")] == [1, 2, 3, 4]
    assert (run / "G_epoch2.pt").is_file()
    with pytest.raises(InputError, match="typo/last.pt not found; nothing to continue"):  # not a new run
        train_mod.main(parse_config([*map(str, command), "--continue_train", "--name", "typo"]))

    evaluate.main(["--dataroot", str(data), "--phase", "val", "--checkpoints_dir", str(ck), "--name", "maps_pix2pix",
                   "--epoch", "1", "--results_dir", str(tmp_path / "results"), "--model", "pix2pix", "--netG",
                   "resnet_6blocks", "--num_test", "1", "--eval", "--gpu_ids", "-1", "--serial_batches"])
    metrics = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert metrics["weights"] == str(run / "G_epoch1.pt") and metrics["images"] == 1
    assert predict.main(["--dataroot", str(data), "--phase", "val", "--dataset_mode", "aligned", "--checkpoints_dir",
                         str(ck), "--name", "maps_pix2pix", "--results_dir", str(tmp_path / "maps"), "--model",
                         "test", "--eval", "--gpu_ids", "-1"]) == 0
    assert Image.open(tmp_path / "maps" / "000.png").size == (64, 64)  # the A half of a 128 x 64 pair


def test_continue_train_without_a_checkpoint_is_one_line(tmp_path):
    cfg = parse_config(["--dataroot", str(tmp_path), "--checkpoints_dir", str(tmp_path / "ck"), "--continue_train"])
    with pytest.raises(InputError, match=f"{tmp_path / 'ck' / tmp_path.name / 'last.pt'} not found"):
        rundir.find_resume(cfg)


# ----------------------------------------------------------------------------------------------------
# Single-band data: --input-nc / --output-nc 1


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    """Grey A|B pairs and a grey-to-grey run of two steps on them (its folder)."""
    root = tmp_path_factory.mktemp("grey")
    data = make_dataset(root / "data", n_train=2, n_val=1, mode="L")
    train("--data-root", data, "--run-dir", root / "run", "--max-steps", 2, "--input-nc", 1, "--output-nc", 1, *FAST)
    return data, root / "run"


def test_single_band_trains_with_grey_networks_and_resumes_bit_exact(grey, tmp_path):
    data, run = grey
    straight = torch.load(run / "last.pt", weights_only=True)
    assert straight["G"]["stem.1.weight"].shape[1] == 1 and straight["G"]["head.1.weight"].shape[0] == 1
    assert straight["D"]["blocks.0.conv.weight"].shape[1] == 2  # D sees input_nc + output_nc channels
    opts = ["--data-root", data, "--run-dir", tmp_path / "r", "--input-nc", 1, "--output-nc", 1, *FAST]
    train(*opts, "--max-steps", 1)
    resumed = train(*opts, "--max-steps", 2)
    keys = ("G", "D", "opt_G", "opt_D", "sched_G", "sched_D", "rng", "step")
    assert_same({k: straight[k] for k in keys}, {k: resumed[k] for k in keys})
    opts[opts.index("--output-nc") + 1] = 3
    with pytest.raises(InputError, match="--output-nc 1 in the checkpoint, 3 now"):
        train(*opts, "--max-steps", 3)


def test_checkpoints_from_before_the_channel_counts_mean_three():
    old = {"config": {"netG": "unet_256"}}  # no input_nc / output_nc
    rundir.check_architecture(old, Config(), "old.pt")
    with pytest.raises(InputError, match="--input-nc 3 in the checkpoint, 1 now"):
        rundir.check_architecture(old, Config(input_nc=1), "old.pt")


def test_grey_halves_decode_alike_on_the_cached_and_the_pil_path(tmp_path):
    import cache
    pairs = [dataset.Pair(str(i), make_ab(tmp_path / f"{i}.png", seed=i), None) for i in range(2)]
    channels = dataset.pair_channels("BtoA", 1, 3)  # A (RGB) is the output here, B (grey) the input
    assert channels == (3, 1)
    x = dataset.decode_pair(pairs[0], 64, channels)
    b_half = Image.open(pairs[0].a).crop((64, 0, 128, 64)).convert("L").resize((64, 64), Image.BICUBIC)
    assert x.shape == (4, 64, 64) and np.array_equal(x[3].numpy(), np.asarray(b_half))
    plan = dataset.jitter_plan(2, 0, 0, 64, 48, True)
    cached = cache.CachedPairs(pairs, 64, tmp_path / "c", crop=48, channels=channels)
    pil = dataset.PILPairs(pairs, 64, 48, channels=channels)
    assert torch.equal(cached.batch(plan, 48), torch.stack([pil[tuple(r)] for r in plan]))
    rgb = cache.CachedPairs(pairs, 64, tmp_path / "c", crop=48)  # its own file: the grey one is not reused
    assert rgb.pixels.shape[1] == 6 and rgb.path != cached.path


def test_single_band_evaluates_without_the_colour_classes(grey, tmp_path):
    data, run = grey
    evaluate.main(["--weights", str(run / "G.pt"), "--data-root", str(data), "--out", str(tmp_path / "e"), "--eval"])
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["images"] == 1 and 0 < metrics["l1"] < 2 and not any("iou" in k for k in metrics)
    assert Image.open(tmp_path / "e" / "grid_triplets.png").mode == "RGB"


def grey_tif(path, data, nodata=None):
    with rasterio.open(path, "w", driver="GTiff", count=1, height=data.shape[0], width=data.shape[1],
                       dtype=data.dtype.name, crs="EPSG:32633", transform=from_origin(500000, 4000000, 0.5, 0.5),
                       nodata=nodata) as dst:
        dst.write(data[None])
    return path


def test_single_band_geotiff_in_gives_single_band_geotiff_out_on_the_same_grid(grey, tmp_path):
    _, run = grey
    G, _ = load_generator(run / "G.pt")
    (tmp_path / "in").mkdir()
    data = np.random.default_rng(0).integers(1, 256, (200, 300), dtype=np.uint8)
    grey_tif(tmp_path / "in" / "pan.tif", data)
    masked = data.copy()
    masked[:40, :50] = 0
    grey_tif(tmp_path / "in" / "sar.tif", masked, nodata=0)
    assert predict.main(["--weights", str(run / "G.pt"), "--input", str(tmp_path / "in"), "--out",
                         str(tmp_path / "out"), "--amp", "off", "--seed", "3", "--device", "cpu"]) == 0
    with rasterio.open(tmp_path / "in" / "pan.tif") as src, rasterio.open(tmp_path / "out" / "pan.tif") as out:
        assert (out.count, out.shape, out.crs, out.transform) == (1, src.shape, src.crs, src.transform)
        got = out.read(1)
    x = torch.from_numpy(data).float()[None, None] / 127.5 - 1
    assert np.array_equal(got, cog.to_uint8(tiles.translate(G, x, seed=3)[0])[0])  # paper mode: exact
    with rasterio.open(tmp_path / "out" / "sar.tif") as out:
        mask = out.read_masks(1)
    assert out.count == 1 and not mask[:40, :50].any() and mask[40:].all()


def test_grey_raster_parts_join_into_the_one_process_output(grey, tmp_path):
    _, run = grey
    G, _ = load_generator(run / "G.pt")
    path = grey_tif(tmp_path / "tall.tif", np.random.default_rng(1).integers(0, 256, (600, 200), dtype=np.uint8))
    args, opts = predict.parse(["--weights", str(run / "G.pt"), "--input", str(path), "--out", str(tmp_path),
                                "--amp", "off"])
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    whole = raster.predict_file(G, path, tmp_path / "one", opts, progress=False)
    for k in range(2):
        raster.predict_file(G, path, tmp_path / "two", opts, progress=False, part=(k, 2))
    joined = parts.assemble(path, tmp_path / "two", opts, 2, 1)
    with rasterio.open(whole) as a, rasterio.open(joined) as b:
        assert a.count == b.count == 1 and np.array_equal(a.read(), b.read())


def test_grey_picture_in_grey_picture_out_and_a_multiband_raster_needs_bands(grey, tmp_path, capsys):
    _, run = grey
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (90, 130), dtype=np.uint8)).save(tmp_path / "in" / "p.png")
    rgb = np.random.default_rng(3).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    with rasterio.open(tmp_path / "in" / "rgb.tif", "w", driver="GTiff", count=3, height=64, width=64,
                       dtype="uint8", crs="EPSG:32633", transform=from_origin(0, 0, 1, 1)) as dst:
        dst.write(rgb)
    weights = str(run / "G.pt")
    assert predict.main(["--weights", weights, "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                         "--eval"]) == 1
    out = Image.open(tmp_path / "o" / "p.png")
    assert (out.mode, out.size) == ("L", (130, 90))
    assert "rgb.tif: 3 data bands, and the generator takes one (grey): pass --bands B" in capsys.readouterr().err
    assert predict.main(["--weights", weights, "--input", str(tmp_path / "in" / "rgb.tif"), "--out",
                         str(tmp_path / "o"), "--eval", "--bands", "2"]) == 0
    with rasterio.open(tmp_path / "o" / "rgb.tif") as ds:
        assert ds.count == 1


def test_grey_generator_exports_with_one_input_channel(grey, tmp_path, capsys):
    _, run = grey
    export.main(["--weights", str(run / "G.pt"), "--out", str(tmp_path / "g.onnx"), "--device", "cpu"])
    assert "on a 2x1x256x512 input" in capsys.readouterr().out
    import onnx
    shape = onnx.load(tmp_path / "g.onnx").graph.input[0].type.tensor_type.shape
    assert shape.dim[1].dim_value == 1
