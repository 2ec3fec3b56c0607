"""Export a generator to ONNX (eval mode: running BatchNorm statistics, no dropout) and check it.

    python export.py --weights weights/maps/G.pt --out sat2map.onnx

Batch, height and width are dynamic; height and width must be multiples of 256 (128 for unet_128, 4 for
the ResNet generators). PyTorch's exporter (torch.export, then onnxscript) traces the generator on
--device. The exported model is run with onnxruntime on a random input (--seed) and compared with
PyTorch float32 on the CPU before the command succeeds.
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
                          dynamo=True, verbose=False)
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
    p.add_argument("--out", required=True, help="output .onnx file")
    p.rename("--onnx", "--out")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (18 to 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input the check runs on")
    add_device(p)
    args = p.parse_args(argv)
    if not 18 <= args.opset <= 20:  # what the exporter writes without a lossy version conversion
        p.error(f"--opset {args.opset}: expected 18 to 20")
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder, expected an .onnx file name")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    device = pick_device(args.device)
    G, _ = load_generator(args.weights, device)
    export(G, out, args.opset)
    diff = max_difference(G, out, seed=args.seed)
    if diff > 1e-4:
        raise InputError(f"{out}: onnxruntime differs from PyTorch by {diff:.2e} (limit 1e-4)")
    print(f"wrote {out}; onnxruntime matches PyTorch within {diff:.1e} on a 2x{channels(G)[0]}x256x512 input")


if __name__ == "__main__":
    sys.exit(run_command(main))
