"""Argument types and the flag groups the commands share, each defined once.

Every type here validates its value where it enters (a malformed one is argparse's one-line
error, exit 2); nothing in this module imports torch, so `iarn --help` stays fast.
"""

from __future__ import annotations

import argparse
import math
from importlib import resources
from pathlib import Path

from .errors import CliError

SAMPLE_IMAGE = "kodim23.png"
MAX_ZOOM = 32  # compare's panel enlargement: a 256-pixel crop at x32 is already 8192 pixels a side
EVALUATE_EFFORT = 1  # evaluate: the corrector, no refinement, on every device (comparable tables)


def parse_size(text: str) -> tuple[int, int]:
    """ "800x533" (width x height) -> (533, 800) as (h, w)."""
    parts = text.lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"malformed size {text!r}: expected WIDTHxHEIGHT, e.g. 800x533") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be at least 1x1")
    return height, width


def parse_scale(text: str) -> tuple[float, float]:
    """ "2.7" -> (2.7, 2.7); "1.5,4" -> (1.5, 4) as (vertical, horizontal)."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"malformed scale {text!r}: expected S or SH,SW, e.g. 2.7 or 1.5,4")
    return (values[0], values[-1])


def parse_crop(text: str) -> tuple[int, int, int]:
    """ "120,80,128" (left, top, size) -> (top, left, size)."""
    try:
        left, top, size = (int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"malformed crop {text!r}: expected X,Y,SIZE, e.g. 120,80,128") from None
    if min(left, top) < 0 or size < 1:
        raise argparse.ArgumentTypeError(f"crop {text!r}: X and Y must be >= 0 and SIZE >= 1")
    return top, left, size


def tile_size(text: str) -> int:
    from ..geometry import MIN_TILE

    value = positive_int(text)
    if value < MIN_TILE:
        raise argparse.ArgumentTypeError(f"tiles must be at least {MIN_TILE} pixels, got {text!r}")
    return value


def device_name(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps (whether it exists is the device policy's to say)."""
    name = text.strip().lower()
    kind, _, index = name.partition(":")
    if name in ("auto", "cpu", "cuda", "mps") or (kind == "cuda" and index.isdigit()):
        return name
    raise argparse.ArgumentTypeError(f"unknown device {text!r}: expected auto, cpu, cuda, cuda:N or mps")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def whole_in_range(text: str, low: int, high: int, what: str) -> int:
    """A whole number from `low` to `high`, or argparse's one-line error naming `what`."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {what} from {low} to {high}, got {text!r}")
    return value


def refine_steps(text: str) -> int:
    from ..refine import MAX_REFINE_STEPS

    return whole_in_range(text, 0, MAX_REFINE_STEPS, "a whole number of steps")


def lr_psnr_bound(text: str) -> float:
    value = finite_float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected 0 (no bound) to 100 dB, got {text!r}")
    return value


def effort_level(text: str) -> int:
    from ..effort import EFFORTS

    return whole_in_range(text, min(EFFORTS), max(EFFORTS), "an effort")


LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")  # outputs --quality is for


def lossy_target(target, quality: int | None) -> bool:
    """Whether an LR written to `target` goes through a lossy codec (imageio.lossy_codec)."""
    from ..imageio import lossy_codec

    return lossy_codec(target, quality) is not None


def quality_level(text: str) -> int:
    return whole_in_range(text, 1, 100, "a JPEG or WebP quality")


def check_quality(quality: int | None, targets) -> None:
    """`--quality` only where every output is JPEG or WebP (a PNG has no quality: lossless)."""
    if quality is None:
        return
    others = [target for target in targets if Path(target).suffix.lower() not in LOSSY_SUFFIXES]
    if others:
        raise CliError(f"--quality is for JPEG and WebP outputs, and {others[0]} is not one (PNG is lossless)")


def zoom_factor(text: str) -> int:
    value = positive_int(text)
    if value > MAX_ZOOM:
        raise argparse.ArgumentTypeError(f"expected a zoom from 1 to {MAX_ZOOM}, got {text!r}")
    return value


def lr_format(text: str):
    from ..evaluate import parse_lr_format

    try:
        return parse_lr_format(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def target_flags(parser: argparse.ArgumentParser) -> None:
    """`-s/--scale S|SH,SW` or `--size WxH` (one of them): the LR's size."""
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("-s", "--scale", type=parse_scale, help="S, or SH,SW (vertical, horizontal)")
    target.add_argument("--size", type=parse_size, metavar="WxH", help="LR size in pixels")


