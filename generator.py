"""Generators of pix2pix: the paper's U-Net-256 (Isola et al. 2017, arXiv 1611.07004, appendix 6.1.1)
and the other --netG choices of the official code (unet_128, resnet_9blocks, resnet_6blocks).

    python -c "from generator import define_G; print(define_G('resnet_9blocks'))"

The layer order, bias settings and dropout placement follow the official pix2pix PyTorch code, so its
released weights and its latest_net_G.pth files load into these modules through `load_generator`,
which recognises the architecture from the keys (see `recognise`, `official_to_ours`).
"""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

import smallconv
from cli import InputError
from download import DownloadError, fetch
from durable import made_folder, replace_durably
from utils import safe_load

NUM_DOWNS = 8  # 256 -> 1 pixel at the bottleneck
# --netG choices of the official code: U-Net levels, or residual blocks of the ResNet generator
UNET_DOWNS = {"unet_256": 8, "unet_128": 7}
RESNET_BLOCKS = {"resnet_9blocks": 9, "resnet_6blocks": 6}
NETG = (*UNET_DOWNS, *RESNET_BLOCKS)
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")


def size_multiple(netG: str) -> int:
    """Image sides netG accepts are multiples of this: a U-Net halves them once per level; the ResNet
    generator twice, and its transposed convolutions restore exactly the size it halved."""
    return 2 ** UNET_DOWNS[netG] if netG in UNET_DOWNS else 4


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm as in the paper; InstanceNorm (no affine, no running stats) or none as alternatives."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"--norm must be 'batch', 'instance' or 'none', got {kind!r}")


def conv_bias(norm: str) -> bool:
    """A conv followed by BatchNorm needs no bias; InstanceNorm has no affine, so it keeps one. With
    no norm the official code leaves the bias out too (it tests for InstanceNorm only): so do we, so
    that its files load."""
    return norm == "instance"


class Down(nn.Module):
    """Encoder block: LeakyReLU(0.2) -> Conv 4x4 stride 2 -> norm. Halves H and W."""

    def __init__(self, c_in, c_out, norm, act=True, use_norm=True):
        super().__init__()
        self.act = nn.LeakyReLU(0.2, True) if act else nn.Identity()
        # nn.Conv2d, run as a matrix product where that is faster: the inner levels' small maps in bf16 on a CPU
        self.conv = smallconv.Conv2d(c_in, c_out, 4, 2, 1, bias=conv_bias(norm))
        self.norm = norm_layer(norm, c_out) if use_norm else nn.Identity()

    def forward(self, x):
        return self.norm(self.conv(self.act(x)))


class Up(nn.Module):
    """Decoder block: ReLU -> ConvTranspose 4x4 stride 2 -> norm [-> dropout]. Doubles H and W."""

    def __init__(self, c_in, c_out, norm, dropout=0.0):
        super().__init__()
        self.act = nn.ReLU(True)
        self.conv = smallconv.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=conv_bias(norm))  # as Down's
        self.norm = norm_layer(norm, c_out)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.norm(self.conv(self.act(x))))


