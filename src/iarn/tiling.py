"""Tiled down- and upscaling for images of any size, with memory bounded by the tile.

Whether an image is tiled at all is the runner's policy (`Rescaler.whole_image`); the constants
it uses are here.

The output is cut into a grid of core tiles. Each tile is computed from an input crop that
covers what the resampler reads for the tile plus a context margin for the convolutions, using
the whole image's geometry (see `IARN.down_region`). Neighbouring tiles also compute `overlap`
pixels past their core and are blended there with linear ramps that sum to 1, so seams vanish.
Tiled output equals untiled output to well within 1/255 (tests/test_tiling.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .geometry import Size

if TYPE_CHECKING:
    from .model import IARN

Range = tuple[int, int]

AUTO_TILE_PIXELS = 1024 * 1024  # on CPUs (and MPS), images with more HR pixels are tiled by default
# On CUDA an image is processed whole when this many bytes per HR pixel fit in half the free
# memory: the default-size model peaks at 260 B/px in bf16 (8.3 MP on an H200), about twice in
# fp32. Whole images run 1.7-1.9x faster there than 768-px tiles (docs/performance.md).
CUDA_BYTES_PER_PIXEL = 600
DEFAULT_TILE = 1024  # most HR pixels a side of a tile's core; 1.07-1.43x faster than 768 (docs/performance.md)
CONTEXT = 48  # HR pixels of context around each crop, for the convolutions
OVERLAP = 8  # output pixels blended on each side of a seam


def _cores(length: int, tile: int) -> list[tuple[int, int]]:
    count = max(1, -(-length // max(1, tile)))
    bounds = [round(k * length / count) for k in range(count + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(count)]


def _ramp(core: tuple[int, int], length: int, overlap: int, device) -> tuple[tuple[int, int], torch.Tensor]:
    """Extended range of a core and its blending weights (1 inside, ramps at inner seams)."""
    start, stop = max(0, core[0] - overlap), min(length, core[1] + overlap)
    position = torch.arange(start, stop, dtype=torch.float32, device=device) + 0.5
    weight = torch.ones(stop - start, device=device)
    if core[0] > 0:
        weight = torch.minimum(weight, ((position - (core[0] - overlap)) / (2 * overlap)).clamp(0, 1))
    if core[1] < length:
        weight = torch.minimum(weight, (((core[1] + overlap) - position) / (2 * overlap)).clamp(0, 1))
    return (start, stop), weight


def _align_down(value: int, cell: int) -> int:
    return value // cell * cell


def _align_up(value: int, cell: int, limit: int) -> int:
    return min(limit, -(-value // cell) * cell)


def as_float(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (0..255) or float pixels -> `dtype` in [0, 1]."""
    return x.to(dtype) / 255 if x.dtype == torch.uint8 else x.to(dtype)


def seeded_noise(seed: int | None, temperature: float, index: tuple[int, int]):
    """z sampler for tile `index` (None: z = 0), reproducible for a seed and tiling."""
    if seed is None:
        return None
    generator = torch.Generator().manual_seed(hash((seed, *index)) & 0x7FFF_FFFF_FFFF_FFFF)
    return lambda shape: temperature * torch.randn(shape, generator=generator)


