"""Does a faster inference path keep quality? PSNR-Y on Set5 against fp32 eager, every scale.

    python benchmarks/quality_gate.py                          # bundled default, bf16 and fp16
    python benchmarks/quality_gate.py --weights runs/x/weights.safetensors --data DIR

Runs the `iarn evaluate` protocol (docs/design.md section 5) on one dataset for fp32 weights
(unaligned channels: the plain convolutions) and for each variant, written as in
benchmarks/infer.py (`bf16`, `fp16`: the subnets' weights in that dtype, the invertible
arithmetic in fp32; `tile-N`: forced tiling; `channels_last`; options joined with `+`), then
prints per scale the variant's HR and LR PSNR-Y and its difference to fp32. The gate for making
a variant a default is max |delta HR PSNR-Y| <= 0.05 dB.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from iarn.evaluate import PROTOCOL_SCALES, evaluate
from infer import build_model  # beside this script

GATE_DB = 0.05
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmark" / "Set5"


def run(weights: str, variant: str, data: Path, scales, device: str) -> dict:
    model, tile = build_model(weights, variant, device)
    return evaluate(model, [data], scales, progress=False, tile=tile)[data.name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="default", help="weight file or bundled name (default: default)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of HR images (default: Set5)")
    parser.add_argument(
        "--variants", nargs="+", default=["bf16", "fp16"], help="as in infer.py, e.g. bf16+channels_last"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    scales = list(PROTOCOL_SCALES)
    reference = run(args.weights, "fp32+unaligned", args.data, scales, args.device)
    print(f"weights {args.weights}, data {args.data.name}, device {args.device}; PSNR-Y dB, delta against fp32")
    print("| variant | scale | HR PSNR-Y fp32 | HR PSNR-Y | delta | LR PSNR-Y fp32 | LR PSNR-Y | delta |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in args.variants:
        results = run(args.weights, variant, args.data, scales, args.device)
        worst = 0.0
        for label, row in results.items():
            ours, ref = row["iarn"], reference[label]["iarn"]
            delta_hr = ours["psnr_y"] - ref["psnr_y"]
            delta_lr = ours["lr_psnr_y"] - ref["lr_psnr_y"]
            worst = max(worst, abs(delta_hr))
            print(
                f"| {variant} | {label} | {ref['psnr_y']:.3f} | {ours['psnr_y']:.3f} | {delta_hr:+.3f} "
                f"| {ref['lr_psnr_y']:.2f} | {ours['lr_psnr_y']:.2f} | {delta_lr:+.2f} |"
            )
        verdict = "passes" if worst <= GATE_DB else "FAILS"
        print(f"| {variant} | max abs delta HR | | | {worst:.3f} dB: {verdict} the {GATE_DB} dB gate | | | |")


if __name__ == "__main__":
    main()