class Generator(nn.Module):
    """U-Net with skips between mirrored layers; input and output in [-1, 1]. num_downs 8 is the
    paper's U-Net-256, 7 the official unet_128. The innermost blocks keep the names down8/up1 and the
    outermost up8 whatever the depth, so that checkpoints of every depth share one naming."""

    def __init__(self, in_channels=3, out_channels=3, ngf=64, norm="batch", dropout=0.5, num_downs=NUM_DOWNS):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        w = [ngf, ngf * 2, ngf * 4] + [ngf * 8] * (num_downs - 3)  # encoder widths, 64-128-256-512-...-512
        self.down1 = Down(in_channels, w[0], norm, act=False, use_norm=False)
        self.downs = nn.ModuleList(Down(w[i - 1], w[i], norm) for i in range(1, num_downs - 1))
        self.down8 = Down(w[-2], w[-1], norm, use_norm=False)  # 1x1 bottleneck: BatchNorm is undefined
        # The official code puts dropout in the decoder blocks of width 8 * ngf after the innermost one
        # (levels 4 and deeper: three for unet_256, two for unet_128); we keep that placement so its
        # released weights behave identically in the paper's test-time mode.
        self.up1 = Up(w[-1], w[-2], norm)
        self.ups = nn.ModuleList(
            Up(w[i] * 2, w[i - 1], norm, dropout if i >= 4 else 0.0) for i in range(num_downs - 2, 0, -1)
        )
        self.up8 = nn.Sequential(
            nn.ReLU(True), nn.ConvTranspose2d(w[0] * 2, out_channels, 4, 2, 1), nn.Tanh()
        )

    def forward(self, x):  # (N, 3, H, W), H and W multiples of 2 ** num_downs
        skips = [self.down1(x)]  # (N, 64, H/2, W/2)
        for down in self.downs:
            skips.append(down(skips[-1]))  # ... down to (N, 512, H/128, W/128) for unet_256
        h = self.up1(self.down8(skips[-1]))  # (N, 512, 1, 1) -> (N, 512, 2, 2) at 256 px
        for up in self.ups:
            h = up(torch.cat([skips.pop(), h], 1))  # skip first, as in the official layout
        return self.up8(torch.cat([skips.pop(), h], 1))  # (N, 3, H, W) in [-1, 1]


class ConvNormReLU(nn.Module):
    """Conv (or ConvTranspose with transpose=True) -> norm -> ReLU; kernel 3, stride 2: halves or
    doubles H and W."""

    def __init__(self, c_in, c_out, norm, transpose=False):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, output_padding=1, bias=conv_bias(norm)) \
            if transpose else nn.Conv2d(c_in, c_out, 3, 2, 1, bias=conv_bias(norm))
        self.norm = norm_layer(norm, c_out)
        self.act = nn.ReLU(True)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class ResnetBlock(nn.Module):
    """x + (reflect pad -> conv 3x3 -> norm -> ReLU [-> dropout] -> reflect pad -> conv 3x3 -> norm)."""

    def __init__(self, channels, norm, dropout=0.0):
        super().__init__()
        self.pad1, self.pad2 = nn.ReflectionPad2d(1), nn.ReflectionPad2d(1)
        self.conv1 = nn.Conv2d(channels, channels, 3, bias=conv_bias(norm))
        self.norm1 = norm_layer(norm, channels)
        self.act = nn.ReLU(True)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, bias=conv_bias(norm))
        self.norm2 = norm_layer(norm, channels)

    def forward(self, x):  # (N, C, H, W) -> same
        h = self.drop(self.act(self.norm1(self.conv1(self.pad1(x)))))
        return x + self.norm2(self.conv2(self.pad2(h)))


class ResnetGenerator(nn.Module):
    """The official ResNet generator (Johnson et al. 2016): c7s1-64, d128, d256, n residual blocks at
    256 channels, u128, u64, c7s1-3, tanh. Input and output in [-1, 1], sides multiples of 4."""

    def __init__(self, in_channels=3, out_channels=3, ngf=64, norm="batch", dropout=0.5, n_blocks=9):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stem = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=conv_bias(norm)),
                                  norm_layer(norm, ngf), nn.ReLU(True))
        self.down1 = ConvNormReLU(ngf, ngf * 2, norm)
        self.down2 = ConvNormReLU(ngf * 2, ngf * 4, norm)
        self.blocks = nn.Sequential(*(ResnetBlock(ngf * 4, norm, dropout) for _ in range(n_blocks)))
        self.up1 = ConvNormReLU(ngf * 4, ngf * 2, norm, transpose=True)
        self.up2 = ConvNormReLU(ngf * 2, ngf, norm, transpose=True)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh())

    def forward(self, x):  # (N, 3, H, W), H and W multiples of 4
        h = self.down2(self.down1(self.stem(x)))  # (N, 64, H, W) -> (N, 128, H/2, W/2) -> (N, 256, H/4, W/4)
        h = self.up2(self.up1(self.blocks(h)))  # (N, 256, H/4, W/4) -> (N, 128, H/2, W/2) -> (N, 64, H, W)
        return self.head(h)  # (N, 3, H, W) in [-1, 1]


