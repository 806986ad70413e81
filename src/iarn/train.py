"""Training: one readable loop (docs/design.md section 4; choices in docs/implementation.md).

Single process:      iarn train --data DIR --out runs/x --steps 20000
Several GPUs (DDP):  torchrun --nproc_per_node 4 -m iarn train --data DIR --out runs/x

DDP is set up from torchrun's environment variables (RANK, WORLD_SIZE, LOCAL_RANK): each rank
takes GPU LOCAL_RANK, decodes only its share of the images and draws its own crops; rank 0 logs
and writes checkpoints. `--resume auto` continues from `OUT/checkpoint.pt` when it exists, with
the checkpoint's model and recipe; where the data lives, the device, precision, compilation,
threads, logging and the step target may be given again (`RUNTIME_FIELDS`). `--init-from
WEIGHTS` starts a new run from a weight file.

The pieces: `setup_runtime` (processes and device), `build_state` (model, optimiser, step),
`next_batch` (the step's crops and scale), `train_step` (down, quantise, up, losses, backward,
clip, Adam; also what benchmarks/train_throughput.py times), `RunLog` (JSONL, TensorBoard,
progress bar), and `train`, the loop that joins them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .data import CropSampler, sample_scale, step_rng
from .devices import resolve_device
from .fields import SHARED_TRAIN_BOUNDS, check_choice, check_flag, check_number
from .files import atomic_write
from .geometry import size_for_scale
from .model import IARN, ModelConfig, quantize_8bit
from .resample import resize
from .weights import check_finite, load_weights, save_weights

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
WHOLE_FIELDS = ("steps", "batch_size", "crop", "warmup", "seed", "checkpoint_every", "log_every", "threads")


# The architecture `iarn train` builds unless told otherwise: the shipped default's. A run that
# names another mode starts from ModelConfig's defaults instead (naive needs 1 level, ...).
SHIPPED_MODEL = ModelConfig(mode="middle", levels=2, blocks_per_level=4, growth=16, step_stages="per-count")


def model_config(values: dict) -> ModelConfig:
    """The ModelConfig of a run from the fields it names; the rest from SHIPPED_MODEL when the
    mode is the shipped one (or not named), else from ModelConfig's defaults."""
    if not isinstance(values, dict):
        raise ValueError(f"model must be a mapping of ModelConfig fields, got {values!r}")
    base = dataclasses.asdict(SHIPPED_MODEL) if values.get("mode", SHIPPED_MODEL.mode) == SHIPPED_MODEL.mode else {}
    return ModelConfig.from_dict({**base, **values})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides the model's architecture (`model`)."""

    data: tuple[str, ...] = ()
    out: str = "runs/iarn"
    model: ModelConfig = field(default_factory=lambda: SHIPPED_MODEL)
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

    def __post_init__(self) -> None:
        check_choice("schedule", self.schedule, ("cosine", "step"))
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


def resume_config(saved: dict, given: dict) -> TrainConfig:
    """The config a resumed run continues with: the checkpoint's (`saved`), with the runtime
    fields in `given` set anew. Any other field in `given` must equal the checkpoint's: a run
    cannot change what it learns halfway (start a new run with `--init-from` instead)."""
    saved, given, changed = upgrade_fields(saved), upgrade_fields(given), []
    for name, value in given.items():
        if name in RUNTIME_FIELDS:
            continue
        old = saved.get(name)
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


