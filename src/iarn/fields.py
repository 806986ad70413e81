"""Checks of config fields, shared by ModelConfig and TrainConfig (and so by the command line
and config files alike): each raises ValueError naming the field, its allowed values and what
it got, on one line."""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np


def check_number(name: str, value: object, low: float, high: float, whole: bool = False) -> None:
    """`value` is a finite number (a whole one when `whole`) in [low, high]; bools are not
    numbers; numpy's numbers are (a caller that stores one converts it: `int(value)`)."""
    kind = "a whole number" if whole else "a number"
    is_number = isinstance(value, numbers.Integral) if whole else isinstance(value, numbers.Real)
    if (
        not is_number
        or isinstance(value, (bool, np.bool_))
        or not (isinstance(value, numbers.Integral) or math.isfinite(value))
        or not low <= value <= high
    ):
        raise ValueError(f"{name} must be {kind} from {_show(low)} to {_show(high)}, got {value!r}")


def _show(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def check_choice(name: str, value: object, choices: tuple) -> None:
    if not isinstance(value, type(choices[0])) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


# Bounds every training run shares (train.py's TrainConfig, corrector_train.py's): how scales
# are drawn, the seed, and the cadence of logs and checkpoints.
SHARED_TRAIN_BOUNDS = {
    "scale_min": (1.0, 16.0),
    "scale_max": (1.0, 16.0),
    "scale_power": (-1.0, 16.0),
    "asymmetric_share": (0.0, 1.0),
    "integer_share": (0.0, 1.0),
    "seed": (0, 2**63 - 1),
    "checkpoint_every": (1, 10**9),
    "log_every": (1, 10**9),
    "threads": (0, 4096),
}


def from_known_fields(cls, values: dict, what: str):
    """`cls(**values)` for a dataclass, with a one-line ValueError naming unknown fields."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} fields {unknown}; this iarn knows {sorted(known)}")
    return cls(**values)