def define_G(netG="unet_256", ngf=64, norm="batch", dropout=0.5, in_channels=3, out_channels=3) -> nn.Module:
    """The generator --netG names, uninitialised (see init_weights)."""
    if netG in UNET_DOWNS:
        return Generator(in_channels, out_channels, ngf, norm, dropout, UNET_DOWNS[netG])
    if netG in RESNET_BLOCKS:
        return ResnetGenerator(in_channels, out_channels, ngf, norm, dropout, RESNET_BLOCKS[netG])
    raise ValueError(f"--netG must be one of {', '.join(NETG)}, got {netG!r}")


def channels(G) -> tuple[int, int]:
    """(input, output) channels of a generator, or of anything that records them as its in_channels
    and out_channels; 3 and 3 where nothing says otherwise."""
    return getattr(G, "in_channels", 3), getattr(G, "out_channels", 3)


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Conv weights from --init-type (the paper: N(0, 0.02)), BatchNorm scale N(1, gain), biases 0,
    as the official code does for each type (kaiming ignores the gain there too)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            if init_type == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight, gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                nn.init.orthogonal_(m.weight, gain)
            else:
                raise ValueError(f"--init-type must be one of {', '.join(INIT_TYPES)}, got {init_type!r}")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net


# ----------------------------------------------------------------------------------------------------
# Test-time behaviour of BatchNorm and dropout


@contextmanager
def inference(G: nn.Module, paper: bool = True, seed: int = 0):
    """Run G for inference, restoring every module's mode and buffers afterwards.

    paper=True is the paper's test-time setting: BatchNorm normalises with the statistics of the test
    batch and dropout stays on (seeded here, so the result is reproducible); running statistics are
    neither used nor updated and the caller's RNG streams are untouched. paper=False (`--eval`) uses
    the running statistics and no dropout, which is deterministic without a seed.
    """
    modes = {m: m.training for m in G.modules()}
    hidden = {}  # BatchNorm -> its running buffers, out of sight while the paper mode runs
    G.eval()  # important! no module may update running statistics here
    devices = [p.device for p in G.parameters() if p.device.type == "cuda"][:1]
    try:
        if paper:
            for m in G.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                    # In eval mode BatchNorm normalises with its running buffers whenever they exist;
                    # without them it uses the batch's own statistics and updates nothing.
                    hidden[m] = (m.running_mean, m.running_var)
                    m.running_mean = m.running_var = None
                elif isinstance(m, nn.Dropout):
                    m.train()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            yield G
    finally:
        for m, (mean, var) in hidden.items():
            m.running_mean, m.running_var = mean, var
        for m, training in modes.items():
            m.train(training)


def dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of square images (N, C, H, W), k = 0 the identity; inverse
    undoes it."""
    if inverse:
        x = torch.rot90(x, -(k % 4), (-2, -1))
        return x.flip(-1) if k >= 4 else x
    return torch.rot90(x.flip(-1) if k >= 4 else x, k % 4, (-2, -1))


def tta(G: nn.Module, x: torch.Tensor, separate: bool = False) -> torch.Tensor:
    """G's output averaged over the 8 flips/rotations of x (test-time augmentation), in float32.
    separate: every image of every variant is its own batch (the paper mode's BatchNorm statistics)."""
    out = 0
    for k in range(8):
        xk = dihedral(x, k)
        yk = torch.cat([G(t[None]) for t in xk]) if separate else G(xk)
        out = out + dihedral(yk.float(), k, inverse=True)
    return out / 8


# ----------------------------------------------------------------------------------------------------
# The official pix2pix checkpoint layouts (UnetGenerator and ResnetGenerator of
# junyanz/pytorch-CycleGAN-and-pix2pix), and recognising an architecture from a state dict's keys


def official_to_ours(num_downs: int = NUM_DOWNS) -> dict:
    """Map of official U-Net key prefixes to ours, e.g. 'model.model.1.model.1.' -> 'downs.0.conv.'.

    The official net nests one UnetSkipConnectionBlock per level in `model.model`; level k >= 1 sits at
    'model.model.1.model.' + '3.model.' * (k - 1). Inside a middle level the list is
    [LeakyReLU, down conv, down norm, inner level, ReLU, up conv, up norm, (dropout)]; the innermost
    level is [LeakyReLU, down conv, ReLU, up conv, up norm]; the outermost is [down conv, level 1,
    ReLU, up conv, Tanh].
    """
    inner = num_downs - 1
    mapping = {"model.model.0.": "down1.conv.", "model.model.3.": "up8.1."}
    for k in range(1, num_downs):
        p = "model.model.1.model." + "3.model." * (k - 1)
        up = "up1" if k == inner else f"ups.{inner - 1 - k}"
        if k == inner:
            mapping.update({p + "1.": "down8.conv.", p + "3.": f"{up}.conv.", p + "4.": f"{up}.norm."})
        else:
            mapping.update({p + "1.": f"downs.{k - 1}.conv.", p + "2.": f"downs.{k - 1}.norm.",
                            p + "5.": f"{up}.conv.", p + "6.": f"{up}.norm."})
    return mapping


def official_resnet_to_ours(n_blocks: int, dropout: bool) -> dict:
    """Map of official ResNet key prefixes to ours. The official net is one flat list `model`:
    [pad, conv, norm, ReLU] x1, [conv, norm, ReLU] x2, n blocks, [convT, norm, ReLU] x2, [pad, conv,
    Tanh]; each block's `conv_block` is [pad, conv, norm, ReLU, (dropout), pad, conv, norm]."""
    mapping = {"model.1.": "stem.1.", "model.2.": "stem.2.", "model.4.": "down1.conv.", "model.5.": "down1.norm.",
               "model.7.": "down2.conv.", "model.8.": "down2.norm.", f"model.{10 + n_blocks}.": "up1.conv.",
               f"model.{11 + n_blocks}.": "up1.norm.", f"model.{13 + n_blocks}.": "up2.conv.",
               f"model.{14 + n_blocks}.": "up2.norm.", f"model.{17 + n_blocks}.": "head.1."}
    second = 6 if dropout else 5  # the dropout layer shifts the second conv and norm by one
    for i in range(n_blocks):
        p = f"model.{10 + i}.conv_block."
        mapping.update({p + "1.": f"blocks.{i}.conv1.", p + "2.": f"blocks.{i}.norm1.",
                        p + f"{second}.": f"blocks.{i}.conv2.", p + f"{second + 1}.": f"blocks.{i}.norm2."})
    return mapping


def strip_prefixes(state: dict) -> dict:
    """Keys without the DataParallel/DDP 'module.' and torch.compile '_orig_mod.' prefixes."""
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def recognise(state: dict) -> dict:
    """The architecture a generator state dict (ours or official, any prefix stripped) holds, from
    its keys and shapes: {'netG', 'ngf', 'norm', 'in_channels', 'out_channels'} and, for the official
    ResNet layout, whether its blocks hold dropout. Empty when the keys are of no known generator."""
    keys = set(state)
    if "model.model.0.weight" in keys:  # official U-Net: count the nesting levels
        depth = max((k.count("3.model.") for k in keys if k.startswith("model.model.1.model.")), default=-2) + 2
        netG = {v: k for k, v in UNET_DOWNS.items()}.get(depth)
        first, last, inner = "model.model.0.weight", "model.model.3.weight", "model.model.1.model.1"
    elif "model.1.weight" in keys and "model.10.conv_block.1.weight" in keys:  # official ResNet
        n = len({k.split(".")[1] for k in keys if ".conv_block." in k})
        netG = {v: k for k, v in RESNET_BLOCKS.items()}.get(n)
        first, last, inner = "model.1.weight", f"model.{17 + n}.weight", "model.4"
    elif "stem.1.weight" in keys:  # before the U-Net: our ResNet has a down1.conv too
        n = len({k.split(".")[1] for k in keys if k.startswith("blocks.")})
        netG = {v: k for k, v in RESNET_BLOCKS.items()}.get(n)
        first, last, inner = "stem.1.weight", "head.1.weight", "down1.conv"
    elif "down1.conv.weight" in keys:
        depth = len({k.split(".")[1] for k in keys if k.startswith("downs.")}) + 2
        netG = {v: k for k, v in UNET_DOWNS.items()}.get(depth)
        first, last, inner = "down1.conv.weight", "up8.1.weight", "downs.0.conv"
    else:
        return {}
    if netG is None or last not in keys:
        return {}
    batch = any(k.endswith("running_mean") for k in keys)
    norm = "batch" if batch else "instance" if inner + ".bias" in keys else "none"
    transposed = netG in UNET_DOWNS  # the U-Net's last layer is a ConvTranspose: (in, out, k, k)
    arch = {"netG": netG, "ngf": state[first].shape[0], "norm": norm, "in_channels": state[first].shape[1],
            "out_channels": state[last].shape[1 if transposed else 0]}
    if "model.10.conv_block.1.weight" in keys:
        second = state.get("model.10.conv_block.6.weight")
        arch["official_dropout"] = second is not None and second.dim() == 4
    return arch


def convert_official(state: dict, arch: dict | None = None) -> dict:
    """Rename an official state dict's keys to ours (unet_256 unless arch, from `recognise`, says
    otherwise); keys it does not know are kept as they are."""
    arch = arch or {"netG": "unet_256"}
    if arch["netG"] in RESNET_BLOCKS:
        mapping = official_resnet_to_ours(RESNET_BLOCKS[arch["netG"]], arch.get("official_dropout", False))
    else:
        mapping = official_to_ours(UNET_DOWNS[arch["netG"]])
    out = {}
    for key, value in strip_prefixes(state).items():
        prefix, name = key.rsplit(".", 1)
        out[mapping[prefix + "."] + name if prefix + "." in mapping else key] = value
    return out


def load_generator_state(G: nn.Module, state: dict, source: str) -> nn.Module:
    """Load our or the official layout into G; a mismatch names missing, unexpected and mis-shaped keys."""
    state = strip_prefixes(state)
    if any(k.startswith("model.") for k in state):
        arch = recognise(state)
        if not arch:  # an official layout of no known depth: ours of G's kind, so the message says what differs
            arch = {"netG": "resnet_9blocks" if isinstance(G, ResnetGenerator) else "unet_256"}
        state = convert_official(state, arch)
    own = G.state_dict()
    for key in own:  # files from PyTorch < 0.4.1 lack BatchNorm's batch counter; it is never used here
        if key.endswith("num_batches_tracked") and key not in state and key.rsplit(".", 1)[0] + ".weight" in state:
            state[key] = own[key]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''} ({len(keys)} in all)"
                 for name, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("mis-shaped", shapes)) if keys]
        raise InputError(f"{source}: not a generator with these settings; " + "; ".join(parts))
    G.load_state_dict(state)
    return G


