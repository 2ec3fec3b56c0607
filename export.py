"""Export a generator to ONNX (eval mode: running BatchNorm statistics, no dropout) and check it.

    python export.py --weights weights/maps/G.pt --out sat2map.onnx
    python export.py --weights weights/maps/G.pt --web web/models/sat2map.onnx --calibrate data/maps/val --pairs

Batch, height and width are dynamic; height and width must be multiples of 256 (128 for unet_128, 4 for
the ResNet generators). PyTorch's exporter (torch.export, then onnxscript) traces the generator on
--device. The exported model is run with onnxruntime on a random input (--seed) and compared with
PyTorch float32 on the CPU before the command succeeds. The U-Net's transposed convolutions are
written as convolutions (SubPixelUp): the same sums, in the form ONNX Runtime runs in int8 (--int8).
--web writes the browser-sized model and its card instead (web_export.py), from the export that
--backend onnxruntime runs (made on the CPU and cached beside the weights).
"""
import copy
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cli import InputError, command_parser, run_command
from config import WEIGHTS_HELP, add_device
from durable import replace_durably
from generator import channels, load_generator
from utils import pick_device

MISSING = ("onnx and onnxruntime are needed for the export: pip install -r requirements.txt "
           "(or pip install onnx onnxruntime onnxscript)")


class SubPixelUp(nn.Module):
    """A ConvTranspose2d of kernel 4, stride 2, padding 1 (the U-Net's up-sampling) as one convolution
    and a pixel shuffle. Output row 2m + a sums input rows m - 1 + a and m + a (kernel rows 3 - a and
    1 - a), and so for columns: each of the four output phases (a, b) is a 2x2 convolution of the input
    padded by 1, and the four are one convolution with four times the output channels. The sums are
    the transposed convolution's; ONNX Runtime quantizes a Conv to int8, while it runs a ConvTranspose
    in float32 between a dequantize and a quantize, which made the int8 model slower than float32."""
    TAPS = ((3, 1), (2, 0))  # kernel rows (columns) of the 2x2 taps of phase a (b) = 0, 1

    def __init__(self, up: nn.ConvTranspose2d):
        super().__init__()
        w = up.weight.detach()  # (C_in, C_out, 4, 4)
        phases = [w[:, :, self.TAPS[a]][..., self.TAPS[b]] for a in (0, 1) for b in (0, 1)]  # (C_in, C_out, 2, 2)
        # output channel o * 4 + phase: the order pixel_shuffle reads
        self.weight = nn.Parameter(torch.stack(phases, 2).permute(1, 2, 0, 3, 4).flatten(0, 1).contiguous())
        self.bias = None if up.bias is None else nn.Parameter(up.bias.detach().repeat_interleave(4))

    def forward(self, x):  # (N, C_in, H, W) -> (N, C_out, 2H, 2W)
        h, w = x.shape[-2:]
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias).unflatten(1, (-1, 4))  # (N, C_out, 4, H+1, W+1)
        y = torch.stack([y[:, :, 0, :h, :w], y[:, :, 1, :h, 1:], y[:, :, 2, 1:, :w], y[:, :, 3, 1:, 1:]], 2)
        return F.pixel_shuffle(y.flatten(1, 2), 2)


def for_export(G: nn.Module) -> nn.Module:
    """A copy of G in eval mode with every ConvTranspose2d(kernel 4, stride 2, padding 1) a SubPixelUp
    (the ResNet generators' transposed convolutions stay as they are)."""
    G = copy.deepcopy(G).eval()
    for parent in list(G.modules()):
        for name, m in list(parent.named_children()):
            if isinstance(m, nn.ConvTranspose2d) and (m.kernel_size, m.stride, m.padding, m.output_padding,
                                                      m.groups, m.dilation) == ((4, 4), (2, 2), (1, 1), (0, 0), 1, (1, 1)):
                setattr(parent, name, SubPixelUp(m))
    return G


def export(G, path, opset=18):
    """Write G in eval mode (for_export: its transposed convolutions as convolutions) to path with
    dynamic batch, height and width, via a temp file renamed into place: a failed export leaves no
    half-written model. PyTorch's exporter (torch.export, then onnxscript) traces G where it is (the
    device of its weights); G itself is left as it was."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise InputError(MISSING) from None
    G = for_export(G)
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
