"""Round trips through a lossy LR (issue 39), measured as SAIN (AAAI 2023) does: HR -> LR ->
JPEG (or WebP) at quality Q -> upscale, PSNR-Y against the HR, beside bicubic -> the same codec
-> bicubic in the same run; the LR's bytes against the bicubic LR's; the LR's PSNR-Y against
the bicubic LR before the codec (the smallest over the set's images).

    python benchmarks/lossy_table.py --data ../shared/data/benchmark/Set5 --formats jpeg:90 jpeg:75 \
        --scales 2 4 --models jpeg default --json runs/lossy.json

Every cell is `iarn.evaluate.score_image`, as `iarn evaluate --lr-format FMT` computes it, at
each effort level of `--efforts` (a row each; default 0, the network's LR): "1" with the
model's LR corrector, "0+N" with N steps of refinement through the codec, as `iarn downscale -o
x.jpg --effort E --refine N` writes (`--refine N` is short for level "0+N").
Prints one markdown table per dataset: rows (model, format), columns scales, each cell "ours
(gain over bicubic)"; then the bytes ratio and the smallest LR PSNR-Y.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from iarn.cli import parse_scale
from iarn.effort import effort_level, set_corrector
from iarn.evaluate import parse_lr_format, scale_label, score_image
from iarn.files import atomic_write, find_images
from iarn.imageio import read_picture
from iarn.lr_bound import LR_PSNR_MIN
from iarn.metrics import protocol_border
from iarn.refine import RefineConfig
from iarn.rescaler import Rescaler, load


def measure(
    model: Rescaler, folder: Path, scales, lr_format, lr_psnr_min: float = LR_PSNR_MIN, refine: int = 0
) -> dict:
    """{scale label: {"iarn", "bicubic", "gain", "bytes_ratio", "lr_psnr_y_min", "images"}}, with
    the model's corrector as set on it (`set_corrector`) and `refine` steps through the codec."""
    rows: dict = {}
    images = [read_picture(path).rgb for path in find_images([folder])]
    for scale in scales:
        ours, bicubic, ratios, lr_psnr = [], [], [], []
        for hr in images:
            if min(hr.shape[:2]) - 2 * protocol_border(scale) < 11:
                continue
            bound = RefineConfig(steps=refine, lr_psnr_min=lr_psnr_min)  # refined through lr_format
            mine, theirs = score_image(model, hr, scale, refine=bound, lr_format=lr_format)
            ours.append(mine.psnr_y)
            bicubic.append(theirs.psnr_y)
            ratios.append(mine.lr_bytes / theirs.lr_bytes)
            lr_psnr.append(mine.lr_psnr_y)
        rows[scale_label(scale)] = {
            "iarn": float(np.mean(ours)),
            "bicubic": float(np.mean(bicubic)),
            "gain": float(np.mean(ours) - np.mean(bicubic)),
            "bytes_ratio": float(np.mean(ratios)),
            "lr_psnr_y_min": float(np.min(lr_psnr)),
            "images": len(ours),
        }
    return rows


def markdown(results: dict) -> str:
    lines = []
    for dataset, by_model in results.items():
        labels = list(next(iter(next(iter(by_model.values())).values())).keys())
        lines += ["", f"**{dataset}**: PSNR-Y (gain over bicubic through the same codec)", ""]
        lines.append("| model | LR format | " + " | ".join(labels) + " | LR bytes / bicubic's | LR PSNR-Y, least |")
        lines.append("|---|---|" + "---|" * (len(labels) + 2))
        for model, by_format in by_model.items():
            for fmt, rows in by_format.items():
                cells = [f"{rows[k]['iarn']:.2f} ({rows[k]['gain']:+.2f})" for k in labels]
                ratio = max(rows[k]["bytes_ratio"] for k in labels)
                least = min(rows[k]["lr_psnr_y_min"] for k in labels)
                lines.append(f"| {model} | {fmt} | " + " | ".join(cells) + f" | <= {ratio:.3f} | {least:.2f} |")
        bicubic = next(iter(by_model.values()))
        lines += ["", "| bicubic | LR format | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for fmt, rows in bicubic.items():
            lines.append("| bicubic | " + fmt + " | " + " | ".join(f"{rows[k]['bicubic']:.2f}" for k in labels) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR")
    parser.add_argument("--formats", nargs="+", default=["jpeg:90", "jpeg:75"], metavar="FMT")
    parser.add_argument("--scales", nargs="+", type=parse_scale, default=[(2.0, 2.0), (4.0, 4.0)])
    parser.add_argument("--models", nargs="+", default=["jpeg", "default"], metavar="NAME_OR_PATH")
    parser.add_argument(
        "--lr-psnr-min",
        type=float,
        default=LR_PSNR_MIN,
        metavar="DB",
        help="the LR's bound against the bicubic LR, before the codec (default: iarn's promise, %(default)g)",
    )
    parser.add_argument(
        "--refine",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help='refinement steps from the network\'s LR, through the codec: short for level "0+N"',
    )
    parser.add_argument(
        "--efforts",
        nargs="+",
        default=[],
        metavar="LEVEL",
        help='effort levels, a row each: "E", "E+N" (N refinement steps through the codec); default 0',
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    formats = {text: parse_lr_format(text) for text in args.formats}
    levels = args.efforts + [f"0+{steps}" if steps else "0" for steps in args.refine] or ["0"]
    results: dict = {}
    for folder in map(Path, args.data):
        results[folder.name] = {}
        for name in args.models:
            model = load(name, device=args.device, precision="fp32")
            for level in levels:
                chosen = effort_level(level)
                set_corrector(model, chosen)
                by_format = {
                    text: measure(model, folder, args.scales, fmt, args.lr_psnr_min, chosen.refine)
                    for text, fmt in formats.items()
                }
                row = name if level == "0" else f"{name}, effort {level}"
                results[folder.name][row] = by_format
                print(f"{folder.name} {row} done", flush=True)
    print(markdown(results), end="")
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))


if __name__ == "__main__":
    main()
