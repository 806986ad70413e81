"""Training throughput, lever by lever: steps/s and MP/s of HR crops of `iarn.train.train_step`.

    python benchmarks/train_throughput.py                            # every lever, default model
    python benchmarks/train_throughput.py --levers cached device-crops bf16
    python benchmarks/train_throughput.py --blocks-per-level 4 --growth 16 --batch-size 12 --crop 96

Each row runs the trainer's own step (`next_batch` + `train_step`: crops, scale draw, down,
quantise, up, losses, backward, clip, Adam) on a fresh model in this process, with the levers of
the rows above it switched on, so the ratio column is each lever's cumulative speed-up over the
first row. Levers, in order:

- `rebuilt`: the resampling matrices and scale encodings rebuilt every step and the crops cut
  by numpy on the host, then uploaded (the code before the caches; the reference row);
- `cached`: matrices and encodings cached per geometry and device;
- `device-crops`: the decoded images kept on the device, a batch cut by one gather there;
- `bf16`: bf16 autocast for the subnets (the coupling arithmetic stays fp32);
- `compile`: `torch.compile` of the invertible core, static shapes (default mode);
- `cudagraphs`: the same with mode `reduce-overhead`, replayed as CUDA graphs (CUDA only);
- `batch-N`: the same settings at batch N (`--big-batch`), for MP/s.

Data: `--data DIR` (decoded once) or, by default, 16 synthetic 512x512 images. Medians over
`--windows` windows of `--steps` steps after `--warmup` steps; compile time is reported apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from iarn.data import CropSampler
from iarn.model import ModelConfig
from iarn.model.encoding import _cached_encoding
from iarn.resample import _cached_matrix
from iarn.train import make_loss_module, next_batch, train_step
from iarn.train_config import TrainConfig
from iarn.train_runtime import Runtime, build_state

LEVERS = ("rebuilt", "cached", "device-crops", "bf16", "compile", "cudagraphs", "batch")
LEVER_SETTINGS = {  # TrainConfig fields each lever sets; the cache and crop levers are not fields
    "rebuilt": lambda big: {},
    "cached": lambda big: {},
    "device-crops": lambda big: {},
    "bf16": lambda big: {"amp": "bf16"},
    "compile": lambda big: {"compile": True},
    "cudagraphs": lambda big: {"compile": True, "compile_mode": "reduce-overhead"},
    "batch": lambda big: {"batch_size": big},
}


class HostCropSampler:
    """The crops as the trainer cut them before `device-crops`: numpy on the host, uploaded."""

    def __init__(self, sampler: CropSampler, device: torch.device) -> None:
        self.sampler, self.device = sampler, device
        pixels = sampler.pixels.cpu()
        bases = np.concatenate([[0], np.cumsum(sampler.heights * sampler.widths)[:-1]])
        self.images = [
            pixels[:, b : b + h * w].t().reshape(h, w, 3).numpy()
            for b, h, w in zip(bases, sampler.heights, sampler.widths)
        ]

    def batch(self, size: int, rng: np.random.Generator) -> torch.Tensor:
        crops = []
        crop = self.sampler.crop
        for index, top, left, flip, turns in self.sampler.draw(size, rng).T:
            piece = self.images[index][top : top + crop, left : left + crop]
            piece = np.rot90(piece[:, ::-1] if flip else piece, k=int(turns))
            crops.append(np.ascontiguousarray(piece))
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous().to(self.device, non_blocking=True)


@contextmanager
def caches_disabled(enabled: bool):
    """Empty the geometry caches before every step (`rebuilt`), else leave them alone."""
    yield (lambda: (_cached_matrix.cache_clear(), _cached_encoding.cache_clear())) if enabled else (lambda: None)


def synthetic_images(folder: Path, count: int = 16, size: int = 512) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        y, x = np.mgrid[0:size, 0:size]
        base = np.stack([np.sin(x / (5 + k)), np.cos(y / 7), np.sin((x + y) / 11)], axis=2)
        pixels = ((base + 1) * 100 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"synthetic{k:02d}.png")
    return folder


def measure(
    cfg: TrainConfig, sampler, device: torch.device, warmup: int, steps: int, windows: int, rebuild: bool
) -> tuple[float, float]:
    """(median steps/s, seconds of warm-up including any compilation)."""
    runtime = Runtime(device)
    state = build_state(cfg, device, None, None)
    loss_module = make_loss_module(state, cfg, runtime)
    step = 0

    def one_step(clear) -> None:
        nonlocal step
        clear()
        hr, lr_size, _ = next_batch(sampler, cfg, 0, step)
        train_step(loss_module, state, cfg, hr, lr_size)
        step += 1

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with caches_disabled(rebuild) as clear:
        start = time.perf_counter()
        for _ in range(warmup):
            one_step(clear)
        sync()
        warm_seconds = time.perf_counter() - start
        rates = []
        for _ in range(windows):
            start = time.perf_counter()
            for _ in range(steps):
                one_step(clear)
            sync()
            rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates), warm_seconds


def lever_table(
    model: ModelConfig,
    data: list[str],
    device: torch.device,
    levers: list[str],
    batch_size: int = 16,
    crop: int = 144,
    big_batch: int = 48,
    warmup: int = 5,
    steps: int = 10,
    windows: int = 3,
    print_row=print,
) -> list[dict]:
    """Measure each lever on top of the ones before it; print and return one row per lever."""
    base = TrainConfig(data=tuple(data), model=model, batch_size=batch_size, crop=crop, device=str(device))
    on_device = CropSampler(data, crop, device)
    host = HostCropSampler(on_device, device)
    settings: dict = {}
    rows: list[dict] = []
    first = None
    print_row("| lever (cumulative) | steps/s | MP/s of HR crops | speed-up | warm-up s |")
    print_row("|---|---|---|---|---|")
    for lever in LEVERS:
        if lever not in levers or (lever == "cudagraphs" and device.type != "cuda"):
            continue  # neither measured nor applied to the rows below
        settings.update(LEVER_SETTINGS[lever](big_batch))
        cfg = dataclasses.replace(base, **settings)
        sampler = on_device if LEVERS.index(lever) >= LEVERS.index("device-crops") else host
        rebuild = lever == "rebuilt"
        rate, warm = measure(cfg, sampler, device, warmup, steps, windows, rebuild)
        mp = rate * cfg.batch_size * cfg.crop**2 / 1e6
        first = first or mp
        label = f"batch-{big_batch}" if lever == "batch" else lever
        rows.append({"lever": label, "steps_per_s": rate, "mp_per_s": mp, "speedup": mp / first, "warmup_s": warm})
        print_row(f"| {label} | {rate:.2f} | {mp:.3f} | {mp / first:.2f}x | {warm:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", help="training images (default: synthetic)")
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=LEVERS)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--big-batch", type=int, default=48)
    parser.add_argument("--crop", type=int, default=144)
    parser.add_argument("--mode", default="cycle")
    parser.add_argument("--blocks-per-level", type=int, default=ModelConfig.blocks_per_level)
    parser.add_argument("--growth", type=int, default=ModelConfig.growth)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    data = args.data
    if not data:
        import tempfile

        data = [str(synthetic_images(Path(tempfile.mkdtemp(prefix="iarn-bench-"))))]
    model = ModelConfig(mode=args.mode, blocks_per_level=args.blocks_per_level, growth=args.growth)
    name = device.type if device.type != "cuda" else torch.cuda.get_device_name(device)
    print(f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, {model}")
    print(f"batch {args.batch_size} of {args.crop} px; median of {args.windows} windows of {args.steps} steps")
    lever_table(
        model,
        data,
        device,
        args.levers,
        args.batch_size,
        args.crop,
        args.big_batch,
        args.warmup,
        args.steps,
        args.windows,
    )


if __name__ == "__main__":
    main()