def _plan(length: int, tile_out: int, overlap: int) -> tuple[list[tuple[int, int]], int]:
    cores = _cores(length, tile_out)
    shortest = min(stop - start for start, stop in cores)
    return cores, max(1, min(overlap, shortest // 2))


def _run_tiled(out: torch.Tensor, tile_out: Size, overlap: int, compute) -> torch.Tensor:
    """Blend `compute(rows, cols)` (output ranges) over a tile grid into `out` (B, C, n, m)."""
    n, m = out.shape[-2:]
    row_cores, row_overlap = _plan(n, tile_out[0], overlap)
    col_cores, col_overlap = _plan(m, tile_out[1], overlap)
    for i, row_core in enumerate(row_cores):
        rows, row_weight = _ramp(row_core, n, row_overlap, out.device)
        for j, col_core in enumerate(col_cores):
            cols, col_weight = _ramp(col_core, m, col_overlap, out.device)
            piece = compute(rows, cols, (i, j))
            weight = row_weight[:, None] * col_weight[None, :]
            out[..., rows[0] : rows[1], cols[0] : cols[1]] += piece * weight
    return out


def tiled_downscale(
    model: IARN,
    x: torch.Tensor,
    lr_size: Size,
    tile: int | None,
    context: int = CONTEXT,
    overlap: int = OVERLAP,
    correct: bool = False,
    passes: float | None = None,
    check_passes: bool = True,
) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] or uint8 -> unquantised LR (B, 3, h, w), float, in tiles
    with cores of about `tile` (default DEFAULT_TILE) HR pixels a side; `correct`, `passes` and
    `check_passes` as in `IARN.down_region`."""
    hr_size = (x.shape[-2], x.shape[-1])
    dtype = model.state_dtype
    tile = tile or DEFAULT_TILE
    tile_lr = tuple(max(1, round(tile * lr_size[k] / hr_size[k])) for k in range(2))
    geometry = model.geometry(hr_size, lr_size)

    def compute(rows, cols, _index):
        crop_rows = geometry.hr_span_for_lr(model, hr_size, lr_size, 0, rows, context)
        crop_cols = geometry.hr_span_for_lr(model, hr_size, lr_size, 1, cols, context)
        crop = as_float(x[..., crop_rows[0] : crop_rows[1], crop_cols[0] : crop_cols[1]], dtype)
        start = (crop_rows[0], crop_cols[0])
        lr, _ = model.down_region(crop, hr_size, lr_size, start, rows, cols, correct, passes, check_passes)
        return lr

    out = torch.zeros(x.shape[0], 3, *lr_size, dtype=dtype, device=x.device)
    return _run_tiled(out, tile_lr, overlap, compute)


def upscale_spans(model: IARN, hr_size: Size, lr_size: Size, rows: Range, cols: Range, context: int = CONTEXT):
    """(hr_rows, hr_cols, lr_rows, lr_cols): the grid-aligned HR region, `context` pixels past
    the HR output `rows` x `cols`, that an upscale tile computes, and the LR crop it reads."""
    cell = model.cell
    hr_rows = (_align_down(max(0, rows[0] - context), cell), _align_up(rows[1] + context, cell, hr_size[0]))
    hr_cols = (_align_down(max(0, cols[0] - context), cell), _align_up(cols[1] + context, cell, hr_size[1]))
    geometry = model.geometry(hr_size, lr_size)
    lr_rows = geometry.lr_span_for_hr(model, hr_size, lr_size, 0, hr_rows, context)
    lr_cols = geometry.lr_span_for_hr(model, hr_size, lr_size, 1, hr_cols, context)
    return hr_rows, hr_cols, lr_rows, lr_cols


def tiled_upscale(
    model: IARN,
    lr: torch.Tensor,
    hr_size: Size,
    tile: int | None,
    seed: int | None = None,
    temperature: float = 1.0,
    context: int = CONTEXT,
    overlap: int = OVERLAP,
) -> torch.Tensor:
    """LR (B, 3, h, w) float in [0, 1] or uint8 -> HR (B, 3, H, W) float, clamped to [0, 1], in
    tiles as in `tiled_downscale`; `seed` samples z per tile (`seeded_noise`)."""
    lr_size = (lr.shape[-2], lr.shape[-1])
    dtype = model.state_dtype
    tile = tile or DEFAULT_TILE

    def compute(rows, cols, index):
        hr_rows, hr_cols, lr_rows, lr_cols = upscale_spans(model, hr_size, lr_size, rows, cols, context)
        crop = as_float(lr[..., lr_rows[0] : lr_rows[1], lr_cols[0] : lr_cols[1]], dtype)
        noise = seeded_noise(seed, temperature, index)
        hr = model.up_region(crop, hr_size, lr_size, (lr_rows[0], lr_cols[0]), hr_rows, hr_cols, noise)
        return hr[..., rows[0] - hr_rows[0] : rows[1] - hr_rows[0], cols[0] - hr_cols[0] : cols[1] - hr_cols[0]]

    out = torch.zeros(lr.shape[0], 3, *hr_size, dtype=dtype, device=lr.device)
    return _run_tiled(out, (tile, tile), overlap, compute).clamp_(0, 1)
