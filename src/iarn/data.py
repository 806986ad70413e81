"""Training data: HR images decoded once into RAM (uint8), random augmented crops, scales."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def find_images(paths: list[str | Path]) -> list[Path]:
    """Image files under `paths` (files or folders, searched recursively), sorted."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


class CropSampler:
    """Random `crop` x `crop` RGB crops, flipped and rotated by multiples of 90 degrees.

    Images smaller than a crop are left out. Batches come out as (B, 3, crop, crop) uint8 tensors.
    """

    def __init__(self, paths: list[str | Path], crop: int) -> None:
        self.crop = crop
        self.images: list[np.ndarray] = []
        for path in find_images(paths):
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
            if min(array.shape[:2]) >= crop:
                self.images.append(array)
        if not self.images:
            raise ValueError(f"no training image of at least {crop}x{crop} pixels under {paths}")
        sizes = np.array([a.shape[0] * a.shape[1] for a in self.images], dtype=np.float64)
        self.weights = sizes / sizes.sum()  # larger photos hold more distinct crops

    def batch(self, size: int, rng: np.random.Generator) -> torch.Tensor:
        crops = []
        for index in rng.choice(len(self.images), size=size, p=self.weights):
            image = self.images[index]
            top = rng.integers(0, image.shape[0] - self.crop + 1)
            left = rng.integers(0, image.shape[1] - self.crop + 1)
            crop = image[top : top + self.crop, left : left + self.crop]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop = np.rot90(crop, k=int(rng.integers(4)))
            crops.append(np.ascontiguousarray(crop))
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def sample_scale(
    rng: np.random.Generator, low: float, high: float, power: float, asymmetric_share: float
) -> tuple[float, float]:
    """(s_h, s_w) in [low, high] with density proportional to s**power; independent per axis in
    `asymmetric_share` of the draws, equal otherwise."""

    def one() -> float:
        if power == -1:
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        a, b = low ** (power + 1), high ** (power + 1)
        return float(rng.uniform(a, b) ** (1 / (power + 1)))

    if rng.random() < asymmetric_share:
        return one(), one()
    s = one()
    return s, s
