"""The maps' palette: the structure classes a map pixel belongs to, shared by evaluate.py and vector.py.

    python evaluate.py --weights sat2map --out eval/        # structure IoU per class
    python vector.py map.tif --out layers.gpkg              # the classes as a raster and GIS layers

One rule, two ways in: `classify` for image tensors in [-1, 1] (on any device; evaluate.py and
training's validation), and `classify_rgb` for uint8 pixels of any size (vector.py), which looks up a
table that `classify` itself filled, so the two agree pixel for pixel.
"""
import functools
import math

import numpy as np
import torch

# Google-map palette of the maps set, calibrated on ../shared/maps_sample (see docs/evaluation.md): several
# prototypes per class; a pixel takes the class of its nearest prototype, and is background when no
# prototype is within PALETTE_RADIUS.
CLASSES = ("background", "road", "highway", "water", "park")
ROAD, HIGHWAY, WATER, PARK = (CLASSES.index(n) for n in ("road", "highway", "water", "park"))  # class ids
PALETTE = {
    "background": [(236, 228, 220), (244, 244, 236), (228, 228, 220), (236, 236, 228), (220, 220, 212)],
    "road": [(252, 252, 252)],
    "highway": [(252, 156, 36), (252, 228, 104)],
    "water": [(176, 208, 252), (164, 198, 252)],
    "park": [(204, 222, 176), (198, 222, 158)],
}
PALETTE_RADIUS = 24.0  # in 0-255 RGB units


def nearest(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map images (N, 3, H, W) in [-1, 1] -> (class of the nearest prototype, whether it is within
    PALETTE_RADIUS), each (N, H, W)."""
    rgb = (x.float().clamp(-1, 1) + 1) * 127.5
    protos = torch.tensor([c for name in CLASSES for c in PALETTE[name]], dtype=torch.float32, device=x.device)
    owner = torch.tensor([i for i, name in enumerate(CLASSES) for _ in PALETTE[name]], device=x.device)
    dist2 = (rgb.permute(0, 2, 3, 1).reshape(-1, 1, 3) - protos).pow(2).sum(-1)
    best, idx = dist2.min(1)
    shape = (x.shape[0], *x.shape[2:])
    return owner[idx].view(shape), (best <= PALETTE_RADIUS ** 2).view(shape)


def classify(x: torch.Tensor) -> torch.Tensor:
    """Map images (N, 3, H, W) in [-1, 1] -> class ids (N, H, W) by nearest palette colour."""
    cls, near = nearest(x)
    return torch.where(near, cls, 0)


@functools.cache
def tables() -> tuple[np.ndarray, np.ndarray]:
    """(class, in palette) for each of the 2^24 uint8 RGB colours (index r << 16 | g << 8 | b), from
    `classify`'s own rule applied to the colour as evaluate.py sees it (v / 127.5 - 1). Only colours
    in a cube around some prototype can be within its radius; the rest are background, not in it."""
    reach = math.ceil(PALETTE_RADIUS) + 1  # one level more than the radius: float rounding never matters
    near_some = np.zeros(1 << 24, bool)
    for proto in (c for name in CLASSES for c in PALETTE[name]):
        axes = [np.arange(max(0, v - reach), min(255, v + reach) + 1) for v in proto]
        r, g, b = np.meshgrid(*axes, indexing="ij")
        near_some[r << 16 | g << 8 | b] = True
    lut, matched = np.zeros(1 << 24, np.uint8), np.zeros(1 << 24, bool)
    for index in np.array_split(np.flatnonzero(near_some), 16):  # in parts: a small peak of memory
        rgb = np.stack([index >> 16, (index >> 8) & 255, index & 255]).astype(np.float32)
        cls, near = nearest(torch.from_numpy(rgb).view(1, 3, 1, -1) / 127.5 - 1)
        lut[index] = torch.where(near, cls, 0).view(-1).numpy()
        matched[index] = near.view(-1).numpy()
    return lut, matched


def colour_index(rgb: np.ndarray) -> np.ndarray:
    """uint8 (3, H, W) -> the (H, W) index of each pixel's colour in `tables`."""
    r, g, b = (rgb[i].astype(np.int32) for i in range(3))
    return r << 16 | g << 8 | b


def classify_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 map pixels (3, H, W) -> uint8 class ids (H, W): `classify` of the same picture."""
    return tables()[0][colour_index(rgb)]


def palette_share(rgb: np.ndarray) -> float:
    """Share of the pixels (3, H, W) within PALETTE_RADIUS of a palette colour: most of a map's, few of a photo's."""
    return float(tables()[1][colour_index(rgb)].mean()) if rgb.size else 0.0