def force_flag(parser: argparse.ArgumentParser, what: str = "existing outputs") -> None:
    parser.add_argument("--force", action="store_true", help=f"overwrite {what} (never an input)")


def weights_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--weights", metavar="PATH", help="a weight file (.safetensors)")
    group.add_argument("--model", metavar="NAME", help="a bundled model (default: default; `iarn info` lists them)")


def effort_help() -> str:
    from ..effort import CPU_EFFORT, GPU_EFFORT

    return (
        "how much to spend choosing the LR: 0 = the network's forward pass; 1 = and its learned "
        "corrector in 2 passes, above x2 a third on the 40%% of the LR with the largest error (2x to 2.5x "
        "the network's time); 2 = the corrector in 3 passes, the third kept where it helps (about 4x); "
        "3, 4, 5, 6 = the corrector in 4 passes and 5, 10, 30, 100 refinement steps "
        "(each about 3x the network's time; up to +2 dB; 6 rounds the LR two ways, 50 steps each, "
        "and keeps the better; "
        "a JPEG or lossy WebP output is refined through its codec). "
        f"Default {CPU_EFFORT} on a CPU, {GPU_EFFORT} on a CUDA GPU"
    )


def effort_flags(parser: argparse.ArgumentParser, default: int | None) -> None:
    parser.add_argument("-e", "--effort", type=effort_level, default=default, metavar="0-6", help=effort_help())
    parser.add_argument(
        "--refine",
        type=refine_steps,
        metavar="N",
        help="exactly N refinement steps, whatever the effort (0: none)",
    )
    parser.add_argument(
        "--refine-lr-psnr",
        type=lr_psnr_bound,
        default=44.0,
        metavar="DB",
        help="hold the LR's PSNR-Y against a bicubic downscale at DB or more, at every effort "
        "(0: no bound; default %(default)g, iarn's promise that an LR looks like a plain downscale)",
    )
    parser.add_argument(
        "--refine-loss",
        default="y",
        choices=["rgb", "y"],
        help="what refinement minimises: y = luma-weighted error (what PSNR-Y scores), rgb (default y)",
    )


def refine_config(args, model):
    """The RefineConfig of `--effort`, `--refine` and the `--refine-*` flags; switches `model`'s
    corrector on or off as the effort says."""
    from ..effort import plan, set_corrector
    from ..refine import RefineConfig

    if model is None:  # evaluate --bicubic-only
        return RefineConfig(steps=0)
    chosen = plan(args.effort, args.refine, model.device)
    set_corrector(model, chosen)
    return chosen.refine_config(lr_psnr_min=args.refine_lr_psnr, loss=args.refine_loss)


def model_flags(parser: argparse.ArgumentParser, precision: str = "auto") -> None:
    weights_flags(parser)
    parser.add_argument(
        "--device",
        default="auto",
        type=device_name,
        metavar="DEV",
        help="auto, cpu, cuda, cuda:N or mps (default auto)",
    )
    parser.add_argument(
        "--tile", type=tile_size, metavar="N", help="tile with cores of N HR pixels, N >= 32 (default: automatic)"
    )
    parser.add_argument(
        "--precision",
        default=precision,
        choices=["auto", "fp32", "bf16", "fp16"],
        help="dtype of the network's subnets; auto: bf16 on CUDA GPUs from Ampere on, else fp32 "
        "(refinement steps always run in fp32; default %(default)s)",
    )
    parser.add_argument("--allow-huge", action="store_true", help="read images above Pillow's decompression-bomb limit")


def png_level_flag(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--png-level",
        type=int,
        choices=range(10),
        default=default,
        metavar="0-9",
        help="zlib level of PNG outputs: higher is smaller and slower (default %(default)s)",
    )


def load_model(args, lossy: bool = False):
    """The model `--weights`/`--model` name; when neither is given, `default`, or for LRs that go
    through a lossy codec (`lossy`) the bundled JPEG-trained model where this install has it."""
    from ..rescaler import load
    from ..weights import lossy_model_name

    name = args.weights or args.model or (lossy_model_name() if lossy else None)
    try:
        return load(name, device=args.device, precision=args.precision)
    except RuntimeError as error:
        raise CliError(str(error)) from None


def sample_image_path() -> Path:
    return Path(str(resources.files("iarn") / "samples" / SAMPLE_IMAGE))
