"""Haar wavelet squeeze: exact, parameter-free, invertible.

(B, C, H, W) -> (B, 4C, ceil(H/2), ceil(W/2)), band-major: channels [0, C) are the 2x2 block
means, then the horizontal, vertical and diagonal details of every input channel. Odd sizes are
reflect-padded (replicate for a size of 1) before and cropped after, so
`haar_inverse(haar_forward(x), x.shape[-2:]) == x` up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pad_even(x: torch.Tensor) -> torch.Tensor:
    height, width = x.shape[-2:]
    pad_h, pad_w = height % 2, width % 2
    if not (pad_h or pad_w) and not torch.compiler.is_exporting():  # exported: any parity, one graph
        return x
    mode = "reflect" if min(height, width) > 1 else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def haar_forward(x: torch.Tensor) -> torch.Tensor:
    """One level: (B, C, H, W) -> (B, 4C, ceil(H/2), ceil(W/2))."""
    x = _pad_even(x)
    top_left = x[..., 0::2, 0::2]
    top_right = x[..., 0::2, 1::2]
    bottom_left = x[..., 1::2, 0::2]
    bottom_right = x[..., 1::2, 1::2]
    mean = (top_left + top_right + bottom_left + bottom_right) / 4
    horizontal = (top_left - top_right + bottom_left - bottom_right) / 4
    vertical = (top_left + top_right - bottom_left - bottom_right) / 4
    diagonal = (top_left - top_right - bottom_left + bottom_right) / 4
    return torch.cat([mean, horizontal, vertical, diagonal], dim=1)


def haar_inverse(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One level back: (B, 4C, h, w) -> (B, C, H, W) with H, W = `size` (<= 2h, 2w)."""
    mean, horizontal, vertical, diagonal = torch.chunk(y, 4, dim=1)
    top_left = mean + horizontal + vertical + diagonal
    top_right = mean - horizontal + vertical - diagonal
    bottom_left = mean + horizontal - vertical - diagonal
    bottom_right = mean - horizontal - vertical + diagonal
    batch, channels, height, width = mean.shape
    top = torch.stack([top_left, top_right], dim=-1).reshape(batch, channels, height, 2 * width)
    bottom = torch.stack([bottom_left, bottom_right], dim=-1).reshape(batch, channels, height, 2 * width)
    x = torch.stack([top, bottom], dim=-2).reshape(batch, channels, 2 * height, 2 * width)
    return x[..., : size[0], : size[1]]


def level_size(size: int, level: int) -> int:
    """Grid size after `level` Haar levels of an axis of `size` pixels."""
    for _ in range(level):
        size = (size + 1) // 2
    return size


def haar_forward_levels(x: torch.Tensor, levels: int) -> torch.Tensor:
    for _ in range(levels):
        x = haar_forward(x)
    return x


def haar_inverse_levels(y: torch.Tensor, levels: int, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of `haar_forward_levels` for an input of `size` (H, W)."""
    for level in range(levels - 1, -1, -1):
        y = haar_inverse(y, (level_size(size[0], level), level_size(size[1], level)))
    return y
