"""What the trainers of a part beside a frozen network share (`corrector_train.py`: an LR
encoder; `upscaler_train.py`: a JPEG band's upscaler): their recipes' common checks, and the
step loop with its time limit, log and checkpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from .fields import SHARED_TRAIN_BOUNDS, check_number

FROZEN_TRAIN_BOUNDS = {
    "steps": (1, 10**9),
    "batch_size": (1, 4096),
    "crop": (16, 4096),
    "learning_rate": (1e-9, 1.0),
    **SHARED_TRAIN_BOUNDS,
}
WHOLE = ("steps", "batch_size", "crop", "seed", "checkpoint_every", "log_every", "threads")
# where and how a run executes, not what it learns: left out of the weight file's record
RUNTIME_FIELDS = ("data", "out", "base", "checkpoint_every", "log_every", "threads", "device")


def check_recipe(cfg, bounds: dict[str, tuple[float, float]], whole: tuple[str, ...] = WHOLE) -> None:
    """The fields of `bounds` within them (whole numbers where `whole` names them), the crop a
    multiple of 8, scale_min <= scale_max."""
    for name, (low, high) in bounds.items():
        check_number(name, getattr(cfg, name), low, high, whole=name in whole)
    if cfg.crop % 8:
        raise ValueError(f"crop must be a multiple of 8, got {cfg.crop}")
    if not cfg.scale_min <= cfg.scale_max:
        raise ValueError(f"need scale_min <= scale_max, got {cfg.scale_min:g} and {cfg.scale_max:g}")


def recipe(cfg) -> dict:
    """What a run learns from, for its weight file's record: no paths of this machine."""
    return {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS}


def run_steps(
    cfg,
    step: int,
    learn: Callable[[int], dict[str, float]],
    log_path: Path,
    save_checkpoint: Callable[[int], None],
    max_minutes: float | None,
    clock: Callable[[], float],
) -> int:
    """Steps `step`..`cfg.steps - 1`, each `learn(step)` (its record for the log), ending early
    once `max_minutes` have passed on `clock`; every `log_every` steps a JSON line, every
    `checkpoint_every` a checkpoint. Returns the steps done in all."""
    started = clock()
    with log_path.open("a") as log:
        while step < cfg.steps:
            if max_minutes is not None and clock() - started >= 60 * max_minutes:
                break
            values = learn(step)
            step += 1
            if step % cfg.log_every == 0:
                record = {"step": step, **{k: v for k, v in values.items() if not isinstance(v, torch.Tensor)}}
                record["time"] = round(clock() - started, 1)
                record.update({k: float(v.detach()) for k, v in values.items() if isinstance(v, torch.Tensor)})
                log.write(json.dumps(record) + "\n")
                log.flush()
            if step % cfg.checkpoint_every == 0:
                save_checkpoint(step)
    return step


__all__ = ["FROZEN_TRAIN_BOUNDS", "RUNTIME_FIELDS", "WHOLE", "check_recipe", "recipe", "run_steps"]
