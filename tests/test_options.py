"""The official pix2pix options: architectures against official-layout modules, official files of every
generator, losses, LR policies, --preprocess, and training/resuming under non-default options."""
import functools

import pytest
import torch
import torch.nn as nn

import dataset
import generator
from cli import InputError
from conftest import assert_same, make_ab, make_dataset, train
from discriminator import define_D
from generator import define_G, init_weights, load_generator
from losses import gradient_penalty, make_scheduler

STATE = ("G", "D", "opt_G", "opt_D", "sched_G", "sched_D", "rng", "step")


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------------------------------
# Official-layout modules, written from the official description (networks.py of
# junyanz/pytorch-CycleGAN-and-pix2pix): module lists in `model`, bias only with InstanceNorm


def official_norm(kind):
    if kind == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if kind == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return lambda c: nn.Identity()


class OfficialUnetBlock(nn.Module):
    def __init__(self, outer, inner, in_c=None, sub=None, outermost=False, innermost=False, norm="batch",
                 dropout=False):
        super().__init__()
        bias, nl = norm == "instance", official_norm(norm)
        down = nn.Conv2d(in_c or outer, inner, 4, 2, 1, bias=bias)
        if outermost:
            layers = [down, sub, nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias), nl(outer)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down, nl(inner), sub, nn.ReLU(True),
                      nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias), nl(outer)]
            layers += [nn.Dropout(0.5)] if dropout else []
        self.outermost, self.model = outermost, nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class OfficialUnet(nn.Module):
    def __init__(self, num_downs, ngf=64, norm="batch", dropout=True):
        super().__init__()
        b = OfficialUnetBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            b = OfficialUnetBlock(ngf * 8, ngf * 8, sub=b, norm=norm, dropout=dropout)
        for outer, inner in ((4, 8), (2, 4), (1, 2)):
            b = OfficialUnetBlock(ngf * outer, ngf * inner, sub=b, norm=norm)
        self.model = OfficialUnetBlock(3, ngf, in_c=3, sub=b, outermost=True, norm=norm)

    def forward(self, x):
        return self.model(x)


class OfficialResnetBlock(nn.Module):
    def __init__(self, dim, norm, dropout):
        super().__init__()
        bias, nl = norm == "instance", official_norm(norm)
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), nl(dim), nn.ReLU(True)]
        layers += [nn.Dropout(0.5)] if dropout else []
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), nl(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class OfficialResnet(nn.Module):
    def __init__(self, n_blocks, ngf=64, norm="batch", dropout=True):
        super().__init__()
        bias, nl = norm == "instance", official_norm(norm)
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=bias), nl(ngf), nn.ReLU(True)]
        for m in (1, 2):
            layers += [nn.Conv2d(ngf * m, ngf * m * 2, 3, 2, 1, bias=bias), nl(ngf * m * 2), nn.ReLU(True)]
        layers += [OfficialResnetBlock(ngf * 4, norm, dropout) for _ in range(n_blocks)]
        for m in (4, 2):
            layers += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, 2, 1, output_padding=1, bias=bias),
                       nl(ngf * m // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def official_n_layers_D(n_layers, ndf=64, norm="batch"):
    bias, nl = norm == "instance", official_norm(norm)
    layers, mult = [nn.Conv2d(6, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)], 1
    for n in range(1, n_layers + 1):
        prev, mult = mult, min(2 ** n, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1, 1, bias=bias), nl(ndf * mult),
                   nn.LeakyReLU(0.2, True)]
    return nn.Sequential(*layers, nn.Conv2d(ndf * mult, 1, 4, 1, 1))


def official_pixel_D(ndf=64, norm="batch"):
    bias, nl = norm == "instance", official_norm(norm)
    return nn.Sequential(nn.Conv2d(6, ndf, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(ndf, ndf * 2, 1, bias=bias),
                         nl(ndf * 2), nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * 2, 1, 1, bias=bias))


def official_G(netG, ngf, norm, dropout=True):
    if netG.startswith("unet"):
        return OfficialUnet(generator.UNET_DOWNS[netG], ngf, norm, dropout)
    return OfficialResnet(generator.RESNET_BLOCKS[netG], ngf, norm, dropout)


# ----------------------------------------------------------------------------------------------------
# Architectures