class RescaleLoss(nn.Module):
    """Down, quantise, up, and the three losses for one batch that shares one LR size.

    Wrapped by DDP, so the whole differentiable step goes through `forward`.
    """

    def __init__(self, model: IARN, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(
        self, hr: torch.Tensor, lr_size: tuple[int, int], lambda_lr: torch.Tensor | float
    ) -> dict[str, torch.Tensor]:
        hr_size = (hr.shape[-2], hr.shape[-1])
        lr, by_product = self.model.down_region(hr, hr_size, lr_size)
        lr_q = quantize_8bit(lr)
        recon = self.model.up_region(lr_q, hr_size, lr_size)
        with torch.no_grad():
            reference = resize(hr, lr_size)
        latent = self.model.mode.latent_loss(by_product, lr_q, hr_size)
        rec = F.l1_loss(recon.float(), hr)
        lr_fit = F.mse_loss(lr.float(), reference)
        if self.cfg.lr_shortfall_power > 0:
            # the controller holds the *mean* LR PSNR at the target; this holds each step's (each
            # step is one scale), so no scale (the very asymmetric ones first) falls far below it
            shortfall = (lr_fit.detach() * 10 ** (self.cfg.lr_psnr_target / 10)).clamp_min(1.0)
            lambda_lr = (lambda_lr * shortfall**self.cfg.lr_shortfall_power).clamp(max=MAX_LAMBDA_LR)
        total = self.cfg.lambda_rec * rec + lambda_lr * lr_fit + self.cfg.lambda_z * latent
        return {"loss": total, "rec": rec, "lr_fit": lr_fit, "latent": latent}


ADAPT_GAIN = 0.002  # change of ln(lambda_lr) per step and dB of LR PSNR off the target
ADAPT_MAX_ERROR = 5.0  # dB; so an early, near-perfect LR (a fresh cycle model's is exact) moves lambda gently
ADAPT_BOUNDS = (0.01, 1000.0)
MAX_LAMBDA_LR = 1e4  # the LR weight with the shortfall factor: (mse/target)**p overflows at large p
MAX_SKIPPED_IN_A_ROW = 20  # non-finite steps in a row after which a run stops: it has diverged


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended a run (`signum` says which; the CLI exits 128 + signum)."""

    def __init__(self, signum: int, message: str = "interrupted") -> None:
        super().__init__(message)
        self.signum = int(signum)


class TrainingDiverged(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


def adapt_lambda_lr(log_lambda: torch.Tensor, lr_fit: torch.Tensor, target: float) -> None:
    """One step of the LR-loss controller, in place and on the device (no host sync): raise
    lambda_lr while the batch's LR PSNR (from `lr_fit`, the LR's mean squared error) is below
    `target` dB, lower it while above."""
    psnr = -10 * torch.log10(lr_fit.detach().float().clamp_min(1e-12))
    error = (target - psnr).clamp(-ADAPT_MAX_ERROR, ADAPT_MAX_ERROR)
    log_lambda.add_(ADAPT_GAIN * error).clamp_(*(math.log(b) for b in ADAPT_BOUNDS))


def learning_rate(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.learning_rate * (step + 1) / cfg.warmup
    progress = min(1.0, step / max(1, cfg.steps))
    if cfg.schedule == "cosine":
        return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.learning_rate * 0.5 ** sum(progress >= m for m in (0.5, 0.75, 0.9))


# -- processes and devices -------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: its device and its place among torchrun's processes."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device, set CUDA flags and threads, and join torchrun's process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=_device_id(device))
    return Runtime(device, rank, local_rank, world)


def _device_id(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


# -- model, optimiser and checkpoints -------------------------------------------------------


@dataclass
class TrainState:
    """What a checkpoint holds besides the config: the weights, Adam's moments, the step, and
    the adaptive LR-loss weight (ln lambda_lr, a device scalar)."""

    model: IARN
    optimizer: torch.optim.Optimizer
    step: int
    log_lambda_lr: torch.Tensor
    skipped: int = 0  # steps whose loss or gradient was not finite (not applied), this invocation
    skipped_in_a_row: int = 0


@lru_cache(maxsize=1)
def _read_checkpoint_once(path: str, mtime_ns: int) -> dict:
    return read_checkpoint(path)


def resolve_resume(out: str | os.PathLike, resume: str | None) -> tuple[str | None, dict | None]:
    """(checkpoint path, its contents) that `--resume` names: "auto" is OUT/checkpoint.pt when
    it exists; (None, None) for a new run. The file is read once, however often it is asked for
    (the command line reads the recipe from it before the run does)."""
    if resume == "auto":
        path = Path(out) / "checkpoint.pt"
        resume = str(path) if path.exists() else None
    if not resume:
        return None, None
    try:
        stamp = Path(resume).stat().st_mtime_ns
    except OSError:
        return resume, read_checkpoint(resume)  # says what is wrong with it
    return resume, _read_checkpoint_once(str(resume), stamp)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint as a dict; ValueError (one line) when it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint") from None
    except Exception as error:  # torch.load raises many kinds for a file that is not a checkpoint
        raise ValueError(f"{path}: not an iarn training checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "train_config"} <= set(state):
        raise ValueError(f"{path}: not an iarn training checkpoint")
    return state


def checkpoint_model(state: dict) -> IARN:
    """The model of a checkpoint read by `read_checkpoint`, on the CPU, its config from the run's."""
    model = IARN(ModelConfig.from_dict(state["train_config"]["model"]))
    model.load_state_dict(state["model"])
    return model


