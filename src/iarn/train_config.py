"""A training run's recipe: `TrainConfig` (with its model's `ModelConfig`), read from JSON or YAML
files and flags, checked field by field, and what a resumed run may change (`RUNTIME_FIELDS`)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .codec import CODEC_GRADIENTS, CODECS
from .fields import SHARED_TRAIN_BOUNDS, check_choice, check_flag, check_number
from .model import ModelConfig
from .model.network import FIRST_DEFAULTS

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
# Fields that describe where and how fast a run executes, not what it learns: a resumed run may
# set these anew; every other field comes from the checkpoint.
RUNTIME_FIELDS = (
    "data",
    "out",
    "steps",
    "checkpoint_every",
    "log_every",
    "amp",
    "compile",
    "compile_mode",
    "device",
    "threads",
)


# Every number a run takes, with the values it may have: config files and flags meet the same
# checks (fields.check_number), so neither can start a run that is bound to fail or diverge.
TRAIN_BOUNDS = {
    "steps": (1, 10**9),
    "batch_size": (1, 4096),
    "crop": (8, 4096),
    "learning_rate": (1e-9, 1.0),
    "warmup": (0, 10**9),
    "grad_clip": (1e-6, 1e6),
    "lambda_rec": (0.0, 1e4),
    "lambda_lr": (1e-4, 1e4),
    "lr_psnr_target": (0.0, 80.0),
    "lr_shortfall_power": (0.0, 16.0),
    "lambda_z": (0.0, 1e4),
    **SHARED_TRAIN_BOUNDS,
}
CODEC_BOUNDS = {"codec_quality_min": (1, 100), "codec_quality_max": (1, 100), "codec_share": (0.0, 1.0)}
WHOLE_FIELDS = (
    "steps",
    "batch_size",
    "crop",
    "warmup",
    "seed",
    "checkpoint_every",
    "log_every",
    "threads",
)


def check_codec_fields(cfg) -> None:
    """The codec fields that the network's and the corrector's recipes share: codec,
    codec_gradient, codec_quality_min/max (each codec step draws its quality from them) and
    codec_share."""
    check_choice("codec", cfg.codec, CODECS)
    check_choice("codec_gradient", cfg.codec_gradient, CODEC_GRADIENTS)
    for name, (low, high) in CODEC_BOUNDS.items():
        check_number(name, getattr(cfg, name), low, high, whole=name != "codec_share")
    if cfg.codec_quality_min > cfg.codec_quality_max:
        low, high = cfg.codec_quality_min, cfg.codec_quality_max
        raise ValueError(f"need codec_quality_min <= codec_quality_max, got {low} and {high}")


def model_config(values: dict) -> ModelConfig:
    """The ModelConfig of a run from the fields it names; the rest ModelConfig's defaults (the
    shipped architecture) when the mode is the shipped one (or not named), else the first
    release's (`FIRST_DEFAULTS`: the baselines' architecture; naive needs 1 level, ...)."""
    if not isinstance(values, dict):
        raise ValueError(f"model must be a mapping of ModelConfig fields, got {values!r}")
    if values.get("mode", ModelConfig().mode) == ModelConfig().mode:
        return ModelConfig.from_dict(values)
    return ModelConfig.from_dict({**FIRST_DEFAULTS, **values})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides the model's architecture (`model`)."""

    data: tuple[str, ...] = ()
    out: str = "runs/iarn"
    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 20000
    batch_size: int = 16
    crop: int = 144
    learning_rate: float = 5e-4  # Adam's; 2e-4 before the ablation (docs/ablation.md). Was `lr`.
    schedule: str = "cosine"  # cosine | step (halve at 50, 75, 90 %)
    warmup: int = 100
    grad_clip: float = 10.0
    lambda_rec: float = 1.0  # L1(upscale(quantised LR), HR), mean over pixels
    lambda_lr: float = 8.0  # L2(LR, bicubic(HR)), mean over pixels; the start value when adaptive
    lr_psnr_target: float = 44.0  # > 0: adapt lambda_lr each step to hold the LR's PSNR (RGB, dB) there
    lr_shortfall_power: float = 2.0  # > 0: a step whose LR misses the target gets (mse/target)**p more weight
    lambda_z: float = 1.0  # mean(z^2) (split, naive) or mean((x' - up(LR))^2) (cycle)
    scale_min: float = 1.0
    scale_max: float = 4.0
    scale_power: float = 1.0  # density of s proportional to s**power (AIDN: 2; -1: log-uniform)
    asymmetric_share: float = 0.3
    integer_share: float = 0.25  # share of steps at a whole-number scale of [scale_min, scale_max]
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 20
    amp: str = "none"  # none | bf16 (the coupling arithmetic stays fp32)
    compile: bool = False  # torch.compile the invertible core (static shapes; see IARN.compile_core)
    compile_mode: str = "default"  # torch.compile mode; reduce-overhead = CUDA graphs on a GPU
    device: str = "auto"  # auto (cuda:LOCAL_RANK, else mps, else cpu) | cpu | cuda | cuda:N | mps
    threads: int = 0  # CPU threads for torch (0: torch's default)
    codec: str = "none"  # none | jpeg | webp: the LR through this codec before the upscale (codec.py)
    codec_quality_min: int = 75  # each codec step draws its quality from [min, max]
    codec_quality_max: int = 95
    codec_share: float = 1.0  # share of steps through the codec (the rest lossless)
    codec_gradient: str = "straight"  # straight | surrogate: what the codec's gradient is taken as (codec.py)

    def __post_init__(self) -> None:
        check_choice("schedule", self.schedule, ("cosine", "step"))
        check_codec_fields(self)
        check_choice("amp", self.amp, ("none", "bf16"))
        check_choice("compile_mode", self.compile_mode, COMPILE_MODES)
        check_flag("compile", self.compile)
        for name in ("out", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if not isinstance(self.data, tuple) or not all(isinstance(d, str) for d in self.data):
            raise ValueError(f"data must be a list of folders, got {self.data!r}")
        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"model must be a ModelConfig, got {type(self.model).__name__}")
        for name, (low, high) in TRAIN_BOUNDS.items():
            check_number(name, getattr(self, name), low, high, whole=name in WHOLE_FIELDS)
        if self.crop % (2 * 2**self.model.levels):
            raise ValueError(f"crop must be a multiple of {2 * 2**self.model.levels}, got {self.crop}")
        if not self.scale_min <= self.scale_max <= self.model.max_scale:
            raise ValueError(
                f"need 1 <= scale_min <= scale_max <= model.max_scale ({self.model.max_scale:g}), "
                f"got {self.scale_min:g} and {self.scale_max:g}"
            )
        if self.lr_shortfall_power > 0 and self.lr_psnr_target <= 0:
            raise ValueError("lr_shortfall_power needs an lr_psnr_target (the LR PSNR a shortfall is measured from)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = upgrade_fields(values)
        model = model_config(values.pop("model", {}) or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config fields {unknown}")
        if isinstance(values.get("data"), list):
            values["data"] = tuple(values["data"])
        return cls(model=model, **values)

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides) -> TrainConfig:
        """A config from a JSON (or, with PyYAML, YAML) file of TrainConfig fields, with `model`
        as a nested mapping; `overrides` replace fields (and `model` entries, given as a dict)."""
        return merge_config(read_config_file(path), overrides)


def read_config_file(path: str | os.PathLike) -> dict:
    """The raw mapping of config fields in a JSON or YAML file; ValueError (one line) otherwise."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the config file ({error.strerror})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError("a YAML config needs PyYAML (pip install pyyaml); or use JSON") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config fields")
    if not isinstance(values.get("model", {}), dict):
        raise ValueError(f"{path}: model must be a mapping of ModelConfig fields, got {values['model']!r}")
    return values


RENAMED_FIELDS = {"lr": "learning_rate"}  # old name -> new: still read from configs and checkpoints


def upgrade_fields(values: dict) -> dict:
    """`values` with renamed fields under their new names (a warning on stderr for each: a
    checkpoint or config file of an earlier release still loads)."""
    values = dict(values)
    for old, new in RENAMED_FIELDS.items():
        if old in values:
            if new in values and values[new] != values[old]:
                raise ValueError(f"{old} (the old name of {new}) and {new} are both given, and differ")
            values[new] = values.pop(old)
            print(f"iarn: warning: the training field {old!r} is now {new!r}; read as {new}", file=sys.stderr)
    return values


def merge_config(values: dict, overrides: dict) -> TrainConfig:
    """TrainConfig from `values` with `overrides` on top; `model` overrides merge per field."""
    values = {**values}
    model = {**(values.pop("model", None) or {}), **(overrides.get("model") or {})}
    values.update({k: v for k, v in overrides.items() if k != "model"})
    return TrainConfig.from_dict({**values, "model": model})


FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def resume_config(saved: dict, given: dict) -> TrainConfig:
    """The config a resumed run continues with: the checkpoint's (`saved`), with the runtime
    fields in `given` set anew. Any other field in `given` must equal the checkpoint's: a run
    cannot change what it learns halfway (start a new run with `--init-from` instead)."""
    saved, given, changed = upgrade_fields(saved), upgrade_fields(given), []
    for name, value in given.items():
        if name in RUNTIME_FIELDS:
            continue
        old = saved.get(name, FIELD_DEFAULTS.get(name))  # a field added since: its default then
        if name == "model":
            old_model = dataclasses.asdict(model_config(old or {}))
            changed += [f"model.{k}" for k, v in value.items() if old_model.get(k) != v]
        elif old != value and not (isinstance(old, list) and tuple(old) == value):
            changed.append(name)
    if changed:
        raise ValueError(
            f"cannot change {', '.join(sorted(changed))} when resuming: a resumed run keeps its checkpoint's "
            "model and recipe (start a new run with --init-from to change them)"
        )
    return merge_config(saved, {k: v for k, v in given.items() if k in RUNTIME_FIELDS})
