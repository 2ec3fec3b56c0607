"""70x70 PatchGAN discriminator of pix2pix (Isola et al. 2017, arXiv 1611.07004, appendix 6.1.2).

    python -c "from discriminator import Discriminator; print(Discriminator())"

It sees the condition and an image (real or generated) stacked on the channel axis and returns one
logit per 70x70 receptive field: (N, 1, 30, 30) for 256x256 inputs.
"""
import torch
import torch.nn as nn

from generator import norm_layer


class DBlock(nn.Module):
    """Conv 4x4 -> norm -> LeakyReLU(0.2)."""

    def __init__(self, c_in, c_out, norm, stride=2, use_norm=True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 4, stride, 1, bias=not use_norm or norm == "instance")
        self.norm = norm_layer(norm, c_out) if use_norm else nn.Identity()
        self.act = nn.LeakyReLU(0.2, True)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class Discriminator(nn.Module):
    """C64-C128-C256-C512 then a 1-channel conv; the first block has no norm."""

    def __init__(self, in_channels=6, ndf=64, norm="batch"):
        super().__init__()
        self.blocks = nn.Sequential(
            DBlock(in_channels, ndf, norm, use_norm=False),  # (N, 64, 128, 128)
            DBlock(ndf, ndf * 2, norm),  # (N, 128, 64, 64)
            DBlock(ndf * 2, ndf * 4, norm),  # (N, 256, 32, 32)
            DBlock(ndf * 4, ndf * 8, norm, stride=1),  # (N, 512, 31, 31)
        )
        self.head = nn.Conv2d(ndf * 8, 1, 4, 1, 1)  # (N, 1, 30, 30) logits

    def forward(self, a, b):  # condition (N, 3, H, W), image (N, 3, H, W)
        return self.head(self.blocks(torch.cat([a, b], 1)))