# ----------------------------------------------------------------------------------------------------
# Loading weights: our checkpoints, official files, and the official pretrained generators by name

# The official pretrained pix2pix generators (<name>.pth on the pix2pix server, all U-Net-256 with batch
# norm) and the --direction that reads their dataset's AB images the right way round: facades and
# night2day hold the photo (facades) and the night scene (night2day) on the left
PRETRAINED = {"sat2map": "AtoB", "map2sat": "BtoA", "facades_label2photo": "BtoA", "edges2shoes": "AtoB",
              "edges2handbags": "AtoB", "day2night": "BtoA"}
PRETRAINED_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/models-pytorch/"
URL_VARIABLE = "SAT2MAP_PRETRAINED_URL"  # a mirror (or a local server) serving <name>.pth
# What rebuilds a generator: read from a checkpoint's config, else from its keys (an official file)
G_FIELDS = ("netG", "ngf", "norm", "dropout")


def build_generator(state: dict, source: str, config: dict | None = None) -> tuple[nn.Module, dict]:
    """A generator holding `state` (ours, a training checkpoint's, or the official layout), of the
    architecture its saved config names (a checkpoint from before --netG: unet_256) or, for a file
    without one, that its keys show; `config` gives defaults for what neither says. Returns
    (G, config with at least 'direction', the G_FIELDS, 'input_nc' and 'output_nc')."""
    saved = state.get("config") if "G" in state else None
    saved = saved if isinstance(saved, dict) else {}
    weights = state.get("G", state)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(f"{source}: expected a state dict of tensors (a G.pt, last.pt or official .pth)")
    arch = recognise(strip_prefixes(weights))
    config = {"netG": "unet_256", "ngf": 64, "norm": "batch", "dropout": 0.5, **(config or {})}
    if "G" in state:  # our checkpoint: its config is the truth, and the keys fill what it predates
        config.update({k: arch[k] for k in ("netG", "ngf", "norm") if k in arch and k not in saved}, **saved)
    else:
        config.update({k: arch[k] for k in ("netG", "ngf", "norm") if k in arch})
        if not arch.get("official_dropout", True):
            config["dropout"] = 0.0  # an official ResNet trained with --no_dropout
    try:
        G = define_G(config["netG"], int(config["ngf"]), config["norm"], float(config["dropout"]),
                     int(arch.get("in_channels", 3)), int(arch.get("out_channels", 3)))
    except (TypeError, ValueError) as e:
        raise InputError(f"{source}: its config does not describe a generator ({e})") from None
    load_generator_state(G, weights, source)
    config.setdefault("direction", "AtoB")
    config["input_nc"], config["output_nc"] = channels(G)  # the weights' shapes say it, whatever the config
    return G, config


