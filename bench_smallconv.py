"""Time each of the U-Net-256's strided convolutions, forward and backward as training runs them, on
oneDNN and on smallconv's matrix-product route: the measurement behind smallconv.MAX_POSITIONS.

    python bench_smallconv.py                       # bf16 autocast and float32, batch 1
    python bench_smallconv.py --precisions bf16 --batch 4

Each layer runs alone at the size it has in the 256x256 U-Net (--ngf 64: the full-size network) on
--batch images, under bf16 autocast (as train.py on a CPU with native bf16) or in float32, both routes
forced whatever the rule would pick. Times are bench.measure medians over --min-time seconds. Prints a
Markdown table, then one JSON line.
"""
import json
import sys

import torch

import smallconv
from bench import measure
from cli import command_parser, parse_list, run_command
from generator import Generator

PRECISIONS = ("bf16", "float32")


def unet_layers(ngf: int) -> list:
    """(kind, C_in, C_out, input side) of each convolution smallconv may route (the Down and Up blocks'),
    as a 256x256 forward meets them; the first and the last, on the largest maps, are far over any
    bound in question and left out."""
    seen = []

    def record(m, args):
        seen.append(("down" if isinstance(m, smallconv.Conv2d) else "up", m.in_channels, m.out_channels,
                     args[0].shape[-1]))

    G = Generator(ngf=ngf)
    for m in G.modules():
        if isinstance(m, (smallconv.Conv2d, smallconv.ConvTranspose2d)):
            m.register_forward_pre_hook(record)
    with torch.no_grad():
        G(torch.zeros(1, G.in_channels, 256, 256))
    return seen[1:-1]


def time_layer(kind, c_in, c_out, side, batch, precision, min_time) -> dict:
    cls = smallconv.Conv2d if kind == "down" else smallconv.ConvTranspose2d
    m = cls(c_in, c_out, 4, 2, 1, bias=False)
    x = torch.randn(batch, c_in, side, side, requires_grad=True)

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            y = m(x)
        y.float().sum().backward()
        m.weight.grad = x.grad = None

    times = {}
    for route in ("onednn", "matmul"):
        with smallconv.route(route):
            times[route] = measure(step, 2, min_time)[0]
    positions = batch * (side * side // 4 if kind == "down" else side * side)
    return {"layer": f"{kind} {c_in}->{c_out} on {side}x{side}", "positions": positions,
            "precision": precision, "onednn_ms": 1e3 * times["onednn"], "matmul_ms": 1e3 * times["matmul"]}


def main(argv=None):
    p = command_parser("Time the U-Net's convolutions on oneDNN and as matrix products (smallconv.py).")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated: bf16, float32")
    p.add_argument("--batch", type=int, default=1, help="images per step (train.py's default: 1)")
    p.add_argument("--ngf", type=int, default=64, help="generator width (64: the full-size U-Net)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per layer and route")
    args = p.parse_args(argv)
    precisions = parse_list(args.precisions, "--precisions", str)
    if not precisions or set(precisions) - set(PRECISIONS):
        p.error(f"--precisions {args.precisions!r}: expected a comma-separated choice of {', '.join(PRECISIONS)}")
    if args.batch < 1 or args.ngf < 1 or args.min_time <= 0:
        p.error("--batch and --ngf: at least 1; --min-time: above 0")
    rows = [time_layer(*layer, args.batch, precision, args.min_time)
            for precision in precisions for layer in unet_layers(args.ngf)]
    print(f"cpu, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"smallconv.MAX_POSITIONS {smallconv.MAX_POSITIONS}")
    print("| precision | layer | positions | oneDNN ms | matmul ms | oneDNN / matmul |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['precision']} | {r['layer']} | {r['positions']} | {r['onednn_ms']:.2f} | "
              f"{r['matmul_ms']:.2f} | {r['onednn_ms'] / r['matmul_ms']:.2f}x |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
