"""`Resample`: what every model does where an axis keeps its size."""

from __future__ import annotations

import torch

from ...geometry import Size
from ...resample import as_float64, input_span, resize_graph
from .base import Mode, resample_crop


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

    def down(self, net, x, hr_size, lr_size, hr_start, lr_rows, lr_cols, correct=False, passes=None, check_passes=True):
        return resample_crop(x, hr_start, hr_size, lr_size, lr_rows, lr_cols), x.new_zeros(x.shape[0], 0)

    def up(self, net, lr, hr_size, lr_size, lr_start, hr_rows, hr_cols, noise):
        return resample_crop(lr, lr_start, lr_size, hr_size, hr_rows, hr_cols)

    def down_graph(self, net, hr, lr_size):
        return resize_graph(hr, lr_size)

    def up_graph(self, net, lr, hr_size):
        return resize_graph(lr, hr_size)


RESAMPLE = Resample()


def keeps_an_axis(hr_size: Size, lr_size: Size) -> bool:
    """Whether the LR keeps the HR's height or width (where `RESAMPLE` replaces every mode)."""
    return hr_size[0] == lr_size[0] or hr_size[1] == lr_size[1]


def keeps_an_axis_graph(hr_size: Size, lr_size: Size, like: torch.Tensor) -> torch.Tensor:
    """`keeps_an_axis` for a graph (symbolic sizes): a scalar bool tensor."""
    same = [as_float64(hr_size[k], like) == as_float64(lr_size[k], like) for k in range(2)]
    return same[0] | same[1]
