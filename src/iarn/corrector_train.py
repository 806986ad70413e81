"""Training the LR corrector (model/corrector.py) against a frozen upscaler.

    iarn train-corrector --data DIR --out runs/corr --base default --steps 20000

The base model's invertible network is frozen: only the corrector learns, so the upscaler's
weights stay bit-identical and every LR the base ever wrote still upscales to the same pixels.
Each step: HR crops at one scale, the network's LR through the corrector, held to the LR bound
exactly as at inference (`lr_bound.project_lr` onto `lr_psnr_min` dB PSNR-Y against the 8-bit
bicubic LR, per crop), rounded to 8 bits (straight-through), through the recipe's `codec` where
it names one (the real codec's pixels, `codec_gradient`'s gradient: the `jpeg` model's
corrector), upscaled; the loss is refinement's own (the HR error in Y plus a tenth of RGB,
refine.py). The output weight file is the base's tensors unchanged plus the corrector's, with
both configs in its metadata.

Every step's crops, scale and codec quality are a function of (seed, step), as in train.py, so
`--resume` continues exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .codec import through_codec_batch
from .data import CropSampler
from .devices import resolve_device
from .fields import check_choice
from .files import atomic_write
from .frozen_train import FROZEN_TRAIN_BOUNDS, check_recipe, recipe, run_steps
from .lr_bound import LR_PSNR_MARGIN, luma, project_lr
from .model import IARN, quantize_8bit
from .model.corrector import Corrector, CorrectorConfig
from .refine import error_per_image
from .resample import resize
from .train import codec_quality, next_batch
from .train_config import check_codec_fields
from .weights import load_weights, resolve_weights, save_weights, weights_id

CORRECTOR_TRAIN_BOUNDS = {**FROZEN_TRAIN_BOUNDS, "lr_psnr_min": (0.0, 80.0)}
LR_BOUNDS = ("project", "penalty")
OBJECTIVES = ("log", "mse")
PENALTY_WEIGHT = 10.0  # lr_bound "penalty": weight of the squared relative shortfall


@dataclass(frozen=True)
class CorrectorTrainConfig:
    """A corrector run: the frozen `base` weights (a path or bundled name), the corrector's
    architecture, and the recipe (Adam, cosine to a tenth, crops and scales as in train.py)."""

    data: tuple[str, ...] = ()
    out: str = "runs/corrector"
    base: str = "default"
    corrector: CorrectorConfig = field(default_factory=CorrectorConfig)
    steps: int = 20000
    batch_size: int = 8
    crop: int = 96
    learning_rate: float = 5e-4
    lr_psnr_min: float = 44.0
    lr_bound: str = "project"
    objective: str = "log"
    scale_min: float = 1.0
    scale_max: float = 4.0
    scale_power: float = 1.0
    asymmetric_share: float = 0.3
    integer_share: float = 0.3
    codec: str = "none"  # none | jpeg | webp: the corrected LR through it before the upscale
    codec_quality_min: int = 75  # each codec step draws its quality from [min, max]
    codec_quality_max: int = 95
    codec_share: float = 1.0  # share of steps through the codec (the rest lossless)
    codec_gradient: str = "surrogate"  # straight | surrogate (codec.py)
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25
    threads: int = 0
    device: str = "auto"  # auto (CUDA, else MPS, else CPU) | cpu | cuda | cuda:N | mps

    def __post_init__(self) -> None:
        check_recipe(self, CORRECTOR_TRAIN_BOUNDS)
        check_choice("lr_bound", self.lr_bound, LR_BOUNDS)
        check_choice("objective", self.objective, OBJECTIVES)
        check_codec_fields(self)
        if not isinstance(self.corrector, CorrectorConfig):
            raise ValueError(f"corrector must be a CorrectorConfig, got {type(self.corrector).__name__}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CorrectorTrainConfig:
        values = dict(values)
        corrector = CorrectorConfig.from_dict(values.pop("corrector", {}) or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown corrector training fields {unknown}")
        values["data"] = tuple(values.get("data", ()))
        return cls(corrector=corrector, **values)


def attach_corrector(network: IARN, config: CorrectorConfig, init: IARN | None = None) -> IARN:
    """Freeze `network`'s invertible core and give it a fresh corrector (or `init`'s, which must
    have the same corrector config but for its passes and `per_count`; one pass where this run
    asks for more: its first pass is taken and the feedback starts fresh, changing nothing; a
    shared stack where this run asks for `per_count`: every step count starts from it; a
    feedback stack or a per-count one is never dropped)."""
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    network.corrector = Corrector(config).to(network.device)
    if init is not None and init.corrector is not None:
        given = init.corrector.config
        same = dataclasses.replace(given, passes=config.passes, per_count=config.per_count) == config
        if not same or given.passes > 1 and config.passes == 1 or given.per_count and not config.per_count:
            raise ValueError(f"init-from's corrector is {given}, this run asks for {config}")
        start = Corrector(dataclasses.replace(config, per_count=given.per_count)).to(network.device)
        start.load_state_dict(init.corrector.state_dict(), strict=given.passes > 1 or config.passes == 1)
        if config.per_count and not given.per_count:
            network.corrector.shared_to_per_count(start)
            if config.passes > 1:
                network.corrector.feedback.shared_to_per_count(start.feedback)
        else:
            network.corrector.load_state_dict(start.state_dict())
    return network


def corrector_loss(
    network: IARN, hr: torch.Tensor, lr_size: tuple[int, int], cfg: CorrectorTrainConfig, quality: int | None = None
) -> dict[str, torch.Tensor]:
    """The training objective on HR crops (B, 3, c, c) in [0, 1]: the HR error per pixel of
    `upscale(q(LR'))` (refinement's Y loss; with `quality`, of `upscale(codec(q(LR')))`, the
    recipe's codec at that quality), LR' the corrected LR held to the bound by
    `cfg.lr_bound`: `project` (onto `lr_psnr_min` dB per crop, as at inference) or `penalty` (a
    squared penalty on each crop's shortfall under `lr_psnr_min` + 1 dB; inference projects).
    `cfg.objective`: `mse` (the batch's mean error) or `log` (the mean of each crop's log error:
    every crop's dB alike). Also the restored PSNR-Y and the LR's PSNR-Y, for the log."""
    hr_size = (hr.shape[-2], hr.shape[-1])
    lr, _ = network.down_region(hr, hr_size, lr_size, correct=True)
    with torch.no_grad():
        reference = quantize_8bit(resize(hr, lr_size))
    allowed = 10 ** (-(cfg.lr_psnr_min + LR_PSNR_MARGIN) / 10)
    lr_mse = luma(lr - reference).pow(2).mean(dim=(1, 2, 3))
    if cfg.lr_bound == "project" and cfg.lr_psnr_min > 0:
        floor = torch.full((hr.shape[0],), cfg.lr_psnr_min + LR_PSNR_MARGIN, device=hr.device)
        lr = project_lr(lr, reference, floor)
        penalty = lr_mse.new_zeros(())
    else:
        shortfall = (lr_mse / (allowed * 10 ** (-1 / 10)) - 1).clamp_min(0)
        penalty = PENALTY_WEIGHT * shortfall.pow(2).mean() if cfg.lr_psnr_min > 0 else lr_mse.new_zeros(())
        lr = lr.clamp(0, 1)
    lr = quantize_8bit(lr)
    if quality is not None:
        lr = through_codec_batch(lr, (cfg.codec, quality), cfg.codec_gradient)
    restored = network.up_region(lr, hr_size, lr_size)
    error = error_per_image(restored, hr, "y") / (hr_size[0] * hr_size[1])
    fit = torch.log(error.clamp_min(1e-12)).mean() if cfg.objective == "log" else error.mean() / error.detach().mean()
    with torch.no_grad():
        mse_y = luma(restored.clamp(0, 1) - hr).pow(2).mean(dim=(1, 2, 3))
        psnr_y = (10 * torch.log10(1 / mse_y.clamp_min(1e-12))).mean()
        lr_psnr = (10 * torch.log10(1 / lr_mse.detach().clamp_min(1e-12))).mean()
    return {"loss": fit + penalty, "penalty": penalty.detach(), "psnr_y": psnr_y, "lr_psnr_y": lr_psnr}


def learning_rate(cfg: CorrectorTrainConfig, step: int) -> float:
    """Cosine from `learning_rate` to a tenth of it over `steps`."""
    progress = min(1.0, step / cfg.steps)
    return cfg.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def train_corrector(
    cfg: CorrectorTrainConfig,
    resume: bool = False,
    init_from: str | None = None,
    max_minutes: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Path | None:
    """Run (or continue) a corrector run; returns the weight file written, or None when the run
    ended before its first step (nothing is written then)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "corrector-checkpoint.pt"
    base_path = resolve_weights(cfg.base)
    device = resolve_device(cfg.device)
    network = load_weights(base_path, device)
    if network.config.mode not in ("middle", "naive"):
        raise ValueError(f"a corrector needs a model in middle or naive mode, {base_path} is {network.config.mode}")
    if cfg.corrector.steps < network.config.levels:
        cfg = dataclasses.replace(cfg, corrector=dataclasses.replace(cfg.corrector, steps=network.config.levels))
    init = load_weights(resolve_weights(init_from)) if init_from else None
    attach_corrector(network, cfg.corrector, init)
    network.train()
    optimizer = torch.optim.Adam(network.corrector.parameters(), lr=cfg.learning_rate)
    step = 0
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        network.corrector.load_state_dict(state["corrector"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
    sampler = CropSampler(list(cfg.data), cfg.crop, device)

    def save_checkpoint(step: int) -> None:
        state = {"corrector": network.corrector.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        atomic_write(checkpoint_path, lambda tmp: torch.save(state, tmp))

    def learn(step: int) -> dict:
        hr, lr_size, scale = next_batch(sampler, cfg, 0, step)  # as train.py's rank 0
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        quality = codec_quality(cfg, step)
        values = corrector_loss(network, hr, lr_size, cfg, quality)
        optimizer.zero_grad(set_to_none=True)
        values["loss"].backward()
        optimizer.step()
        return {"scale": scale, "quality": quality, **values}

    step = run_steps(cfg, step, learn, out / "corrector-log.jsonl", save_checkpoint, max_minutes, clock)
    if step == 0:
        return None
    save_checkpoint(step)
    path = out / "model.safetensors"
    network.eval()
    training = {"corrector": recipe(cfg), "corrector_steps": step, "base": weights_id(base_path)}
    save_weights(network, path, training=training, same_upscaler_as=base_path)
    return path


__all__ = ["CorrectorTrainConfig", "attach_corrector", "corrector_loss", "train_corrector"]