def test_parameter_counts_equal_the_official_architectures():
    assert n_params(define_G("resnet_9blocks", norm="instance")) == n_params(OfficialResnet(9, norm="instance")) \
        == 11_378_179
    assert n_params(define_G("unet_128")) == n_params(OfficialUnet(7)) == 41_828_995
    assert n_params(define_G("unet_256")) == n_params(OfficialUnet(8)) == 54_413_955
    assert n_params(define_D("n_layers", n_layers_D=5)) == n_params(official_n_layers_D(5)) == 11_159_361
    assert n_params(define_D("basic")) == n_params(official_n_layers_D(3)) == 2_768_705
    for norm in ("batch", "instance", "none"):
        assert n_params(define_G("resnet_6blocks", 16, norm)) == n_params(OfficialResnet(6, 16, norm))
        assert n_params(define_G("unet_256", 16, norm)) == n_params(OfficialUnet(8, 16, norm))
        assert n_params(define_D("pixel", 16, norm=norm)) == n_params(official_pixel_D(16, norm))
        assert n_params(define_D("n_layers", 16, 2, norm)) == n_params(official_n_layers_D(2, 16, norm))


@pytest.mark.parametrize("netG", generator.NETG)
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_official_file_of_every_generator_loads_by_itself_and_matches(tmp_path, netG, norm):
    """An official latest_net_G.pth (with and without module.) is recognised from its keys alone and
    gives the official module's output; the ResNet with dropout (batch) and without (instance)."""
    torch.manual_seed(0)
    dropout = norm == "batch"
    official = official_G(netG, 8, norm, dropout)
    for m in official.modules():
        if isinstance(m, nn.BatchNorm2d):  # away from the identity, so a mis-mapped norm shows
            nn.init.normal_(m.weight, 1, 0.2)
            nn.init.normal_(m.bias, 0, 0.2)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2)
    official.eval()  # important! running statistics, no dropout, in both
    side = 64 if netG.startswith("resnet") else generator.size_multiple(netG)  # the least each accepts
    x = torch.rand(1, 3, side, side) * 2 - 1
    with torch.no_grad():
        ref = official(x)
    for prefix in ("", "module."):
        path = tmp_path / f"{prefix or 'plain'}_net_G.pth"
        torch.save({prefix + k: v for k, v in official.state_dict().items()}, path)
        G, config = load_generator(path)
        assert (config["netG"], config["norm"], config["ngf"]) == (netG, norm, 8)
        with torch.no_grad():
            assert torch.allclose(G.eval()(x), ref, atol=1e-5)
    drops = sum(isinstance(m, nn.Dropout) for m in G.modules())
    official_drops = sum(isinstance(m, nn.Dropout) for m in official.modules())
    assert drops == official_drops if netG.startswith("resnet") else drops == generator.UNET_DOWNS[netG] - 5


def test_architecture_comes_from_the_checkpoint_and_old_ones_are_unet_256(tmp_path):
    G = define_G("resnet_6blocks", 8, "none", 0.0)
    torch.save({"G": G.state_dict(), "config": {"netG": "resnet_6blocks", "ngf": 8, "norm": "none",
                                                "dropout": 0.0}}, tmp_path / "G.pt")
    loaded, config = load_generator(tmp_path / "G.pt")
    assert type(loaded) is generator.ResnetGenerator and config["norm"] == "none"
    torch.save({"G": define_G("unet_256", 8).state_dict(), "config": {"ngf": 8}}, tmp_path / "old.pt")
    old, config = load_generator(tmp_path / "old.pt")  # from before --netG
    assert type(old) is generator.Generator and config["netG"] == "unet_256"


def test_init_types_follow_the_official_rules():
    def weight(kind, gain, c_in=64, c_out=64, k=3):
        torch.manual_seed(0)
        return init_weights(nn.Sequential(nn.Conv2d(c_in, c_out, k)), kind, gain)[0].weight

    assert weight("normal", 0.05).std().item() == pytest.approx(0.05, rel=0.02)
    assert weight("xavier", 0.5).std().item() == pytest.approx(0.5 * (2 / (2 * 64 * 9)) ** 0.5, rel=0.02)
    assert weight("kaiming", 0.5).std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.02)  # no gain
    W = weight("orthogonal", 2.0, 16, 16, 1).view(16, 16)
    assert torch.allclose(W @ W.T, 4 * torch.eye(16), atol=1e-4)
    bn = init_weights(nn.BatchNorm2d(4096), "xavier", 0.1).weight
    assert bn.mean().item() == pytest.approx(1, abs=0.01) and bn.std().item() == pytest.approx(0.1, rel=0.05)