def fetch_pretrained(name: str, folder="weights") -> Path:
    """FOLDER/<name>.pth, downloaded once from $SAT2MAP_PRETRAINED_URL (default the pix2pix server)
    and kept only once it loads as a generator: a failed or foreign download never stays behind."""
    path = Path(folder) / f"{name}.pth"
    if path.is_file():
        return path
    base = os.environ.get(URL_VARIABLE) or PRETRAINED_URL
    url = base.rstrip("/") + f"/{name}.pth"
    with made_folder(path.parent):  # a failed download leaves no empty weights/ behind
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".pth")
        os.close(fd)
        tmp = Path(tmp)
        try:
            fetch(url, tmp)
            build_generator(safe_load(tmp, "generator"), url)
            replace_durably(tmp, path)
        except DownloadError as e:
            raise InputError(f"{e}; set {URL_VARIABLE} to a mirror, or place the file at {path} by hand") from None
        except InputError as e:
            raise InputError(f"{url}: the download is not a pix2pix generator ({e}); nothing was kept") from None
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_name(tmp.name + ".part").unlink(missing_ok=True)
    return path


def weights_path(weights) -> Path:
    """The file `--weights` names: a path, or an official pretrained name (downloaded once into weights/)."""
    path = Path(str(weights))
    return fetch_pretrained(str(weights)) if str(weights) in PRETRAINED and not path.exists() else path


def load_generator(weights, device="cpu") -> tuple[nn.Module, dict]:
    """A generator from a training checkpoint, a G.pt, an official pix2pix file (its architecture
    recognised from the keys), or the name of an official pretrained generator (downloaded once into
    weights/). Returns (G, config dict).

    G is in train mode (as load_state_dict leaves it), float32, on `device`. It takes (N, C, H, W) in
    [-1, 1] (C = config["input_nc"], 3 unless trained on grey inputs) with H and W multiples of 256 (128
    for unet_128, 4 for the ResNets). Run it under
    `inference(G, paper=True, seed=0)` for the paper's test-time mode, or `G.eval()` /
    `inference(G, paper=False)` for the eval mode."""
    path = weights_path(weights)
    G, config = build_generator(safe_load(path, "generator"), str(path),
                                {"direction": PRETRAINED.get(path.stem, "AtoB")})
    return G.to(device), config
