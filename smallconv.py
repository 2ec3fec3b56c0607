"""Convolutions over few positions as one matrix product each, in bf16 on a CPU.

The U-Net's inner layers hold most of its weights (up to 1024x512x4x4) and see the smallest maps
(1x1 to 8x8 at 256 px, batch 1). oneDNN's direct convolution runs them far below the CPU's peak in
bf16, its backward most of all: a 1024->512 transposed convolution on a 2x2 map took 43 ms forward and
backward on an AMD Zen 4, against 11 ms as one matmul and col2im (bench_smallconv.py;
docs/performance.md, "Small convolutions as matrix products"). Conv2d and ConvTranspose2d below are
the torch modules (the same parameters, state_dict and sums) that take that route where the rule
(pays) says: on a CPU, in bf16, when a layer has at most MAX_POSITIONS output positions (input
positions for the transposed one) over the batch. Everywhere else, and while torch.compile or
torch.export traces them (an exported graph keeps its Conv and ConvTranspose nodes), they are
nn.Conv2d and nn.ConvTranspose2d.
"""
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

# Above this many positions oneDNN's direct convolution is as fast or faster in bf16 (the table in
# docs/performance.md: even at 256, faster from 1024 on)
MAX_POSITIONS = 64
ROUTES = ("auto", "matmul", "onednn")
_route = "auto"  # set only through route()


@contextmanager
def route(name: str):
    """Run the modules below on one route whatever the rule says ('matmul' or 'onednn'), or by the
    rule ('auto'): bench.py's row and bench_smallconv.py time the other route with it."""
    global _route
    if name not in ROUTES:
        raise ValueError(f"route {name!r}: expected one of {', '.join(ROUTES)}")
    old, _route = _route, name
    try:
        yield
    finally:
        _route = old


def pays(x: torch.Tensor, positions: int) -> bool:
    """Whether to take the matmul route: on a CPU, bf16 over few positions. float32 keeps oneDNN: there
    the matmul was not reliably faster (docs/performance.md)."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if _route != "auto":
        return _route == "matmul"
    bf16 = x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                         and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    return bf16 and positions <= MAX_POSITIONS


class Conv2d(nn.Conv2d):
    """nn.Conv2d; over few positions on a CPU, unfold -> one matmul (fp32 accumulation in every dtype)."""

    def _conv_forward(self, x, weight, bias):
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        out_h, out_w = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if self.groups != 1 or self.padding_mode != "zeros" or not pays(x, n * out_h * out_w):
            return super()._conv_forward(x, weight, bias)
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C_in*kh*kw, L)
        # (C_out, C_in*kh*kw) @ (C_in*kh*kw, N*L): the batch joins the positions (a view for N = 1)
        y = torch.matmul(weight.flatten(1), cols.transpose(0, 1).flatten(1))
        y = y.unflatten(1, (n, out_h, out_w)).transpose(0, 1)
        return y if bias is None else y + bias.to(y.dtype).view(1, -1, 1, 1)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d; over few positions on a CPU, one matmul -> fold. The matmul rounds each tap's
    sum to the input's dtype; the fold adds an output's overlapping taps in float32 and rounds once more."""

    def forward(self, x, output_size=None):
        n, c_in, h, w = x.shape
        if (output_size is not None or self.groups != 1 or self.output_padding != (0, 0)
                or not pays(x, n * h * w)):
            return super().forward(x, output_size)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        out = ((h - 1) * sh - 2 * ph + dh * (kh - 1) + 1, (w - 1) * sw - 2 * pw + dw * (kw - 1) + 1)
        # (N*H*W, C_in) @ (C_in, C_out*kh*kw): the weight in its own layout, so that neither it nor its
        # gradient is copied transposed (under autocast both are cast, and a transposing cast is slow)
        cols = torch.matmul(x.flatten(2).transpose(1, 2).reshape(-1, c_in), self.weight.flatten(1))
        cols = cols.unflatten(0, (n, h * w)).transpose(1, 2)  # (N, C_out*kh*kw, H*W)
        y = F.fold(cols.float(), out, self.kernel_size, self.dilation, self.padding, self.stride)
        y = y.to(cols.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype).view(1, -1, 1, 1)
