"""Training data: HR images decoded once into one uint8 buffer, random augmented crops, scales.

The decoded images live in one flat (3, N) uint8 tensor on the training device; a batch of crops
(with flips and rotations by multiples of 90 degrees) is cut by one gather on that device, from
offsets drawn on the host. So a GPU step needs no host-side pixel work and one tiny upload.
Randomness comes from `step_rng(seed, rank, step)`: each step's draws depend only on the step,
so a resumed run sees exactly the batches it would have seen, with no generator state to save.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from .files import find_images


def step_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The generator of one training step on one rank (scale and crop draws)."""
    return np.random.default_rng([seed, rank, step])


class CropSampler:
    """Random `crop` x `crop` RGB crops, flipped and rotated by multiples of 90 degrees.

    `shard=(k, n)` keeps every n-th image from the k-th (each DDP rank decodes only its share).
    Images smaller than a crop, and files that cannot be read (a warning names each), are left
    out. Batches are (B, 3, crop, crop) uint8 tensors on `device`.
    """

    def __init__(
        self, paths: list[str | Path], crop: int, device: torch.device | str = "cpu", shard: tuple[int, int] = (0, 1)
    ) -> None:
        from .imageio import ImageError, read_picture

        self.crop = crop
        self.device = torch.device(device)
        files = find_images(paths)
        if not files:
            raise ValueError(f"no training images under {[str(p) for p in paths]}")
        arrays: list[np.ndarray] = []
        self.sources: list[Path] = []
        for path in files[shard[0] :: shard[1]]:
            try:
                array = read_picture(path).rgb
            except (ImageError, OSError) as error:
                print(f"iarn: warning: skipping {path}: {str(error).removeprefix(f'{path}: ')}", file=sys.stderr)
                continue
            if min(array.shape[:2]) >= crop:
                arrays.append(array)
                self.sources.append(path)
        if not arrays:
            raise ValueError(
                f"no readable training image of at least {crop}x{crop} pixels under {list(map(str, paths))}"
            )
        self.heights = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        self.widths = np.array([a.shape[1] for a in arrays], dtype=np.int64)
        sizes = (self.heights * self.widths).astype(np.float64)
        self.weights = sizes / sizes.sum()  # larger photos hold more distinct crops
        bases = np.concatenate([[0], np.cumsum(self.heights * self.widths)[:-1]])
        self.pixels = torch.cat([torch.from_numpy(a).reshape(-1, 3).t() for a in arrays], dim=1).to(self.device)
        self._bases = torch.from_numpy(bases).to(self.device)
        self._widths = torch.from_numpy(self.widths).to(self.device)
        index = torch.arange(crop, device=self.device)
        self._i, self._j = index[None, :, None], index[None, None, :]

    def __len__(self) -> int:
        return len(self.heights)

    def draw(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """Host-side draws for `size` crops: (5, size) int64 rows image, top, left, flip, turns."""
        image = rng.choice(len(self.heights), size=size, p=self.weights)
        top = rng.integers(0, self.heights[image] - self.crop + 1)
        left = rng.integers(0, self.widths[image] - self.crop + 1)
        flip = rng.random(size) < 0.5
        turns = rng.integers(0, 4, size=size)
        return np.stack([image, top, left, flip, turns]).astype(np.int64)

    def batch(self, size: int, rng: np.random.Generator) -> torch.Tensor:
        """(size, 3, crop, crop) uint8 on the sampler's device."""
        image, top, left, flip, turns = torch.from_numpy(self.draw(size, rng)).to(self.device)[:, :, None, None]
        last, i, j = self.crop - 1, self._i, self._j
        # output pixel (i, j) of np.rot90(crop, turns) reads crop pixel (row, col)
        row = torch.where(turns == 0, i, torch.where(turns == 1, j, torch.where(turns == 2, last - i, last - j)))
        col = torch.where(turns == 0, j, torch.where(turns == 1, last - i, torch.where(turns == 2, last - j, i)))
        col = torch.where(flip.bool(), last - col, col)  # the flip came before the rotation
        offsets = self._bases[image] + (top + row) * self._widths[image] + left + col
        return self.pixels[:, offsets].transpose(0, 1).contiguous()


def sample_scale(
    rng: np.random.Generator,
    low: float,
    high: float,
    power: float,
    asymmetric_share: float,
    integer_share: float = 0.0,
) -> tuple[float, float]:
    """(s_h, s_w) in [low, high] with density proportional to s**power; independent per axis in
    `asymmetric_share` of the draws, equal otherwise. `integer_share` of the draws are instead a
    whole-number scale of [low, high] above 1 on both axes, each equally likely (none there: no
    such draw);
    at 0 the draws are those of a run without it."""
    if integer_share > 0:
        whole = range(max(2, math.ceil(low)), math.floor(high) + 1)  # x1 keeps the size: nothing to learn
        if len(whole) and rng.random() < integer_share:
            s = float(whole[int(rng.integers(len(whole)))])
            return s, s

    def one() -> float:
        if power == -1:
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        a, b = low ** (power + 1), high ** (power + 1)
        return float(rng.uniform(a, b) ** (1 / (power + 1)))

    if rng.random() < asymmetric_share:
        return one(), one()
    s = one()
    return s, s
