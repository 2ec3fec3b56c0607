"""int8 inference: static quantization of an ONNX export with ONNX Runtime's own tools (QDQ format,
per-channel weights), calibrated on tiles of the data at hand, and what it costs against float32.

    python predict.py --weights sat2map --input scene.tif --out out/ --eval --int8
    python predict.py --weights sat2map --input scenes/ --out out/ --eval --int8 --calibrate tiles/

`quantize_int8(fp32_onnx, out, tiles)` is the library call (the browser model's export uses it too).
The calibration tiles are CALIBRATION_TILES tiles of --calibrate FOLDER or, by default, of the input
itself, read as the engine reads them (bands, value scaling, --scale), spread over the files and over
each file. The cost is measured on those tiles: mean and largest difference from float32 in levels of
0-255, and how often the two agree on the map's structure class (palette.classify).
"""
import hashlib
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import backends
import raster
from cli import InputError
from durable import ordinary_mode, replace_durably
from tiles import Engine, fill_invalid, pad_reflect, tile_starts

CALIBRATION_TILES = 16  # tiles calibrated on (and the cost measured on) unless given others
MIN_VALID = 0.5  # share of valid pixels a calibration tile needs
GOLDEN = (math.sqrt(5) - 1) / 2


def spread(n: int) -> list[int]:
    """0..n-1 in an order whose every prefix is spread evenly over the range (golden-ratio steps)."""
    return sorted(range(n), key=lambda i: (i * GOLDEN) % 1)


def file_tiles(source, engine, count: int) -> list[torch.Tensor]:
    """Up to `count` tiles (C, t, t) of a source, from places spread over its tile grid, padded and
    filled as the engine pads and fills them; only tiles with MIN_VALID of their pixels valid."""
    t = engine.tile
    ys = tile_starts(max(source.height, t), t, engine.overlap)
    xs = tile_starts(max(source.width, t), t, engine.overlap)
    places = [(y, x) for y in ys for x in xs]
    found = []
    for i in spread(len(places))[:4 * count]:
        y, x = places[i]
        image, valid = source.read(y, min(y + t, source.height), x, min(x + t, source.width))
        image = pad_reflect(image[None].float(), t, t)[0]
        valid = pad_reflect(valid.cpu()[None, None].float(), t, t)[0, 0] > 0.5
        if valid.float().mean() >= MIN_VALID:
            found.append(image if valid.all() else fill_invalid(image, valid))
        if len(found) == count:
            break
    return found


def calibration_tiles(files: list[Path], opts: raster.Options, count: int = CALIBRATION_TILES,
                      in_channels: int = 3) -> torch.Tensor:
    """Up to `count` tiles (n, C, t, t) in [-1, 1] of the files as predict.py reads them, spread over
    the files (at most count of them, up to count / files tiles each, rounded up) and over each file.
    A file that cannot be read is passed over (predict reports it)."""
    from rasterio.errors import RasterioError
    chosen = [files[i] for i in spread(len(files))[:count]]
    per_file = math.ceil(count / len(chosen))
    found = []
    for f in chosen:
        try:
            with raster.open_source(f, opts, in_channels) as source:
                found += file_tiles(source, opts.engine, min(per_file, count - len(found)))
        except (InputError, RasterioError):
            continue
        if len(found) == count:
            break
    if not found:
        names = f"{files[0]}" + (f" and {len(files) - 1} more" if len(files) > 1 else "")
        raise InputError(f"{names}: no tile with {MIN_VALID:.0%} valid pixels to calibrate --int8 on")
    return torch.stack(found)


def folder_tiles(folder, in_channels: int = 3) -> torch.Tensor:
    """Calibration tiles of the images in a folder (--calibrate FOLDER), read whole with the default
    raster options, for a generator of in_channels."""
    return calibration_tiles(raster.input_files(Path(folder), "--calibrate"), raster.Options(Engine()), in_channels=in_channels)


class TileReader:
    """onnxruntime's CalibrationDataReader over tiles (N, C, H, W): one tile per call."""

    def __init__(self, input_name: str, tiles: np.ndarray):
        self.input_name, self.tiles, self.i = input_name, tiles, 0

    def get_next(self):
        if self.i == len(self.tiles):
            return None
        self.i += 1
        return {self.input_name: self.tiles[self.i - 1:self.i]}


