"""Training throughput: steps/s and MP/s of HR crops, for the training step of `iarn.train`.

    python benchmarks/train_throughput.py                         # default model, batch 16 of 144 px
    python benchmarks/train_throughput.py --amp bf16 --compile    # levers (bf16 needs CUDA to pay)
    python benchmarks/train_throughput.py --blocks-per-level 4 --growth 16 --batch-size 12 --crop 96

Runs the exact step of the trainer (down, quantise, up, losses, backward, clip, Adam) on random
crops already on the device, so data loading is not measured; `--baseline` adds the default
settings (fp32, eager) in the same process for a ratio. Prints medians over `--windows` timing
windows of `--steps` steps each, after `--warmup` steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from iarn.data import sample_scale
from iarn.geometry import size_for_scale
from iarn.model import IARN, ModelConfig
from iarn.train import RescaleLoss, TrainConfig


def measure(cfg: TrainConfig, device: torch.device, warmup: int, steps: int, windows: int) -> float:
    torch.manual_seed(0)
    model = IARN(cfg.model).to(device).train()
    step_module = RescaleLoss(model, cfg)
    if cfg.compile:
        step_module = torch.compile(step_module)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(0)
    crops = torch.rand(cfg.batch_size, 3, cfg.crop, cfg.crop, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16")

    def one_step() -> None:
        scale = sample_scale(rng, cfg.scale_min, cfg.scale_max, cfg.scale_power, cfg.asymmetric_share)
        with autocast:
            losses = step_module(crops, size_for_scale((cfg.crop, cfg.crop), scale))
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()

    for _ in range(warmup):
        one_step()
    rates = []
    for _ in range(windows):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=144)
    parser.add_argument("--mode", default="cycle")
    parser.add_argument("--blocks-per-level", type=int, default=ModelConfig.blocks_per_level)
    parser.add_argument("--growth", type=int, default=ModelConfig.growth)
    parser.add_argument("--amp", default="none", choices=["none", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--baseline", action="store_true", help="also measure fp32 eager in this process")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    model = ModelConfig(mode=args.mode, blocks_per_level=args.blocks_per_level, growth=args.growth)
    base = TrainConfig(model=model, batch_size=args.batch_size, crop=args.crop)
    variants = [("fp32 eager", base)] if args.baseline else []
    precision = "fp32" if args.amp == "none" else args.amp
    label = f"{precision} {'compiled' if args.compile else 'eager'}"
    options = dict(model=model, batch_size=args.batch_size, crop=args.crop, amp=args.amp, compile=args.compile)
    variants.append((label, TrainConfig(**options)))
    name = device.type if device.type != "cuda" else torch.cuda.get_device_name(device)
    print(f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, {model}")
    print(f"batch {args.batch_size} of {args.crop} px; median of {args.windows} windows of {args.steps} steps")
    print("| setting | steps/s | MP/s of HR crops |")
    print("|---|---|---|")
    first = None
    for label, cfg in variants:
        rate = measure(cfg, device, args.warmup, args.steps, args.windows)
        first = first or rate
        ratio = f" ({rate / first:.2f}x)" if args.baseline else ""
        print(f"| {label} | {rate:.2f}{ratio} | {rate * cfg.batch_size * cfg.crop**2 / 1e6:.3f} |")


if __name__ == "__main__":
    main()
