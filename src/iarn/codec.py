"""Lossy codecs between the two directions: an 8-bit LR as it comes back from Pillow's JPEG
(4:2:0) or lossy WebP at a quality, for evaluation (`iarn evaluate --lr-format jpeg:90`) and
for training with the codec in the loop (TrainConfig `codec`: the real codec forward, the
gradient straight through, as IRN's journal version trains its JPEG model)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from .convert import to_tensor, to_uint8

CODECS = ("none", "jpeg", "webp")


def through_codec(lr: np.ndarray, lr_format: tuple[str, int] | None) -> tuple[np.ndarray, int | None]:
    """An 8-bit LR (h, w, 3) as it comes back from `lr_format` (Pillow's JPEG, 4:2:0, or lossy
    WebP at its quality; None: unchanged), and the bytes it took (None when unchanged)."""
    if lr_format is None:
        return lr, None
    kind, quality = lr_format
    buffer = io.BytesIO()
    Image.fromarray(lr).save(buffer, format=kind.upper(), quality=quality)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.array(decoded.convert("RGB")), buffer.tell()


def through_codec_batch(lr: torch.Tensor, lr_format: tuple[str, int]) -> torch.Tensor:
    """(B, 3, h, w) 8-bit LRs in [0, 1] through the codec, each image alone; the gradient passes
    straight through (the codec's own is zero almost everywhere)."""
    decoded = [through_codec(to_uint8(image[None].detach().float()), lr_format)[0] for image in lr]
    coded = torch.cat([to_tensor(image, lr.device) for image in decoded]).to(lr.dtype) / 255
    return lr + (coded - lr).detach()


__all__ = ["CODECS", "through_codec", "through_codec_batch"]
