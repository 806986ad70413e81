"""The invertible arbitrary-scale rescaling network (docs/design.md section 3).

Shapes and ranges. HR images are (B, 3, H, W) and LR images (B, 3, h, w), float, RGB, values in
[0, 1], any 1 <= H/h <= `max_scale` and 1 <= W/w <= `max_scale` (the two factors independent).
The network knows regions; whole images, tiles, devices and precision are `iarn.Rescaler`'s.

Regions. `down_region` and `up_region` run the network on a crop of the image with the geometry
of the whole image (phases of the scale encoding, rows of the resampling matrices), so tiles of a
large image compute what the whole image would, up to the convolutions' border effects that the
tile overlap absorbs. HR crops start on a multiple of `2**levels` pixels.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..fields import check_choice, check_number, from_known_fields
from ..geometry import Size
from .bands import UpscalerBand, check_bands
from .corrector import Corrector, CorrectorConfig
from .coupling import CouplingBlock
from .encoding import ENCODINGS, encoding_channels, scale_encoding
from .haar import haar_forward, haar_inverse, level_size
from .modes import MODES, RESAMPLE, Mode, NoiseFn, keeps_an_axis

# Sane bounds, checked before anything is built: a weight file's config cannot ask for absurd sizes.
CONFIG_BOUNDS = {
    "levels": (1, 4),
    "blocks_per_level": (1, 64),
    "growth": (1, 512),
    "clamp": (0.01, 10.0),
    "max_scale": (1.0, 16.0),
}
Range = tuple[int, int]
BACKS = ("exact", "bicubic")
STEP_STAGES = ("shared", "per-count")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an IARN model; stored as JSON in every weight file.

    mode: how the LR is formed (model/modes/), `cycle` (invert the Haar, bicubic-resize the
        full-resolution output) or `split` (resample only the first 3 channels of the working
        grid); `naive` is the comparison baseline (docs/ablation.md): bicubic-resize the HR to
        twice the LR size, a fixed x2 split model, bicubic back on the way up. Train it at
        scale 2 (`scale_min = scale_max = 2`).
    levels: Haar levels; blocks_per_level coupling blocks follow each.
    growth: width of the dense subnets. clamp: bound of the coupling's log-scale.
    encoding: `pse` (4 maps), `sincos` (6 maps) or `off` (4 zero maps).
    max_scale: the largest factor per axis the model accepts (the smallest is 1).
    back: how modes `middle` and `naive` return from the middle image to the HR where it is an
        upsampling of it: `exact` (the least-squares inverse) or `bicubic`.
    step_stages: `middle` only: `shared` (step l of every step count k runs stage l: `levels`
        stages) or `per-count` (each k has its own k stages: levels (levels + 1) / 2 stages, so
        the x(1, 2] path is not pulled by the x(2, 4] one).

    `middle` (the method's geometry, model/modes/): the HR upsampled to 2^k times the LR
    size, k x2 steps of 12 channels; it needs 2^levels >= max_scale (one stage per step).

    The defaults are the architecture of the bundled `default` weights. A stored config (a
    weight file's, a checkpoint's, a graph's) is read with `from_stored`: a field it lacks was
    written under the first release's defaults (`FIRST_DEFAULTS`).
    """

    mode: str = "middle"
    levels: int = 2
    blocks_per_level: int = 4
    growth: int = 16
    clamp: float = 1.0
    encoding: str = "pse"
    max_scale: float = 4.0
    back: str = "exact"
    step_stages: str = "per-count"

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, tuple(MODES))
        check_choice("encoding", self.encoding, ENCODINGS)
        check_choice("back", self.back, BACKS)
        check_choice("step_stages", self.step_stages, STEP_STAGES)
        for name, (low, high) in CONFIG_BOUNDS.items():
            check_number(name, getattr(self, name), low, high, whole=name in ("levels", "blocks_per_level", "growth"))
        if self.mode == "naive" and self.levels != 1:
            raise ValueError("mode naive is a x2 model: it needs levels = 1")
        if self.mode == "middle" and 2**self.levels < self.max_scale:
            raise ValueError(f"mode middle needs 2^levels >= max_scale, got levels {self.levels}, max {self.max_scale}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """The fields `values` names, the rest the defaults (a recipe's model)."""
        return from_known_fields(cls, values, "config")

    @classmethod
    def from_stored(cls, values: dict[str, Any]) -> ModelConfig:
        """A config as stored in a file: the fields it lacks are the first release's defaults."""
        return from_known_fields(cls, {**FIRST_DEFAULTS, **values}, "config")


# ModelConfig's defaults until 2026-12-07 (the first release's `cycle` model, 1.6 M parameters):
# what a stored config that lacks a field was written with; the mode and blocks were always stored.
FIRST_DEFAULTS: dict[str, Any] = {
    "mode": "cycle",
    "levels": 1,
    "blocks_per_level": 10,
    "growth": 32,
    "step_stages": "shared",
}


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to multiples of 1/255, with a straight-through gradient."""
    rounded = torch.round(x.clamp(0, 1) * 255) / 255
    return x + (rounded - x).detach()


def _full(span: Range | None, size: int) -> Range:
    """`span`, or all of an axis of `size` when it is None."""
    return span if span is not None else (0, size)


class IARN(nn.Module):
    """Haar levels with coupling blocks, conditioned on the scale encoding."""

    def __init__(
        self,
        config: ModelConfig | None = None,
        corrector: CorrectorConfig | None = None,
        bands: tuple[UpscalerBand, ...] = (),
    ) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        cfg = self.config
        cond = encoding_channels(cfg.encoding)
        mode = MODES[cfg.mode]
        self.stages = nn.ModuleList(
            nn.ModuleList(
                CouplingBlock(mode.stage_channels(level), cond, cfg.growth, cfg.clamp)
                for _ in range(cfg.blocks_per_level)
            )
            for level in mode.stage_levels(cfg)
        )
        # The learned LR encoder on top of the forward pass (model/corrector.py): downscale only,
        # `middle` and `naive` modes; the upscaler never sees it.
        self.corrector = Corrector(corrector) if corrector is not None else None
        # Upscalers for JPEG LRs by quality (model/bands.py): copies of this network, inverse only.
        self.bands = check_bands(tuple(bands))
        self.band_networks = nn.ModuleDict({band.key: IARN(self.config) for band in self.bands}) if bands else None

    def upscaler_for(self, jpeg_quality: int | None) -> IARN:
        """The network that upscales an LR decoded from a JPEG of about `jpeg_quality` (None:
        not a JPEG, or its quality unknown): the band that serves it, else this network."""
        for band in self.bands:
            if band.serves(jpeg_quality):
                return self.band_networks[band.key]
        return self

    def set_bands(self, bands: dict[UpscalerBand, IARN]) -> None:
        """Replace the bands with these (each an IARN of this config, whose inverse is used)."""
        for network in bands.values():
            if network.config != self.config:
                raise ValueError(f"a band's config {network.config} differs from the network's {self.config}")
        self.bands = check_bands(tuple(bands))
        modules = {band.key: IARN(self.config) for band in self.bands}
        for band, network in bands.items():
            modules[band.key].stages.load_state_dict(network.stages.state_dict())
        self.band_networks = nn.ModuleDict(modules).to(self.device) if modules else None

    @property
    def state_dtype(self) -> torch.dtype:
        """dtype of images and of the invertible arithmetic: float64 for a float64 model, else
        float32. Weights in bfloat16 or float16 only make the subnets run in that precision."""
        return torch.float64 if self.stages[0][0].f.out.weight.dtype == torch.float64 else torch.float32

    @property
    def device(self) -> torch.device:
        return self.stages[0][0].f.out.weight.device

    @property
    def mode(self) -> Mode:
        """How the LR is formed (model/modes/)."""
        return MODES[self.config.mode]

    def geometry(self, hr_size: Size, lr_size: Size) -> Mode:
        """The mode that maps between these sizes: the model's own, or plain bicubic where an
        axis keeps its size (`modes.Resample`). Tiles, spans and core sizes ask it."""
        return RESAMPLE if keeps_an_axis(hr_size, lr_size) else self.mode

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def cell(self) -> int:
        """HR pixels per working-grid pixel along each axis."""
        return 2**self.config.levels

    # -- the invertible core: Haar levels and coupling blocks -------------------------------

    def _conds(self, hr_size: Size, lr_size: Size, hr_start: Size, crop: Size, device) -> list[torch.Tensor]:
        conds = []
        for level in range(1, self.config.levels + 1):
            grid_start = (hr_start[0] >> level, hr_start[1] >> level)
            grid = (level_size(crop[0], level), level_size(crop[1], level))
            conds.append(scale_encoding(self.config.encoding, grid_start, grid, 2**level, hr_size, lr_size, device))
        return conds

    def conds_for(self, hr_size: Size, lr_size: Size, grid_start: Size, grid: Size, level: int) -> torch.Tensor:
        """The scale encoding of a level-`level` grid crop (what `encode` feeds that level)."""
        return scale_encoding(self.config.encoding, grid_start, grid, 2**level, hr_size, lr_size, self.device)

    def encode_step(self, x: torch.Tensor, stage: int, cond: torch.Tensor) -> torch.Tensor:
        """One x2 step of a mode that feeds each step only part of the last (`naive`, `middle`):
        a Haar level of `x` (B, C, 2n, 2m), then the blocks of `stages[stage]`: (B, 4C, n, m)."""
        x = haar_forward(x)
        for block in self.stages[stage]:
            x = block(x, cond)
        return x

    def decode_step(self, y: torch.Tensor, stage: int, cond: torch.Tensor, size: Size) -> torch.Tensor:
        """Inverse of `encode_step`, to an image of `size`."""
        for block in reversed(self.stages[stage]):
            y = block.inverse(y, cond)
        return haar_inverse(y, size)

    def encode(self, x: torch.Tensor, hr_size: Size, lr_size: Size, hr_start: Size = (0, 0)) -> torch.Tensor:
        """Invertible core, forward: HR crop (B, 3, Hc, Wc) -> working grid (B, 3*4^L, ...)."""
        conds = self._conds(hr_size, lr_size, hr_start, tuple(x.shape[-2:]), x.device)
        return self.core_forward(x, conds)

    def decode(
        self, y: torch.Tensor, hr_size: Size, lr_size: Size, crop: Size, hr_start: Size = (0, 0)
    ) -> torch.Tensor:
        """Invertible core, inverse: working grid -> HR crop of size `crop` (Hc, Wc)."""
        conds = self._conds(hr_size, lr_size, hr_start, crop, y.device)
        return self.core_inverse(y, conds, crop)

    def core_forward(self, x: torch.Tensor, conds: list[torch.Tensor]) -> torch.Tensor:
        """Haar levels and coupling blocks, given the per-level scale encodings. Its shapes depend
        only on the crop, not on the scale: this is the part `compile_core` compiles."""
        for blocks, cond in zip(self.stages, conds):
            x = haar_forward(x)
            for block in blocks:
                x = block(x, cond)
        return x

    def core_inverse(self, y: torch.Tensor, conds: list[torch.Tensor], crop: Size) -> torch.Tensor:
        """Inverse of `core_forward` for an HR crop of size `crop`."""
        for level in range(self.config.levels, 0, -1):
            cond = conds[level - 1]
            for block in reversed(self.stages[level - 1]):
                y = block.inverse(y, cond)
            y = haar_inverse(y, (level_size(crop[0], level - 1), level_size(crop[1], level - 1)))
        return y

    def compile_core(self, mode: str = "default") -> None:
        """Compile `core_forward` and `core_inverse` with `torch.compile` (in place).

        In training every step sees the same crop, so these compile once with static shapes
        while the scale-dependent resampling stays eager; `mode="reduce-overhead"` then also
        replays them as CUDA graphs on a GPU, removing most kernel-launch overhead.
        """
        self.core_forward = torch.compile(self.core_forward, mode=mode, dynamic=False)
        self.core_inverse = torch.compile(self.core_inverse, mode=mode, dynamic=False)

    # -- regions ----------------------------------------------------------------------------

    def down_region(
        self,
        x: torch.Tensor,
        hr_size: Size,
        lr_size: Size,
        hr_start: Size = (0, 0),
        lr_rows: Range | None = None,
        lr_cols: Range | None = None,
        correct: bool = False,
        passes: float | None = None,
        check_passes: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LR rows/cols `lr_rows`, `lr_cols` (default all) from an HR crop starting at `hr_start`;
        `correct`: through the LR corrector, where the network has one (else the forward pass's),
        in `passes` passes (None: as many as it was trained with; `check_passes`: each pass beyond
        the trained kept only if it lowered the error, model/modes/middle.py).

        Returns the unquantized LR (B, 3, rows, cols) and the by-product the training loss
        needs (the mode's: `z` in `split` mode, the full-resolution image `x'` in `cycle` mode).
        """
        lr_rows, lr_cols = _full(lr_rows, lr_size[0]), _full(lr_cols, lr_size[1])
        geometry = self.geometry(hr_size, lr_size)
        return geometry.down(self, x, hr_size, lr_size, hr_start, lr_rows, lr_cols, correct, passes, check_passes)

    def up_region(
        self,
        lr: torch.Tensor,
        hr_size: Size,
        lr_size: Size,
        lr_start: Size = (0, 0),
        hr_rows: Range | None = None,
        hr_cols: Range | None = None,
        noise: NoiseFn | None = None,
    ) -> torch.Tensor:
        """HR rows/cols `hr_rows`, `hr_cols` (default all; starts on a multiple of `cell`) from an
        LR crop starting at `lr_start`. Unclamped. `noise(shape)` samples `z` in `split` mode
        (default zeros)."""
        hr_rows, hr_cols = _full(hr_rows, hr_size[0]), _full(hr_cols, hr_size[1])
        return self.geometry(hr_size, lr_size).up(self, lr, hr_size, lr_size, lr_start, hr_rows, hr_cols, noise)


__all__ = ["FIRST_DEFAULTS", "IARN", "ModelConfig", "quantize_8bit"]
