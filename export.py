"""Export a generator to ONNX (eval mode: running BatchNorm statistics, no dropout) and check it.

    python export.py --weights weights/maps/G.pt --onnx sat2map.onnx

Batch, height and width are dynamic; height and width must be multiples of 256. The exported model
is run with onnxruntime on a random input and compared with PyTorch before the command succeeds.
"""
import argparse

import numpy as np
import torch

from predict import load_generator
from utils import fail


def export(G, path, opset=18):
    """Write G (in eval mode) to path with dynamic batch, height and width."""
    G = G.eval()
    x = torch.zeros(1, 3, 256, 256)
    torch.onnx.export(G, (x,), str(path), input_names=["satellite"], output_names=["map"], opset_version=opset,
                      dynamic_axes={"satellite": {0: "batch", 2: "height", 3: "width"},
                                    "map": {0: "batch", 2: "height", 3: "width"}}, dynamo=False)


def max_difference(G, path, shape=(2, 3, 256, 512), seed=0) -> float:
    """Largest |onnxruntime - PyTorch| over one random input of the given shape."""
    import onnxruntime as ort
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.no_grad():
        ref = G.eval()(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"satellite": x.numpy()})[0]
    return float(np.abs(got - ref).max())


def main(argv=None):
    p = argparse.ArgumentParser(description="Export a pix2pix generator to ONNX.", allow_abbrev=False)
    p.add_argument("--weights", required=True, help="last.pt, G.pt, an official .pth, or sat2map / map2sat")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    args = p.parse_args(argv)
    G, _ = load_generator(args.weights)
    export(G, args.onnx, args.opset)
    diff = max_difference(G, args.onnx)
    if diff > 1e-4:
        fail(f"{args.onnx}: onnxruntime differs from PyTorch by {diff:.2e} (limit 1e-4)")
    print(f"wrote {args.onnx}; onnxruntime matches PyTorch within {diff:.1e} on a 2x3x256x512 input")


if __name__ == "__main__":
    main()