# ----------------------------------------------------------------------------------------------------
# Losses and schedules


def test_gradient_penalty_of_a_linear_critic_is_known():
    """D(a, b) = <w, (a, b)>: its input gradient is w everywhere, so the penalty is 10 (||w|| - 1)^2."""
    w = torch.randn(1, 6, 4, 4)

    def D(a, b):
        return (torch.cat([a, b], 1) * w).sum((1, 2, 3))

    a, b, f = (torch.rand(3, 3, 4, 4) for _ in range(3))
    assert gradient_penalty(D, a, b, f).item() == pytest.approx(10 * (w.norm().item() - 1) ** 2, rel=1e-4)
    assert gradient_penalty(D, a, b, f, weight=0.5).item() == pytest.approx(0.5 * (w.norm().item() - 1) ** 2, rel=1e-4)


def lrs(policy, epochs, **kw):
    from config import Config
    cfg = Config(lr_policy=policy, epochs=4, epochs_decay=4, lr_decay_iters=3, **kw)
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, out = make_scheduler(opt, cfg), []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        if policy == "plateau":
            sched.observe(torch.tensor(1.0))  # a loss that never improves
        opt.step()
        sched.step()
    return out


def test_lr_policies():
    assert lrs("linear", 8) == pytest.approx([1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])  # the paper's, as before
    assert lrs("step", 7) == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])
    assert lrs("cosine", 5) == pytest.approx([1, 0.8535534, 0.5, 0.1464466, 0], abs=1e-6)
    assert lrs("plateau", 9) == pytest.approx([1] * 7 + [0.2] * 2)  # 1 best + 5 patient epochs, then x0.2


# ----------------------------------------------------------------------------------------------------
# --preprocess


def test_preprocess_sizes_follow_the_official_modes(tmp_path):
    pair = dataset.Pair("x", make_ab(tmp_path / "x.png", w=2 * 300, h=200), None)  # halves 300 x 200
    size = functools.partial(dataset.preprocess_size, pair, load=286, crop=256, multiple=256)
    assert size("resize_and_crop") == ((286, 286), (256, 256))
    assert size("scale_width_and_crop") == ((256, 286), (256, 256))  # height max(286 * 200/300, 256)
    assert size("scale_width") == ((256, 256), (256, 256))  # then rounded to the U-Net's 256
    assert size("none") == ((256, 256), (256, 256))
    assert dataset.preprocess_size(pair, "none", 286, 256, 4) == ((200, 300), (200, 300))
    with pytest.raises(InputError, match="smaller than --crop-size 256"):
        size("crop")
    assert dataset.preprocess_size(pair, "crop", 286, 128, 128) == ((200, 300), (128, 128))


def test_crop_mode_cache_and_pil_give_the_same_pixels(tmp_path):
    import cache
    pairs = [dataset.Pair(str(i), make_ab(tmp_path / f"{i}.png", w=2 * 96, h=80, seed=i), None) for i in range(3)]
    size, crop = dataset.preprocess_plan(pairs, "crop", 286, 64, 4)
    assert (size, crop) == ((80, 96), (64, 64))
    plan = dataset.jitter_plan(3, 0, 0, size, crop, True)
    assert plan[:, 1].max() <= 16 and plan[:, 2].max() <= 32
    pil = dataset.PILPairs(pairs, size, crop)
    cached = cache.CachedPairs(pairs, size, tmp_path / "c", crop=crop)
    assert torch.equal(cached.batch(plan, crop), torch.stack([pil[tuple(r)] for r in plan]))
    varying = pairs + [dataset.Pair("w", make_ab(tmp_path / "w.png", w=2 * 70, h=90), None)]
    assert dataset.preprocess_plan(varying, "crop", 286, 64, 4) == (None, None)


def test_differing_sizes_train_one_by_one_and_refuse_batches(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=2)
    make_ab(data / "train" / "009.png", w=2 * 96, h=72)
    args = ["--data-root", data, "--netG", "resnet_6blocks", "--crop-size", 64, "--preprocess", "none",
            "--max-steps", 3, "--no-validate", "--workers", 0]
    ckpt = train(*args, "--run-dir", tmp_path / "r")
    assert ckpt["step"] == 3 and ckpt["data"]["pairs"] == 3
    with pytest.raises(InputError, match="differing sizes"):
        train(*args, "--run-dir", tmp_path / "b", "--batch-size", 2)


