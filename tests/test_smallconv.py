"""smallconv: the U-Net's small convolutions as matrix products in bf16 on a CPU, the same sums as
nn.Conv2d / nn.ConvTranspose2d, and taken exactly where the rule says."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import bench_smallconv
import smallconv
from generator import Generator, init_weights


class Ops(TorchDispatchMode):
    """Records the aten ops that run (below autograd and autocast: what really computes)."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def ops_of(m, x, autocast=False):
    with Ops() as ops, torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        m(x).float().sum().backward()
    return ops.names


def layer(kind, c_in=32, c_out=16, bias=False, dtype=torch.float32):
    cls = smallconv.Conv2d if kind == "conv" else smallconv.ConvTranspose2d
    return cls(c_in, c_out, 4, 2, 1, bias=bias).to(dtype)


@pytest.mark.parametrize("kind", ["conv", "up"])
def test_the_matmul_route_runs_in_bf16_over_few_positions_only(kind):
    side = 8 if kind == "conv" else 4  # 16 positions either way (output for conv, input for up)
    x = torch.randn(1, 32, side, side)
    m = layer(kind)
    route = {"mm", "im2col" if kind == "conv" else "col2im"}
    # bf16 by autocast (training) and by bf16 weights and inputs (inference): the matmul route
    assert route <= ops_of(m, x.requires_grad_(), autocast=True) and "convolution" not in ops_of(m, x, True)
    assert route <= ops_of(layer(kind, dtype=torch.bfloat16), x.detach().bfloat16().requires_grad_())
    assert "convolution" in ops_of(m, x) and "mm" not in ops_of(m, x)  # float32: oneDNN
    big = torch.randn(1, 32, side * 8, side * 8, requires_grad=True)  # 64x the positions: over the bound
    assert "convolution" in ops_of(m, big, autocast=True) and "mm" not in ops_of(m, big, autocast=True)
    with smallconv.route("onednn"):
        assert "convolution" in ops_of(m, x, autocast=True) and "mm" not in ops_of(m, x, autocast=True)


@pytest.mark.parametrize("kind", ["conv", "up"])
@pytest.mark.parametrize("batch, side, bias", [(1, 2, False), (1, 8, True), (3, 4, False), (4, 2, True)])
def test_the_matmul_route_computes_the_convolution_and_its_gradients(kind, batch, side, bias):
    torch.manual_seed(0)
    m = layer(kind, bias=bias, dtype=torch.bfloat16)
    if bias:
        nn.init.normal_(m.bias)
    x = torch.randn(batch, 32, side, side, dtype=torch.bfloat16, requires_grad=True)
    y = m(x)
    g = torch.randn_like(y)
    y.backward(g)
    # the same bf16 values in float64 through PyTorch's own convolution
    x64, w64 = x.detach().double().requires_grad_(), m.weight.detach().double().requires_grad_()
    b64 = None if m.bias is None else m.bias.detach().double()
    conv = F.conv2d if kind == "conv" else F.conv_transpose2d
    y64 = conv(x64, w64, b64, 2, 1)
    y64.backward(g.double())
    assert y.dtype == torch.bfloat16 and y.shape == y64.shape
    for got, want in ((y, y64), (x.grad, x64.grad), (m.weight.grad, w64.grad)):
        # bf16 keeps 8 bits: a few roundings of the result and its partial sums, never a wrong sum
        assert (got.double() - want).abs().max() <= 0.02 * want.abs().max()


def test_a_generator_step_in_bf16_is_as_close_to_float32_on_either_route():
    torch.manual_seed(0)
    G = init_weights(Generator(ngf=8))
    x = torch.rand(1, 3, 256, 256) * 2 - 1

    def step(amp):
        G.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=amp):
            y = G(x)
        y.float().square().mean().backward()
        return y.float().detach(), torch.cat([p.grad.flatten() for p in G.parameters()])

    y32, g32 = step(False)
    y, g = step(True)
    with smallconv.route("onednn"):
        y_onednn, g_onednn = step(True)
    assert not torch.equal(y, y_onednn)  # the two routes really ran: their bf16 roundings differ
    # BatchNorm over the 2x2 and 4x4 maps of batch 1 magnifies every rounding, so bf16 is far from
    # float32 on either route (mean 0.027, max 0.24 here); the matmul route must be no farther
    err, err_onednn = (y - y32).abs().mean(), (y_onednn - y32).abs().mean()
    assert err < 1.25 * err_onednn
    assert F.cosine_similarity(g, g32, 0) > 0.99 and F.cosine_similarity(g_onednn, g32, 0) > 0.99


def test_bench_smallconv_times_every_inner_layer_on_both_routes(capsys):
    assert bench_smallconv.main(["--ngf", "8", "--min-time", "0.01", "--precisions", "bf16,float32"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(rows) == 2 * 13 and {r["precision"] for r in rows} == {"bf16", "float32"}
    assert all(r["onednn_ms"] > 0 and r["matmul_ms"] > 0 for r in rows)
    assert [r["positions"] for r in rows[:13]] == [4096, 1024, 256, 64, 16, 4, 1, 1, 4, 16, 64, 256, 1024]
    with pytest.raises(SystemExit):
        bench_smallconv.main(["--precisions", "fp8"])
    assert "--precisions 'fp8': expected" in capsys.readouterr().err
