"""The maps' palette: the structure classes a map pixel belongs to, shared by evaluate.py and vector.py.

    python evaluate.py --weights sat2map --out eval/        # structure IoU per class
    python vector.py map.tif --out layers.gpkg              # the classes as a raster and GIS layers

One rule (`nearest`, in numpy), two ways in: `classify` for image tensors in [-1, 1] (on any device;
evaluate.py and training's validation), and `classify_rgb` for uint8 pixels of any size (vector.py),
which looks up a table that the same rule filled, so the two agree pixel for pixel. No torch is
imported here, so that vector.py starts light.
"""
import functools
import math

import numpy as np

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


def nearest(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map pixels (..., 3), float32 in [-1, 1] -> (class of the nearest prototype, whether it is
    within PALETTE_RADIUS), each (...)."""
    rgb = (np.clip(x, -1, 1, dtype=np.float32) + np.float32(1)) * np.float32(127.5)
    protos = np.array([c for name in CLASSES for c in PALETTE[name]], np.float32)
    owner = np.array([i for i, name in enumerate(CLASSES) for _ in PALETTE[name]], np.int64)
    dist2 = np.square(rgb[..., None, :] - protos).sum(-1)
    idx = dist2.argmin(-1)
    best = np.take_along_axis(dist2, idx[..., None], -1)[..., 0]
    return owner[idx], best <= np.float32(PALETTE_RADIUS ** 2)


def classify(x):
    """Map images, a torch tensor (N, 3, H, W) in [-1, 1] on any device -> class ids (N, H, W) on its
    device, by nearest palette colour."""
    import torch  # the caller's, already loaded: this module itself stays free of torch
    cls, near = nearest(x.detach().float().permute(0, 2, 3, 1).cpu().numpy())
    return torch.from_numpy(np.where(near, cls, 0)).to(x.device)


@functools.cache
def tables() -> tuple[np.ndarray, np.ndarray]:
    """(class, in palette) for each of the 2^24 uint8 RGB colours (index r << 16 | g << 8 | b), from
    `nearest`'s rule applied to the colour as evaluate.py sees it (v / 127.5 - 1). Only colours
    in a cube around some prototype can be within its radius; the rest are background, not in it."""
    reach = math.ceil(PALETTE_RADIUS) + 1  # one level more than the radius: float rounding never matters
    near_some = np.zeros(1 << 24, bool)
    for proto in (c for name in CLASSES for c in PALETTE[name]):
        axes = [np.arange(max(0, v - reach), min(255, v + reach) + 1) for v in proto]
        r, g, b = np.meshgrid(*axes, indexing="ij")
        near_some[r << 16 | g << 8 | b] = True
    lut, matched = np.zeros(1 << 24, np.uint8), np.zeros(1 << 24, bool)
    for index in np.array_split(np.flatnonzero(near_some), 16):  # in parts: a small peak of memory
        rgb = np.stack([index >> 16, (index >> 8) & 255, index & 255], -1).astype(np.float32)
        cls, near = nearest(rgb / np.float32(127.5) - np.float32(1))
        lut[index] = np.where(near, cls, 0)
        matched[index] = near
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
