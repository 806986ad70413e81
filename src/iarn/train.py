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

import dataclasses
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .codec import through_codec_batch
from .data import CropSampler, sample_scale, step_rng
from .geometry import size_for_scale
from .model import IARN, quantize_8bit
from .resample import resize
from .train_config import (
    TrainConfig,
    resume_config,
)
from .train_runtime import (
    RunLog,
    Runtime,
    TimeBudget,
    TrainState,
    build_state,
    on_any_rank,
    remove_stale_temporaries,
    resolve_resume,
    save_checkpoint,
    setup_runtime,
    stop_signals,
)
from .weights import load_weights, resolve_weights, save_weights


class RescaleLoss(nn.Module):
    """Down, quantise, up, and the three losses for one batch that shares one LR size.

    Wrapped by DDP, so the whole differentiable step goes through `forward`.
    """

    def __init__(self, model: IARN, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(
        self, hr: torch.Tensor, lr_size: tuple[int, int], lambda_lr: torch.Tensor | float, quality: int | None = None
    ) -> dict[str, torch.Tensor]:
        """The losses of a batch; `quality`: the LR goes through the recipe's codec at it first."""
        hr_size = (hr.shape[-2], hr.shape[-1])
        lr, by_product = self.model.down_region(hr, hr_size, lr_size)
        lr_q = quantize_8bit(lr)
        if quality is not None:
            lr_q = through_codec_batch(lr_q, (self.cfg.codec, quality), self.cfg.codec_gradient)
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


# -- one step ---------------------------------------------------------------------------------


def next_batch(
    sampler: CropSampler, cfg: TrainConfig, rank: int, step: int
) -> tuple[torch.Tensor, tuple[int, int], tuple[float, float]]:
    """The HR crops (B, 3, crop, crop) float in [0, 1] on the sampler's device, the LR size
    and the scale of step `step` on `rank`: a function of (seed, rank, step) alone. `cfg`: a
    TrainConfig or anything with its seed, scale, batch and crop fields (CorrectorTrainConfig)."""
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
    quality = codec_quality(cfg, state.step)
    with torch.autocast(state.log_lambda_lr.device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
        losses = loss_module(hr, lr_size, lambda_lr, quality)
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


def codec_quality(cfg: TrainConfig, step: int) -> int | None:
    """The codec quality of step `step` (None: no codec this step), the same on every rank: a
    function of (seed, step) alone, drawn apart from the crops and scale."""
    if cfg.codec == "none":
        return None
    rng = np.random.default_rng([cfg.seed, step, CODEC_STREAM])
    if rng.random() >= cfg.codec_share:
        return None
    return int(rng.integers(cfg.codec_quality_min, cfg.codec_quality_max + 1))


CODEC_STREAM = 0x636F6465  # "code": keeps the codec's draws apart from next_batch's


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
    init_from = str(resolve_weights(init_from)) if init_from else None
    with stop_signals() as interrupted:
        return _train(cfg, resume, init_from, progress, stop_at, max_minutes, fit_steps, clock, interrupted)


def _train(cfg, resume, init_from, progress, stop_at, max_minutes, fit_steps, clock, interrupted) -> Path:
    cfg, checkpoint = _starting_config(cfg, resume, init_from, fit_steps, max_minutes)
    out = Path(cfg.out)
    checkpoint_path = out / "checkpoint.pt"
    runtime = setup_runtime(cfg)
    sampler = CropSampler(list(cfg.data), cfg.crop, runtime.device, shard=(runtime.rank, runtime.world))
    state = build_state(cfg, runtime.device, checkpoint, init_from)
    loss_module = make_loss_module(state, cfg, runtime)
    log = _open_log(out, cfg, runtime, state, len(sampler), progress)
    recorder = StepRecorder(log, runtime, clock)
    budget = TimeBudget(max_minutes, fit_steps, cfg.steps, state.step, runtime, clock)
    while state.step < cfg.steps:
        fitted = budget.refit(cfg, state.step)
        if fitted is not None:
            cfg = fitted
            if log is not None:
                log.set_total(cfg.steps)
        if stop_at is not None and state.step >= stop_at or budget.out_of_time():
            break
        if on_any_rank(interrupted.is_set(), runtime):
            break
        hr, lr_size, scale = next_batch(sampler, cfg, runtime.rank, state.step)
        losses, grad_norm = train_step(loss_module, state, cfg, hr, lr_size, runtime.world)
        recorder.took(cfg, state, losses, grad_norm, scale)
        if state.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            recorder.flush(cfg, state)
            raise _diverged(state, checkpoint_path, log)
        if state.step % cfg.checkpoint_every == 0 and state.step < cfg.steps and runtime.master:
            save_checkpoint(state, cfg, checkpoint_path)
    recorder.flush(cfg, state)  # stopped by the clock or --stop-at between log steps
    return _finish(state, cfg, runtime, log, interrupted)


def _starting_config(cfg: TrainConfig, resume, init_from, fit_steps: bool, max_minutes) -> tuple[TrainConfig, dict]:
    """The run's config (the checkpoint's recipe when resuming, the init weights' model when
    fine-tuning) and the checkpoint (None for a new run), the arguments checked first."""
    if fit_steps and not max_minutes:
        raise ValueError("fit_steps needs max_minutes (the time the schedule should fill)")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder (--out names the run's folder)")
    _, checkpoint = resolve_resume(out, resume)
    if checkpoint is not None:
        cfg = resume_config(checkpoint["train_config"], cfg.to_dict())
    elif init_from:
        cfg = dataclasses.replace(cfg, model=load_weights(init_from).config)
    if not cfg.data:
        raise ValueError("no training data: pass --data DIR (or data: in --config)")
    return cfg, checkpoint


def _open_log(out: Path, cfg: TrainConfig, runtime: Runtime, state: TrainState, images: int, progress: bool):
    """Rank 0's RunLog, after a line that says what trains (other ranks: None)."""
    if not runtime.master:
        return None
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)  # one run per folder at a time: these are a killed run's
    params = sum(p.numel() for p in state.model.parameters()) / 1e6
    print(
        f"training {params:.2f} M parameters ({cfg.model.mode}) on {runtime.world} x {runtime.device.type}, "
        f"{images} images on rank 0, from step {state.step}",
        flush=True,
    )
    return RunLog(out, cfg.steps, state.step, progress)


class StepRecorder:
    """Writes a log line every `log_every` steps (and the last step's, whatever stopped the run),
    with the step rate of the window since the last line (`clock`, seconds)."""

    def __init__(self, log: RunLog | None, runtime: Runtime, clock: Callable[[], float]) -> None:
        self.log, self.runtime, self.clock = log, runtime, clock
        self.window_start, self.window_steps = clock(), 0
        self.unlogged = None  # the last step's values when its step was not logged yet

    def took(self, cfg: TrainConfig, state: TrainState, losses: dict, grad_norm: torch.Tensor, scale) -> None:
        if self.log is None:
            return
        self.window_steps += 1
        self.unlogged = (losses, grad_norm, scale)
        if state.skipped_in_a_row < MAX_SKIPPED_IN_A_ROW and (
            state.step % cfg.log_every == 0 or state.step == cfg.steps
        ):
            self.flush(cfg, state)
        self.log.advance()

    def flush(self, cfg: TrainConfig, state: TrainState) -> None:
        if self.log is None or self.unlogged is None:
            return
        losses, grad_norm, scale = self.unlogged
        rate = self.window_steps / max(self.clock() - self.window_start, 1e-9)
        values = {k: round(float(v.detach()), 7) for k, v in losses.items()}
        values.update(
            learning_rate=learning_rate(cfg, state.step - 1),
            grad_norm=round(float(grad_norm), 4),
            steps_per_s=round(rate, 3),
            mp_per_s=round(rate * self.runtime.world * cfg.batch_size * cfg.crop**2 / 1e6, 3),
            scale=[round(s, 3) for s in scale],
            skipped=state.skipped,
            time=time.time(),
        )
        self.log.record(state.step, values)
        self.window_start, self.window_steps, self.unlogged = self.clock(), 0, None


def _diverged(state: TrainState, checkpoint_path: Path, log: RunLog | None) -> TrainingDiverged:
    if log is not None:
        log.close()
    kept = f"{checkpoint_path} (the last good state) is kept" if checkpoint_path.exists() else "none saved"
    return TrainingDiverged(
        f"training diverged: {state.skipped_in_a_row} steps in a row up to step {state.step} had a non-finite "
        f"loss or gradient and were not applied; {kept}. Lower --lr, --lr-shortfall-power or --grad-clip"
    )


def _finish(state: TrainState, cfg: TrainConfig, runtime: Runtime, log: RunLog | None, interrupted) -> Path:
    """The last checkpoint and the weight file, or the error that says why there is none."""
    out = Path(cfg.out)
    checkpoint_path, final = out / "checkpoint.pt", out / "model.safetensors"
    stopped_by_signal = on_any_rank(interrupted.is_set(), runtime)
    signum = getattr(interrupted, "signum", signal.SIGINT)
    if state.step == 0:  # nothing trained: no checkpoint, no model (they would be the initial weights)
        if log is not None:
            log.close()
        if stopped_by_signal:
            raise TrainingInterrupted(signum, "interrupted before the first step")
        raise ValueError("the run ended before its first step (--max-minutes or --stop-at): no model written")
    if runtime.master:
        save_checkpoint(state, cfg, checkpoint_path)
        log.close()
    if state.step < cfg.steps and stopped_by_signal:
        if runtime.master:
            print(f"interrupted at step {state.step}: wrote {checkpoint_path} (go on with --resume auto)", flush=True)
        raise TrainingInterrupted(signum, f"interrupted at step {state.step}")
    if runtime.master:
        save_weights(state.model, final, training={"steps": state.step, "train_config": cfg.to_dict()})
    if runtime.ddp:
        dist.barrier()
        dist.destroy_process_group()
    return final