# ----------------------------------------------------------------------------------------------------
# Training under the options


@pytest.mark.parametrize("options", [
    ["--netG", "unet_128", "--crop-size", 128, "--load-size", 140, "--netD", "pixel", "--norm", "none",
     "--init-type", "xavier", "--gan-mode", "lsgan", "--lr-policy", "step", "--lr-decay-iters", 1,
     "--max-dataset-size", 2],
    ["--netG", "resnet_9blocks", "--crop-size", 64, "--load-size", 72, "--netD", "n_layers", "--n-layers-D", 2,
     "--init-type", "kaiming", "--gan-mode", "wgangp", "--no-dropout", "--preprocess", "scale_width_and_crop"],
])
def test_options_train_and_validate(tmp_path, options):
    data = make_dataset(tmp_path / "data", n_train=2 + ("--max-dataset-size" in options), n_val=1)
    ckpt = train("--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 2, *options)
    assert ckpt["step"] == 2 and ckpt["sched_G"]["last_epoch"] == 1 and ckpt["data"]["pairs"] == 2
    G, config = load_generator(tmp_path / "r" / "G_best.pt")
    assert config["netG"] == options[1] and all(torch.isfinite(p).all() for p in G.parameters())


def test_non_default_options_resume_bit_exact_and_refuse_another_architecture(tmp_path):
    """resnet_6blocks + instance norm + WGAN-GP + plateau, stopped in mid-epoch (the plateau's running
    L1 sum is in its state) and resumed across an epoch end, against an uninterrupted run."""
    data = make_dataset(tmp_path / "data", n_train=2)
    opts = ["--data-root", data, "--netG", "resnet_6blocks", "--norm", "instance", "--gan-mode", "wgangp",
            "--lr-policy", "plateau", "--crop-size", 64, "--load-size", 72, "--no-validate"]
    straight = train(*opts, "--run-dir", tmp_path / "a", "--max-steps", 4)
    first = train(*opts, "--run-dir", tmp_path / "b", "--max-steps", 3)
    assert first["sched_G"]["l1_count"] == 1
    resumed = train(*opts, "--run-dir", tmp_path / "b", "--max-steps", 4)
    assert resumed["sched_G"]["last_epoch"] == 2
    assert_same({k: straight[k] for k in STATE}, {k: resumed[k] for k in STATE})
    opts[opts.index("resnet_6blocks")] = "resnet_9blocks"
    with pytest.raises(InputError, match="--netG resnet_6blocks in the checkpoint, resnet_9blocks now"):
        train(*opts, "--run-dir", tmp_path / "b", "--max-steps", 6)


def test_cosine_and_another_discriminator_under_torchrun(tmp_path):
    from test_distributed import torchrun
    data = make_dataset(tmp_path / "data", n_train=4)
    out = torchrun("--data-root", data, "--run-dir", tmp_path / "r", "--max-steps", 3, "--netG", "resnet_6blocks",
                   "--crop-size", 64, "--load-size", 72, "--netD", "n_layers", "--n-layers-D", 2, "--gan-mode",
                   "wgangp", "--lr-policy", "cosine", "--epochs", 2, "--epochs-decay", 0, "--no-validate")
    assert out.count("done at step 3") == 1
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert ckpt["config"]["netD"] == "n_layers" and ckpt["sched_G"]["last_epoch"] == 1
    assert ckpt["opt_G"]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # half way down the cosine


# ----------------------------------------------------------------------------------------------------
# Pretrained generators by name


def test_every_official_pretrained_name_downloads_with_its_direction(tmp_path, monkeypatch):
    from test_data import Server
    import io
    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    torch.save(OfficialUnet(8, 8).state_dict(), buf)  # the official layout, as on the server
    with Server(buf.getvalue()) as server:
        monkeypatch.setenv(generator.URL_VARIABLE, server.url.rsplit("/", 1)[0])
        G, config = load_generator("facades_label2photo")
    assert config["direction"] == "BtoA" and config["netG"] == "unet_256"
    assert (tmp_path / "weights" / "facades_label2photo.pth").read_bytes() == buf.getvalue()
    assert set(generator.PRETRAINED) == {"sat2map", "map2sat", "facades_label2photo", "edges2shoes",
                                         "edges2handbags", "day2night"}
