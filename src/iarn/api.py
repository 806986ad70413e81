"""Image-level helpers: Pillow images, uint8 arrays and `Picture`s through a model.

The tensor API is `Rescaler.downscale` / `Rescaler.upscale`; these wrap it with the image
policy of `iarn.imageio` (alpha, grayscale, ICC) and stream uint8 pixels through the tiler, so a
large image never exists as a float copy of the input. `downscale_file` / `upscale_file` are the
CLI's file-to-file jobs (the LR records the original size and the model).

Defaults differ from the CLI's on purpose: `iarn.load()` runs in fp32 (the CLI: `--precision
auto`) and refines nothing unless `refine=N` is given (the CLI: `--effort`); both use the
model's LR corrector (`model.correct = False` turns it off, like `--effort 0`), here in the
passes it was trained with (`model.corrector_passes = 2.4` runs it as `--effort 1` does, `3` as
`--effort 2`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .convert import to_tensor, to_uint8
from .geometry import Size, check_tile, check_upscale_size, target_size
from .imageio import (
    Picture,
    lossy_codec,
    luma_8bit,
    picture_from_array,
    picture_from_pil,
    read_picture,
    to_pil,
    write_picture,
)
from .refine import RefineConfig, as_refine_config, check_refine_steps
from .rescaler import Rescaler


def resize_alpha(alpha: np.ndarray | None, size: Size) -> np.ndarray | None:
    """An alpha plane (H, W) uint8 resized to `size` by the plain reference bicubic (None stays None)."""
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
    return picture.with_pixels(to_uint8(lr), resize_alpha(picture.alpha, lr_size))


def upscale_picture(
    model: Rescaler, picture: Picture, size: Size | None = None, tile: int | None = None, seed: int | None = None
) -> Picture:
    """LR picture -> HR picture of `size` (H, W); by default the size recorded in an iarn LR PNG.
    A JPEG's picture is upscaled by the model's band for its quality, where it has one."""
    check_tile(tile)
    if size is None:
        size = picture.hr_size
        if size is None:
            raise ValueError("upscale needs the original size (H, W): none is recorded in this image, give size=...")
    size = check_upscale_size(size, picture.size, model.config.max_scale)
    model.check_seed(seed)
    hr = model.upscale_pixels(to_tensor(picture.rgb), size, tile, seed, jpeg_quality=picture.jpeg_quality)
    return picture.with_pixels(to_uint8(hr), resize_alpha(picture.alpha, size))


def _as_picture(image: Image.Image | np.ndarray) -> Picture:
    if isinstance(image, Image.Image):
        return picture_from_pil(image)
    if isinstance(image, np.ndarray):
        return picture_from_array(image)
    raise TypeError(f"expected a PIL image or a uint8 numpy array, got {type(image).__name__}")


def _like(picture: Picture, original: Image.Image | np.ndarray, lr: bool = False) -> Image.Image | np.ndarray:
    """`picture` as the kind of `original`; an LR (`lr`) keeps its three channels even for a
    grayscale original (the detail hidden in its colour would be lost)."""
    if isinstance(original, Image.Image):
        return to_pil(picture, lr=lr)
    if original.ndim == 2 and lr:
        return picture.rgb
    if original.ndim == 2:
        return luma_8bit(picture.rgb)
    if original.shape[2] == 4:
        return np.concatenate([picture.rgb, picture.alpha[..., None]], axis=2)
    return picture.rgb


def downscale_image(
    model: Rescaler, image: Image.Image | np.ndarray, size: Size | None = None, scale=None, tile=None, refine=0
):
    """Pillow image or uint8 array (H, W[, 3|4]) -> the same kind, downscaled (`refine` steps
    of LR refinement, as in `Rescaler.downscale`). A grayscale image's LR has three channels
    (the detail is hidden in all three). The result carries no record of the original size or
    the model: to keep an LR for later, write it with `downscale_file`, as `iarn downscale` does.

    `size` is (h, w) in rows and columns (Pillow's `.size` is (w, h): mind the order).
    """
    picture = downscale_picture(model, _as_picture(image), size=size, scale=scale, tile=tile, refine=refine)
    return _like(picture, image, lr=True)


def upscale_image(model: Rescaler, image: Image.Image | np.ndarray, size: Size | None = None, tile=None):
    """Pillow image or uint8 array -> the same kind, upscaled to `size` (H, W); for a Pillow
    image of an iarn LR PNG, the size recorded in it by default."""
    return _like(upscale_picture(model, _as_picture(image), size, tile=tile), image)


def downscale_file(
    model: Rescaler,
    source: str | os.PathLike,
    target: str | os.PathLike,
    size: Size | None = None,
    scale=None,
    tile: int | None = None,
    refine: int | RefineConfig = 0,
    overwrite: bool = False,
) -> Picture:
    """Read the image file `source`, downscale it and write the LR to `target` (PNG; or a JPEG
    at quality 95 by its extension, refined through that codec) the way `iarn downscale` does:
    atomically, with the original size and the model recorded, so that `upscale_file` (or `iarn
    upscale`) needs nothing else. Returns the LR picture. `overwrite`: replace an existing
    `target`; `source` itself is never overwritten."""
    source, target = Path(source), Path(target)
    if target.exists() and source.exists() and os.path.samefile(source, target):
        raise ValueError(f"{target}: is the input itself; iarn never overwrites an input")
    picture = read_picture(source)
    refine = dataclasses.replace(as_refine_config(refine), codec=lossy_codec(target))  # refined for what the file holds
    lr = downscale_picture(model, picture, size=size, scale=scale, tile=tile, refine=refine)
    write_picture(lr, target, hr_size=picture.size, model_id=model.model_id, overwrite=overwrite, refine=refine.steps)
    return lr


def upscale_file(
    model: Rescaler,
    source: str | os.PathLike,
    target: str | os.PathLike,
    size: Size | None = None,
    tile: int | None = None,
    overwrite: bool = False,
) -> Picture:
    """Read an LR file, upscale it to `size` (H, W; by default the size it records) and write
    the result to `target` atomically. Returns the restored picture."""
    source, target = Path(source), Path(target)
    if target.exists() and source.exists() and os.path.samefile(source, target):
        raise ValueError(f"{target}: is the input itself; iarn never overwrites an input")
    hr = upscale_picture(model, read_picture(source), size, tile=tile)
    write_picture(hr, target, overwrite=overwrite)
    return hr
