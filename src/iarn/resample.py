"""The reference bicubic resampler, as explicit separable matrices.

`resize(x, size)` equals `F.interpolate(x, size, mode="bicubic", antialias=True,
align_corners=False)` (float32 rounding aside), the reference bicubic of docs/design.md section 2.
Writing it as matrices lets a tile use exactly the rows and columns of the whole-image
resampler that fall inside it, so tiled and untiled processing share one geometry.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

_A = -0.5  # Keys' cubic parameter that PyTorch's antialiased bicubic (and Pillow) use


def _cubic(t: torch.Tensor) -> torch.Tensor:
    t = t.abs()
    near = ((_A + 2) * t - (_A + 3)) * t * t + 1
    far = (((t - 5) * t + 8) * t - 4) * _A
    return torch.where(t < 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def _windows(in_size: int, out_size: int, out_start: int, out_stop: int):
    """Per output index in [out_start, out_stop): first input index, window width, weights."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    width = int(math.ceil(support)) * 2 + 1
    idx = torch.arange(out_start, out_stop, dtype=torch.float64)
    center = scale * (idx + 0.5)
    first = torch.clamp(torch.trunc(center - support + 0.5), min=0)
    last = torch.clamp(torch.trunc(center + support + 0.5), max=in_size)
    size = last - first
    k = torch.arange(width, dtype=torch.float64)
    weights = _cubic((first[:, None] + k[None, :] - center[:, None] + 0.5) * inv)
    weights = torch.where(k[None, :] < size[:, None], weights, torch.zeros_like(weights))
    total = weights.sum(dim=1, keepdim=True)
    weights = weights / torch.where(total == 0, torch.ones_like(total), total)
    return first.long(), size.long(), weights


def input_span(in_size: int, out_size: int, out_start: int, out_stop: int) -> tuple[int, int]:
    """Input index range [a, b) that output indices [out_start, out_stop) read from."""
    first, size, _ = _windows(in_size, out_size, out_start, out_stop)
    return int(first.min()), int((first + size).max())


def resample_matrix(
    in_size: int,
    out_size: int,
    out_range: tuple[int, int] | None = None,
    in_range: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rows `out_range` and columns `in_range` of the (out_size, in_size) resampling matrix.

    Weights of input indices outside `in_range` are dropped (the caller makes the crop wide
    enough, see `input_span`). Built in float64 on the CPU, then cast and moved (so devices
    without float64, such as Apple's MPS, work). Matrices of up to `CACHE_MAX_ELEMENTS` are
    cached per geometry, dtype and device (a training step and a tiled image reuse a few
    geometries many times); the result is shared, so never modify it in place.
    """
    o0, o1 = out_range or (0, out_size)
    i0, i1 = in_range or (0, in_size)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if (o1 - o0) * (i1 - i0) <= CACHE_MAX_ELEMENTS:
        return _cached_matrix(in_size, out_size, (o0, o1), (i0, i1), dtype, device)
    return _build_matrix(in_size, out_size, (o0, o1), (i0, i1)).to(dtype=dtype, device=device)


CACHE_MAX_ELEMENTS = 1 << 20  # 4 MB in float32; with 64 entries at most 256 MB


@lru_cache(maxsize=64)
def _cached_matrix(in_size, out_size, out_range, in_range, dtype, device) -> torch.Tensor:
    with torch.inference_mode(False):  # an inference tensor could not be reused by training
        return _build_matrix(in_size, out_size, out_range, in_range).to(dtype=dtype, device=device)


def _build_matrix(in_size: int, out_size: int, out_range: tuple[int, int], in_range: tuple[int, int]) -> torch.Tensor:
    (o0, o1), (i0, i1) = out_range, in_range
    first, _, weights = _windows(in_size, out_size, o0, o1)
    cols = first[:, None] + torch.arange(weights.shape[1])[None, :] - i0
    keep = (cols >= 0) & (cols < i1 - i0) & (weights != 0)
    matrix = torch.zeros(o1 - o0, i1 - i0, dtype=torch.float64)
    rows = torch.arange(o1 - o0)[:, None].expand_as(cols)
    matrix.index_put_((rows[keep], cols[keep]), weights[keep], accumulate=True)
    return matrix


def apply_matrices(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., h, w) with `rows` (h, H) and `cols` (w, W)."""
    x = torch.matmul(x, cols.t())
    return torch.matmul(rows, x)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Reference bicubic resize of (B, C, H, W) to (B, C, h, w); no clamping."""
    height, width = x.shape[-2:]
    if (height, width) == tuple(size):
        return x
    rows = resample_matrix(height, size[0], dtype=x.dtype, device=x.device)
    cols = resample_matrix(width, size[1], dtype=x.dtype, device=x.device)
    return apply_matrices(x, rows, cols)
