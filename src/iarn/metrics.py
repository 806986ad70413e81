"""Fidelity metrics of the evaluation protocol (docs/design.md section 5), in float64.

Inputs are uint8 arrays (H, W, 3), RGB: outputs are rounded to 8 bits before scoring.
Y is ITU-R BT.601: Y = 16 + 65.481 R + 128.553 G + 24.966 B with RGB in [0, 1], Y in [0, 255].
SSIM: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 255, mean over the valid
region (Wang et al.; scikit-image with gaussian_weights=True agrees, see the tests).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# BT.601 luma weights for RGB in [0, 1] -> Y / 255 (the offset 16 cancels in differences)
Y_WEIGHTS = (65.481 / 255, 128.553 / 255, 24.966 / 255)


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float64 Y in [16, 235]."""
    x = rgb.astype(np.float64) / 255
    return 16 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def crop_border(x: np.ndarray, border: int) -> np.ndarray:
    if border <= 0:
        return x
    if 2 * border >= min(x.shape[0], x.shape[1]):
        raise ValueError(f"cannot crop {border} pixels from each side of a {x.shape[1]}x{x.shape[0]} image")
    return x[border:-border, border:-border]


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of two (H, W) arrays, both at least 11 x 11 (Gaussian window 11, sigma 1.5, valid
    positions only; the window applied as two 1-D passes, as it is separable)."""
    taps = _gaussian_taps()
    x = torch.from_numpy(np.asarray(a, dtype=np.float64))
    y = torch.from_numpy(np.asarray(b, dtype=np.float64))
    maps = torch.stack([x, y, x * x, y * y, x * y])[:, None]  # (5, 1, H, W)
    blurred = F.conv2d(F.conv2d(maps, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
    mu_x, mu_y, xx, yy, xy = blurred[:, 0]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def psnr_y(a: np.ndarray, b: np.ndarray, border: int = 0) -> float:
    return psnr(crop_border(rgb_to_y(a), border), crop_border(rgb_to_y(b), border))


def ssim_y(a: np.ndarray, b: np.ndarray, border: int = 0) -> float:
    return ssim(crop_border(rgb_to_y(a), border), crop_border(rgb_to_y(b), border))


def psnr_rgb(a: np.ndarray, b: np.ndarray, border: int = 0) -> float:
    return psnr(crop_border(a, border), crop_border(b, border))


def protocol_border(scale: tuple[float, float]) -> int:
    """Pixels cropped from each border: ceil(max(s_h, s_w))."""
    return math.ceil(max(scale))
