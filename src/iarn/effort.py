"""Effort: one number for how much `downscale` spends choosing the LR, as encoders have (cjxl -e).

Each level is a corrector switch, the corrector's passes (each after the first is one more pass
of the network's upscaler, model/corrector.py; a fraction, one on that share of the LR's
blocks) and a number of refinement steps (refine.py); `--refine N` keeps exact control of the
steps. Costs and gains, measured on Set5 (docs/performance.md, "Effort"): level 1 costs 2 to
2.5 times the network's own pass, level 2 about four times (its third pass and one more upscale
that checks it); each refinement step about three such passes more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not at run time: the CLI's --help reads this module and must not import torch
    import torch

    from .refine import RefineConfig


@dataclass(frozen=True)
class Effort:
    """corrector: run the network's LR corrector (where the model has one); passes: its passes
    (None: as many as it was trained with; 2.4: a third on 40 % of the LR's blocks); refine:
    refinement steps; rounding: how they round the LR (`RefineConfig.rounding`)."""

    corrector: bool
    refine: int
    passes: float | None = None
    rounding: str = "every-step"

    def refine_config(self, **settings) -> RefineConfig:
        """The RefineConfig of this level's steps and rounding, with `settings` (its other fields)."""
        from .refine import RefineConfig

        return RefineConfig(steps=self.refine, rounding=self.rounding, **settings)


# Measured on Set5 (docs/history.md, "Three corrector passes"): the feedback stack (trained for
# one application) applied twice restores best, but refinement ends higher from four passes' LR.
# The CPU default runs the second application above x2 on the 40 % of the LR's blocks where the
# error is largest: most of its gain inside 3x the network's time (history.md, "A partial third
# pass"; model/modes/middle.py says where it is left out).
DEFAULT_PASSES = 2.4
MORE_PASSES = 3
REFINE_FROM_PASSES = 4
EFFORTS = {
    0: Effort(corrector=False, refine=0),  # the invertible network's forward pass alone
    1: Effort(corrector=True, refine=0, passes=DEFAULT_PASSES),  # and its corrector: the default on a CPU
    2: Effort(corrector=True, refine=0, passes=MORE_PASSES),
    3: Effort(corrector=True, refine=5, passes=REFINE_FROM_PASSES),
    4: Effort(corrector=True, refine=10, passes=REFINE_FROM_PASSES),  # the default on a CUDA GPU
    5: Effort(corrector=True, refine=30, passes=REFINE_FROM_PASSES),
    6: Effort(corrector=True, refine=100, passes=REFINE_FROM_PASSES, rounding="both"),  # 50 steps each way
}
CPU_EFFORT, GPU_EFFORT = 1, 4


def default_effort(device: torch.device) -> int:
    """The level a command uses unless told: seconds per megapixel on a CPU, more on a GPU."""
    return GPU_EFFORT if device.type == "cuda" else CPU_EFFORT


def plan(effort: int | None, refine: int | None, device: torch.device) -> Effort:
    """The corrector switch, passes and refinement steps for `--effort` and `--refine` (None:
    not given): the effort's (or the device's default), with the steps of `--refine` when given."""
    chosen = EFFORTS[default_effort(device) if effort is None else effort]
    return chosen if refine is None else replace(chosen, refine=refine)


def effort_level(name: str) -> Effort:
    """A level by name: "E" (effort E), "E+N" (effort E with N refinement steps: what `--effort E
    --refine N` runs; "0+10" is refinement from the network's own LR) or "E@P" (effort E with the
    corrector in P passes: "1@3"; "1@2.4": the last pass on 40 % of the blocks), for benchmarks
    and tables."""
    head, _, steps = name.partition("+")
    effort, _, passes = head.partition("@")
    try:
        chosen = EFFORTS[int(effort)]
        count = chosen.passes if not passes else int(passes) if passes.isdigit() else float(passes)
        if count is not None:
            from .model.corrector import split_passes

            split_passes(count)  # its ValueError for a count no corrector runs
        return replace(chosen, refine=int(steps) if steps else chosen.refine, passes=count)
    except (KeyError, ValueError):
        raise ValueError(
            f'effort level {name!r}: expected "E", "E+N" or "E@P" with E in 0-{max(EFFORTS)}, P 1, 2, ... or above 2'
        ) from None


def set_corrector(model, chosen: Effort) -> None:
    """Switch a Rescaler's corrector on or off, in the passes `chosen` says; a model trained
    through a lossy codec (the bundled `jpeg`) in whole passes only: through JPEG a partial last
    pass measured -0.02 to +0.01 dB on Set5 (docs/history.md, "A partial third pass")."""
    model.correct = chosen.corrector
    model.corrector_passes = corrector_passes(chosen.passes, model.path)


def corrector_passes(passes: float | None, path) -> float | None:
    """The corrector passes an effort of `passes` runs for the weights at `path`: whole passes
    for a model trained through a lossy codec (`set_corrector`)."""
    from .weights import trained_codec

    if passes is not None and passes != int(passes) and trained_codec(path) is not None:
        return int(passes)
    return passes


def partial_pass_runs(model, hr_size: tuple[int, int], lr_size: tuple[int, int]) -> bool:
    """Whether a fractional count of corrector passes runs its partial last pass for these sizes
    (a middle-image model, two or more x2 steps: model/modes/middle.py)."""
    from .model.modes.middle import PARTIAL_PASS_STEPS, MiddleImageMode

    network = model.network
    geometry = network.geometry(hr_size, lr_size)
    return isinstance(geometry, MiddleImageMode) and geometry.steps(network, hr_size, lr_size) >= PARTIAL_PASS_STEPS


__all__ = ["EFFORTS", "Effort", "default_effort", "effort_level", "partial_pass_runs", "plan", "set_corrector"]
