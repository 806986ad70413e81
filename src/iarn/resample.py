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
    first, _, weights = _windows(in_size, out_size, *out_range)
    return _band_to_dense(first, weights, in_range)


def _band_to_dense(first: torch.Tensor, weights: torch.Tensor, in_range: tuple[int, int]) -> torch.Tensor:
    """Dense (rows, in_range) float64 matrix from each row's first column and its band of
    weights; columns outside `in_range` are dropped."""
    i0, i1 = in_range
    cols = first[:, None] + torch.arange(weights.shape[1])[None, :] - i0
    keep = (cols >= 0) & (cols < i1 - i0) & (weights != 0)
    matrix = torch.zeros(weights.shape[0], i1 - i0, dtype=torch.float64)
    rows = torch.arange(weights.shape[0])[:, None].expand_as(cols)
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


# -- graph twins (export.py): the same matrices from tensor arithmetic on symbolic sizes --------


def as_float64(size, like: torch.Tensor) -> torch.Tensor:
    """A scalar float64 tensor holding a (possibly symbolic, in a traced graph) size."""
    return torch.ones((), dtype=torch.float64, device=like.device) * size


def resample_matrix_graph(in_size, out_size, like: torch.Tensor) -> torch.Tensor:
    """`resample_matrix(in_size, out_size)` from tensor arithmetic alone (dense: every weight
    outside the kernel's support is 0), float32."""
    return _resample_matrix64(in_size, out_size, like).to(torch.float32)


def _resample_matrix64(in_size, out_size, like: torch.Tensor) -> torch.Tensor:
    scale = as_float64(in_size, like) / as_float64(out_size, like)
    support = torch.where(scale >= 1, 2 * scale, torch.full_like(scale, 2.0))
    inverse = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
    center = scale * (torch.arange(out_size, dtype=torch.float64, device=like.device) + 0.5)
    index = torch.arange(in_size, dtype=torch.float64, device=like.device)
    offset = index[None, :] - center[:, None] + 0.5
    weights = torch.where(offset.abs() < support, _cubic(offset * inverse), torch.zeros_like(offset))
    total = weights.sum(dim=1, keepdim=True)
    return weights / torch.where(total == 0, torch.ones_like(total), total)


def resize_graph(x: torch.Tensor, size: tuple) -> torch.Tensor:
    """`resize` for a graph: (B, C, H, W) -> (B, C, h, w), sizes possibly symbolic."""
    return apply_matrices(
        x, resample_matrix_graph(x.shape[-2], size[0], x), resample_matrix_graph(x.shape[-1], size[1], x)
    )


# -- the exact inverse of an upsampling ---------------------------------------------------------
#
# An upsampling by the reference bicubic (out >= in) is an (out, in) matrix U of full column rank,
# so the image it came from is recovered exactly by the least-squares inverse P = G^-1 U^T with
# G = U^T U, which also projects away whatever an upsampled image cannot contain. P is dense in
# principle, but G is banded and its inverse decays fast away from the diagonal, so each chunk of
# rows is solved with the principal window of G that reaches PINV_MARGIN rows beyond it (an
# SPD system, no worse conditioned than G) and entries below PINV_TOLERANCE of a row's largest
# are dropped: a banded matrix that matches the dense inverse to about 1e-9
# (tests/test_resample.py), whose rows a tile can take as it takes the bicubic ones. Ratios close
# to 1 (an odd side and one more: cond(U) 10-15) decay slowest, hence the wider margin there.

PINV_CHUNK = 128
PINV_TOLERANCE = 1e-10


def _pinv_margin(small: int, large: int) -> int:
    return 64 if large >= 1.1 * small else 512


