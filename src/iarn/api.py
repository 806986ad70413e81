"""Image-level helpers: Pillow images, uint8 arrays and `Picture`s through a model.

The tensor API is `Rescaler.downscale` / `Rescaler.upscale`; these wrap it with the image
policy of `iarn.imageio` (alpha, grayscale, ICC) and stream uint8 pixels through the tiler, so a
large image never exists as a float copy of the input.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .convert import to_tensor, to_uint8
from .geometry import Size, check_tile, check_upscale_size, target_size
from .imageio import Picture, picture_from_array, picture_from_pil, to_pil
from .refine import RefineConfig, check_refine_steps
from .rescaler import Rescaler


def _resize_alpha(alpha: np.ndarray | None, size: Size) -> np.ndarray | None:
    if alpha is None:
        return None
    plane = torch.from_numpy(alpha)[None, None].float() / 255
    plane = F.interpolate(plane, size=size, mode="bicubic", antialias=True, align_corners=False)
    return plane[0, 0].mul(255).round_().clamp_(0, 255).to(torch.uint8).numpy()


def downscale_picture(
    model: Rescaler,
    picture: Picture,
    size: Size | None = None,
    scale=None,
    tile: int | None = None,
    refine: int | RefineConfig = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Picture:
    """HR picture -> LR picture of `size` (h, w) or `scale`; `refine`, `progress` as in
    `Rescaler.downscale`."""
    check_tile(tile)
    if not isinstance(refine, RefineConfig):
        check_refine_steps(refine)
    lr_size = target_size(picture.size, model.config.max_scale, size=size, scale=scale)
    lr = model.downscale_pixels(to_tensor(picture.rgb), lr_size, tile, refine, progress)
    return picture.with_pixels(to_uint8(lr), _resize_alpha(picture.alpha, lr_size))


def upscale_picture(
    model: Rescaler, picture: Picture, size: Size | None = None, tile: int | None = None, seed: int | None = None
) -> Picture:
    """LR picture -> HR picture of `size` (H, W); by default the size recorded in an iarn LR PNG."""
    check_tile(tile)
    if size is None:
        size = picture.hr_size
        if size is None:
            raise ValueError("upscale needs the original size (H, W): none is recorded in this image, give size=...")
    size = check_upscale_size(size, picture.size, model.config.max_scale)
    model.check_seed(seed)
    hr = model.upscale_pixels(to_tensor(picture.rgb), size, tile, seed)
    return picture.with_pixels(to_uint8(hr), _resize_alpha(picture.alpha, size))


def _as_picture(image: Image.Image | np.ndarray) -> Picture:
    if isinstance(image, Image.Image):
        return picture_from_pil(image)
    if isinstance(image, np.ndarray):
        return picture_from_array(image)
    raise TypeError(f"expected a PIL image or a uint8 numpy array, got {type(image).__name__}")


def _like(picture: Picture, original: Image.Image | np.ndarray) -> Image.Image | np.ndarray:
    if isinstance(original, Image.Image):
        return to_pil(picture)
    if original.ndim == 2:
        return picture.rgb.mean(axis=2).round().astype(np.uint8)
    if original.shape[2] == 4:
        return np.concatenate([picture.rgb, picture.alpha[..., None]], axis=2)
    return picture.rgb


def downscale_image(
    model: Rescaler, image: Image.Image | np.ndarray, size: Size | None = None, scale=None, tile=None, refine=0
):
    """Pillow image or uint8 array (H, W[, 3|4]) -> the same kind, downscaled (`refine` steps
    of LR refinement, as in `Rescaler.downscale`).

    `size` is (h, w) in rows and columns (Pillow's `.size` is (w, h): mind the order).
    """
    picture = downscale_picture(model, _as_picture(image), size=size, scale=scale, tile=tile, refine=refine)
    return _like(picture, image)


def upscale_image(model: Rescaler, image: Image.Image | np.ndarray, size: Size | None = None, tile=None):
    """Pillow image or uint8 array -> the same kind, upscaled to `size` (H, W); for a Pillow
    image of an iarn LR PNG, the size recorded in it by default."""
    return _like(upscale_picture(model, _as_picture(image), size, tile=tile), image)