def build_state(cfg: TrainConfig, device: torch.device, checkpoint: dict | None, init_from: str | None) -> TrainState:
    """A fresh, fine-tuned (`init_from`) or resumed (`checkpoint`) model with its optimiser."""
    if checkpoint is None and init_from:
        model = load_weights(init_from)
        if model.config != cfg.model:
            raise ValueError(f"{init_from}: its model config {model.config} differs from the run's {cfg.model}")
    else:
        torch.manual_seed(cfg.seed)
        model = IARN(cfg.model)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999))
    state = TrainState(model, optimizer, 0, torch.tensor(math.log(cfg.lambda_lr), device=device))
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state.step = int(checkpoint["step"])
        state.log_lambda_lr.fill_(checkpoint.get("log_lambda_lr", math.log(cfg.lambda_lr)))
    return state


def save_checkpoint(state: TrainState, cfg: TrainConfig, path: Path) -> None:
    payload = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "step": state.step,
        "log_lambda_lr": float(state.log_lambda_lr),
        "train_config": cfg.to_dict(),
    }
    check_finite(payload, path)
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except RuntimeError as error:  # torch's zip writer on a full disk: "[enforce fail ...] unexpected pos"
        if "unexpected pos" in str(error) or shutil.disk_usage(path.parent).free < len(str(error)) + (64 << 20):
            raise OSError(errno.ENOSPC, "no space left on the device for the checkpoint", str(path)) from None
        raise


# -- one step ---------------------------------------------------------------------------------


def next_batch(
    sampler: CropSampler, cfg: TrainConfig, rank: int, step: int
) -> tuple[torch.Tensor, tuple[int, int], tuple[float, float]]:
    """The HR crops (B, 3, crop, crop) float in [0, 1] on the sampler's device, the LR size
    and the scale of step `step` on `rank`: a function of (seed, rank, step) alone."""
    rng = step_rng(cfg.seed, rank, step)
    scale = sample_scale(rng, cfg.scale_min, cfg.scale_max, cfg.scale_power, cfg.asymmetric_share, cfg.integer_share)
    hr = sampler.batch(cfg.batch_size, rng).float().div_(255)
    # an axis that kept its size would take the bicubic path (modes.Resample), not the model's
    lr_size = tuple(min(cfg.crop - 1, n) for n in size_for_scale((cfg.crop, cfg.crop), scale))
    return hr, lr_size, scale