@lru_cache(maxsize=32)
def _pinv_band(small: int, large: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first column, weights (small, width)) of the banded least-squares inverse of the
    (large, small) upsampling matrix, float64."""
    if large < small:
        raise ValueError(f"the least-squares inverse needs an upsampling, got {small} -> {large}")
    if large == small:
        return torch.arange(small), torch.ones(small, 1, dtype=torch.float64)
    first, size, _ = _windows(small, large, 0, large)
    last = first + size
    margin = _pinv_margin(small, large)
    starts, blocks = [], []
    for a in range(0, small, PINV_CHUNK):
        b = min(small, a + PINV_CHUNK)
        lo, hi = max(0, a - margin), min(small, b + margin)
        touching = torch.nonzero((last > lo) & (first < hi)).flatten()
        j0, j1 = int(touching.min()), int(touching.max()) + 1
        upsample = _build_matrix(small, large, (j0, j1), (lo, hi))  # every row that reads [lo, hi)
        gram = upsample.t() @ upsample
        unit = torch.zeros(hi - lo, b - a, dtype=torch.float64)
        unit[torch.arange(a - lo, b - lo), torch.arange(b - a)] = 1
        inverse_rows = torch.cholesky_solve(unit, torch.linalg.cholesky(gram))  # G^-1's columns = its rows
        block = inverse_rows.t() @ upsample.t()
        significant = block.abs() > PINV_TOLERANCE * block.abs().amax(dim=1, keepdim=True)
        index = torch.arange(block.shape[1])
        k0 = torch.where(significant, index, block.shape[1]).amin(dim=1)
        k1 = torch.where(significant, index, -1).amax(dim=1) + 1
        starts.append((j0 + k0, k1 - k0))
        blocks.append((j0, k0, block))
    width = max(int(count.max()) for _, count in starts)
    first_col = torch.cat([start for start, _ in starts]).clamp(max=large - width)
    weights = torch.zeros(small, width, dtype=torch.float64)
    row = 0
    for (j0, k0, block), (_, count) in zip(blocks, starts):
        n = block.shape[0]
        cols = first_col[row : row + n, None] - j0 + torch.arange(width)[None, :]  # block columns
        inside = (cols >= k0[:, None]) & (cols < (k0 + count)[:, None])
        weights[row : row + n] = torch.where(inside, block.gather(1, cols.clamp(0, block.shape[1] - 1)), 0)
        row += n
    return first_col, weights


def pinv_span(small: int, large: int, out_start: int, out_stop: int) -> tuple[int, int]:
    """Columns [a, b) of the upsampled side that rows [out_start, out_stop) of its least-squares
    inverse read (the analogue of `input_span`)."""
    starts, weights = _pinv_band(small, large)
    return int(starts[out_start:out_stop].min()), int(starts[out_start:out_stop].max()) + weights.shape[1]


def pinv_matrix(
    small: int,
    large: int,
    out_range: tuple[int, int] | None = None,
    in_range: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rows `out_range` and columns `in_range` of the (small, large) least-squares inverse of the
    (large, small) bicubic upsampling; as `resample_matrix` (columns outside `in_range` dropped:
    `pinv_span` says which a row reads)."""
    o0, o1 = out_range or (0, small)
    i0, i1 = in_range or (0, large)
    device = torch.device(device) if device is not None else torch.device("cpu")
    return _cached_pinv(small, large, (o0, o1), (i0, i1), dtype, device)


@lru_cache(maxsize=64)
def _cached_pinv(small, large, out_range, in_range, dtype, device) -> torch.Tensor:
    (o0, o1) = out_range
    starts, weights = _pinv_band(small, large)
    matrix = _band_to_dense(starts[o0:o1], weights[o0:o1], in_range)
    with torch.inference_mode(False):
        return matrix.to(dtype=dtype, device=device)


PINV_ITERATIONS = 16  # Newton-Schulz steps: enough for cond(U) up to about 20 (the worst is ~15)


def pinv_matrix_graph(small, large, like: torch.Tensor) -> torch.Tensor:
    """`pinv_matrix(small, large)` for a graph: by Newton-Schulz iterations `X <- 2X - X U X`
    from `X = U^T / (|U|_1 |U|_inf)` (they converge to the pseudo-inverse of any matrix,
    quadratically once close), in float64; float32 out."""
    upsample = _resample_matrix64(small, large, like)
    step = 1 / (upsample.abs().sum(0).max() * upsample.abs().sum(1).max())
    inverse = upsample.t() * step
    for _ in range(PINV_ITERATIONS):
        inverse = 2 * inverse - inverse @ (upsample @ inverse)
    return inverse.to(torch.float32)
