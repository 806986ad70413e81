"""dB against seconds for each effort level (issue 38): what `--effort` costs and buys.

    python benchmarks/effort.py --data ../shared/data/benchmark/Set5 --scales 2 3 4 1.5,4 \
        --efforts 0 1 2 3 --json runs/effort.json
    python benchmarks/effort.py --time-only --efforts 0 1 2 3 4      # the 1 MP timing alone
    python benchmarks/effort.py --time-only --efforts 0 3 --codec jpeg:90   # refined through JPEG

Two parts, in one process on one machine:

- **Time**: a 1 MP image (the bundled sample resized to 1224x816) downscaled at x2 and x3
  (`--timing-scales`) at each effort, in `--repeats` rounds of every effort after one warm-up
  round; medians, and the median over rounds of each round's ratio to the first effort (0: the
  network's pass alone), so that a machine whose speed drifts moves both sides of a ratio. With
  `--codec`, refinement runs through that codec, as for an LR written as JPEG or WebP.
- **Fidelity**: per dataset, scale and effort, the protocol's mean PSNR-Y of the round trip and
  the smallest LR PSNR-Y against the bicubic LR of any image (the 44 dB promise holds per
  image), with fp32 on the device given.

A level "E+N" is effort E's corrector with N refinement steps: "0+10" is refinement from the
network's own LR, against "1+10" from the corrector's; "E@P" is effort E with the corrector in P
passes ("1@3").

Ratios, not seconds, carry over between machines; GPU seconds come from `--device cuda`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from iarn import Rescaler
from iarn.cli import parse_scale, parse_size, sample_image_path
from iarn.convert import to_tensor
from iarn.devices import keep_freed_memory
from iarn.effort import effort_level, set_corrector
from iarn.evaluate import bicubic_roundtrip, model_roundtrip, parse_lr_format, scale_label
from iarn.files import atomic_write, find_images
from iarn.geometry import size_for_scale
from iarn.imageio import read_picture
from iarn.metrics import protocol_border, psnr_y
from iarn.weights import load_weights, resolve_weights

ONE_MEGAPIXEL = (816, 1224)


def timing(
    model: Rescaler,
    efforts: list[str],
    repeats: int,
    size: tuple[int, int] = ONE_MEGAPIXEL,
    codec: tuple[str, int] | None = None,
    scales: tuple[float, ...] = (2.0, 3.0),
) -> dict:
    """{scale: {effort: {"median_s", "ratio"}}} for an image of `size` (H, W; 1 MP) at `scales`;
    `codec`: refinement through it (an LR written as JPEG or WebP: what `-o small.jpg` runs).
    Each round runs every effort once (the first round a warm-up), so a machine whose speed
    drifts moves every effort's times alike."""
    sample = Image.open(sample_image_path()).convert("RGB").resize(size[::-1], Image.Resampling.BICUBIC)
    hr = to_tensor(np.array(sample))
    results: dict = {}
    for scale in scales:
        lr_size = size_for_scale(size, scale)
        times: dict[str, list[float]] = {effort: [] for effort in efforts}
        for attempt in range(repeats + 1):
            for effort in efforts:
                chosen = effort_level(effort)
                set_corrector(model, chosen)
                start = time.perf_counter()
                model.downscale_pixels(hr, lr_size, refine=chosen.refine_config(codec=codec))
                if attempt:
                    times[effort].append(time.perf_counter() - start)
        row = {}
        for effort in efforts:  # the ratio: the median of each round's ratio to the first effort
            ratios = [t / b for t, b in zip(times[effort], times[efforts[0]], strict=True)]
            row[effort] = {"median_s": statistics.median(times[effort]), "ratio": statistics.median(ratios)}
            row[effort]["times_s"] = [round(t, 3) for t in times[effort]]
            print(f"x{scale:g} effort {effort}: {row[effort]['median_s']:.2f} s", file=sys.stderr, flush=True)
        results[scale_label((scale, scale))] = row
    return results


