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
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..geometry import Size
from ..resample import apply_matrices, input_span, pinv_matrix, pinv_span, resample_matrix, resize
from .corrector import corrector_features
from .coupling import LR_CHANNELS
from .encoding import middle_encoding
from .haar import haar_forward_levels, haar_inverse_levels, level_size

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


class MiddleImageMode(Split):
    """What the modes on a middle image share (`Naive`, `Middle`): the HR resized by bicubic to
    the *middle* image, 2^k times the LR size, k x2 core steps each passing its first 3 channels
    on (the LR out of the last); on the way up the steps inverted, then the middle back to the HR
    size: by the exact least-squares inverse along an axis where the middle is the larger (an
    upsampling) and `back` is "exact", else bicubic. Regions: the middle rows a crop covers are
    computed from the HR crop, so tiles work too. Subclasses say how many steps (`steps`) and
    what each step is told of the scale (`condition`)."""

    def steps(self, net: Core, hr_size: Size, lr_size: Size) -> int:
        """x2 core steps from the middle image to the LR."""
        raise NotImplementedError

    def condition(
        self, net: Core, level: int, grid_start: Size, grid: Size, hr_size: Size, middle: Size, lr_size: Size
    ) -> torch.Tensor:
        """The scale encoding of step `level`'s grid (cells of 2^level middle pixels)."""
        raise NotImplementedError

    def core_size(self, net: Core, hr_size: Size, lr_size: Size) -> Size:
        factor = 2 ** self.steps(net, hr_size, lr_size)
        return (factor * lr_size[0], factor * lr_size[1])

    def back_is_exact(self, net: Core, hr_length: int, middle_length: int) -> bool:
        """Whether the middle returns to the HR by the least-squares inverse along this axis."""
        return net.config.back == "exact" and middle_length >= hr_length

    def hr_span_for_lr(self, net, hr_size, lr_size, axis, out, context):
        factor = 2 ** self.steps(net, hr_size, lr_size)
        middle, context = factor * lr_size[axis], context * factor // 2
        start, stop = max(0, factor * out[0] - context), min(middle, factor * out[1] + context)
        return input_span(hr_size[axis], middle, start // factor * factor, -(-stop // factor) * factor)

    def lr_span_for_hr(self, net, hr_size, lr_size, axis, rows, context):
        factor = 2 ** self.steps(net, hr_size, lr_size)
        middle, context = factor * lr_size[axis], context * factor // 2
        if self.back_is_exact(net, hr_size[axis], middle):
            start, stop = pinv_span(hr_size[axis], middle, *rows)
        else:
            start, stop = input_span(middle, hr_size[axis], *rows)  # middle rows the HR rows read
        return max(0, (start - context) // factor), min(lr_size[axis], -(-(stop + context) // factor))

    def down(self, net, x, hr_size, lr_size, hr_start, lr_rows, lr_cols, correct=False):
        steps = self.steps(net, hr_size, lr_size)
        factor, middle = 2**steps, self.core_size(net, hr_size, lr_size)
        rows, cols = (
            _middle_span(
                hr_size[k], middle[k], hr_start[k], hr_start[k] + x.shape[-2 + k], (lr_rows, lr_cols)[k], factor
            )
            for k in range(2)
        )
        y = resample_crop(x, hr_start, hr_size, middle, rows, cols)
        details = []
        for level in range(1, steps + 1):
            start = (rows[0] >> level, cols[0] >> level)
            grid_size = (y.shape[-2] // 2, y.shape[-1] // 2)
            cond = self.condition(net, level, start, grid_size, hr_size, middle, lr_size)
            stage = self.stage_index(net.config, steps, level)
            y, z = self.lr_source(net.encode_step(y, stage, cond), 1, None)
            details.append(z)
        latents = [z.flatten(1) for z in details]
        if correct and net.corrector is not None:  # on the crop's whole LR: its context absorbs the borders
            features = corrector_features(y, details, cond, net.corrector.config.detail_gain)
            y = net.corrector(y, features, steps)
        top, left = rows[0] // factor, cols[0] // factor
        y = y[..., lr_rows[0] - top : lr_rows[1] - top, lr_cols[0] - left : lr_cols[1] - left]
        return y, torch.cat(latents, dim=1)

    def up(self, net, lr, hr_size, lr_size, lr_start, hr_rows, hr_cols, noise):
        steps = self.steps(net, hr_size, lr_size)
        factor, middle = 2**steps, self.core_size(net, hr_size, lr_size)
        y = lr
        for level in range(steps, 0, -1):
            start = (lr_start[0] << (steps - level), lr_start[1] << (steps - level))
            size = (2 * y.shape[-2], 2 * y.shape[-1])
            cond = self.condition(net, level, start, tuple(y.shape[-2:]), hr_size, middle, lr_size)
            stage = self.stage_index(net.config, steps, level)
            y = net.decode_step(self.grid_from_source(y, 1, noise), stage, cond, size)
        start = (factor * lr_start[0], factor * lr_start[1])
        matrices = [
            (pinv_matrix if self.back_is_exact(net, hr_size[k], middle[k]) else _bicubic_matrix)(
                hr_size[k], middle[k], (hr_rows, hr_cols)[k], (start[k], start[k] + y.shape[-2 + k]), y.dtype, y.device
            )
            for k in range(2)
        ]
        return apply_matrices(y, *matrices)


class Naive(MiddleImageMode):
    """The comparison baseline (docs/ablation.md): the middle image is twice the LR size (the
    HR downscaled by bicubic above x2), one fixed x2 split step on it, whose grid is the LR's
    size. Trained at scale 2 only, it is told nothing of the scale (its encoding describes the
    fixed middle -> LR x2 step)."""

    def steps(self, net: Core, hr_size: Size, lr_size: Size) -> int:
        return 1

    def condition(self, net, level, grid_start, grid, hr_size, middle, lr_size):
        return net.conds_for(middle, lr_size, grid_start, grid, level)


def _bicubic_matrix(hr_length, middle_length, out, in_range, dtype, device):
    """The bicubic resampling matrix from the middle back to the HR (pinv_matrix's arguments)."""
    return resample_matrix(middle_length, hr_length, out, in_range, dtype, device)


class Middle(MiddleImageMode):
    """The method's geometry (docs/design.md section 3): the HR *upsampled* by bicubic to the
    middle image, 2^k times the LR size with k = ceil(log2 max(s_h, s_w)) (at least 1), so the
    HR loses nothing on the way in; k x2 steps (a Haar level and the coupling blocks of stage k,
    12 channels each), each passing its first 3 channels on and dropping the rest (z) to the
    latent loss; the LR is the last step's first 3 channels, exactly (h, w). Up: z = 0 (or
    sampled) at every step, the steps inverted, and the middle back to the HR by the exact
    least-squares inverse of the upsampling (or bicubic with `back` "bicubic"). The encoding
    tells each step the real geometry (`encoding.middle_encoding`). With `step_stages`
    "per-count" each step count k has stages of its own (`stage_index`)."""

    def steps(self, net: Core, hr_size: Size, lr_size: Size) -> int:
        steps = 1  # at most one per stage: a rounded size can exceed max_scale (9 -> 2 rows at x4)
        while steps < net.levels and (2**steps * lr_size[0] < hr_size[0] or 2**steps * lr_size[1] < hr_size[1]):
            steps += 1
        return steps

    def stage_channels(self, level: int) -> int:
        return 4 * LR_CHANNELS

    def stage_levels(self, config) -> list[int]:
        if config.step_stages == "shared":
            return list(range(1, config.levels + 1))
        return [level for steps in range(1, config.levels + 1) for level in range(1, steps + 1)]

    def stage_index(self, config, steps: int, level: int) -> int:
        if config.step_stages == "shared":
            return level - 1
        return steps * (steps - 1) // 2 + level - 1  # stages of k = 1, then of k = 2, ...

    def condition(self, net, level, grid_start, grid, hr_size, middle, lr_size):
        return middle_encoding(net.config.encoding, grid_start, grid, 2**level, hr_size, middle, net.device)


class Resample(Mode):
    """What every model does where an axis keeps its size (H == h or W == w, docs/design.md
    section 2): the reference bicubic between the HR and the LR, which is the identity on such
    an axis. Both axes kept: the LR is the HR (to 8 bits) and comes back as it is. One axis kept:
    the other is resampled, so the round trip is bicubic's and the kept axis is untouched. The
    trained paths are not used there: a 2-D Haar step cannot leave one axis alone, and the
    models were measured worse than bicubic with an axis at ratio 1 (docs/history.md)."""

    def hr_span_for_lr(self, net, hr_size, lr_size, axis, out, context):
        return input_span(hr_size[axis], lr_size[axis], *out)

    def lr_span_for_hr(self, net, hr_size, lr_size, axis, rows, context):
        return input_span(lr_size[axis], hr_size[axis], *rows)

    def down(self, net, x, hr_size, lr_size, hr_start, lr_rows, lr_cols, correct=False):
        return resample_crop(x, hr_start, hr_size, lr_size, lr_rows, lr_cols), x.new_zeros(x.shape[0], 0)

    def up(self, net, lr, hr_size, lr_size, lr_start, hr_rows, hr_cols, noise):
        return resample_crop(lr, lr_start, lr_size, hr_size, hr_rows, hr_cols)


RESAMPLE = Resample()


def keeps_an_axis(hr_size: Size, lr_size: Size) -> bool:
    """Whether the LR keeps the HR's height or width (where `RESAMPLE` replaces every mode)."""
    return hr_size[0] == lr_size[0] or hr_size[1] == lr_size[1]


MODES: dict[str, Mode] = {"cycle": Cycle(), "split": Split(), "naive": Naive(), "middle": Middle()}


def resample_crop(
    x: torch.Tensor, start: Size, in_size: Size, out_size: Size, out_rows: Range, out_cols: Range
) -> torch.Tensor:
    """Rows/cols `out_rows`, `out_cols` of resizing a whole (in_size) image to out_size, computed
    from its crop `x` that starts at `start`."""
    rows = resample_matrix(in_size[0], out_size[0], out_rows, (start[0], start[0] + x.shape[-2]), x.dtype, x.device)
    cols = resample_matrix(in_size[1], out_size[1], out_cols, (start[1], start[1] + x.shape[-1]), x.dtype, x.device)
    return apply_matrices(x, rows, cols)


def _middle_span(
    hr_length: int, middle: int, crop_start: int, crop_stop: int, lr_span: Range, factor: int = 2
) -> Range:
    """Middle rows [a, b), multiples of `factor`, whose bicubic support lies in the HR crop: the
    most a crop can compute. ValueError when that misses LR rows `lr_span` (`factor` middle rows
    each)."""

    def support(row: int) -> Range:
        return input_span(hr_length, middle, row, row + 1)

    rows = range(middle)
    first = 0 if crop_start == 0 else bisect_left(rows, crop_start, key=lambda r: support(r)[0])
    stop = middle if crop_stop == hr_length else bisect_right(rows, crop_stop, key=lambda r: support(r)[1])
    first, stop = -(-first // factor) * factor, stop // factor * factor
    if not (first <= factor * lr_span[0] and factor * lr_span[1] <= stop):
        raise ValueError(f"the crop [{crop_start}, {crop_stop}) does not cover LR rows {lr_span}")
    return first, stop
