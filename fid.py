"""FID and KID of generated against real images, with the Inception network published pix2pix FIDs use.

    python evaluate.py --weights weights/maps/G.pt --fid --inception-weights pt_inception-2015-12-05-6726825d.pth
    python train.py --val-fid                 # also in every validation (weights in the torch hub cache)

The network is pytorch-fid's port of the TensorFlow FID Inception (2048-d pool features, inputs
resized to 299x299 bilinearly). Its weights are read from a local file only, never downloaded here:
`--inception-weights PATH`, else the file pytorch-fid itself would have downloaded into the torch hub
cache (`$TORCH_HOME/hub/checkpoints/`, default ~/.cache/torch/hub/checkpoints/).
"""
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn as nn

from cli import InputError, first_line
from utils import safe_load

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
FEATURES = 2048  # the final average pool, as in the FID paper and pytorch-fid's default


def cached_weights() -> Path:
    """Where pytorch-fid keeps the weights once downloaded (torch hub's checkpoint folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def find_weights(path: str | None = None) -> Path:
    """The Inception weights file: `path` if given, else the torch hub cache; InputError otherwise."""
    found = Path(path) if path else cached_weights()
    if found.is_file():
        return found
    where = f"--inception-weights {found}: no such file" if path else \
        f"FID needs the Inception weights {WEIGHTS_NAME}, not found at {found}"
    raise InputError(f"{where}; download {WEIGHTS_URL} on a machine with internet and pass "
                     f"--inception-weights PATH or put it at {cached_weights()}")


def load_inception(path: str | None = None, device="cpu") -> nn.Module:
    """pytorch-fid's FID Inception (eval mode, no gradients) with weights from a local file."""
    try:
        from pytorch_fid import inception as pf
    except ImportError:
        raise InputError("FID needs the pytorch-fid package: pip install -r requirements.txt") from None

    path = find_weights(path)
    state = safe_load(path, "Inception weights")
    # pytorch-fid builds the network and fetches its weights by URL in one call; handing it the local
    # state instead keeps this offline and the load weights-only. fork_rng: building the network draws
    # initial weights from the global generator, which training must not see.
    with torch.random.fork_rng(devices=[]), mock.patch.object(pf, "load_state_dict_from_url",
                                                               lambda *a, **k: state):
        try:
            net = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURES]])
        except RuntimeError as e:
            raise InputError(f"{path}: not the FID Inception weights {WEIGHTS_NAME} "
                             f"({first_line(e)})") from None
    return net.eval().to(device)


@torch.no_grad()
def features(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Pool features (N, 2048), float64, of images (N, 3, H, W) in [-1, 1]. Quantised to 8 bits first,
    like the PNG files published FIDs are computed from."""
    x01 = ((x.float().clamp(-1, 1) + 1) * 127.5).round() / 255
    param = next(net.parameters())
    return net(x01.to(param.device, param.dtype))[0].flatten(1).double().cpu().numpy()


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    tr (S1 S2)^(1/2) is the sum of the square roots of the eigenvalues of S1 S2, which equal those of
    the symmetric PSD matrix R S2 R with R = S1^(1/2); eigh on it stays real and stable even for
    the singular covariances of a few hundred images in 2048 dimensions."""
    def rooted(w):  # eigenvalues below rounding noise are zeros: their square roots would add up
        return np.sqrt(np.where(w > w.max() * len(w) * np.finfo(w.dtype).eps, w, 0))

    w, v = np.linalg.eigh(np.atleast_2d(sigma1))
    r = (v * rooted(w)) @ v.T
    inner = r @ np.atleast_2d(sigma2) @ r
    tr_sqrt = rooted(np.linalg.eigvalsh((inner + inner.T) / 2)).sum()
    diff = np.atleast_1d(mu1) - np.atleast_1d(mu2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets (N, d), each summarised by its mean and (unbiased) covariance.

    With fewer images than feature dimensions (1098 val maps in 2048-d) the same value comes cheaper
    and more exactly from the centred sets A, B: S1 = A'A / (n1 - 1), S2 = B'B / (n2 - 1), and the
    eigenvalues of S1 S2 are the squared singular values of A B' over (n1 - 1)(n2 - 1)."""
    if len(f1) * len(f2) > f1.shape[1] ** 2:
        stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (f1, f2)]
        return frechet_distance(*stats[0], *stats[1])
    a, b = f1 - f1.mean(0), f2 - f2.mean(0)
    ca, cb = len(f1) - 1, len(f2) - 1
    tr_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(ca * cb)
    diff = f1.mean(0) - f2.mean(0)
    return float(diff @ diff + (a * a).sum() / ca + (b * b).sum() / cb - 2 * tr_sqrt)


def kid_from_features(f1: np.ndarray, f2: np.ndarray, subsets=100, subset_size=1000, seed=0):
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over random
    subsets of subset_size (capped at the smaller set). Returns (mean, std) over the subsets."""
    n = min(len(f1), len(f2), subset_size)
    if n < 2:
        raise InputError(f"KID needs at least 2 images per set, got {min(len(f1), len(f2))}")
    rng = np.random.default_rng(seed)  # its own generator: no global RNG stream moves
    d = f1.shape[1]
    values = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), n, replace=False)]
        y = f2[rng.choice(len(f2), n, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off = lambda k: (k.sum() - np.trace(k)) / (n * (n - 1))  # noqa: E731
        values.append(off(kxx) + off(kyy) - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def scores(fake: np.ndarray, real: np.ndarray) -> dict:
    """fid, kid and kid_std of generated against real feature sets."""
    kid, kid_std = kid_from_features(fake, real)
    return {"fid": fid_from_features(fake, real), "kid": kid, "kid_std": kid_std}
