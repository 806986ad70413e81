"""How a mode forms the LR from the invertible core, and back: one class per mode.

The invertible core (`IARN.encode` / `IARN.decode`: Haar levels and coupling blocks) maps an HR
crop to a working grid of 3 * 4^L channels at 1 / 2^L of its size, and back. A mode says what
the LR is resampled from (its *source*, on a *lattice*: the HR pixels or the grid's cells), what
the training loss keeps small besides (the *by-product*), and how the grid is rebuilt from an
upsampled LR. Everything mode-specific lives here; the network, the tiler, the exporter and the
training loss ask the mode (docs/design.md section 3). A new mode is a new `Mode` subclass in
`MODES`.

Shapes: `x` HR (B, 3, Hc, Wc); grid (B, 3 * 4^L, ...); LR (B, 3, h, w); float.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from ..geometry import Size
from ..resample import apply_matrices, input_span, resample_matrix, resize
from .coupling import LR_CHANNELS
from .haar import haar_forward_levels, haar_inverse_levels, level_size

Range = tuple[int, int]
NoiseFn = Callable[[tuple[int, ...]], torch.Tensor]


class Core(Protocol):
    """What a mode needs of the network: its invertible core and its number of Haar levels."""

    levels: int

    def encode(self, x: torch.Tensor, hr_size: Size, lr_size: Size, hr_start: Size = (0, 0)) -> torch.Tensor: ...

    def decode(
        self, y: torch.Tensor, hr_size: Size, lr_size: Size, crop: Size, hr_start: Size = (0, 0)
    ) -> torch.Tensor: ...


class Mode:
    """A way to form the LR; subclasses set the four hooks, `down` and `up` are shared."""

    samples_z = False  # True: upscale can draw the lost detail z from a seed

    def core_size(self, hr_size: Size, lr_size: Size) -> Size | None:
        """The size the invertible core runs at when it is not the HR's own (None: the HR's)."""
        return None

    def lattice(self, levels: int, hr_length: int) -> tuple[int, int]:
        """(cell, length): the source's pixels are `cell` HR pixels apart, `length` of them
        (HR meaning the image the core runs on, `core_size`)."""
        raise NotImplementedError

    def hr_span_for_lr(self, levels: int, hr_length: int, lr_length: int, out: Range, context: int) -> Range:
        """The HR crop [a, b) that LR outputs [out) are computed from (one axis), with `context`
        pixels of the image the core runs on as margin for the convolutions."""
        step, lattice = self.lattice(levels, hr_length)
        a, b = input_span(lattice, lr_length, *out)
        cell = 2**levels  # crops start and end on the grid (or at the image's end)
        return max(0, a * step - context) // cell * cell, min(hr_length, -(-(b * step + context) // cell) * cell)

    def lr_span_for_hr(self, levels: int, hr_length: int, lr_length: int, rows: Range, context: int) -> Range:
        """The LR crop [a, b) that HR outputs [rows) are computed from (one axis); the tiler has
        put its context into `rows` already (HR pixels, grid-aligned)."""
        step, lattice = self.lattice(levels, hr_length)
        return input_span(lr_length, lattice, rows[0] // step, -(-rows[1] // step))

    def lr_source(self, grid: torch.Tensor, levels: int, crop: Size) -> tuple[torch.Tensor, torch.Tensor]:
        """(source the LR is resampled from, by-product the loss keeps small) of a grid."""
        raise NotImplementedError

    def grid_from_source(self, source: torch.Tensor, levels: int, noise: NoiseFn | None = None) -> torch.Tensor:
        """The working grid rebuilt from an upsampled LR `source` (z = 0 or `noise(shape)`)."""
        raise NotImplementedError

    def latent_loss(self, by_product: torch.Tensor, lr_q: torch.Tensor, hr_size: Size) -> torch.Tensor:
        """The training loss term on the by-product, given the quantised LR."""
        raise NotImplementedError

    def down(
        self, net: Core, x: torch.Tensor, hr_size: Size, lr_size: Size, hr_start: Size, lr_rows: Range, lr_cols: Range
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unquantised LR rows/cols of the whole image, from the HR crop `x` at `hr_start`."""
        grid = net.encode(x, hr_size, lr_size, hr_start)
        source, by_product = self.lr_source(grid, net.levels, (x.shape[-2], x.shape[-1]))
        (cell_h, lattice_h), (cell_w, lattice_w) = (self.lattice(net.levels, n) for n in hr_size)
        start = (hr_start[0] // cell_h, hr_start[1] // cell_w)
        return resample_crop(source, start, (lattice_h, lattice_w), lr_size, lr_rows, lr_cols), by_product

    def up(
        self,
        net: Core,
        lr: torch.Tensor,
        hr_size: Size,
        lr_size: Size,
        lr_start: Size,
        hr_rows: Range,
        hr_cols: Range,
        noise: NoiseFn | None,
    ) -> torch.Tensor:
        """HR rows/cols (unclamped) from the LR crop `lr` at `lr_start`."""
        (cell_h, lattice_h), (cell_w, lattice_w) = (self.lattice(net.levels, n) for n in hr_size)
        out_rows = (hr_rows[0] // cell_h, -(-hr_rows[1] // cell_h))
        out_cols = (hr_cols[0] // cell_w, -(-hr_cols[1] // cell_w))
        source = resample_crop(lr, lr_start, lr_size, (lattice_h, lattice_w), out_rows, out_cols)
        grid = self.grid_from_source(source, net.levels, noise)
        crop = (hr_rows[1] - hr_rows[0], hr_cols[1] - hr_cols[0])
        return net.decode(grid, hr_size, lr_size, crop, (hr_rows[0], hr_cols[0]))


class Cycle(Mode):
    """The LR is a bicubic resize of the full-resolution image x' (the Haar inverted); x' must
    survive the down-up cycle."""

    def lattice(self, levels: int, hr_length: int) -> tuple[int, int]:
        return 1, hr_length

    def lr_source(self, grid, levels, crop):
        full_resolution = haar_inverse_levels(grid, levels, crop)
        return full_resolution, full_resolution

    def grid_from_source(self, source, levels, noise=None):
        return haar_forward_levels(source, levels)

    def latent_loss(self, by_product, lr_q, hr_size):
        return F.mse_loss(by_product.float(), resize(lr_q, hr_size).float())


class Split(Mode):
    """The LR is a resample of the grid's first 3 channels; the rest, z, should carry nothing
    the decoder cannot do without (it is taken as 0, or sampled)."""

    samples_z = True

    def lattice(self, levels: int, hr_length: int) -> tuple[int, int]:
        return 2**levels, level_size(hr_length, levels)

    def lr_source(self, grid, levels, crop):
        return grid[:, :LR_CHANNELS], grid[:, LR_CHANNELS:]

    def grid_from_source(self, source, levels, noise=None):
        channels = 3 * 4**levels - LR_CHANNELS
        if noise is None:  # zeros shaped from the tensor, so an exported graph keeps dynamic sizes
            z = torch.zeros_like(source[:, :1]).expand(-1, channels, -1, -1)
        else:
            z = noise((source.shape[0], channels, *source.shape[-2:])).to(source)
        return torch.cat([source, z], dim=1)

    def latent_loss(self, by_product, lr_q, hr_size):
        return by_product.float().pow(2).mean()


class Naive(Split):
    """The comparison baseline (docs/ablation.md): bicubic-resize the HR to twice the LR size
    (the *middle* image), a fixed x2 split model (1 level) on it, whose grid is the LR's size, so
    the LR is its first 3 channels; on the way up, the inverse and bicubic back to the HR size.
    Regions: the middle rows a crop covers are computed from the HR crop, so tiles work too."""

    def core_size(self, hr_size: Size, lr_size: Size) -> Size:
        return (2 * lr_size[0], 2 * lr_size[1])

    def hr_span_for_lr(self, levels, hr_length, lr_length, out, context):
        middle = 2 * lr_length
        start, stop = max(0, 2 * out[0] - context), min(middle, 2 * out[1] + context)
        return input_span(hr_length, middle, start // 2 * 2, -(-stop // 2) * 2)

    def lr_span_for_hr(self, levels, hr_length, lr_length, rows, context):
        start, stop = input_span(2 * lr_length, hr_length, *rows)  # middle rows the HR rows read
        return max(0, (start - context) // 2), min(lr_length, -(-(stop + context) // 2))

    def down(self, net, x, hr_size, lr_size, hr_start, lr_rows, lr_cols):
        middle = self.core_size(hr_size, lr_size)
        rows, cols = (
            _middle_span(hr_size[k], middle[k], hr_start[k], hr_start[k] + x.shape[-2 + k], (lr_rows, lr_cols)[k])
            for k in range(2)
        )
        middle_crop = resample_crop(x, hr_start, hr_size, middle, rows, cols)
        grid = net.encode(middle_crop, middle, lr_size, (rows[0], cols[0]))
        top, left = rows[0] // 2, cols[0] // 2
        grid = grid[..., lr_rows[0] - top : lr_rows[1] - top, lr_cols[0] - left : lr_cols[1] - left]
        return self.lr_source(grid, 1, middle)

    def up(self, net, lr, hr_size, lr_size, lr_start, hr_rows, hr_cols, noise):
        middle = self.core_size(hr_size, lr_size)
        start = (2 * lr_start[0], 2 * lr_start[1])
        crop = (2 * lr.shape[-2], 2 * lr.shape[-1])
        middle_crop = net.decode(self.grid_from_source(lr, 1, noise), middle, lr_size, crop, start)
        return resample_crop(middle_crop, start, middle, hr_size, hr_rows, hr_cols)


MODES: dict[str, Mode] = {"cycle": Cycle(), "split": Split(), "naive": Naive()}


def resample_crop(
    x: torch.Tensor, start: Size, in_size: Size, out_size: Size, out_rows: Range, out_cols: Range
) -> torch.Tensor:
    """Rows/cols `out_rows`, `out_cols` of resizing a whole (in_size) image to out_size, computed
    from its crop `x` that starts at `start`."""
    rows = resample_matrix(in_size[0], out_size[0], out_rows, (start[0], start[0] + x.shape[-2]), x.dtype, x.device)
    cols = resample_matrix(in_size[1], out_size[1], out_cols, (start[1], start[1] + x.shape[-1]), x.dtype, x.device)
    return apply_matrices(x, rows, cols)


def _middle_span(hr_length: int, middle: int, crop_start: int, crop_stop: int, lr_span: Range) -> Range:
    """Middle rows [a, b), a and b even, whose bicubic support lies in the HR crop: the most a
    crop can compute. ValueError when that misses LR rows `lr_span` (2 middle rows each)."""

    def support(row: int) -> Range:
        return input_span(hr_length, middle, row, row + 1)

    rows = range(middle)
    first = 0 if crop_start == 0 else bisect_left(rows, crop_start, key=lambda r: support(r)[0])
    stop = middle if crop_stop == hr_length else bisect_right(rows, crop_stop, key=lambda r: support(r)[1])
    first, stop = -(-first // 2) * 2, stop // 2 * 2
    if not (first <= 2 * lr_span[0] and 2 * lr_span[1] <= stop):
        raise ValueError(f"the crop [{crop_start}, {crop_stop}) does not cover LR rows {lr_span}")
    return first, stop
