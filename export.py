"""Export a generator to ONNX (eval mode: running BatchNorm statistics, no dropout) and check it.

    python export.py --weights weights/maps/G.pt --out sat2map.onnx
    python export.py --weights weights/maps/G.pt --web web/models/sat2map.onnx   # for the page in web/

Batch, height and width are dynamic; height and width must be multiples of 256 (128 for unet_128, 4 for
the ResNet generators). PyTorch's exporter (torch.export, then onnxscript) traces the generator on
--device. The exported model is run with onnxruntime on a random input (--seed) and compared with
PyTorch float32 on the CPU before the command succeeds. --web writes the browser-sized model and its
card instead (web_export.py).
"""
import sys
from pathlib import Path

import numpy as np
import torch

from config import WEIGHTS_HELP, add_device, command_parser
from generator import channels, load_generator
from utils import InputError, pick_device, replace_durably, run_command

MISSING = ("onnx and onnxruntime are needed for the export: pip install -r requirements.txt "
           "(or pip install onnx onnxruntime onnxscript)")


def export(G, path, opset=18):
    """Write G (in eval mode) to path with dynamic batch, height and width, via a temp file renamed
    into place: a failed export leaves no half-written model. PyTorch's exporter (torch.export, then
    onnxscript) traces G where it is (the device of its weights)."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise InputError(MISSING) from None
    G = G.eval()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    x = torch.zeros(1, channels(G)[0], 256, 256, device=next(G.parameters()).device)  # tracing runs G where it is
    try:
        torch.onnx.export(G, (x,), str(tmp), input_names=["satellite"], output_names=["map"],
                          opset_version=opset, dynamic_shapes=({0: "batch", 2: "height", 3: "width"},),
                          dynamo=True, external_data=False, verbose=False)  # one self-contained file
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def max_difference(G, path, shape=None, seed=0) -> float:
    """Largest |onnxruntime - PyTorch| over one random input of the given shape (default 2 x G's input
    channels x 256 x 512), both on the CPU in float32."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError(MISSING) from None
    x = torch.rand(shape or (2, channels(G)[0], 256, 512), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        ref = G.cpu().eval()(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"satellite": x.numpy()})[0]
    return float(np.abs(got - ref).max())


def main(argv=None):
    p = command_parser("Export a pix2pix generator to ONNX (eval mode) and check it with onnxruntime.")
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="output .onnx file")
    target.add_argument("--web", metavar="NAME.onnx", help="the browser-sized model for web/ instead (float16 "
                        "weights, or int8 over 60 MB), with its card NAME.json; e.g. web/models/NAME.onnx")
    p.rename("--onnx", "--out")
    p.add_argument("--int8", action="store_true", help="with --web: int8 weights even where float16 fits")
    p.add_argument("--calibrate", metavar="FOLDER", help="with --web: PNG/JPEG satellite pictures that int8 is "
                   "calibrated on and the difference from float32 is measured on (default: a random input)")
    p.add_argument("--pairs", action="store_true", help="with --calibrate: the pictures are A|B pairs; use "
                   "the weights' input half")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (18 to 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input the check runs on")
    add_device(p)
    args = p.parse_args(argv)
    if not 18 <= args.opset <= 20:  # what the exporter writes without a lossy version conversion
        p.error(f"--opset {args.opset}: expected 18 to 20")
    if not args.web and (args.int8 or args.calibrate or args.pairs):
        p.error("--int8, --calibrate and --pairs go with --web")
    flag = "--web" if args.web else "--out"
    out = Path(args.web or args.out)
    if out.is_dir():
        raise InputError(f"{flag} {out}: is a folder, expected an .onnx file name")
    if not out.parent.is_dir():
        raise InputError(f"{flag} {out}: folder {out.parent} does not exist")
    device = pick_device(args.device)
    G, config = load_generator(args.weights, device)
    if args.web:
        import web_export
        card = web_export.export_web(G, config, args.weights, out, args.int8, args.calibrate, args.pairs,
                                         args.seed, args.opset)
        diff = card["difference_from_float32"]
        print(f"wrote {out} ({card['precision']}, {card['bytes'] / 1e6:.1f} MB) and its card; it differs from float32 "
              f"by {diff['mean_levels']} levels on average, {diff['max_levels']} at most, on {diff['measured_on']}")
        return
    export(G, out, args.opset)
    diff = max_difference(G, out, seed=args.seed)
    if diff > 1e-4:
        raise InputError(f"{out}: onnxruntime differs from PyTorch by {diff:.2e} (limit 1e-4)")
    print(f"wrote {out}; onnxruntime matches PyTorch within {diff:.1e} on a 2x{channels(G)[0]}x256x512 input")


if __name__ == "__main__":
    sys.exit(run_command(main))
