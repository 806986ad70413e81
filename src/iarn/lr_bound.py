"""The LR bound: every LR iarn writes is at LR_PSNR_MIN dB PSNR-Y or more against the bicubic LR.

The reference is the protocol's (the HR's bicubic downscale, rounded to 8 bits); the bound sees
luma only (BT.601 Y, as PSNR-Y does). `project_lr` moves an LR onto the bound, `hold_lr_bound`
gives the nearest 8-bit LR on it (what the runner writes, whatever made the LR: the forward
pass, the corrector or refinement), and `LRBound` is one refinement's bound, per image
(docs/design.md section 3, "The LR bound, always").

Shapes: LRs (B, 3, h, w) and the HR (B, 3, H, W), float in [0, 1] (the HR may be uint8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .geometry import Size
from .metrics import Y_WEIGHTS
from .model.modes import resample_crop
from .model.network import quantize_8bit
from .resample import input_span
from .tiling import as_float

LR_PSNR_MIN = 44.0  # dB PSNR-Y against the 8-bit bicubic LR: every LR iarn writes is at least this
LR_PSNR_MARGIN = 0.02  # dB above the bound that the projection aims at, so that rounding keeps it
BOUND_TRIES = 20  # projections, each aiming 0.1 dB higher for images that rounding took under
REFERENCE_BAND = 256  # LR rows of the reference computed at once: a large photo is never all float64


def luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, ...) RGB in [0, 1] -> (B, 1, ...) BT.601 Y / 255 without its offset."""
    w = torch.tensor(Y_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, *([1] * (x.ndim - 2)))
    return (x * w).sum(dim=1, keepdim=True)


def lr_psnr_y(lr: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR-Y (dB, per image, float64) of an LR against the reference LR, both (B, 3, h, w)."""
    mse = luma((lr - reference).double()).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse.clamp_min(1e-20))


def project_lr(v: torch.Tensor, reference: torch.Tensor, floor_db: torch.Tensor) -> torch.Tensor:
    """An LR near `v`, in [0, 1], whose Y deviation from `reference` (in [0, 1]) has PSNR-Y >=
    floor_db (per image): the luma component of the deviation is scaled down (the bound does not
    see chroma) and the result clamped; where clamping brought luma back over the bound (colour
    at the ends of the range), the whole deviation is then scaled down too, which stays in [0, 1]."""
    allowed = torch.pow(10.0, -floor_db.double() / 10)
    d = v - reference
    w = torch.tensor(Y_WEIGHTS, dtype=v.dtype, device=v.device).view(1, 3, 1, 1)
    yd = (d * w).sum(dim=1, keepdim=True)
    v = (v - (1 - _shrink(yd, allowed, v.dtype)) * yd * w / w.pow(2).sum()).clamp(0, 1)
    d = v - reference
    return reference + _shrink((d * w).sum(dim=1, keepdim=True), allowed, v.dtype) * d


def _shrink(yd: torch.Tensor, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per image (B, 1, 1, 1): the factor that brings the mean square of `yd` to `allowed`, or 1."""
    mse = yd.double().pow(2).mean(dim=(1, 2, 3))
    shrink = torch.where(mse > allowed, torch.sqrt(allowed / mse.clamp_min(1e-30)), torch.ones_like(mse))
    return shrink.to(dtype).view(-1, 1, 1, 1)


def reference_lr(hr: torch.Tensor, lr_size: Size, dtype: torch.dtype) -> torch.Tensor:
    """The LR the bound is measured against, as the protocol measures it: the bicubic downscale
    of the HR (B, 3, H, W, float or uint8), rounded to 8 bits, in `dtype`. Computed in bands of
    LR rows, each from the HR rows it reads, so its memory is bounded whatever the image."""
    height, width = hr.shape[-2], hr.shape[-1]
    out = torch.empty(hr.shape[0], hr.shape[1], *lr_size, dtype=dtype, device=hr.device)
    for top in range(0, lr_size[0], REFERENCE_BAND):
        rows = (top, min(lr_size[0], top + REFERENCE_BAND))
        first, stop = input_span(height, lr_size[0], *rows)
        band = as_float(hr[..., first:stop, :], torch.float64)
        resized = resample_crop(band, (first, 0), (height, width), lr_size, rows, (0, lr_size[1]))
        out[..., rows[0] : rows[1], :] = quantize_8bit(resized).to(dtype)
    return out


def hold_lr_bound(lr: torch.Tensor, hr: torch.Tensor, lr_psnr_min: float) -> torch.Tensor:
    """The 8-bit LR nearest to `lr` (B, 3, h, w, unquantised) whose PSNR-Y against the bicubic
    LR of `hr` is at least `lr_psnr_min` dB, per image (0: `lr` rounded). The projection aims a
    little above the bound and aims higher for an image that rounding took under it."""
    if lr_psnr_min <= 0 or (lr.shape[-2], lr.shape[-1]) == (hr.shape[-2], hr.shape[-1]):
        return quantize_8bit(lr)
    reference = reference_lr(hr, (lr.shape[-2], lr.shape[-1]), lr.dtype)
    floor = torch.full((lr.shape[0],), float(lr_psnr_min), dtype=torch.float64, device=lr.device)
    aim = floor + LR_PSNR_MARGIN
    for _ in range(BOUND_TRIES):
        q = quantize_8bit(project_lr(lr, reference, aim))
        short = lr_psnr_y(q, reference) < floor
        if not bool(short.any()):
            break
        aim = torch.where(short, aim + 0.1, aim)
    return q


@dataclass
class LRBound:
    """One refinement's LR bound, per image: `floor_db` held, steps projected onto `aim_db`
    (`bounded` False: no bound, values only clamped to [0, 1])."""

    reference: torch.Tensor
    floor_db: torch.Tensor
    aim_db: torch.Tensor
    bounded: bool

    def feasible(self, lr: torch.Tensor) -> torch.Tensor:
        """(B,) bool: whether each image's LR is at its floor or above."""
        if not self.bounded:
            return torch.ones(lr.shape[0], dtype=torch.bool, device=lr.device)
        return lr_psnr_y(lr, self.reference) >= self.floor_db - 1e-9

    def project(self, v: torch.Tensor) -> torch.Tensor:
        return project_lr(v, self.reference, self.aim_db) if self.bounded else v.clamp(0, 1)

    def round(self, v: torch.Tensor) -> torch.Tensor:
        """`v` rounded to 8 bits, projected first (aiming higher) for images rounding takes under."""
        q = quantize_8bit(v)
        aim = self.aim_db
        for _ in range(BOUND_TRIES):
            short = ~self.feasible(q)
            if not bool(short.any()):
                break
            aim = torch.where(short, aim + 0.1, aim)
            q = torch.where(short.view(-1, 1, 1, 1), quantize_8bit(project_lr(v, self.reference, aim)), q)
        return q