def train_step(
    loss_module: nn.Module,
    state: TrainState,
    cfg: TrainConfig,
    hr: torch.Tensor,
    lr_size: tuple[int, int],
    world: int = 1,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimisation step on a batch; returns the losses and the gradient norm (device
    tensors: nothing here waits for the GPU)."""
    for group in state.optimizer.param_groups:
        group["lr"] = learning_rate(cfg, state.step)
    adaptive = cfg.lr_psnr_target > 0
    lambda_lr = state.log_lambda_lr.exp() if adaptive else cfg.lambda_lr
    with torch.autocast(state.log_lambda_lr.device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
        losses = loss_module(hr, lr_size, lambda_lr)
    state.optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    finite = torch.isfinite(grad_norm) & torch.isfinite(losses["loss"].detach())
    if world > 1:  # DDP averages the gradients, but a rank's own loss may be the non-finite one
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    state.step += 1
    if not bool(finite):  # never applied: not to the weights, Adam's moments or lambda_lr
        state.optimizer.zero_grad(set_to_none=True)
        state.skipped += 1
        state.skipped_in_a_row += 1
        return {**losses, "lambda_lr": torch.as_tensor(lambda_lr)}, grad_norm
    state.skipped_in_a_row = 0
    if adaptive:
        lr_fit = losses["lr_fit"].detach().clone()
        if world > 1:  # every rank keeps the same weight
            dist.all_reduce(lr_fit)
            lr_fit /= world
        adapt_lambda_lr(state.log_lambda_lr, lr_fit, cfg.lr_psnr_target)
    state.optimizer.step()
    return {**losses, "lambda_lr": torch.as_tensor(lambda_lr)}, grad_norm


def make_loss_module(state: TrainState, cfg: TrainConfig, runtime: Runtime) -> nn.Module:
    """RescaleLoss around the model, its core compiled if asked, wrapped by DDP under torchrun."""
    if cfg.compile:
        state.model.compile_core(cfg.compile_mode)
    module: nn.Module = RescaleLoss(state.model, cfg)
    if runtime.ddp:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        # a middle model's step runs only the stages of its step count, so some get no gradient
        unused = cfg.model.mode == "middle"
        module = nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=unused)
    return module


# -- logging ----------------------------------------------------------------------------------


class RunLog:
    """Rank 0's record of a run: JSONL lines, TensorBoard scalars (when installed) and a
    progress bar. Files are opened at the first record, so a run that fails early leaves none."""

    def __init__(self, out: Path, total: int, start: int, progress: bool) -> None:
        self.out = out
        self.start = start
        self.file = None
        self.writer = None
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def record(self, step: int, values: dict) -> None:
        if self.file is None:
            _drop_lines_after(self.out / "log.jsonl", self.start)
            self.file = open(self.out / "log.jsonl", "a")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                pass
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key in ("loss", "rec", "lr_fit", "latent", "lambda_lr", "steps_per_s"):
                self.writer.add_scalar(f"train/{key}", values[key], step)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{values['loss']:.4f}", rec=f"{values['rec']:.4f}", sps=f"{values['steps_per_s']:.2f}"
            )

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        for thing in (self.bar, self.file, self.writer):
            if thing is not None:
                thing.close()


def _drop_lines_after(path: Path, step: int) -> None:
    """Keep the log lines of steps <= `step`: a run resumed from step S redoes the steps after S
    (their lines were written before the interruption; the checkpoint is older than them)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _logged_step(line) <= step]
    if len(kept) < len(lines):
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept)))


def _logged_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf  # a line cut by the interruption goes too


def remove_stale_temporaries(out: Path) -> int:
    """Remove the hidden temporary files a killed run left in `out` (atomic_write's
    `.checkpoint.pt.*.tmp`, `.model.safetensors.*.tmp`, `.log.jsonl.*.tmp`); returns how many."""
    count = 0
    for name in ("checkpoint.pt", "model.safetensors", "log.jsonl"):
        for stale in out.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
            count += 1
    return count


