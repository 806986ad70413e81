"""Position-aware scale encoding (PSE), docs/design.md section 3.

For working-grid row `i` (each grid cell spans `cell` HR pixels) of an image rescaled from `H` to
`h` rows, the cell centre sits at `u = (i + 0.5) * cell * h / H - 0.5` in LR pixel units, and
its phase against the LR grid is `delta = u - round(u)` in [-0.5, 0.5]. Columns likewise.
The maps depend only on geometry, so down- and upscaling compute the same ones.

`middle_encoding` is the `middle` mode's (model/modes/): its grids are cut from the HR
*upsampled* to a middle image, so a cell is placed against the HR pixel grid instead (its
leading edge `e = i * cell * H / M`, `delta = e - round(e)`, which is 0 wherever the geometry is
IRN's x2 or x4), and the ratio maps give the grid's size over the HR's, `M / (cell * H)`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..resample import as_float64

ENCODINGS = ("pse", "sincos", "scale", "off")


def encoding_channels(kind: str) -> int:
    return {"pse": 4, "sincos": 6, "scale": 4, "off": 4}[kind]


def _phase(start: int, count: int, cell: int, ratio: float, centre: bool = True) -> torch.Tensor:
    """Phases of cells `start`..: of their centres against a pixel grid `ratio` times as fine
    (`centre`), or of their leading edges."""
    index = torch.arange(start, start + count, dtype=torch.float64)
    u = (index + 0.5) * cell * ratio - 0.5 if centre else index * cell * ratio
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

    Computed in float64 on the CPU (so devices without float64 work), cached per geometry and
    device; the result is shared, so never modify it in place.

    `pse`: [1/s_h, 1/s_w, delta_h, delta_w]; `sincos`: [1/s_h, 1/s_w, sin, cos of 2*pi*delta_h,
    then of delta_w]; `scale`: [1/s_h, 1/s_w, 0, 0] (the scale without the position: the
    ablation that isolates the position-aware part); `off`: four all-zero maps (no encoding).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (kind, tuple(grid_start), tuple(grid_size), cell, tuple(hr_size), tuple(lr_size), device)
    return _cached_encoding(*key)


def middle_encoding(
    kind: str,
    grid_start: tuple[int, int],
    grid_size: tuple[int, int],
    cell: int,
    hr_size: tuple[int, int],
    middle_size: tuple[int, int],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """As `scale_encoding`, for a grid of `cell`-pixel cells of the middle image (`middle_size`,
    an upsampling of the HR): ratio maps `M / (cell * H)`, phases of the cells' leading edges on
    the HR pixel grid (module docstring)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (kind, tuple(grid_start), tuple(grid_size), cell, tuple(hr_size), tuple(middle_size), device, "middle")
    return _cached_encoding(*key)


@lru_cache(maxsize=256)
def _cached_encoding(kind, grid_start, grid_size, cell, hr_size, lr_size, device, lattice="lr") -> torch.Tensor:
    with torch.inference_mode(False):  # an inference tensor could not be reused by training
        return _encoding(kind, grid_start, grid_size, cell, hr_size, lr_size, lattice).to(device)


def _encoding(kind, grid_start, grid_size, cell, hr_size, lr_size, lattice="lr") -> torch.Tensor:
    """`lattice` "lr": phases against the LR grid (lr_size); "middle": `lr_size` is the middle
    image's size and phases are taken against the HR grid."""
    rows, cols = grid_size
    if kind == "off":
        return torch.zeros(1, 4, rows, cols)
    if lattice == "middle":
        middle = lr_size
        inv_h, inv_w = middle[0] / (cell * hr_size[0]), middle[1] / (cell * hr_size[1])
        delta_h = _phase(grid_start[0], rows, cell, hr_size[0] / middle[0], centre=False)
        delta_w = _phase(grid_start[1], cols, cell, hr_size[1] / middle[1], centre=False)
    else:
        inv_h, inv_w = lr_size[0] / hr_size[0], lr_size[1] / hr_size[1]
        delta_h = _phase(grid_start[0], rows, cell, inv_h)
        delta_w = _phase(grid_start[1], cols, cell, inv_w)
    delta_h, delta_w = delta_h[:, None].expand(rows, cols), delta_w[None, :].expand(rows, cols)
    maps = [torch.full((rows, cols), inv_h, dtype=torch.float64), torch.full((rows, cols), inv_w, dtype=torch.float64)]
    if kind == "pse":
        maps += [delta_h, delta_w]
    elif kind == "scale":
        maps += [torch.zeros_like(delta_h), torch.zeros_like(delta_w)]
    elif kind == "sincos":
        for delta in (delta_h, delta_w):
            maps += [torch.sin(2 * math.pi * delta), torch.cos(2 * math.pi * delta)]
    else:
        raise ValueError(f"unknown encoding {kind!r}; expected one of {ENCODINGS}")
    return torch.stack([m.float() for m in maps])[None]


# -- graph twins (export.py): whole-image maps from tensor arithmetic on symbolic sizes ----------


def scale_encoding_graph(kind: str, grid: tuple, cell: int, hr_size: tuple, lr_size: tuple, like: torch.Tensor):
    """`scale_encoding` of a whole image's grid for a graph: (1, K, gh, gw)."""
    ratios = [as_float64(lr_size[k], like) / as_float64(hr_size[k], like) for k in range(2)]
    centres = [lambda index, k=k: (index + 0.5) * cell * ratios[k] - 0.5 for k in range(2)]
    return _maps_graph(kind, grid, ratios, centres, like)


def middle_encoding_graph(kind: str, grid: tuple, cell: int, hr_size: tuple, middle: tuple, like: torch.Tensor):
    """`middle_encoding` of a whole image's grid for a graph: (1, K, gh, gw)."""
    ratios = [as_float64(middle[k], like) / (cell * as_float64(hr_size[k], like)) for k in range(2)]
    steps = [as_float64(hr_size[k], like) / as_float64(middle[k], like) for k in range(2)]
    return _maps_graph(kind, grid, ratios, [lambda index, k=k: index * cell * steps[k] for k in range(2)], like)


def _maps_graph(kind: str, grid: tuple, ratios: list, positions: list, like: torch.Tensor) -> torch.Tensor:
    """Ratio maps and the phases of `positions(index)` per axis, as `_encoding`."""
    rows, cols = grid
    device = like.device
    zeros = torch.zeros((1, 1, rows, cols), dtype=torch.float32, device=device)
    if kind == "off":
        return zeros.expand(1, 4, rows, cols)

    def phase(count, axis):
        u = positions[axis](torch.arange(count, dtype=torch.float64, device=device))
        return u - torch.round(u)

    delta_h = phase(rows, 0).to(torch.float32)[None, None, :, None] + zeros
    delta_w = phase(cols, 1).to(torch.float32)[None, None, None, :] + zeros
    maps = [ratios[0].to(torch.float32) + zeros, ratios[1].to(torch.float32) + zeros]
    if kind == "pse":
        maps += [delta_h, delta_w]
    elif kind == "scale":
        maps += [zeros, zeros]
    elif kind == "sincos":
        for delta in (delta_h, delta_w):
            maps += [torch.sin(2 * math.pi * delta), torch.cos(2 * math.pi * delta)]
    else:
        raise ValueError(f"unknown encoding {kind!r}; expected one of {ENCODINGS}")
    return torch.cat(maps, dim=1)
