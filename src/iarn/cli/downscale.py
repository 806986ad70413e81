"""`iarn downscale`: HR images -> LR PNGs that carry the lost detail."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from ..files import PNG_LEVEL
from .args import (
    LOSSY_SUFFIXES,
    check_quality,
    effort_flags,
    force_flag,
    load_model,
    lossy_target,
    model_flags,
    png_level_flag,
    quality_level,
    refine_config,
    target_flags,
)
from .batch import check_target, plan_jobs, run_batch, step_progress


def add_parser(commands) -> None:
    down = commands.add_parser("downscale", help="HR images -> LR PNGs that carry the lost detail")
    down.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders (recursive)")
    down.add_argument("-o", "--output", required=True, metavar="OUT", help="output file, or folder for several")
    target_flags(down)
    force_flag(down)
    effort_flags(down, None)
    png_level_flag(down, PNG_LEVEL)
    down.add_argument(
        "--quality",
        type=quality_level,
        metavar="1-100",
        help="for a JPEG or WebP output (-o small.jpg): its quality (JPEG default 95; WebP default lossless). "
        "A JPEG or lossy WebP LR is made by the bundled `jpeg` model, trained with JPEG between "
        'its two directions, unless --model or --weights names another (docs/results.md, "JPEG")',
    )
    model_flags(down)


def run(args) -> int:
    from ..api import downscale_picture
    from ..geometry import target_size
    from ..imageio import lossy_codec, read_picture, write_picture
    from ..weights import trained_codec

    jobs = plan_jobs(args.inputs, args.output, ".png")
    check_quality(args.quality, [target for _, target in jobs])
    lossy = all(lossy_target(target, args.quality) for _, target in jobs)
    model = load_model(args, lossy=lossy)
    trained_lossy = trained_codec(model.path) is not None
    if args.scale is not None:
        from ..geometry import check_scale

        check_scale(args.scale, model.config.max_scale)

    refine = refine_config(args, model)
    progress = step_progress(refine.steps, single=len(jobs) == 1)

    def read(source: Path, target: Path):
        check_target(source, target, args.force)
        picture = read_picture(source, allow_huge=args.allow_huge)
        if len(jobs) == 1 and sys.stderr.isatty():  # a batch has its bar; one large image says it started
            height, width = picture.size
            print(f"downscaling {source} ({width}x{height}) ...", file=sys.stderr, flush=True)
        return picture, lossy_codec(target, args.quality)

    def compute(item):
        picture, codec = item
        lr_size = target_size(picture.size, model.config.max_scale, size=args.size, scale=args.scale)
        steps = dataclasses.replace(refine, codec=codec)  # refined for what the file will hold
        lr = downscale_picture(model, picture, size=lr_size, tile=args.tile, refine=steps, progress=progress)
        return lr, picture.size

    def write(result, target: Path) -> None:
        lr, hr_size = result
        suffix = target.suffix.lower()
        if lossy_target(target, args.quality) and not trained_lossy:
            print(
                f"iarn: note: {target} is lossy and {model.model_id} was trained for lossless LRs: the detail "
                "hidden in it is partly lost (the bundled `jpeg` model is made for lossy LRs)",
                file=sys.stderr,
            )
        elif suffix not in LOSSY_SUFFIXES + (".png",):
            print(
                f"iarn: note: {target} is not PNG: upscaling it will need --size and may lose fidelity", file=sys.stderr
            )
        write_picture(
            lr,
            target,
            hr_size=hr_size,
            png_level=args.png_level,
            model_id=model.model_id,
            overwrite=args.force,
            refine=refine.steps,
            quality=args.quality,
        )

    return 1 if run_batch(jobs, read, compute, write) else 0