# -- the loop ---------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    resume: str | None = None,
    init_from: str | None = None,
    progress: bool = True,
    stop_at: int | None = None,
    max_minutes: float | None = None,
    fit_steps: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> Path:
    """Train; returns the path of the weight file written at the end (`OUT/model.safetensors`).

    `resume` ("auto" or a checkpoint path) continues a run: `cfg` must then carry the
    checkpoint's recipe (see `resume_config`, which builds such a config). `stop_at` (a step)
    and `max_minutes` end this invocation early without changing the schedule: the checkpoint
    it writes lets `resume="auto"` carry on to `cfg.steps`. `fit_steps` (needs `max_minutes`)
    instead sizes the schedule to the time: the step rate measured over steps 10-50 of this
    invocation (after any compilation, before the warm-up ends) sets `cfg.steps`, at most the given
    one, so that the schedule, not the clock, ends the run; the rate of each window since is
    measured again at the REFIT_SHARES of the time and sets it anew (a busy machine at the probe).
    `clock` (seconds) is what every duration is measured with (a test passes its own). The log
    always records the step the run stops at, whatever stopped it.

    Ctrl-C or SIGTERM ends the run after the step in progress: the checkpoint of that step is
    written, then TrainingInterrupted (a KeyboardInterrupt) is raised (a second signal
    interrupts at once). A run that ends before its first step writes nothing: ValueError. A step whose
    loss or gradient is not finite is skipped (counted in the log as `skipped`); after
    MAX_SKIPPED_IN_A_ROW of them in a row, TrainingDiverged, with the last good checkpoint kept.
    """
    with stop_signals() as interrupted:
        return _train(cfg, resume, init_from, progress, stop_at, max_minutes, fit_steps, clock, interrupted)


