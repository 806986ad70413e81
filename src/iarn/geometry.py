"""Size conventions (design.md section 2): the target size is primary, a scale is sugar for it."""

from __future__ import annotations

import math

Size = tuple[int, int]


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
        pair = (float(scale), float(scale)) if isinstance(scale, (int, float)) else tuple(map(float, scale))
        check_scale(pair, max_scale)
        size = size_for_scale(hr_size, pair)
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ValueError(f"target size {size[1]}x{size[0]} must be at least 1x1")
    check_lr_size(hr_size, size, max_scale)
    return size
