"""Lossy codecs between the two directions: an 8-bit LR as it comes back from Pillow's JPEG
(4:2:0) or lossy WebP at a quality, for evaluation (`iarn evaluate --lr-format jpeg:90`) and
for training with the codec in the loop (TrainConfig `codec`): the real codec forward; the
gradient either straight through (as IRN's journal version trains its JPEG model) or that of
`jpeg_surrogate`, a differentiable JPEG whose rounding's gradient tells the encoder which of
its DCT coefficients the quantiser keeps (TrainConfig `codec_gradient`)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from .convert import to_tensor, to_uint8
from .jpeg_quality import libjpeg_tables

CODECS = ("none", "jpeg", "webp")
CODEC_GRADIENTS = ("straight", "surrogate")


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


def through_codec_batch(lr: torch.Tensor, lr_format: tuple[str, int], gradient: str = "straight") -> torch.Tensor:
    """(B, 3, h, w) 8-bit LRs in [0, 1] through the codec, each image alone. The codec's own
    gradient is zero almost everywhere; `gradient` says what stands in: "straight" (identity) or
    "surrogate" (`jpeg_surrogate`'s at the same quality, for either codec)."""
    decoded = [through_codec(to_uint8(image[None].detach().float()), lr_format)[0] for image in lr]
    coded = torch.cat([to_tensor(image, lr.device) for image in decoded]).to(lr.dtype) / 255
    stand_in = jpeg_surrogate(lr, lr_format[1]) if gradient == "surrogate" else lr
    return coded + (stand_in - stand_in.detach())  # the codec's pixels exactly, the stand-in's gradient


def quantisation_tables(quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's (luma, chroma) 8x8 tables at `quality` (1-100), as float64 tensors."""
    return tuple(torch.from_numpy(table) for table in libjpeg_tables(quality))


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix D: coefficients = D @ block @ D.T."""
    k, n = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    d = torch.cos((2 * n + 1) * k * torch.pi / 16) * torch.where(k == 0, 1 / 8**0.5, 0.5)
    return d.to(dtype=dtype, device=device)


def soft_round(x: torch.Tensor) -> torch.Tensor:
    """round(x), with the gradient of a quantiser that keeps what it rounds away from zero: 1
    where |x| >= 1/2 (the coefficient survives; its error is as often up as down), 4 x^2 under
    that (the coefficient is dropped: a small change does nothing until it nears 1/2)."""
    shaped = torch.where(x.abs() < 0.5, 4 / 3 * x**3, x)
    return torch.round(x).detach() + (shaped - shaped.detach())


def _quantise_planes(planes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) level-shifted planes, H and W multiples of 8 -> the same after DCT, soft
    quantisation with `table` (8, 8) and the inverse DCT."""
    b, c, h, w = planes.shape
    d = _dct_matrix(planes.dtype, planes.device)
    blocks = planes.reshape(b, c, h // 8, 8, w // 8, 8).transpose(3, 4)
    coefficients = d @ blocks @ d.T
    table = table.to(planes)
    restored = d.T @ (soft_round(coefficients / table) * table) @ d
    return restored.transpose(3, 4).reshape(b, c, h, w)


def jpeg_surrogate(rgb: torch.Tensor, quality: int, origin: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """A differentiable stand-in for baseline JPEG at `quality` (4:2:0, libjpeg's tables):
    (B, 3, h, w) in [0, 1] -> the same. Full-range YCbCr; chroma averaged over 2x2 and brought
    back bilinearly; 8x8 DCT; each coefficient rounded over its quantiser step (`soft_round`'s
    gradient). It follows the real codec closely (46 dB PSNR to it at quality 90 on Set5's bird)
    but not exactly: training and refinement use its gradient only (`through_codec_batch`).
    `origin`: where `rgb` starts in the image the codec sees (a crop's offset), so that its
    blocks fall where the codec's do (the rows and columns before it taken as the crop's first)."""
    h, w = rgb.shape[-2:]
    top, left = origin[0] % 16, origin[1] % 16
    pad = (left, (-(w + left)) % 16, top, (-(h + top)) % 16)
    padded = torch.nn.functional.pad(rgb, pad, mode="replicate") * 255
    r, g, b = padded.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    luma_table, chroma_table = quantisation_tables(quality)
    y = _quantise_planes(y[:, None] - 128, luma_table) + 128
    chroma = torch.nn.functional.avg_pool2d(torch.stack([cb, cr], dim=1), 2)
    chroma = _quantise_planes(chroma, chroma_table)
    chroma = torch.nn.functional.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma.unbind(1)
    y = y[:, 0]
    out = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1) / 255
    return out[..., top : top + h, left : left + w]


__all__ = ["CODECS", "CODEC_GRADIENTS", "jpeg_surrogate", "soft_round", "through_codec", "through_codec_batch"]
