"""`iarn upscale`: LR PNGs made by iarn -> restored HR images, with the model that made them."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from ..files import PNG_LEVEL_RESTORED
from .args import force_flag, load_model, model_flags, parse_size, png_level_flag
from .batch import check_target, plan_jobs, run_batch
from .errors import CliError


def add_parser(commands) -> None:
    up = commands.add_parser("upscale", help="LR PNGs made by iarn -> restored HR images")
    up.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders (recursive)")
    up.add_argument("-o", "--output", required=True, metavar="OUT", help="output file, or folder for several")
    up.add_argument(
        "--size",
        type=parse_size,
        metavar="WxH",
        help="HR size (default: read from the LR file iarn wrote: PNG, WebP or JPEG)",
    )
    up.add_argument("--ext", default="png", choices=["png", "webp", "jpg", "tif"], help="output format (default png)")
    up.add_argument("--seed", type=int, help="sample z with this seed (split, naive, middle models) instead of z = 0")
    force_flag(up)
    png_level_flag(up, PNG_LEVEL_RESTORED)
    model_flags(up)


def upscaler_for(args, given_model):
    """A function (picture, source) -> the runner to upscale it with: when no model is given, the
    model its file records if that one is bundled, or for a lossy file that records none (a
    platform stripped it) the bundled JPEG-trained model; else `given_model`, with a warning when
    the file records another model (its LR then upscales only like a foreign image)."""
    from ..rescaler import load
    from ..weights import bundled_by_id, lossy_model_name, same_upscaler

    given = args.weights or args.model
    others: dict[str, object] = {}
    lock = threading.Lock()

    def bundled(name: str):
        with lock:
            if name not in others:
                others[name] = load(name, device=args.device, precision=args.precision)
        return others[name]

    def pick(picture, source: Path):
        recorded = picture.model_id
        if recorded is None and picture.lossy and given is None and lossy_model_name() is not None:
            return bundled(lossy_model_name())
        if recorded is None or given_model.model_id is None:
            return given_model
        if same_upscaler(recorded, given_model.model_id, given_model.path):
            return given_model
        name = bundled_by_id(recorded) if given is None else None
        if name is not None:
            return bundled(name)
        unknown = "" if given is not None else ", which this install does not have"
        print(
            f"iarn: warning: {source} was made by {recorded}{unknown}; upscaling it with "
            f"{given_model.model_id} restores only what an interpolator would (pass the weights that made it)",
            file=sys.stderr,
        )
        return given_model

    return pick


def run(args) -> int:
    from ..api import upscale_picture
    from ..geometry import check_upscale_size
    from ..imageio import read_picture, write_picture
    from ..weights import trained_codec

    jobs = plan_jobs(args.inputs, args.output, "." + args.ext)
    pick = upscaler_for(args, load_model(args))
    warned = threading.Event()

    def read(source: Path, target: Path):
        check_target(source, target, args.force)
        picture = read_picture(source, allow_huge=args.allow_huge)
        size = args.size or picture.hr_size
        if size is None:
            raise CliError(f"{source}: no original size given (--size WxH) and none recorded in the file")
        model = pick(picture, source)
        banded = model.network.upscaler_for(picture.jpeg_quality) is not model.network
        if picture.lossy and trained_codec(model.path) is None and not banded and not warned.is_set():
            warned.set()
            print(
                f"iarn: warning: {source}: {picture.lossy}, so the detail hidden in the LR is partly lost "
                "(several dB); keep LR files as the PNGs iarn writes, or make lossy ones with the bundled "
                "`jpeg` model" + (" (said once)" if len(jobs) > 1 else ""),
                file=sys.stderr,
            )
        if args.size is None:
            try:
                check_upscale_size(size, picture.size, model.config.max_scale)
            except ValueError:
                raise CliError(
                    f"{source}: the size recorded in the file ({size[1]}x{size[0]}) is not plausible for this "
                    f"{picture.size[1]}x{picture.size[0]} image (edited or damaged?); pass --size WxH"
                ) from None
        return picture, size, model

    def compute(item):
        picture, size, model = item
        return upscale_picture(model, picture, size, tile=args.tile, seed=args.seed)

    def write(hr, target: Path) -> None:
        write_picture(hr, target, png_level=args.png_level, overwrite=args.force)

    return 1 if run_batch(jobs, read, compute, write) else 0
