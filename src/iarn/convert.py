"""Between image arrays and tensors: (H, W, 3) uint8 <-> (1, 3, H, W)."""

from __future__ import annotations

import numpy as np
import torch


def to_tensor(rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) uint8 on `device` (the tiler converts to float per tile)."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(device)


def to_uint8(x: torch.Tensor, strip_pixels: int = 1 << 22) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] on any device -> (H, W, 3) uint8, rounded.

    Converted in strips of about `strip_pixels` pixels, so a large image needs no second float
    copy."""
    height, width = x.shape[-2:]
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, strip_pixels // max(1, width))
    for top in range(0, height, rows):
        strip = x[0, :, top : top + rows].mul(255).round_().clamp_(0, 255).to(torch.uint8)
        out[top : top + rows] = strip.permute(1, 2, 0).cpu().numpy()
    return out
