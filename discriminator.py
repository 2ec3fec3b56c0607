"""Discriminators of pix2pix: the paper's 70x70 PatchGAN (Isola et al. 2017, arXiv 1611.07004,
appendix 6.1.2) and the other --netD choices of the official code (n_layers, pixel).

    python -c "from discriminator import define_D; print(define_D('basic'))"

Each sees the condition and an image (real or generated) stacked on the channel axis and returns one
logit per receptive field: (N, 1, 30, 30) for 256x256 inputs with the PatchGAN.
"""
import torch
import torch.nn as nn

from generator import conv_bias, norm_layer

NETD = ("basic", "n_layers", "pixel")


class DBlock(nn.Module):
    """Conv 4x4 -> norm -> LeakyReLU(0.2)."""

    def __init__(self, c_in, c_out, norm, stride=2, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 4, stride, 1, bias=not use_norm or conv_bias(norm))
        self.norm = norm_layer(norm, c_out) if use_norm else nn.Identity()
        self.act = nn.LeakyReLU(0.2, True)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class Discriminator(nn.Module):
    """PatchGAN: n_layers stride-2 blocks (the first without norm, widths doubling up to 8 * ndf), one
    stride-1 block, then a 1-channel conv. n_layers 3 is the paper's C64-C128-C256-C512 (70x70)."""

    def __init__(self, in_channels=6, ndf=64, norm="batch", n_layers=3):
        super().__init__()
        widths = [ndf * min(2 ** i, 8) for i in range(n_layers + 1)]  # 64-128-256-512 for n_layers 3
        self.blocks = nn.Sequential(
            DBlock(in_channels, ndf, norm, use_norm=False),  # (N, 64, 128, 128)
            *(DBlock(widths[i - 1], widths[i], norm) for i in range(1, n_layers)),  # ... (N, 256, 32, 32)
            DBlock(widths[-2], widths[-1], norm, stride=1),  # (N, 512, 31, 31)
        )
        self.head = nn.Conv2d(widths[-1], 1, 4, 1, 1)  # (N, 1, 30, 30) logits

    def forward(self, a, b):  # condition (N, input_nc, H, W), image (N, output_nc, H, W)
        return self.head(self.blocks(torch.cat([a, b], 1)))


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN (the official 'pixel'): judges each pixel's colour alone, no spatial context."""

    def __init__(self, in_channels=6, ndf=64, norm="batch"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, ndf, 1)
        self.act1 = nn.LeakyReLU(0.2, True)
        self.conv2 = nn.Conv2d(ndf, ndf * 2, 1, bias=conv_bias(norm))
        self.norm = norm_layer(norm, ndf * 2)
        self.act2 = nn.LeakyReLU(0.2, True)
        self.head = nn.Conv2d(ndf * 2, 1, 1, bias=conv_bias(norm))  # the official code's bias choice

    def forward(self, a, b):  # condition (N, input_nc, H, W), image (N, output_nc, H, W) -> (N, 1, H, W)
        h = self.act1(self.conv1(torch.cat([a, b], 1)))
        return self.head(self.act2(self.norm(self.conv2(h))))


def define_D(netD="basic", ndf=64, n_layers_D=3, norm="batch", in_channels=6) -> nn.Module:
    """The discriminator --netD names, uninitialised: basic is n_layers with n_layers_D = 3."""
    if netD in ("basic", "n_layers"):
        return Discriminator(in_channels, ndf, norm, 3 if netD == "basic" else n_layers_D)
    if netD == "pixel":
        return PixelDiscriminator(in_channels, ndf, norm)
    raise ValueError(f"--netD must be one of {', '.join(NETD)}, got {netD!r}")
