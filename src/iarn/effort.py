"""Effort: one number for how much `downscale` spends choosing the LR, as encoders have (cjxl -e).

Each level is a corrector switch and a number of refinement steps (refine.py); `--refine N`
keeps exact control of the steps. Costs and gains, measured on Set5 (docs/performance.md,
"Effort"): level 1 costs about what the network's own pass does; each refinement step about
three such passes more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not at run time: the CLI's --help reads this module and must not import torch
    import torch


@dataclass(frozen=True)
class Effort:
    """corrector: run the network's LR corrector (where the model has one); refine: steps."""

    corrector: bool
    refine: int


EFFORTS = {
    0: Effort(corrector=False, refine=0),  # the invertible network's forward pass alone
    1: Effort(corrector=True, refine=0),  # and its learned corrector: the default on a CPU
    2: Effort(corrector=True, refine=2),
    3: Effort(corrector=True, refine=5),
    4: Effort(corrector=True, refine=10),  # the default on a CUDA GPU
    5: Effort(corrector=True, refine=30),
    6: Effort(corrector=True, refine=100),
}
CPU_EFFORT, GPU_EFFORT = 1, 4


def default_effort(device: torch.device) -> int:
    """The level a command uses unless told: seconds per megapixel on a CPU, more on a GPU."""
    return GPU_EFFORT if device.type == "cuda" else CPU_EFFORT


def plan(effort: int | None, refine: int | None, device: torch.device) -> Effort:
    """The corrector switch and refinement steps for `--effort` and `--refine` (None: not
    given): the effort's (or the device's default), with the steps of `--refine` when given."""
    chosen = EFFORTS[default_effort(device) if effort is None else effort]
    return chosen if refine is None else Effort(corrector=chosen.corrector, refine=refine)


__all__ = ["EFFORTS", "Effort", "default_effort", "plan"]
