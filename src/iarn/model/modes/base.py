"""The `Mode` interface and what every mode shares: the region arithmetic of `down` and `up`, the
whole-image graphs the exporter traces (`down_graph`, `up_graph`), `resample_crop`.

Shapes: `x` HR (B, 3, Hc, Wc); grid (B, 3 * 4^L, ...); LR (B, 3, h, w); float.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from ...geometry import Size
from ...resample import apply_matrices, input_span, resample_matrix, resize_graph
from ..encoding import scale_encoding_graph
from ..haar import level_size

Range = tuple[int, int]
NoiseFn = Callable[[tuple[int, ...]], torch.Tensor]


class Core(Protocol):
    """What a mode needs of the network: its invertible core, its config and number of Haar
    levels, its encodings."""

    levels: int
    config: Any
    device: torch.device
    corrector: Any

    def conds_for(self, hr_size: Size, lr_size: Size, grid_start: Size, grid: Size, level: int) -> torch.Tensor: ...

    def encode(self, x: torch.Tensor, hr_size: Size, lr_size: Size, hr_start: Size = (0, 0)) -> torch.Tensor: ...

    def decode(
        self, y: torch.Tensor, hr_size: Size, lr_size: Size, crop: Size, hr_start: Size = (0, 0)
    ) -> torch.Tensor: ...

    def encode_step(self, x: torch.Tensor, stage: int, cond: torch.Tensor) -> torch.Tensor: ...

    def decode_step(self, y: torch.Tensor, stage: int, cond: torch.Tensor, size: Size) -> torch.Tensor: ...

    def core_forward(self, x: torch.Tensor, conds: list[torch.Tensor]) -> torch.Tensor: ...

    def core_inverse(self, y: torch.Tensor, conds: list[torch.Tensor], size: Size) -> torch.Tensor: ...


class Mode:
    """A way to form the LR; subclasses set the four hooks, `down` and `up` are shared."""

    samples_z = False  # True: upscale can draw the lost detail z from a seed

    def core_size(self, net: Core, hr_size: Size, lr_size: Size) -> Size | None:
        """The size the invertible core runs at when it is not the HR's own (None: the HR's)."""
        return None

    def stage_channels(self, level: int) -> int:
        """Channels of the coupling blocks after `level` Haar levels (all channels go on)."""
        return 3 * 4**level

    def stage_levels(self, config) -> list[int]:
        """The Haar level of each stage of coupling blocks the network builds (one per level)."""
        return list(range(1, config.levels + 1))

    def stage_index(self, config, steps: int, level: int) -> int:
        """The stage that step `level` of `steps` x2 steps runs (modes on a middle image)."""
        return level - 1

    def lattice(self, levels: int, hr_length: int) -> tuple[int, int]:
        """(cell, length): the source's pixels are `cell` HR pixels apart, `length` of them
        (HR meaning the image the core runs on, `core_size`)."""
        raise NotImplementedError

    def hr_span_for_lr(self, net: Core, hr_size: Size, lr_size: Size, axis: int, out: Range, context: int) -> Range:
        """The HR crop [a, b) that LR outputs [out) are computed from (along `axis`), with
        `context` pixels of the image the core runs on as margin for the convolutions."""
        levels, hr_length, lr_length = net.levels, hr_size[axis], lr_size[axis]
        step, lattice = self.lattice(levels, hr_length)
        a, b = input_span(lattice, lr_length, *out)
        cell = 2**levels  # crops start and end on the grid (or at the image's end)
        return max(0, a * step - context) // cell * cell, min(hr_length, -(-(b * step + context) // cell) * cell)

    def lr_span_for_hr(self, net: Core, hr_size: Size, lr_size: Size, axis: int, rows: Range, context: int) -> Range:
        """The LR crop [a, b) that HR outputs [rows) are computed from (along `axis`); the tiler
        has put its context into `rows` already (HR pixels, grid-aligned)."""
        levels, hr_length, lr_length = net.levels, hr_size[axis], lr_size[axis]
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
        self,
        net: Core,
        x: torch.Tensor,
        hr_size: Size,
        lr_size: Size,
        hr_start: Size,
        lr_rows: Range,
        lr_cols: Range,
        correct: bool = False,
        passes: float | None = None,
        check_passes: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unquantised LR rows/cols of the whole image, from the HR crop `x` at `hr_start`;
        `correct`: through the network's LR corrector, where the mode and network have one."""
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

    # -- whole images for an exported graph (export.py): sizes may be symbolic, no regions ----

    def down_graph(self, net: Core, hr: torch.Tensor, lr_size: Size) -> torch.Tensor:
        """`down` of a whole image (1, 3, H, W) without the corrector: the LR, unquantised."""
        hr_size = (hr.shape[-2], hr.shape[-1])
        grid = net.core_forward(hr, self.conds_graph(net, hr_size, lr_size, hr))
        source, _ = self.lr_source(grid, net.levels, hr_size)
        return resize_graph(source, lr_size)

    def up_graph(self, net: Core, lr: torch.Tensor, hr_size: Size) -> torch.Tensor:
        """`up` of a whole LR (1, 3, h, w) with z = 0: the HR, unclamped."""
        lr_size = (lr.shape[-2], lr.shape[-1])
        lattice = tuple(self.lattice(net.levels, n)[1] for n in hr_size)
        grid = self.grid_from_source(resize_graph(lr, lattice), net.levels)
        return net.core_inverse(grid, self.conds_graph(net, hr_size, lr_size, lr), hr_size)

    def conds_graph(self, net: Core, hr_size: Size, lr_size: Size, like: torch.Tensor) -> list[torch.Tensor]:
        """The encoding of each Haar level's whole grid (`IARN.conds_for` for a graph)."""
        kind = net.config.encoding
        grids = [(level_size(hr_size[0], k), level_size(hr_size[1], k)) for k in range(1, net.levels + 1)]
        return [scale_encoding_graph(kind, grid, 2**k, hr_size, lr_size, like) for k, grid in enumerate(grids, 1)]


def resample_crop(
    x: torch.Tensor, start: Size, in_size: Size, out_size: Size, out_rows: Range, out_cols: Range
) -> torch.Tensor:
    """Rows/cols `out_rows`, `out_cols` of resizing a whole (in_size) image to out_size, computed
    from its crop `x` that starts at `start`."""
    rows = resample_matrix(in_size[0], out_size[0], out_rows, (start[0], start[0] + x.shape[-2]), x.dtype, x.device)
    cols = resample_matrix(in_size[1], out_size[1], out_cols, (start[1], start[1] + x.shape[-1]), x.dtype, x.device)
    return apply_matrices(x, rows, cols)
