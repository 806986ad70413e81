"""HR PSNR-Y against the number of refinement steps N (issue 24): a table and a plot.

    python benchmarks/refine_curve.py --data ../shared/data/benchmark/Set5 --scales 2 4 \
        --steps 0 5 10 30 100 --json runs/refine_curve.json --plot docs/refine_curve.png
    python benchmarks/refine_curve.py --from-json runs/refine_curve.json --plot docs/refine_curve.png

Each N is one `iarn.evaluate.evaluate` run of the bundled (or `--weights`) model on the folders
(fp32, the protocol's PSNR-Y, LR PSNR-Y against the bicubic LR), timed: the seconds each N adds
over N = 0, per HR megapixel, are refinement's cost (meaningful only on an otherwise idle
machine). `--from-json` re-plots and re-prints saved results; `--json` of a run with more N or
scales merges into the file it names. `--step-size` and `--momentum` set the refinement's step
(the tuning in docs/history.md, "Refinement"), `--rounding every-step` the rule before
progressive rounding (history.md, "Progressive rounding"): give each setting a `--json` file of
its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from iarn import Rescaler
from iarn.cli import parse_scale
from iarn.evaluate import evaluate, scale_label
from iarn.files import atomic_write, find_images
from iarn.imageio import read_picture
from iarn.refine import ROUNDINGS, RefineConfig
from iarn.weights import load_weights, resolve_weights


def save(path: Path, results: dict) -> None:
    """Merge `results` into the JSON file at `path` (atomically; the file may not exist yet)."""
    old = json.loads(path.read_text()) if path.exists() else {}
    text = json.dumps(merge(old, results), indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def measure(args) -> dict:
    """{dataset: {scale: {N: {"psnr_y", "lr_psnr_y", "seconds", "megapixels"}}}}.

    With `--json`, each cell is merged into that file as soon as it is measured, so a run that is
    stopped keeps what it has finished.
    """
    model = Rescaler(load_weights(resolve_weights(args.weights)), args.device)
    chosen = {"step_size": args.step_size, "momentum": args.momentum, "rounding": args.rounding}
    settings = {name: value for name, value in chosen.items() if value is not None}  # else RefineConfig's
    results: dict = {}
    for folder in args.data:
        megapixels = sum(read_picture(p).size[0] * read_picture(p).size[1] for p in find_images([Path(folder)]))
        for scale in args.scales:
            for steps in args.steps:
                start = time.perf_counter()
                refine = RefineConfig(steps=steps, **settings)
                table = evaluate(model, [folder], [scale], progress=False, refine=refine)
                seconds = time.perf_counter() - start
                (name,) = table
                row = table[name][scale_label(scale)]["iarn"]
                entry = {"psnr_y": row["psnr_y"], "lr_psnr_y": row["lr_psnr_y"], "seconds": seconds}
                entry["megapixels"] = megapixels / 1e6
                results.setdefault(name, {}).setdefault(scale_label(scale), {})[str(steps)] = entry
                if args.json:
                    save(args.json, {name: {scale_label(scale): {str(steps): entry}}})
                print(
                    f"{name} {scale_label(scale)} N={steps}: {row['psnr_y']:.2f} dB, "
                    f"LR {row['lr_psnr_y']:.2f} dB ({seconds:.0f} s)",
                    flush=True,
                )
    return results


def merge(old: dict, new: dict) -> dict:
    for name, scales in new.items():
        for scale, by_steps in scales.items():
            old.setdefault(name, {}).setdefault(scale, {}).update(by_steps)
    return old


def markdown(results: dict) -> str:
    lines = ["| set | scale | N | PSNR-Y | gain over N=0 | LR PSNR-Y | added s/MP |", "|---|---|---|---|---|---|---|"]
    for name, scales in results.items():
        for scale, by_steps in scales.items():
            base = by_steps.get("0")
            for steps in sorted(by_steps, key=int):
                entry = by_steps[steps]
                gain = f"{entry['psnr_y'] - base['psnr_y']:+.2f}" if base else "-"
                cost = f"{(entry['seconds'] - base['seconds']) / entry['megapixels']:.0f}" if base else "-"
                psnr, lr_psnr = f"{entry['psnr_y']:.2f}", f"{entry['lr_psnr_y']:.2f}"
                lines.append(f"| {name} | {scale} | {steps} | {psnr} | {gain} | {lr_psnr} | {cost} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, scales in results.items():
        for scale, by_steps in scales.items():
            steps = sorted(by_steps, key=int)
            base = by_steps[steps[0]]["psnr_y"]
            gains = [by_steps[n]["psnr_y"] - base for n in steps]
            ax.plot([int(n) for n in steps], gains, "-o", label=f"{name} {scale}")
    ax.set_xscale("symlog", linthresh=5)
    ax.set_xlabel("refinement steps N (--refine N)")
    ax.set_ylabel("PSNR-Y gain over the fewest N (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=[])
    parser.add_argument("--scales", nargs="+", type=parse_scale, default=[(2.0, 2.0), (4.0, 4.0)])
    parser.add_argument("--steps", nargs="+", type=int, default=[0, 5, 10, 30, 100])
    parser.add_argument("--weights", default="default")
    parser.add_argument("--step-size", type=float, help="RefineConfig.step_size (default: its default)")
    parser.add_argument("--momentum", type=float, help="RefineConfig.momentum (default: its default)")
    parser.add_argument("--rounding", choices=ROUNDINGS, help="RefineConfig.rounding (default: its default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--from-json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (before the measurements, not after)
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'iarn[plot]'")
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    elif args.data:
        results = measure(args)
        if args.json:
            results = json.loads(args.json.read_text())
    else:
        parser.error("give --data or --from-json")
    print(markdown(results), end="")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