@contextlib.contextmanager
def stop_signals():
    """An Event that SIGINT and SIGTERM set while the block runs (the main thread only; elsewhere
    nothing is caught); a second signal goes to the handler that was there before (the CLI's
    ends the process; Python's raises KeyboardInterrupt), or raises KeyboardInterrupt."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_signal(signum, frame):
        if not interrupted.is_set():
            interrupted.signum = signum  # type: ignore[attr-defined]
            interrupted.set()
        elif callable(previous[signum]):
            previous[signum](signum, frame)
        else:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupted
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _train(cfg, resume, init_from, progress, stop_at, max_minutes, fit_steps, clock, interrupted) -> Path:
    if fit_steps and not max_minutes:
        raise ValueError("fit_steps needs max_minutes (the time the schedule should fill)")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder (--out names the run's folder)")
    checkpoint_path = out / "checkpoint.pt"
    resume, checkpoint = resolve_resume(out, resume)
    if checkpoint is not None:
        cfg = _checked_resume(cfg, checkpoint)
    elif init_from:
        cfg = dataclasses.replace(cfg, model=load_weights(init_from).config)
    if not cfg.data:
        raise ValueError("no training data: pass --data DIR (or data: in --config)")

    runtime = setup_runtime(cfg)
    sampler = CropSampler(list(cfg.data), cfg.crop, runtime.device, shard=(runtime.rank, runtime.world))
    state = build_state(cfg, runtime.device, checkpoint, init_from)
    loss_module = make_loss_module(state, cfg, runtime)
    log = None
    if runtime.master:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)  # one run per folder at a time: these are a killed run's
        params = sum(p.numel() for p in state.model.parameters()) / 1e6
        print(
            f"training {params:.2f} M parameters ({cfg.model.mode}) on {runtime.world} x {runtime.device.type}, "
            f"{len(sampler)} images on rank 0, from step {state.step}",
            flush=True,
        )
        log = RunLog(out, cfg.steps, state.step, progress)

    window_start = clock()
    window_steps = 0
    unlogged = None  # the last step's values when its step was not logged yet

    def record(losses: dict, grad_norm: torch.Tensor, scale) -> None:
        nonlocal window_start, window_steps
        rate = window_steps / max(clock() - window_start, 1e-9)
        values = {k: round(float(v.detach()), 7) for k, v in losses.items()}
        values.update(
            learning_rate=learning_rate(cfg, state.step - 1),
            grad_norm=round(float(grad_norm), 4),
            steps_per_s=round(rate, 3),
            mp_per_s=round(rate * runtime.world * cfg.batch_size * cfg.crop**2 / 1e6, 3),
            scale=[round(s, 3) for s in scale],
            skipped=state.skipped,
            time=time.time(),
        )
        log.record(state.step, values)
        window_start, window_steps = clock(), 0

    budget = TimeBudget(max_minutes, fit_steps, cfg.steps, state.step, runtime, clock)
    while state.step < cfg.steps:
        fitted = budget.refit(cfg, state.step)
        if fitted is not None:
            cfg = fitted
            if log is not None:
                log.set_total(cfg.steps)
        if stop_at is not None and state.step >= stop_at or budget.out_of_time():
            break
        if _on_any_rank(interrupted.is_set(), runtime):
            break
        hr, lr_size, scale = next_batch(sampler, cfg, runtime.rank, state.step)
        losses, grad_norm = train_step(loss_module, state, cfg, hr, lr_size, runtime.world)
        if state.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            if log is not None:
                record(losses, grad_norm, scale)
                log.close()
            kept = f"{checkpoint_path} (the last good state) is kept" if checkpoint_path.exists() else "none saved"
            raise TrainingDiverged(
                f"training diverged: {state.skipped_in_a_row} steps in a row up to step {state.step} had a non-finite "
                f"loss or gradient and were not applied; {kept}. Lower --lr, --lr-shortfall-power or --grad-clip"
            )
        window_steps += 1
        unlogged = (losses, grad_norm, scale)
        if log is not None and (state.step % cfg.log_every == 0 or state.step == cfg.steps):
            record(*unlogged)
            unlogged = None
        if log is not None:
            log.advance()
        if state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps and runtime.master:
            save_checkpoint(state, cfg, checkpoint_path)
    if log is not None and unlogged is not None:  # stopped by the clock or --stop-at between log steps
        record(*unlogged)
    if state.step == 0:  # nothing trained: no checkpoint, no model (they would be the initial weights)
        if log is not None:
            log.close()
        if _on_any_rank(interrupted.is_set(), runtime):
            raise TrainingInterrupted(
                getattr(interrupted, "signum", signal.SIGINT), "interrupted before the first step"
            )
        raise ValueError("the run ended before its first step (--max-minutes or --stop-at): no model written")
    if runtime.master:
        save_checkpoint(state, cfg, checkpoint_path)
        log.close()
    if state.step < cfg.steps and _on_any_rank(interrupted.is_set(), runtime):
        if runtime.master:
            print(f"interrupted at step {state.step}: wrote {checkpoint_path} (go on with --resume auto)", flush=True)
        raise TrainingInterrupted(getattr(interrupted, "signum", signal.SIGINT), f"interrupted at step {state.step}")
    final = out / "model.safetensors"
    if runtime.master:
        save_weights(state.model, final, training={"steps": state.step, "train_config": cfg.to_dict()})
    if runtime.ddp:
        dist.barrier()
        dist.destroy_process_group()
    return final


FIT_SETTLE, FIT_PROBE = 10, 40  # steps left out of (compilation, first allocations), steps timed
# --fit-steps sizes the schedule again when these shares of --max-minutes are gone, each time from
# the rate of the window since the last fit; none after half the time, where the cosine is steepest
REFIT_SHARES = (0.1, 0.2, 0.3, 0.4, 0.5)


def _synced_clock(runtime: Runtime, clock: Callable[[], float] = time.perf_counter) -> float:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)
    return clock()


class TimeBudget:
    """`--max-minutes` and `--fit-steps`: when a run is out of time, and the schedule sized to it.

    With `fit_steps`, the step rate is timed from FIT_SETTLE steps after the start (after any
    compilation), first over FIT_PROBE steps, then again over each window up to the next share
    of the time in REFIT_SHARES (the machine's load may change), and each measurement sets
    `steps` so that the cosine ends when the time is up (at most `cap`). `clock` is in seconds
    (a test passes its own); under DDP every rank agrees on every decision."""

    def __init__(
        self,
        max_minutes: float | None,
        fit_steps: bool,
        cap: int,
        step: int,
        runtime: Runtime,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.max_minutes, self.cap, self.runtime, self.clock = max_minutes, cap, runtime, clock
        self.started = clock()
        self.refits = list(REFIT_SHARES) if fit_steps else []
        self.timed_from = step + FIT_SETTLE if fit_steps else None
        self.timed_clock, self.fitted = 0.0, False

    def elapsed(self) -> float:
        return self.clock() - self.started

    def out_of_time(self) -> bool:
        return _out_of_time(self.elapsed(), self.max_minutes, self.runtime)

    def refit(self, cfg: TrainConfig, step: int) -> TrainConfig | None:
        """`cfg` with a new `steps` when a measurement of the rate ends at this step, else None."""
        if self.timed_from is None or step < self.timed_from:
            return None
        if step == self.timed_from:
            self.timed_clock = _synced_clock(self.runtime, self.clock)
            return None
        probe_done = not self.fitted and step - self.timed_from == FIT_PROBE
        window_done = self.fitted and _on_any_rank(
            self.elapsed() >= 60 * self.max_minutes * self.refits[0], self.runtime
        )
        if not (probe_done or window_done):
            return None
        now = _synced_clock(self.runtime, self.clock)
        rate = (step - self.timed_from) / max(now - self.timed_clock, 1e-9)
        elapsed = self.elapsed()
        fitted = _fit_schedule(cfg, self.cap, step, rate, elapsed, self.max_minutes, self.runtime)
        while self.refits and _on_any_rank(elapsed >= 60 * self.max_minutes * self.refits[0], self.runtime):
            self.refits.pop(0)  # shares of the time already gone (the first probe may take long)
        self.timed_from, self.timed_clock, self.fitted = (step if self.refits else None), now, True
        return fitted


def _fit_schedule(
    cfg: TrainConfig, cap: int, step: int, rate: float, elapsed: float, max_minutes: float, runtime: Runtime
) -> TrainConfig:
    """`cfg` with `steps` such that the schedule ends when `max_minutes` are up (2 % kept for the
    final save; `elapsed` seconds are gone) at `rate` steps/s, at most `cap`; every rank takes the
    smallest estimate."""
    left = 60 * max_minutes * 0.98 - elapsed
    steps = torch.tensor(float(min(cap, max(step + 1, step + int(rate * left)))))
    if runtime.ddp:
        steps = steps.to(runtime.device)
        dist.all_reduce(steps, op=dist.ReduceOp.MIN)
    fitted = dataclasses.replace(cfg, steps=int(steps.item()))
    if runtime.master:
        print(f"{rate:.2f} steps/s: the schedule now ends at step {fitted.steps}", flush=True)
    return fitted


def _checked_resume(cfg: TrainConfig, checkpoint: dict) -> TrainConfig:
    """`cfg` for a resumed run, checked against the checkpoint's recipe."""
    given = cfg.to_dict()
    return resume_config(checkpoint["train_config"], given)


def _out_of_time(elapsed: float, max_minutes: float | None, runtime: Runtime) -> bool:
    if max_minutes is None:  # nothing to agree on: no collective, no host sync per step
        return False
    return _on_any_rank(elapsed > 60 * max_minutes, runtime)


def _on_any_rank(flag: bool, runtime: Runtime) -> bool:
    """Whether `flag` holds on any rank: every rank must agree to stop at the same step."""
    if not runtime.ddp:
        return flag
    value = torch.tensor(float(flag), device=runtime.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
