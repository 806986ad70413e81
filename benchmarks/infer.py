"""Inference speed and memory of iarn against Pillow's bicubic, in one process.

    python benchmarks/infer.py                       # 1 MP, default config, CPU
    python benchmarks/infer.py --megapixels 1 8 --weights tiny --repeats 5
    python benchmarks/infer.py --peak-memory 24      # peak RSS of a tiled 24 MP down + up

Prints, per image size: median seconds of downscale and upscale (x2.7) over `--repeats` runs
after a warm-up, MP/s, and the same for Pillow's BICUBIC resize of the same image as the
reference. `--peak-memory N` runs an N-megapixel image through the uint8 tiled path used by the
CLI in a child process and reports its peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from functools import partial

import numpy as np
import torch
from PIL import Image

import iarn
from iarn import IARN, ModelConfig
from iarn.api import downscale_picture, upscale_picture
from iarn.geometry import size_for_scale
from iarn.imageio import Picture


def build_model(weights: str | None, device: str) -> IARN:
    if weights is None:
        torch.manual_seed(0)
        return IARN(ModelConfig()).to(device).eval()  # speed does not depend on the weights' values
    return iarn.load(weights, device=device)


def image_of(megapixels: float) -> np.ndarray:
    width = int(round((megapixels * 1e6 * 1.5) ** 0.5))
    height = int(round(megapixels * 1e6 / width))
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(args) -> None:
    model = build_model(args.weights, args.device)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {model.config} ({params / 1e6:.2f} M parameters), device {args.device}, "
        f"torch threads {torch.get_num_threads()}, scale {args.scale}"
    )
    print("| image | op | iarn median s | iarn MP/s | Pillow bicubic median s | ratio iarn/Pillow |")
    print("|---|---|---|---|---|---|")
    for mp in args.megapixels:
        rgb = image_of(mp)
        picture = Picture(rgb=rgb)
        hr_size = picture.size
        lr_size = size_for_scale(hr_size, args.scale)
        lr = downscale_picture(model, picture, size=lr_size)
        pil_hr, pil_lr = Image.fromarray(rgb), Image.fromarray(lr.rgb)
        rows = [
            (
                "downscale",
                partial(downscale_picture, model, picture, size=lr_size),
                partial(pil_hr.resize, (lr_size[1], lr_size[0]), Image.BICUBIC),
            ),
            (
                "upscale",
                partial(upscale_picture, model, lr, hr_size),
                partial(pil_lr.resize, (hr_size[1], hr_size[0]), Image.BICUBIC),
            ),
        ]
        for name, ours, reference in rows:
            t_ours = median_time(ours, args.repeats)
            t_ref = median_time(reference, args.repeats)
            label = f"{hr_size[1]}x{hr_size[0]} ({mp:g} MP)"
            print(f"| {label} | {name} | {t_ours:.3f} | {mp / t_ours:.3f} | {t_ref:.4f} | {t_ours / t_ref:.0f}x |")


def peak_memory_child(megapixels: float, weights: str | None, scale: float) -> None:
    model = build_model(weights, "cpu")
    picture = Picture(rgb=image_of(megapixels))
    start = time.perf_counter()
    lr = downscale_picture(model, picture, scale=scale)
    middle = time.perf_counter()
    upscale_picture(model, lr, picture.size)
    end = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "megapixels": megapixels,
                "size": picture.size,
                "peak_rss_mb": round(peak_mb),
                "downscale_s": round(middle - start, 1),
                "upscale_s": round(end - middle, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1.0])
    parser.add_argument("--scale", type=float, default=2.7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weights", help="a weight file or bundled name (default: default config, random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peak-memory", type=float, metavar="MP", help="measure peak RSS for an MP-megapixel image")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory and args.child:
        peak_memory_child(args.peak_memory, args.weights, args.scale)
    elif args.peak_memory:
        command = [
            sys.executable,
            __file__,
            "--peak-memory",
            str(args.peak_memory),
            "--child",
            "--scale",
            str(args.scale),
        ] + (["--weights", args.weights] if args.weights else [])
        print(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip())
    else:
        speed(args)


if __name__ == "__main__":
    main()
