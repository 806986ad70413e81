"""Affine coupling blocks with dense convolutional subnets (IRN's invertible block).

Forward, with `a` the first 3 channels (the LR-bound group), `b` the rest and `c` the scale
encoding:

    a' = a + F(b, c)
    s  = clamp * (2 * sigmoid(S(a', c)) - 1)
    b' = b * exp(s) + G(a', c)

`G` and `S` share one subnet that outputs both (the same math as two subnets, fewer kernels).
Every subnet's last convolution starts at zero, so a fresh block is the identity.

Precision: the subnets run in their weights' dtype (or the autocast dtype); the coupling
arithmetic above always runs in the dtype of `x` (float32, or float64 in tests), so bfloat16
weights cost accuracy in F, G and S but not invertibility of the block's algebra.
"""

from __future__ import annotations

import torch
from torch import nn

LR_CHANNELS = 3
CHANNEL_ALIGN = 8  # see DenseBlock._inference


class DenseBlock(nn.Module):
    """Five 3x3 convolutions with dense connections: (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, growth: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels + k * growth, growth, 3, padding=1) for k in range(4))
        self.out = nn.Conv2d(in_channels + 4 * growth, out_channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        # Inference only: pad channel counts to a multiple of this (1: no padding). Not a config
        # field: it changes float summation order, never the model.
        self.channel_align = CHANNEL_ALIGN
        if self.out.weight.is_meta:  # shapes only (weights.load_weights); initialising there costs a 1.6 s import
            return
        for conv in self.convs:
            nn.init.xavier_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Features (B, in - K, H, W) and condition (B or 1, K, H, W) -> (B, out, H, W), in the
        compute dtype."""
        dtype = _compute_dtype(x.device, self.out.weight.dtype)
        cond = cond.to(dtype).expand(x.shape[0], -1, -1, -1)
        if torch.is_grad_enabled():
            features = [torch.cat([x.to(dtype), cond], dim=1)]
            for conv in self.convs:
                features.append(self.act(conv(torch.cat(features, dim=1))))
            return self.out(torch.cat(features, dim=1))
        return self._inference(x, cond, dtype)

    def _inference(self, x: torch.Tensor, cond: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The forward pass without autograd, with the same result up to float summation order.

        One buffer that every convolution appends its output to, instead of re-concatenating
        all earlier features (autograd forbids this in-place pattern). With `channel_align` > 1
        the first segment (features and condition) is zero-padded, and the output convolution's
        rows too, to a multiple of it, so every convolution sees aligned channel counts
        (13 -> 16, 45 -> 48, ...: tensor-core kernels instead of a fallback on a GPU); the
        weights get zero columns to match. The buffer takes the weights' memory format.
        """
        align, growth = self.channel_align, self.convs[0].out_channels
        used = x.shape[1] + cond.shape[1]
        width = used + (-used) % align
        layout = torch.channels_last if _is_channels_last(self.out.weight) else torch.contiguous_format
        shape = (x.shape[0], width + 4 * growth, *x.shape[2:])
        features = torch.empty(shape, dtype=dtype, device=x.device, memory_format=layout)
        features[:, : x.shape[1]] = x
        features[:, x.shape[1] : used] = cond
        features[:, used:width] = 0
        for conv in self.convs:
            new = features[:, width : width + growth]
            self.act(new.copy_(_conv_aligned(conv, features[:, :width], used, 1)))
            width += growth
        return _conv_aligned(self.out, features, used, align)[:, : self.out.out_channels]


def _conv_aligned(conv: nn.Conv2d, features: torch.Tensor, used: int, align: int) -> torch.Tensor:
    """`conv` applied to `features`, whose first segment is padded from `used` channels to fill
    the gap between the weight's input channels and the features'; output rows padded to a
    multiple of `align` (zeros)."""
    weight, bias = conv.weight, conv.bias
    gap = features.shape[1] - weight.shape[1]
    if gap:
        weight = torch.cat([weight[:, :used], weight.new_zeros(weight.shape[0], gap, 3, 3), weight[:, used:]], dim=1)
    rows = (-weight.shape[0]) % align
    if rows:
        weight = torch.cat([weight, weight.new_zeros(rows, *weight.shape[1:])])
        bias = torch.cat([bias, bias.new_zeros(rows)])
    if _is_channels_last(conv.weight):
        weight = weight.contiguous(memory_format=torch.channels_last)
    return nn.functional.conv2d(features, weight, bias, padding=1)


def _is_channels_last(weight: torch.Tensor) -> bool:
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


class CouplingBlock(nn.Module):
    """Invertible affine coupling on (B, C, H, W), conditioned on (B or 1, K, H, W)."""

    def __init__(self, channels: int, cond_channels: int, growth: int, clamp: float) -> None:
        super().__init__()
        self.split = channels - LR_CHANNELS
        self.clamp = clamp
        self.f = DenseBlock(self.split + cond_channels, LR_CHANNELS, growth)
        self.gs = DenseBlock(LR_CHANNELS + cond_channels, 2 * self.split, growth)

    def _scale_shift(self, a: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.gs(a, cond).to(a.dtype)
        log_scale = self.clamp * (2 * torch.sigmoid(out[:, : self.split]) - 1)
        return log_scale, out[:, self.split :]

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        a, b = x[:, :LR_CHANNELS], x[:, LR_CHANNELS:]
        a = a + self.f(b, cond).to(a.dtype)
        log_scale, shift = self._scale_shift(a, cond)
        b = b * torch.exp(log_scale) + shift
        return torch.cat([a, b], dim=1)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        a, b = y[:, :LR_CHANNELS], y[:, LR_CHANNELS:]
        log_scale, shift = self._scale_shift(a, cond)
        b = (b - shift) * torch.exp(-log_scale)
        a = a - self.f(b, cond).to(a.dtype)
        return torch.cat([a, b], dim=1)


def _compute_dtype(device: torch.device, weight_dtype: torch.dtype) -> torch.dtype:
    # The device-type forms of these two functions need torch >= 2.4.
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return weight_dtype