def quantize_int8(fp32_onnx: Path, out: Path, tiles) -> Path:
    """An int8 model of the float32 ONNX model fp32_onnx, written to `out` (atomically): ONNX Runtime's
    pre-processing (shape inference, graph optimisation: BatchNorm folded into the convolutions), then
    static quantization in QDQ format, uint8 activations and per-channel int8 weights, with activation
    ranges (MinMax) calibrated on tiles: float32 (N, C, H, W) in [-1, 1], an array or a tensor. uint8
    activations against int8 weights are what ONNX Runtime's x86 kernels multiply natively (VNNI's
    unsigned-by-signed dot product): on an AMD Zen 4 the full-size U-Net ran 2.7-3.2x faster than
    float32 with them (docs/performance.md#measured-per-cpu-kind), 1.2x with int8 activations."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    tiles = np.ascontiguousarray(torch.as_tensor(tiles).float().cpu().numpy())
    input_name = ort.InferenceSession(str(fp32_onnx), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    fd, pre = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".pre.onnx")
    os.close(fd)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    quiet = logging.getLogger().level
    try:
        logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice to pre-process: done
        # symbolic shape inference cannot follow the dynamic height and width: ONNX's own inference does
        quant_pre_process(str(fp32_onnx), pre, skip_symbolic_shape=True)
        quantize_static(pre, tmp, TileReader(input_name, tiles), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        ordinary_mode(tmp)
        replace_durably(tmp, out)
    finally:
        logging.getLogger().setLevel(quiet)
        Path(pre).unlink(missing_ok=True)
        Path(tmp).unlink(missing_ok=True)
    return out


@dataclass
class Cost:
    """int8 against float32 on the same tiles."""
    tiles: int
    mean: float  # mean |difference| in levels of 0-255
    max: float  # largest |difference| in levels
    agree: float | None  # share of pixels of the same structure class (None for outputs that are not RGB maps)
    miou: float | None  # structure IoU of int8's classes against float32's

    def __str__(self):
        text = (f"int8 cost on {self.tiles} calibration tile{'s' * (self.tiles != 1)}, against float32: "
                f"mean {self.mean:.2f} levels, max {self.max:.0f}")
        if self.agree is not None:
            iou = "n/a" if self.miou is None else f"{self.miou:.3f}"
            text += f"; structure classes agree on {self.agree:.2%} of pixels (structure IoU {iou})"
        return text


def levels(y: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> levels 0-255, rounded as the written images are."""
    return y.float().clamp(-1, 1).add(1).mul(127.5).round()


def cost(fp32_net, int8_net, tiles: torch.Tensor, batch: int = 4) -> Cost:
    """What int8 changes on the tiles: level differences from float32 and, for RGB maps, how often
    the structure classes agree and their IoU over the tiles (evaluate.StructureIoU)."""
    from evaluate import StructureIoU
    from palette import classify
    diff_sum = diff_max = agree = 0.0
    iou, rgb = StructureIoU(), True
    with fp32_net.inference(False, 0), int8_net.inference(False, 0):
        for i in range(0, len(tiles), batch):
            ref, got = fp32_net(tiles[i:i + batch]), int8_net(tiles[i:i + batch])
            diff = (levels(got) - levels(ref)).abs()
            diff_sum, diff_max = diff_sum + diff.mean((1, 2, 3)).sum().item(), max(diff_max, diff.max().item())
            rgb = rgb and ref.shape[1] == 3
            if rgb:
                c_got, c_ref = classify(got), classify(ref)
                agree += (c_got == c_ref).float().mean((1, 2)).sum().item()
                iou.add(c_got, c_ref)
    n = len(tiles)
    return Cost(n, diff_sum / n, diff_max, agree / n if rgb else None, iou.result()["miou_structure"] if rgb else None)


def tiles_digest(tiles: torch.Tensor) -> str:
    t = tiles.float().contiguous().cpu()
    return hashlib.sha256(str(tuple(t.shape)).encode() + t.numpy().tobytes()).hexdigest()


def open_int8(fp32_onnx: Path, weights: Path, tiles: torch.Tensor, log=None):
    """(net, Cost): the int8 model of the weights' float32 export calibrated on `tiles`, made once and
    cached beside the export (keyed by the export and the tiles' hash), and its cost, measured and
    told to `log`."""
    settings = {"fp32": fp32_onnx.name, "format": "QDQ", "per_channel": True, "activations": "QUInt8",
                "weights": "QInt8", "method": "MinMax", "tiles": tiles_digest(tiles)}
    path = backends.cached_model(weights, "int8.onnx", settings, lambda p: quantize_int8(fp32_onnx, p, tiles), log)
    net = backends.OrtNet(path)
    measured = cost(backends.OrtNet(fp32_onnx), net, tiles)
    if log:
        log(str(measured))
    return net, measured
