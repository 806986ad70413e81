"""Size conventions (docs/design.md section 2): the target size is primary, a scale is sugar for it."""

from __future__ import annotations

import math
import numbers
from numbers import Real

Size = tuple[int, int]
MIN_TILE = 32  # smaller tile cores break "tiled equals untiled to within 1/255" (seen below 12 px at x4)


def round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def size_for_scale(hr_size: Size, scale: float | tuple[float, float]) -> Size:
    """LR size `(max(1, round(H / s_h)), max(1, round(W / s_w)))`, halves rounded up."""
    scale_h, scale_w = (scale, scale) if isinstance(scale, (int, float)) else scale
    return (
        max(1, round_half_up(hr_size[0] / scale_h)),
        max(1, round_half_up(hr_size[1] / scale_w)),
    )


def check_lr_size(hr_size: Size, lr_size: Size, max_scale: float) -> None:
    """Raise ValueError unless 1 <= H/h <= max_scale per axis (up to the rounding of sizes)."""
    for axis, hr, lr in (("height", hr_size[0], lr_size[0]), ("width", hr_size[1], lr_size[1])):
        if lr > hr:
            raise ValueError(f"target {axis} {lr} is larger than the input {axis} {hr}")
        if lr < max(1, round_half_up(hr / max_scale)):
            raise ValueError(
                f"target {axis} {lr} is below the model's range: scale {hr / lr:.3g} "
                f"on the {axis}, the model supports scales 1 to {max_scale:g} per axis"
            )


def check_scale(scale: tuple[float, float], max_scale: float) -> None:
    for value in scale:
        if not (math.isfinite(value) and 1.0 <= value <= max_scale):
            raise ValueError(f"scale {value:g} is out of range: the model supports 1 to {max_scale:g}")


def target_size(
    hr_size: Size, max_scale: float, size: Size | None = None, scale: float | tuple[float, float] | None = None
) -> Size:
    """Resolve `size` (h, w) or `scale` (s or (s_h, s_w)) to a checked LR size."""
    if (size is None) == (scale is None):
        raise ValueError("give exactly one of size and scale")
    if scale is not None:
        pair = _pair(scale, "scale", Real)
        check_scale(pair, max_scale)
        size = size_for_scale(hr_size, pair)
    size = _pair(size, "size", int)
    if min(size) < 1:
        raise ValueError(f"target size {size[1]}x{size[0]} must be at least 1x1")
    check_lr_size(hr_size, size, max_scale)
    return size


def _pair(value, what: str, kind: type) -> tuple:
    """A number or a pair of numbers of `kind` as a pair; TypeError (one line) otherwise."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        if all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
            return tuple(value)
        if kind is int and all(hasattr(v, "__index__") for v in value):  # numpy or torch integers
            return tuple(int(v) for v in value)
    expected = "a number or a (vertical, horizontal) pair of numbers" if kind is Real else "a pair (h, w) of integers"
    raise TypeError(f"{what} must be {expected}, got {value!r}")


def check_upscale_size(size, lr_size: Size, max_scale: float) -> Size:
    """The HR size (H, W) for upscaling an LR of `lr_size`: given, at least the LR's size and
    within the model's range; TypeError / ValueError (one line) otherwise."""
    if size is None:
        raise ValueError("upscale needs the original size (H, W): give size=..., it is not in a tensor")
    hr_size = _pair(size, "size", int)
    for axis, hr, lr in (("height", hr_size[0], lr_size[0]), ("width", hr_size[1], lr_size[1])):
        if hr < lr:
            raise ValueError(
                f"the requested {axis} {hr} is smaller than the LR image's {axis} {lr}: upscale needs a size at least "
                "as large as its input"
            )
        if lr < max(1, round_half_up(hr / max_scale)):
            raise ValueError(
                f"the requested {axis} {hr} is {hr / lr:.3g} times the LR image's {axis} {lr}; the model "
                f"upscales by 1 to {max_scale:g} per axis"
            )
    return hr_size


def check_tile(tile: int | None) -> None:
    if tile is not None and (not isinstance(tile, numbers.Integral) or isinstance(tile, bool) or tile < MIN_TILE):
        raise ValueError(f"tile must be a whole number of at least {MIN_TILE} pixels, got {tile!r}")
