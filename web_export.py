"""The browser-sized export for the static page in web/: a small ONNX model and its JSON card.

    python export.py --weights weights/maps/G.pt --web web/models/sat2map.onnx --calibrate data/maps/val --pairs

export.py's --web calls `export_web`. The model is the eval-mode export of export.py, checked against
PyTorch and cached beside the weights as --backend onnxruntime's (backends.exported), with its weights
stored small enough for a browser to fetch: float16 initializers, each cast
back to float32 by a Cast node at the top of the graph (ONNX Runtime folds the casts when the session
is made, so every ONNX Runtime Web backend runs it in float32), or, where float16 is still over
MAX_BYTES (the full-size U-Net: 109 MB) or --int8 asks for it, the static int8 quantization of
--backend onnxruntime --int8 (int8.quantize_int8), calibrated on real tiles (--calibrate). Beside NAME.onnx goes NAME.json, the
card the page reads: name, direction, tile and overlap, normalisation, precision, the source weights
and their SHA-256, and the model's measured difference from float32 in levels of 255. The folder's
index.json lists every card in it, as a static host cannot list a folder.
"""
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

import backends
import int8
import raster
from cli import InputError
from durable import atomic_write_text, replace_durably
from generator import weights_path
from tiles import Engine

MAX_BYTES = 60_000_000  # the most a page should make a visitor download (float32 full size: 218 MB)
TILE, OVERLAP = 256, 64  # what the page tiles with: tiles.py's (predict.py's) defaults
CARD_FORMAT = "sat2map-web-model/1"
NORMALISATION = {"input": "x = v / 127.5 - 1 for uint8 RGB v; other data first stretched per band to 0-255 "
                          "between its 2nd and 98th percentiles of valid pixels",
                 "output": "v = round((clip(y, -1, 1) + 1) * 127.5)"}


def export_web(G, config: dict, weights, out: Path, use_int8=False, calibrate=None, pairs=False, seed=0,
               opset=18) -> dict:
    """Write the browser-sized model `out` (.onnx), its card (.json beside it) and the folder's
    index.json; returns the card. Float16 weights unless they would be over MAX_BYTES or `use_int8`
    is set (--int8), then int8, calibrated on tiles of the folder `calibrate` (required for it)."""
    out = Path(out)
    if out.suffix != ".onnx" or out.stem == "index":
        raise InputError(f"--web {out}: expected a NAME.onnx file name (NAME other than index)")
    if (config["input_nc"], config["output_nc"]) != (3, 3):
        raise InputError(f"--web {out}: the page runs RGB generators; {weights} takes {config['input_nc']} "
                         f"and gives {config['output_nc']} channel(s) (use predict.py for it)")
    precision = "int8" if use_int8 or fp16_bytes(G) > MAX_BYTES else "fp16"
    why = "--int8" if use_int8 else f"{fp16_bytes(G) / 1e6:.0f} MB in float16, over the page's {MAX_BYTES / 1e6:.0f} MB"
    if precision == "int8" and calibrate is None:
        raise InputError(f"--web {out}: int8 weights ({why}) are calibrated on real tiles: add --calibrate FOLDER "
                         f"(satellite pictures; --pairs for A|B pairs)")
    tiles = None if calibrate is None else calibration_tiles(Path(calibrate), pairs, config)
    fp32 = backends.exported(G, weights_path(weights), config, print, opset)  # checked against PyTorch, cached
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as tmp:  # beside out: renamed into place
        small = Path(tmp) / "web.onnx"
        if precision == "fp16":
            save_fp16(fp32, small)
        else:
            int8.quantize_int8(fp32, small, tiles)
        size = small.stat().st_size
        if size > MAX_BYTES:
            raise InputError(f"--web {out}: the {precision} model is {size / 1e6:.0f} MB, over the page's bound of "
                             f"{MAX_BYTES / 1e6:.0f} MB")
        card = make_card(out, config, weights, precision, size, difference(fp32, small, tiles, seed))
        replace_durably(small, out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    write_index(out.parent)
    return card


def fp16_bytes(G) -> int:
    """The size of G's weights and buffers in float16."""
    return 2 * sum(t.numel() for t in [*G.parameters(), *G.buffers()] if t.is_floating_point())


def save_fp16(fp32: Path, path: Path):
    """The model at fp32 with its float32 initializers stored as float16, each cast back to float32
    at the top of the graph (those float16 cannot hold stay float32)."""
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(str(fp32))
    casts = []
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        weights = numpy_helper.to_array(init)
        if weights.size and np.abs(weights).max() > np.finfo(np.float16).max:
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(weights.astype(np.float16), f"{name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{name}__fp16"], [name], name=f"{name}__cast",
                                      to=onnx.TensorProto.FLOAT))
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def calibration_tiles(folder: Path, pairs: bool, config: dict) -> torch.Tensor:
    """The tiles (N, 3, TILE, TILE) in [-1, 1] of the pictures or rasters in folder that predict.py
    --int8 --calibrate takes (int8.calibration_tiles, as many), read as predict.py reads them (with
    `pairs`, the input half of each A|B pair)."""
    if not folder.is_dir():
        raise InputError(f"--calibrate {folder}: expected a folder of satellite pictures or rasters")
    opts = raster.Options(Engine(TILE, OVERLAP), pairs=pairs, direction=config["direction"])
    return int8.calibration_tiles(raster.input_files(folder, "--calibrate"), opts, in_channels=config["input_nc"])


def difference(fp32: Path, small: Path, tiles: torch.Tensor | None, seed: int) -> dict:
    """How far the browser-sized model is from the float32 export, both run by onnxruntime on the CPU:
    mean and largest difference in levels of 255 and the share of pixels of the same structure class
    (int8.cost), on the calibration tiles, else on the random input export.py checks with."""
    if tiles is None:
        tiles = torch.rand((2, 3, 256, 512), generator=torch.Generator().manual_seed(seed)) * 2 - 1
        where = f"a random 2x3x256x512 input (seed {seed})"
    else:
        where = f"{len(tiles)} tiles of the calibration pictures"
    cost = int8.cost(backends.OrtNet(fp32), backends.OrtNet(small), tiles)
    return {"mean_levels": round(cost.mean, 4), "max_levels": int(cost.max), "structure_agreement": cost.agree,
            "measured_on": where}


def make_card(out: Path, config: dict, weights, precision: str, size: int, diff: dict) -> dict:
    """The model's card: what the page needs to run it and what a reader needs to trust it."""
    source = weights_path(weights)
    return {"format": CARD_FORMAT, "name": out.stem, "model": out.name, "direction": config["direction"],
            "netG": config.get("netG", "unet_256"), "ngf": int(config.get("ngf", 64)), "mode": "eval",
            "tile": TILE, "overlap": OVERLAP, "input": "satellite", "output": "map",
            "normalisation": NORMALISATION, "precision": precision, "bytes": size,
            "difference_from_float32": diff, "weights": {"file": source.name, "sha256": backends.file_digest(source)}}


def write_index(folder: Path):
    """folder/index.json: the cards of the models in folder, by name (what the page lists)."""
    cards = []
    for path in sorted(folder.glob("*.json")):
        try:
            card = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(card, dict) and card.get("format") == CARD_FORMAT and (folder / card["model"]).is_file():
            cards.append({k: card[k] for k in ("name", "model", "direction", "precision", "bytes")}
                         | {"card": path.name})
    atomic_write_text(folder / "index.json", json.dumps({"models": cards}, indent=2) + "\n")
