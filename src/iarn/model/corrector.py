"""The LR corrector: a small CNN that turns the network's LR into one its upscaler restores better.

The invertible network's forward pass is not the best encoder for its own inverse: encode-time
refinement (refine.py) shows how much a better LR gains, at an optimisation's cost. The corrector
learns that encoder in one pass, with the upscaler frozen (so every LR ever written still
upscales to the same pixels): trained on the HR error of `upscale(q(LR))` (corrector_train.py).

It works on the last x2 step's grid, at the LR's size: the LR (3 channels), that step's dropped
detail z (9), the detail of the earlier steps pixel-unshuffled to the LR's size (36 for the
second step of `middle`), and the step's scale encoding (4). Together these hold all of the
middle image, so nothing of the HR is hidden from it, whatever the scale. Each step count k has
its own first convolution (the channel counts differ); the rest is shared, or with `per_count`
each k's own too (more to learn, the same cost per pixel: an image uses one k). Its last
convolution starts at zero: a fresh corrector changes nothing.

With `passes` 2 or more it also looks at what its answer restores: the LR, rounded to 8 bits,
goes up through the network's steps (z = 0, as the upscaler does) to the middle image; the
middle image's error, Haar-transformed to the LR's grid (3 * 4^k channels), goes with that LR
and the encoding into a second stack of convolutions (`feedback`, its last layer zero too),
which corrects the LR again; the same stack once per pass after the first. A learned
refinement step: one network pass more each, no gradient. A fractional count of passes
(2.4) makes the last one partial: the feedback stack runs only on the share (0.4) of the LR's
blocks where the previous pass's error is largest, each run of chosen blocks upscaled with a
few LR pixels of context (`worst_block_runs`): most of a full pass's gain at a share of its cost.

Shapes: lr (B, 3, h, w); features (B, feature_channels(k), h, w) or (B,
feedback_channels(k), h, w); output (B, 3, h, w), unquantised (the runner rounds it and holds
the LR bound, rescaler.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..fields import check_number, from_known_fields
from ..geometry import Size
from ..metrics import Y_WEIGHTS

LAST_PASS_BLOCK = 32  # LR pixels a side of the blocks that a partial last pass chooses among
GUARD_WINDOW = 33  # odd: LR pixels a side of the window `local_error` averages over
LAST_PASS_MARGIN = 4  # LR pixels of context around each run of chosen blocks (Set5: 8 gains nothing)
CORRECTOR_BOUNDS = {"width": (4, 256), "depth": (2, 16), "steps": (1, 4), "passes": (1, 4)}
LR_CHANNELS = 3
GRID_CHANNELS = 12  # one x2 step: 3 LR channels and 9 of detail
COND_CHANNELS = 4


@dataclass(frozen=True)
class CorrectorConfig:
    """width: channels of the hidden convolutions; depth: 3x3 convolutions in all (first, hidden,
    last); steps: the largest x2 step count it serves (the model's `levels`); detail_gain: what
    the dropped detail z (and the second pass's error) is multiplied by on the way in (the
    network's latent loss keeps z about ten times smaller than the HR's own detail, too small
    for a fresh convolution to see); passes: 1, or more with the feedback of what the previous
    pass restores (a second stack of the same width and depth, the same one for every pass
    after the first); per_count: each step count its own hidden and last convolutions (False:
    only the first is its own)."""

    width: int = 32
    depth: int = 4
    steps: int = 2
    detail_gain: float = 1.0
    passes: int = 1
    per_count: bool = False

    def __post_init__(self) -> None:
        for name, (low, high) in CORRECTOR_BOUNDS.items():
            check_number(f"corrector {name}", getattr(self, name), low, high, whole=True)
        check_number("corrector detail_gain", self.detail_gain, 0.0, 1000.0)
        if not isinstance(self.per_count, bool):
            raise ValueError(f"corrector per_count must be true or false, got {self.per_count!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CorrectorConfig:
        return from_known_fields(cls, values, "corrector config")


def feature_channels(steps: int) -> int:
    """Input channels for `steps` x2 steps: the last grid, the earlier details, the encoding."""
    earlier = sum(9 * 4 ** (steps - j) for j in range(1, steps))
    return GRID_CHANNELS + earlier + COND_CHANNELS


def feedback_channels(steps: int) -> int:
    """Input channels of the second pass: the first LR, the middle image's error, the encoding."""
    return LR_CHANNELS + 3 * 4**steps + COND_CHANNELS


def feedback_features(
    lr: torch.Tensor, error: torch.Tensor, cond: torch.Tensor, detail_gain: float = 1.0
) -> torch.Tensor:
    """(B, feedback_channels(k), h, w) from the first LR (B, 3, h, w), the middle image's error
    Haar-transformed to its grid (B, 3 * 4^k, h, w) and the last step's encoding (1, 4, h, w)."""
    return torch.cat([lr, detail_gain * error, cond.to(lr.dtype).expand(lr.shape[0], -1, -1, -1)], dim=1)


def corrector_features(
    lr: torch.Tensor, details: list[torch.Tensor], cond: torch.Tensor, detail_gain: float = 1.0
) -> torch.Tensor:
    """(B, feature_channels(k), h, w) from the LR (B, 3, h, w), each step's dropped detail (first
    step first; step j's is (B, 9, h 2^(k-j), w 2^(k-j))) and the last step's encoding (1, 4, h, w)."""
    steps = len(details)
    parts = [lr, detail_gain * details[-1]]
    for j, detail in enumerate(details[:-1], start=1):
        parts.append(detail_gain * nn.functional.pixel_unshuffle(detail, 2 ** (steps - j)))
    parts.append(cond.to(lr.dtype).expand(lr.shape[0], -1, -1, -1))
    return torch.cat(parts, dim=1)


def split_passes(passes: float) -> tuple[int, float]:
    """(whole passes, share of the blocks the one after them covers) of a count of passes:
    2.4 -> (2, 0.4), 3 -> (3, 0.0). A fraction needs two whole passes before it: the share is
    chosen by the error of the last full one."""
    whole = int(passes)
    share = float(passes) - whole
    if whole < 1 or (share > 0 and whole < 2):
        raise ValueError(f"corrector passes must be a whole number >= 1 or a number above 2, got {passes}")
    return whole, share


def worst_block_runs(energy: torch.Tensor, share: float, block: int = LAST_PASS_BLOCK) -> list[tuple[int, ...]]:
    """Regions (top, bottom, left, right), in pixels of `energy` (h, w), that hold the `share`
    (0 to 1; at least one block when above 0) of its `block` x `block` blocks with the largest
    mean (the last row and column of blocks may be smaller), as runs of neighbouring chosen blocks
    along each row of blocks, top to bottom, left to right. Ties go to the earlier block."""
    h, w = energy.shape
    rows, cols = -(-h // block), -(-w // block)
    pad = (0, cols * block - w, 0, rows * block - h)
    values = energy.double()[None, None]
    sums = nn.functional.avg_pool2d(nn.functional.pad(values, pad), block)
    counts = nn.functional.avg_pool2d(nn.functional.pad(torch.ones_like(values), pad), block)
    means = (sums / counts).flatten()
    count = 0 if share <= 0 else min(means.numel(), max(1, round(share * means.numel())))
    chosen = torch.zeros(means.numel(), dtype=torch.bool)
    chosen[torch.argsort(-means, stable=True)[:count].cpu()] = True
    chosen = chosen.view(rows, cols).tolist()
    runs = []
    for i, row in enumerate(chosen):
        j = 0
        while j < cols:
            if not row[j]:
                j += 1
                continue
            start = j
            while j < cols and row[j]:
                j += 1
            runs.append((i * block, min(h, (i + 1) * block), start * block, min(w, j * block)))
    return runs


def local_error(error: torch.Tensor, factor: int, window: int | None = None) -> torch.Tensor:
    """The middle image's squared `error` (B, 3, f h, f w) per LR pixel (f = `factor`), averaged
    over the `window` x `window` LR pixels around it (fewer at the borders; default
    GUARD_WINDOW) -> (B, 1, h, w)."""
    window = GUARD_WINDOW if window is None else window
    energy = nn.functional.avg_pool2d(error.pow(2).sum(1, keepdim=True), factor)
    for size in ((1, window), (window, 1)):  # separable: a box filter along each axis
        energy = nn.functional.avg_pool2d(energy, size, 1, (size[0] // 2, size[1] // 2), count_include_pad=False)
    return energy


def hr_error(error: torch.Tensor, hr_size: Size, middle: Size) -> torch.Tensor:
    """Mean square of a middle image's `error` (B, 3, m, n) in luma (Y), as the HR sees it -> (B,): resized
    by the HR's factor (`hr_size` / `middle`, at most 1) with an antialiased filter, which drops
    what the back step to the HR ignores (at x2.5 more than an extra pass changes)."""
    size = tuple(max(1, round(error.shape[-2 + k] * hr_size[k] / middle[k])) for k in range(2))
    if size != tuple(error.shape[-2:]):
        error = nn.functional.interpolate(error, size=size, mode="bicubic", antialias=True, align_corners=False)
    luma = (error * error.new_tensor(Y_WEIGHTS)[:, None, None]).sum(1)
    return luma.pow(2).mean((1, 2))


class ConvStack(nn.Module):
    """(lr, features, steps) -> lr + a correction: `depth` 3x3 convolutions, the first per step
    count (`in_channels(k)` inputs), the others shared or, with `per_count`, per step count too
    (`hidden[k - 1][i]`, `last[k - 1]`); the last zero at the start."""

    def __init__(
        self, in_channels: Callable[[int], int], steps: int, width: int, depth: int, per_count: bool = False
    ) -> None:
        super().__init__()
        self.first = nn.ModuleList(nn.Conv2d(in_channels(k), width, 3, padding=1) for k in range(1, steps + 1))

        def hidden() -> nn.ModuleList:
            return nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth - 2))

        def last() -> nn.Conv2d:
            conv = nn.Conv2d(width, 3, 3, padding=1)
            if not conv.weight.is_meta:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
            return conv

        self.per_count = per_count
        self.hidden = nn.ModuleList(hidden() for _ in range(steps)) if per_count else hidden()
        self.last = nn.ModuleList(last() for _ in range(steps)) if per_count else last()
        self.act = nn.LeakyReLU(0.2)

    def forward(self, lr: torch.Tensor, features: torch.Tensor, steps: int) -> torch.Tensor:
        hidden, last = (self.hidden[steps - 1], self.last[steps - 1]) if self.per_count else (self.hidden, self.last)
        h = self.act(self.first[steps - 1](features.to(last.weight.dtype)))
        for conv in hidden:
            h = self.act(conv(h))
        return lr + last(h).to(lr.dtype)

    def shared_to_per_count(self, shared: ConvStack) -> None:
        """Start every step count's convolutions from a shared stack's (of the same sizes)."""
        self.first.load_state_dict(shared.first.state_dict())
        for k in range(len(self.first)):
            self.hidden[k].load_state_dict(shared.hidden.state_dict())
            self.last[k].load_state_dict(shared.last.state_dict())


class Corrector(ConvStack):
    """(lr, features, steps) -> corrected LR, unquantised; `feedback` (passes 2 or more): each
    later pass, (previous LR, feedback features, steps) -> LR."""

    def __init__(self, config: CorrectorConfig | None = None) -> None:
        config = config or CorrectorConfig()
        super().__init__(feature_channels, config.steps, config.width, config.depth, config.per_count)
        self.config = config
        more = config.passes > 1
        stack = ConvStack(feedback_channels, config.steps, config.width, config.depth, config.per_count)
        self.feedback = stack if more else None

    @property
    def receptive_radius(self) -> int:
        """LR pixels on each side that one output pixel of the first pass reads."""
        return self.config.depth


__all__ = [
    "ConvStack",
    "Corrector",
    "CorrectorConfig",
    "corrector_features",
    "feature_channels",
    "feedback_channels",
    "feedback_features",
    "hr_error",
    "local_error",
    "split_passes",
    "worst_block_runs",
]
