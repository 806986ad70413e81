"""Training: one readable loop (design.md section 4).

Single process:      iarn train --data DIR --out runs/x --steps 20000
Several GPUs (DDP):  torchrun --nproc_per_node 4 -m iarn train --data DIR --out runs/x
DDP is set up from torchrun's environment variables (RANK, WORLD_SIZE, LOCAL_RANK). Each rank
draws its own crops; rank 0 logs and writes checkpoints. `--resume auto` continues from
`OUT/checkpoint.pt` when it exists; `--init-from WEIGHTS` starts from a weight file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .data import CropSampler, sample_scale
from .geometry import size_for_scale
from .model import IARN, ModelConfig, quantize_8bit
from .resample import resize
from .weights import load_weights, save_weights


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides the model's architecture (`model`)."""

    data: tuple[str, ...] = ()
    out: str = "runs/iarn"
    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 20000
    batch_size: int = 16
    crop: int = 144
    lr: float = 2e-4
    schedule: str = "cosine"  # cosine | step (halve at 50, 75, 90 %)
    warmup: int = 100
    grad_clip: float = 10.0
    lambda_rec: float = 1.0  # L1(upscale(quantised LR), HR), mean over pixels
    lambda_lr: float = 8.0  # L2(LR, bicubic(HR)), mean over pixels
    lambda_z: float = 1.0  # mean(z^2) (split) or mean((x' - up(LR))^2) (cycle)
    scale_min: float = 1.1
    scale_max: float = 4.0
    scale_power: float = 2.0  # density of s proportional to s**power (AIDN: 2)
    asymmetric_share: float = 0.3
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 20
    amp: str = "none"  # none | bf16 (CUDA only; the coupling arithmetic stays fp32)
    compile: bool = False
    device: str = "auto"
    threads: int = 0  # CPU threads for torch (0: torch's default)

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "step"):
            raise ValueError("schedule must be cosine or step")
        if self.amp not in ("none", "bf16"):
            raise ValueError("amp must be none or bf16")
        if self.crop % (2 * 2**self.model.levels):
            raise ValueError(f"crop must be a multiple of {2 * 2**self.model.levels}")
        if not 1.0 <= self.scale_min <= self.scale_max <= self.model.max_scale:
            raise ValueError("need 1 <= scale_min <= scale_max <= model.max_scale")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        model = ModelConfig.from_dict(values.pop("model", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config fields {unknown}")
        if "data" in values:
            values["data"] = tuple(values["data"])
        return cls(model=model, **values)


class RescaleLoss(nn.Module):
    """Down, quantise, up, and the three losses for one batch that shares one LR size.

    Wrapped by DDP, so the whole differentiable step goes through `forward`.
    """

    def __init__(self, model: IARN, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, hr: torch.Tensor, lr_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        hr_size = (hr.shape[-2], hr.shape[-1])
        lr, aux = self.model.down_region(hr, hr_size, lr_size)
        lr_q = quantize_8bit(lr)
        recon = self.model.up_region(lr_q, hr_size, lr_size)
        with torch.no_grad():
            reference = resize(hr, lr_size)
        if self.model.config.mode == "split":
            latent = aux.float().pow(2).mean()
        else:
            latent = F.mse_loss(aux.float(), resize(lr_q, hr_size).float())
        rec = F.l1_loss(recon.float(), hr)
        fit = F.mse_loss(lr.float(), reference)
        total = self.cfg.lambda_rec * rec + self.cfg.lambda_lr * fit + self.cfg.lambda_z * latent
        return {"loss": total, "rec": rec, "lr": fit, "z": latent}


def learning_rate(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, step / max(1, cfg.steps))
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * 0.5 ** sum(progress >= m for m in (0.5, 0.75, 0.9))


def _atomic_torch_save(obj: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _rng_state(rng: np.random.Generator) -> dict:
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}


def train(
    cfg: TrainConfig,
    resume: str | None = None,
    init_from: str | None = None,
    progress: bool = True,
    stop_at: int | None = None,
    max_minutes: float | None = None,
) -> Path:
    """Train; returns the path of the weight file written at the end (`OUT/model.safetensors`).

    `stop_at` (a step) and `max_minutes` end this invocation early without changing the
    schedule: the checkpoint it writes lets `resume="auto"` carry on to `cfg.steps`.
    """
    # -- processes and devices (torchrun sets these; a plain run is rank 0 of 1) --
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if ddp:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    master = rank == 0
    out = Path(cfg.out)
    if master:
        out.mkdir(parents=True, exist_ok=True)

    # -- model, optimiser, state --
    checkpoint_path = out / "checkpoint.pt"
    if resume == "auto":
        resume = str(checkpoint_path) if checkpoint_path.exists() else None
    state = torch.load(resume, map_location="cpu", weights_only=True) if resume else None
    if state is not None:
        cfg = TrainConfig.from_dict({**state["train_config"], "out": cfg.out, "steps": cfg.steps})
    if init_from and state is None:
        model = load_weights(init_from)
        cfg = dataclasses.replace(cfg, model=model.config)
    else:
        torch.manual_seed(cfg.seed)
        model = IARN(cfg.model)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    rng = np.random.default_rng([cfg.seed, rank])
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        rng.bit_generator.state = state["rng"][rank]["numpy"] if rank < len(state["rng"]) else rng.bit_generator.state
    loss_module: nn.Module = RescaleLoss(model, cfg)
    if cfg.compile:
        loss_module = torch.compile(loss_module)
    if ddp:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler = CropSampler(list(cfg.data), cfg.crop)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")

    # -- logging --
    log = open(out / "log.jsonl", "a") if master else None
    writer = None
    if master:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            pass
        print(
            f"training {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters "
            f"({cfg.model.mode}) on {world} x {device.type}, {len(sampler.images)} images, from step {step}",
            flush=True,
        )
    bar = None
    if master and progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True)

    def save_checkpoint() -> None:
        states = [None] * world
        own = _rng_state(rng)
        if ddp:
            dist.all_gather_object(states, own)
        else:
            states = [own]
        if master:
            _atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "rng": states,
                    "train_config": cfg.to_dict(),
                },
                checkpoint_path,
            )

    # -- the loop --
    started = window_start = time.perf_counter()
    window_steps = 0
    while step < cfg.steps:
        out_of_time = max_minutes is not None and time.perf_counter() - started > 60 * max_minutes
        if ddp:  # every rank must agree to stop at the same step
            flag = torch.tensor(float(out_of_time), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if (stop_at is not None and step >= stop_at) or out_of_time:
            save_checkpoint()
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        scale = sample_scale(rng, cfg.scale_min, cfg.scale_max, cfg.scale_power, cfg.asymmetric_share)
        lr_size = size_for_scale((cfg.crop, cfg.crop), scale)
        hr = sampler.batch(cfg.batch_size, rng).to(device, non_blocking=True).float().div_(255)
        with autocast:
            losses = loss_module(hr, lr_size)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        window_steps += 1
        if master and (step % cfg.log_every == 0 or step == cfg.steps):
            elapsed = time.perf_counter() - window_start
            rate = window_steps / elapsed
            record = {k: round(float(v.detach()), 7) for k, v in losses.items()}
            record.update(
                step=step,
                lr_rate=learning_rate(cfg, step - 1),
                grad_norm=round(float(grad_norm), 4),
                steps_per_s=round(rate, 3),
                mp_per_s=round(rate * world * cfg.batch_size * cfg.crop**2 / 1e6, 3),
                scale=[round(s, 3) for s in scale],
                time=time.time(),
            )
            log.write(json.dumps(record) + "\n")
            log.flush()
            if writer is not None:
                for key in ("loss", "rec", "lr", "z", "steps_per_s"):
                    writer.add_scalar(f"train/{key}", record[key], step)
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.4f}", rec=f"{record['rec']:.4f}", sps=f"{rate:.2f}")
            window_start, window_steps = time.perf_counter(), 0
        if bar is not None:
            bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint()
    if bar is not None:
        bar.close()
    final = out / "model.safetensors"
    if master:
        save_weights(model, final, training={"steps": step, "train_config": cfg.to_dict()})
        log.close()
        if writer is not None:
            writer.close()
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    return final
