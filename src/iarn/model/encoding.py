"""Position-aware scale encoding (PSE), design.md section 3.

For working-grid row `i` (each grid cell spans `cell` HR pixels) of an image rescaled from `H` to
`h` rows, the cell centre sits at `u = (i + 0.5) * cell * h / H - 0.5` in LR pixel units, and
its phase against the LR grid is `delta = u - round(u)` in [-0.5, 0.5]. Columns likewise.
The maps depend only on geometry, so down- and upscaling compute the same ones.
"""

from __future__ import annotations

import math

import torch

ENCODINGS = ("pse", "sincos", "off")


def encoding_channels(kind: str) -> int:
    return {"pse": 4, "sincos": 6, "off": 4}[kind]


def _phase(start: int, count: int, cell: int, ratio: float, device) -> torch.Tensor:
    index = torch.arange(start, start + count, dtype=torch.float64, device=device)
    u = (index + 0.5) * cell * ratio - 0.5
    return u - torch.round(u)


def scale_encoding(
    kind: str,
    grid_start: tuple[int, int],
    grid_size: tuple[int, int],
    cell: int,
    hr_size: tuple[int, int],
    lr_size: tuple[int, int],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Maps of shape (1, K, grid_h, grid_w), float32, for grid rows/cols starting at `grid_start`.

    `pse`: [1/s_h, 1/s_w, delta_h, delta_w]; `sincos`: [1/s_h, 1/s_w, sin, cos of 2*pi*delta_h,
    then of delta_w]; `off`: four all-zero maps (the ablation without encoding).
    """
    rows, cols = grid_size
    inv_h, inv_w = lr_size[0] / hr_size[0], lr_size[1] / hr_size[1]
    if kind == "off":
        return torch.zeros(1, 4, rows, cols, device=device)
    delta_h = _phase(grid_start[0], rows, cell, inv_h, device)[:, None].expand(rows, cols)
    delta_w = _phase(grid_start[1], cols, cell, inv_w, device)[None, :].expand(rows, cols)
    maps = [torch.full((rows, cols), inv_h, device=device), torch.full((rows, cols), inv_w, device=device)]
    if kind == "pse":
        maps += [delta_h, delta_w]
    elif kind == "sincos":
        for delta in (delta_h, delta_w):
            maps += [torch.sin(2 * math.pi * delta), torch.cos(2 * math.pi * delta)]
    else:
        raise ValueError(f"unknown encoding {kind!r}; expected one of {ENCODINGS}")
    return torch.stack([m.float() for m in maps])[None]
