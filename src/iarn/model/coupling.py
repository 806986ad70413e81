"""Affine coupling blocks with dense convolutional subnets (IRN's invertible block).

Forward, with `a` the first 3 channels (the LR-bound group), `b` the rest and `c` the scale
encoding:

    a' = a + F(b, c)
    s  = clamp * (2 * sigmoid(S(a', c)) - 1)
    b' = b * exp(s) + G(a', c)

`G` and `S` share one subnet that outputs both (design.md section 7: same math, fewer kernels).
Every subnet's last convolution starts at zero, so a fresh block is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

LR_CHANNELS = 3


class DenseBlock(nn.Module):
    """Five 3x3 convolutions with dense connections: (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, growth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels + k * growth, growth, 3, padding=1) for k in range(4))
        self.out = nn.Conv2d(in_channels + 4 * growth, out_channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        for conv in self.convs:
            nn.init.xavier_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs:
            features.append(self.act(conv(torch.cat(features, dim=1))))
        return self.out(torch.cat(features, dim=1))


class CouplingBlock(nn.Module):
    """Invertible affine coupling on (B, C, H, W), conditioned on (B or 1, K, H, W)."""

    def __init__(self, channels: int, cond_channels: int, growth: int, clamp: float) -> None:
        super().__init__()
        self.split = channels - LR_CHANNELS
        self.clamp = clamp
        self.f = DenseBlock(self.split + cond_channels, LR_CHANNELS, growth)
        self.gs = DenseBlock(LR_CHANNELS + cond_channels, 2 * self.split, growth)

    def _scale_shift(self, a: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.gs(_with_cond(a, cond)).float()
        log_scale = self.clamp * (2 * torch.sigmoid(out[:, : self.split]) - 1)
        return log_scale, out[:, self.split :]

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        a, b = x[:, :LR_CHANNELS], x[:, LR_CHANNELS:]
        a = a + self.f(_with_cond(b, cond)).float()
        log_scale, shift = self._scale_shift(a, cond)
        b = b * torch.exp(log_scale) + shift
        return torch.cat([a, b], dim=1)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        a, b = y[:, :LR_CHANNELS], y[:, LR_CHANNELS:]
        log_scale, shift = self._scale_shift(a, cond)
        b = (b - shift) * torch.exp(-log_scale)
        a = a - self.f(_with_cond(b, cond)).float()
        return torch.cat([a, b], dim=1)


def _with_cond(x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    if cond.shape[1] == 0:
        return x
    return torch.cat([x, cond.to(x.dtype).expand(x.shape[0], -1, -1, -1)], dim=1)
