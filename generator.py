"""U-Net-256 generator of pix2pix (Isola et al. 2017, arXiv 1611.07004, appendix 6.1.1).

    python -c "from generator import Generator; print(Generator())"

The layer order, bias settings and dropout placement follow the official pix2pix PyTorch code, so its
released weights load into this module through `load_generator_state` (see `official_to_ours`).
"""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from download import DownloadError, fetch
from utils import InputError, made_folder, safe_load

NUM_DOWNS = 8  # 256 -> 1 pixel at the bottleneck


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm as in the paper, or InstanceNorm (no affine, no running stats) as the alternative."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    raise ValueError(f"--norm must be 'batch' or 'instance', got {kind!r}")


class Down(nn.Module):
    """Encoder block: LeakyReLU(0.2) -> Conv 4x4 stride 2 -> norm. Halves H and W."""

    def __init__(self, c_in, c_out, norm, act=True, use_norm=True):
        super().__init__()
        # A conv followed by BatchNorm needs no bias; InstanceNorm has no affine, so keep it there.
        bias = norm == "instance"
        self.act = nn.LeakyReLU(0.2, True) if act else nn.Identity()
        self.conv = nn.Conv2d(c_in, c_out, 4, 2, 1, bias=bias)
        self.norm = norm_layer(norm, c_out) if use_norm else nn.Identity()

    def forward(self, x):
        return self.norm(self.conv(self.act(x)))


class Up(nn.Module):
    """Decoder block: ReLU -> ConvTranspose 4x4 stride 2 -> norm [-> dropout]. Doubles H and W."""

    def __init__(self, c_in, c_out, norm, dropout=0.0):
        super().__init__()
        self.act = nn.ReLU(True)
        self.conv = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=norm == "instance")
        self.norm = norm_layer(norm, c_out)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.norm(self.conv(self.act(x))))


class Generator(nn.Module):
    """U-Net with skips between mirrored layers; input and output in [-1, 1]."""

    def __init__(self, in_channels=3, out_channels=3, ngf=64, norm="batch", dropout=0.5):
        super().__init__()
        w = [ngf, ngf * 2, ngf * 4] + [ngf * 8] * 5  # encoder widths, 64-128-256-512-512-512-512-512
        self.down1 = Down(in_channels, w[0], norm, act=False, use_norm=False)
        self.downs = nn.ModuleList(Down(w[i - 1], w[i], norm) for i in range(1, NUM_DOWNS - 1))
        self.down8 = Down(w[6], w[7], norm, use_norm=False)  # 1x1 bottleneck: BatchNorm is undefined
        # The official code puts dropout in the three decoder blocks after the innermost one; we keep
        # that placement so its released weights behave identically in the paper's test-time mode.
        self.up1 = Up(w[7], w[6], norm)
        self.ups = nn.ModuleList(
            Up(w[i] * 2, w[i - 1], norm, dropout if i >= NUM_DOWNS - 4 else 0.0)
            for i in range(NUM_DOWNS - 2, 0, -1)
        )
        self.up8 = nn.Sequential(
            nn.ReLU(True), nn.ConvTranspose2d(w[0] * 2, out_channels, 4, 2, 1), nn.Tanh()
        )

    def forward(self, x):  # (N, 3, H, W), H and W multiples of 256
        skips = [self.down1(x)]  # (N, 64, H/2, W/2)
        for down in self.downs:
            skips.append(down(skips[-1]))  # ... down to (N, 512, H/128, W/128)
        h = self.up1(self.down8(skips[-1]))  # (N, 512, H/256, W/256) -> (N, 512, H/128, W/128)
        for up in self.ups:
            h = up(torch.cat([skips.pop(), h], 1))  # skip first, as in the official layout
        return self.up8(torch.cat([skips.pop(), h], 1))  # (N, 3, H, W) in [-1, 1]


def init_weights(net: nn.Module, std: float = 0.02) -> nn.Module:
    """Paper init: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
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
# The official pix2pix checkpoint layout (UnetGenerator of junyanz/pytorch-CycleGAN-and-pix2pix)


def official_to_ours(num_downs: int = NUM_DOWNS) -> dict:
    """Map of official key prefixes to ours, e.g. 'model.model.1.model.1.' -> 'downs.0.conv.'.

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


def convert_official(state: dict) -> dict:
    """Rename an official state dict's keys to ours; keys it does not know are kept as they are."""
    mapping = official_to_ours()
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        prefix = key.rsplit(".", 1)[0] + "."
        out[mapping[prefix] + key.rsplit(".", 1)[1] if prefix in mapping else key] = value
    return out


def load_generator_state(G: Generator, state: dict, source: str) -> Generator:
    """Load our or the official layout into G; a mismatch names missing, unexpected and mis-shaped keys."""
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    if any(k.startswith("model.model.") for k in state):
        state = convert_official(state)
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

PRETRAINED = {"sat2map": "AtoB", "map2sat": "BtoA"}  # official maps generators and their direction
PRETRAINED_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/models-pytorch/"
URL_VARIABLE = "SAT2MAP_PRETRAINED_URL"  # a mirror (or a local server) serving <name>.pth


def build_generator(state: dict, source: str, config: dict | None = None) -> tuple[Generator, dict]:
    """A Generator holding `state` (ours, a training checkpoint's, or the official layout), built with
    the widths its saved config names; `config` gives defaults for what it does not say. Returns
    (G, config with at least 'direction')."""
    saved = state.get("config") if "G" in state else None
    config = {**(config or {}), **(saved if isinstance(saved, dict) else {})}
    try:
        G = Generator(3, 3, int(config.get("ngf", 64)), config.get("norm", "batch"),
                      float(config.get("dropout", 0.5)))
    except (TypeError, ValueError) as e:
        raise InputError(f"{source}: its config does not describe a generator ({e})") from None
    weights = state.get("G", state)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise InputError(f"{source}: expected a state dict of tensors (a G.pt, last.pt or official .pth)")
    load_generator_state(G, weights, source)
    config.setdefault("direction", "AtoB")
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
            os.replace(tmp, path)
        except DownloadError as e:
            raise InputError(f"{e}; set {URL_VARIABLE} to a mirror, or place the file at {path} by hand") from None
        except InputError as e:
            raise InputError(f"{url}: the download is not a pix2pix generator ({e}); nothing was kept") from None
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_name(tmp.name + ".part").unlink(missing_ok=True)
    return path


def load_generator(weights, device="cpu") -> tuple[Generator, dict]:
    """A Generator from a training checkpoint, a G.pt, an official pix2pix file, or the name of an
    official pretrained generator (downloaded once into weights/). Returns (G, config dict).

    G is in train mode (as load_state_dict leaves it), float32, on `device`. It takes (N, 3, H, W) in
    [-1, 1] with H and W multiples of 256. Run it under `inference(G, paper=True, seed=0)` for the
    paper's test-time mode, or `G.eval()` / `inference(G, paper=False)` for the eval mode."""
    weights = str(weights)
    path = Path(weights)
    if weights in PRETRAINED and not path.exists():
        path = fetch_pretrained(weights)
    G, config = build_generator(safe_load(path, "generator"), str(path),
                                {"direction": PRETRAINED.get(path.stem, "AtoB")})
    return G.to(device), config
