"""The modes on the working grid: `Cycle` (the LR a resize of the Haar-inverted grid) and `Split`
(the LR a resample of the grid's first 3 channels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...resample import resize
from ..coupling import LR_CHANNELS
from ..haar import haar_forward_levels, haar_inverse_levels, level_size
from .base import Mode


class Cycle(Mode):
    """The LR is a bicubic resize of the full-resolution image x' (the Haar inverted); x' must
    survive the down-up cycle."""

    def lattice(self, levels: int, hr_length: int) -> tuple[int, int]:
        return 1, hr_length

    def lr_source(self, grid, levels, crop):
        full_resolution = haar_inverse_levels(grid, levels, crop)
        return full_resolution, full_resolution

    def grid_from_source(self, source, levels, noise=None):
        return haar_forward_levels(source, levels)

    def latent_loss(self, by_product, lr_q, hr_size):
        return F.mse_loss(by_product.float(), resize(lr_q, hr_size).float())


class Split(Mode):
    """The LR is a resample of the grid's first 3 channels; the rest, z, should carry nothing
    the decoder cannot do without (it is taken as 0, or sampled)."""

    samples_z = True

    def lattice(self, levels: int, hr_length: int) -> tuple[int, int]:
        return 2**levels, level_size(hr_length, levels)

    def lr_source(self, grid, levels, crop):
        return grid[:, :LR_CHANNELS], grid[:, LR_CHANNELS:]

    def grid_from_source(self, source, levels, noise=None):
        channels = 3 * 4**levels - LR_CHANNELS
        if noise is None:  # zeros shaped from the tensor, so an exported graph keeps dynamic sizes
            z = torch.zeros_like(source[:, :1]).expand(-1, channels, -1, -1)
        else:
            z = noise((source.shape[0], channels, *source.shape[-2:])).to(source)
        return torch.cat([source, z], dim=1)

    def latent_loss(self, by_product, lr_q, hr_size):
        return by_product.float().pow(2).mean()
