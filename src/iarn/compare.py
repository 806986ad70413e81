"""A visual comparison: one crop as HR / bicubic round trip / iarn round trip / iarn LR.

`iarn compare IMAGE --scale 3 -o crop.png` writes it; the README's figure is made this way.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .evaluate import bicubic_roundtrip, model_roundtrip
from .metrics import psnr_y
from .rescaler import Rescaler

LABEL_HEIGHT = 16


def most_detailed_box(rgb: np.ndarray, size: int) -> tuple[int, int]:
    """(top, left) of the `size` x `size` window with the most gradient energy, on a grid of
    size/4 steps: where rescaling loses the most, so where the methods differ most."""
    gray = rgb.astype(np.float64).mean(axis=2)
    energy = np.zeros_like(gray)
    energy[:, 1:] += np.abs(np.diff(gray, axis=1))
    energy[1:, :] += np.abs(np.diff(gray, axis=0))
    table = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    height, width = gray.shape
    step = max(1, size // 4)
    best, best_box = -1.0, (0, 0)
    for top in range(0, height - size + 1, step):
        for left in range(0, width - size + 1, step):
            total = (
                table[top + size, left + size] - table[top, left + size] - table[top + size, left] + table[top, left]
            )
            if total > best:
                best, best_box = total, (top, left)
    return best_box


def comparison(
    model: Rescaler,
    hr: np.ndarray,
    lr_size: tuple[int, int],
    box: tuple[int, int, int] | None = None,
    zoom: int = 2,
    tile: int | None = None,
    refine=0,
    progress=None,
) -> tuple[Image.Image, dict[str, float]]:
    """The four-panel figure for `hr` (H, W, 3) uint8 rescaled to `lr_size`, and the PSNR-Y of
    both round trips on the whole image and on the crop. `box` = (top, left, size) in HR pixels
    (default: the most detailed square of a quarter of the shorter side, at least 48 px).
    `refine`, `progress`: the LR's refinement, as in `Rescaler.downscale`."""
    height, width = hr.shape[:2]
    lr, up = model_roundtrip(model, hr, lr_size, tile, refine, progress)
    _, bicubic_up = bicubic_roundtrip(hr, lr_size)
    if box is None:
        size = min(height, width, max(48, min(height, width) // 4))
        box = (*most_detailed_box(hr, size), size)
    top, left, size = box
    if not (0 <= top and 0 <= left and size >= 1 and top + size <= height and left + size <= width):
        raise ValueError(f"crop {left},{top},{size} does not fit in the {width}x{height} image")
    window = (slice(top, top + size), slice(left, left + size))
    # the LR pixels that cover the crop, enlarged with nearest neighbour to the crop's size
    rows = (top * lr_size[0] // height, -(-(top + size) * lr_size[0] // height))
    cols = (left * lr_size[1] // width, -(-(left + size) * lr_size[1] // width))
    lr_crop = Image.fromarray(lr[rows[0] : rows[1], cols[0] : cols[1]]).resize((size, size), Image.NEAREST)
    scores = {
        "bicubic": psnr_y(bicubic_up, hr),
        "iarn": psnr_y(up, hr),
        "bicubic_crop": psnr_y(bicubic_up[window], hr[window]),
        "iarn_crop": psnr_y(up[window], hr[window]),
    }
    panels = [
        ("HR", Image.fromarray(hr[window])),
        (f"bicubic {scores['bicubic_crop']:.2f} dB", Image.fromarray(bicubic_up[window])),
        (f"iarn {scores['iarn_crop']:.2f} dB", Image.fromarray(up[window])),
        (f"iarn LR {lr_size[1]}x{lr_size[0]}", lr_crop),
    ]
    side = size * zoom
    figure = Image.new("RGB", (4 * side + 3 * 4, side + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default()
    for k, (label, panel) in enumerate(panels):
        x = k * (side + 4)
        figure.paste(panel.resize((side, side), Image.NEAREST), (x, LABEL_HEIGHT))
        draw.text((x + 2, 2), label, fill="black", font=font)
    return figure, scores
