"""`iarn evaluate`: PSNR/SSIM tables per dataset and scale (docs/design.md section 5)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .args import (
    EVALUATE_EFFORT,
    effort_flags,
    force_flag,
    load_model,
    lr_format,
    model_flags,
    parse_scale,
    refine_config,
)
from .batch import identity
from .errors import CliError, one_line


def add_parser(commands) -> None:
    ev = commands.add_parser("evaluate", help="PSNR/SSIM tables per dataset and scale (docs/design.md section 5)")
    ev.add_argument("--data", nargs="+", required=True, metavar="DIR", help="folders of HR images")
    ev.add_argument(
        "--scales",
        nargs="+",
        type=parse_scale,
        metavar="S",
        help="scales, each S or SH,SW as in downscale (default: the protocol's 1.5 2 2.5 3 3.5 4 "
        "1.5,4 1.5,3.5 1.6,3.05 4,2)",
    )
    ev.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ev.add_argument("--markdown", metavar="FILE", help="write the table as markdown (it is printed anyway)")
    ev.add_argument("--plot", metavar="FILE.png", help="plot PSNR-Y against scale (needs matplotlib)")
    ev.add_argument("--bicubic-only", action="store_true", help="only the bicubic rows; no model")
    ev.add_argument(
        "--lr-format",
        type=lr_format,
        metavar="FMT",
        help="send both LRs through a lossy codec before the upscale: jpeg:Q or webp:Q (default png: lossless); "
        "the model is then the bundled `jpeg` one unless --model or --weights names another",
    )
    force_flag(ev, "existing --json, --markdown and --plot files")
    effort_flags(ev, EVALUATE_EFFORT)
    model_flags(ev, precision="fp32")


def evaluate_outputs(args) -> dict[str, Path]:
    """evaluate's output files by kind, checked as every output is before any work: never an
    image it reads, not one another, not an existing file without --force, in a writable folder."""
    from ..files import find_images

    outputs = {
        kind: Path(path)
        for kind, path in (("markdown", args.markdown), ("json", args.json), ("plot", args.plot))
        if path
    }
    inputs = {identity(image) for folder in args.data for image in find_images([Path(folder)])}
    seen: dict = {}
    for kind, output in outputs.items():
        key = identity(output)
        if key in inputs:
            raise CliError(f"{output}: is one of the images evaluated; iarn never overwrites an input")
        if key in seen:
            raise CliError(f"--{seen[key]} and --{kind} name the same file {output}")
        seen[key] = kind
        if not output.resolve().parent.is_dir():
            raise CliError(f"{output}: its folder does not exist")
        if output.is_dir():
            raise CliError(f"{output}: is a folder")
        if output.exists() and not args.force:
            raise CliError(f"{output}: exists; pass --force to overwrite")
        if not os.access(output.resolve().parent, os.W_OK):  # before the evaluation, not after
            raise CliError(f"{output}: its folder is not writable")
    return outputs


def run(args) -> int:
    from ..evaluate import PROTOCOL_SCALES, evaluate, markdown_table, plot, write_json
    from ..files import TargetExists, atomic_write
    from ..geometry import check_scale

    scales = list(dict.fromkeys(args.scales or PROTOCOL_SCALES))  # each scale once, in the order given
    if any(value < 1 for scale in scales for value in scale):
        raise CliError("scales must be >= 1 (a downscale); got " + " ".join(f"{h:g},{w:g}" for h, w in scales))
    for folder in args.data:
        if not Path(folder).is_dir():
            raise CliError(f"{folder}: no such folder")
    outputs = evaluate_outputs(args)
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (checked before hours of evaluation, not after)
        except ImportError:
            raise CliError("--plot needs matplotlib: pip install 'iarn[plot]'") from None
    model = None if args.bicubic_only else load_model(args, lossy=args.lr_format is not None)
    if model is not None:
        for scale in scales:
            check_scale(scale, model.config.max_scale)
    bad: list = []

    def on_bad_image(error) -> None:
        bad.append(error)
        print(f"iarn: error: {one_line(error, escape=True)} (left out)", file=sys.stderr)

    results = evaluate(
        model,
        args.data,
        scales,
        progress=sys.stderr.isatty(),
        tile=args.tile,
        allow_huge=args.allow_huge,
        refine=refine_config(args, model),
        on_bad_image=on_bad_image,
        lr_format=args.lr_format,
    )
    table = markdown_table(results)
    print(table, end="")
    writers = {
        "markdown": lambda path: atomic_write(path, lambda tmp: Path(tmp).write_text(table), replace=args.force),
        "json": lambda path: write_json(results, path, replace=args.force),
        "plot": lambda path: plot(results, path, replace=args.force),
    }
    for kind, path in outputs.items():
        try:
            writers[kind](path)
        except TargetExists:
            raise CliError(
                f"{path}: exists (written by another process meanwhile?); pass --force to overwrite"
            ) from None
        except OSError as error:
            raise CliError(f"{path}: cannot write it ({error.strerror or error})") from None
    if bad:
        print(f"iarn: error: {len(bad)} image(s) could not be read and are not in the table", file=sys.stderr)
        return 1
    return 0