def fidelity(model: Rescaler, folder: Path, scales: list, efforts: list[str]) -> dict:
    """{scale: {effort: {"psnr_y", "min_lr_psnr_y", "images"}}} on one dataset."""
    images = [read_picture(path).rgb for path in find_images([folder])]
    results: dict = {}
    for scale in scales:
        row: dict = {}
        border = protocol_border(scale)
        for effort in efforts:
            chosen = effort_level(effort)
            set_corrector(model, chosen)
            scores, lr_scores = [], []
            for hr in images:
                lr_size = size_for_scale(hr.shape[:2], scale)
                lr, up = model_roundtrip(model, hr, lr_size, refine=chosen.refine_config())
                scores.append(psnr_y(up, hr, border))
                lr_scores.append(psnr_y(lr, bicubic_roundtrip(hr, lr_size)[0]))
            row[effort] = {"psnr_y": float(np.mean(scores)), "min_lr_psnr_y": float(min(lr_scores))}
            row[effort]["images"] = len(images)
            print(
                f"{folder.name} {scale_label(scale)} effort {effort}: {row[effort]['psnr_y']:.2f} dB "
                f"(LR >= {row[effort]['min_lr_psnr_y']:.2f})",
                file=sys.stderr,
                flush=True,
            )
        results[scale_label(scale)] = row
    return results


def markdown(results: dict) -> str:
    lines = []
    for name, by_scale in results.get("fidelity", {}).items():
        efforts = list(next(iter(by_scale.values())))
        lines += [f"**{name}** PSNR-Y (dB; smallest LR PSNR-Y of any image)", ""]
        lines.append("| scale | " + " | ".join(f"effort {e}" for e in efforts) + " |")
        lines.append("|---|" + "---|" * len(efforts))
        for label, row in by_scale.items():
            cells = [f"{row[e]['psnr_y']:.2f} ({row[e]['min_lr_psnr_y']:.1f})" for e in efforts]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if "timing" in results:
        efforts = list(next(iter(results["timing"].values())))
        lines += [f"downscale of {results['timing_size']}, median seconds (ratio to effort {efforts[0]})", ""]
        lines.append("| scale | " + " | ".join(f"effort {e}" for e in efforts) + " |")
        lines.append("|---|" + "---|" * len(efforts))
        for label, row in results["timing"].items():
            cells = [f"{row[e]['median_s']:.2f} ({row[e]['ratio']:.2f}x)" for e in efforts]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="*", default=[], help="benchmark folders")
    parser.add_argument("--scales", nargs="+", type=parse_scale, default=[(2.0, 2.0), (4.0, 4.0)])
    parser.add_argument(
        "--efforts",
        nargs="+",
        default=["0", "1", "2"],
        help='levels "E", "E+N" (N steps) or "E@P" (P corrector passes)',
    )
    parser.add_argument("--weights", help="a weight file (default: the bundled default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--time-only", action="store_true")
    parser.add_argument("--timing-size", type=parse_size, default=ONE_MEGAPIXEL, metavar="WxH")
    parser.add_argument("--timing-scales", nargs="+", type=float, default=[2.0, 3.0], metavar="S")
    parser.add_argument("--no-time", action="store_true")
    parser.add_argument(
        "--codec", type=parse_lr_format, metavar="FMT", help="time refinement through a codec: jpeg:90, webp:80"
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the CLI does (docs/performance.md): the times are the CLI's
    model = Rescaler(load_weights(resolve_weights(args.weights)), args.device)
    height, width = args.timing_size
    results: dict = {
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "timing_size": f"{width}x{height}",
    }
    if not args.no_time:
        scales = tuple(args.timing_scales)
        results["timing"] = timing(model, args.efforts, args.repeats, args.timing_size, args.codec, scales)
        results["codec"] = args.codec
    if not args.time_only:
        results["fidelity"] = {Path(f).name: fidelity(model, Path(f), args.scales, args.efforts) for f in args.data}
    results = json.loads(json.dumps(results))  # keys as JSON has them
    print(markdown(results), end="")
    if args.json:
        text = json.dumps(results, indent=2) + "\n"
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
