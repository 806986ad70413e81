"""Progressive rounding of an LR (refine.py, `RefineConfig(rounding="progressive")`): its schedule
and which values each stage holds at 8-bit levels. Shapes: LR (B, 3, h, w) float in [0, 1]."""

from __future__ import annotations

import math

import torch

# Progressive rounding (RefineConfig.rounding): a share of the steps unrounded, then stages that
# round a growing share of the LR's values, the values nearest an 8-bit level first (half of
# them, three quarters, ...), each followed by steps on the values still free, which make up
# for the rounding of the others; the last stage rounds what is left.
UNROUNDED_SHARE = 0.6
ROUNDING_STAGES = 5
MIN_STAGE_STEPS = 2
MAX_UNROUNDED_STEPS = 24
HELD_STEP_SHARE = 1 / 3  # the stages' first step, as a share of the unrounded steps' first


def rounding_schedule(steps: int) -> tuple[int, list[int]]:
    """(unrounded steps, steps after each rounding stage but the last) for `steps` >= 1 steps of
    progressive rounding: the shares rounded before them are 1/2, 3/4, 7/8, ... (then all)."""
    unrounded = min(MAX_UNROUNDED_STEPS, max(1, round(steps * UNROUNDED_SHARE)))
    rest = steps - unrounded
    stages = min(max(1, rest // MIN_STAGE_STEPS), rest, ROUNDING_STAGES - 1)
    return unrounded, [rest // stages + (k < rest % stages) for k in range(stages)] if stages else []


def round_nearest_first(v: torch.Tensor, rounded: torch.Tensor, share: float) -> torch.Tensor:
    """The mask (like `v`, bool) of the `share` of each image's values to hold at 8-bit levels:
    those already `rounded`, then the values nearest a level."""
    batch = v.shape[0]
    distance = (v * 255 - (v * 255).round()).abs().reshape(batch, -1)
    distance = distance.masked_fill(rounded.reshape(batch, -1), -1.0)
    count = min(distance.shape[1], math.ceil(share * distance.shape[1]))
    chosen = torch.zeros_like(distance, dtype=torch.bool)
    chosen.scatter_(1, distance.argsort(dim=1, stable=True)[:, :count], True)
    return chosen.view_as(v)
