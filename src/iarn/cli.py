"""The `iarn` command line: downscale, upscale, roundtrip, compare, info, export, train, evaluate.

Every user error ends in one line `iarn: error: ...` on stderr and a non-zero exit (2 for
malformed arguments, 1 otherwise); no traceback, no partial output file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import NoReturn

from .files import IMAGE_SUFFIXES, PNG_LEVEL, PNG_LEVEL_RESTORED, settle

SAMPLE_IMAGE = "kodim23.png"


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"iarn: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


# -- argument parsing helpers ----------------------------------------------------------------


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
    from .geometry import MIN_TILE

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


def refine_steps(text: str) -> int:
    from .refine import MAX_REFINE_STEPS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps, got {text!r}") from None
    if not 0 <= value <= MAX_REFINE_STEPS:
        raise argparse.ArgumentTypeError(f"expected 0 to {MAX_REFINE_STEPS} steps, got {text!r}")
    return value


def lr_psnr_bound(text: str) -> float:
    value = finite_float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected 0 (no bound) to 100 dB, got {text!r}")
    return value


def effort_level(text: str) -> int:
    from .effort import EFFORTS

    try:
        value = int(text)
    except ValueError:
        value = -1
    if value not in EFFORTS:
        raise argparse.ArgumentTypeError(f"expected an effort from 0 to {max(EFFORTS)}, got {text!r}")
    return value


def _effort_help() -> str:
    from .effort import CPU_EFFORT, GPU_EFFORT

    return (
        "how much to spend choosing the LR: 0 = the network's forward pass; 1 = and its learned "
        "corrector (about the network's time again); 2, 3, 4, 5, 6 = and 2, 5, 10, 30, 100 "
        "refinement steps (each about 3x the network's time; +0.3 to +3 dB). "
        f"Default {CPU_EFFORT} on a CPU, {GPU_EFFORT} on a CUDA GPU"
    )


def _refine_flags(parser: argparse.ArgumentParser, default: int | None) -> None:
    parser.add_argument("-e", "--effort", type=effort_level, default=default, metavar="0-6", help=_effort_help())
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
        help="while refining, keep the LR's PSNR-Y against a bicubic downscale at DB or more "
        "(0: no bound; default %(default)g)",
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
    from .effort import plan
    from .refine import RefineConfig

    if model is None:  # evaluate --bicubic-only
        return RefineConfig(steps=0)
    chosen = plan(args.effort, args.refine, model.device)
    model.correct = chosen.corrector
    return RefineConfig(steps=chosen.refine, lr_psnr_min=args.refine_lr_psnr, loss=args.refine_loss)


CPU_EFFORT_FOR_TABLES = 1  # evaluate: the corrector, no refinement, on every device (comparable tables)
MAX_ZOOM = 32  # compare's panel enlargement: a 256-pixel crop at x32 is already 8192 pixels a side


def zoom_factor(text: str) -> int:
    value = positive_int(text)
    if value > MAX_ZOOM:
        raise argparse.ArgumentTypeError(f"expected a zoom from 1 to {MAX_ZOOM}, got {text!r}")
    return value


def _common(parser: argparse.ArgumentParser, precision: str = "auto") -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--weights", metavar="PATH", help="a weight file (.safetensors)")
    group.add_argument("--model", metavar="NAME", help="a bundled model (default: default; `iarn info` lists them)")
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


def _png_level(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--png-level",
        type=int,
        choices=range(10),
        default=default,
        metavar="0-9",
        help="zlib level of PNG outputs: higher is smaller and slower (default %(default)s)",
    )


def build_parser(train_flags: bool = True) -> argparse.ArgumentParser:
    """The whole command line; `train_flags=False` leaves out `train`'s flags (they come from
    the training config, whose import brings torch), so `iarn --help` and `--version` stay fast."""
    from . import __version__

    parser = _Parser(prog="iarn", description="Invertible arbitrary-scale image rescaling (IARN).")
    parser.add_argument("--version", action="version", version=f"iarn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    down = commands.add_parser("downscale", help="HR images -> LR PNGs that carry the lost detail")
    down.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders (recursive)")
    down.add_argument("-o", "--output", required=True, metavar="OUT", help="output file, or folder for several")
    target = down.add_mutually_exclusive_group(required=True)
    target.add_argument("-s", "--scale", type=parse_scale, help="S, or SH,SW (vertical, horizontal)")
    target.add_argument("--size", type=parse_size, metavar="WxH", help="LR size in pixels")
    down.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _refine_flags(down, None)
    _png_level(down, PNG_LEVEL)
    _common(down)

    up = commands.add_parser("upscale", help="LR PNGs made by iarn -> restored HR images")
    up.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders (recursive)")
    up.add_argument("-o", "--output", required=True, metavar="OUT", help="output file, or folder for several")
    up.add_argument("--size", type=parse_size, metavar="WxH", help="HR size (default: read from the LR PNG)")
    up.add_argument("--ext", default="png", choices=["png", "webp", "jpg", "tif"], help="output format (default png)")
    up.add_argument("--seed", type=int, help="sample z with this seed (split, naive, middle models) instead of z = 0")
    up.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _png_level(up, PNG_LEVEL_RESTORED)
    _common(up)

    trip = commands.add_parser("roundtrip", help="down- and upscale in memory; print PSNR-Y against bicubic")
    trip.add_argument("input", nargs="?", metavar="IN", help="an image (default: the bundled sample)")
    target = trip.add_mutually_exclusive_group(required=True)
    target.add_argument("-s", "--scale", type=parse_scale, help="S, or SH,SW (vertical, horizontal)")
    target.add_argument("--size", type=parse_size, metavar="WxH", help="LR size in pixels")
    trip.add_argument("--save", metavar="DIR", help="also write lr.png and restored.png there")
    trip.add_argument("--force", action="store_true", help="overwrite lr.png and restored.png in --save")
    _refine_flags(trip, None)
    _common(trip)

    compare = commands.add_parser("compare", help="a figure: one crop as HR / bicubic / iarn / iarn's LR")
    compare.add_argument("input", nargs="?", metavar="IN", help="an image (default: the bundled sample)")
    target = compare.add_mutually_exclusive_group(required=True)
    target.add_argument("-s", "--scale", type=parse_scale, help="S, or SH,SW (vertical, horizontal)")
    target.add_argument("--size", type=parse_size, metavar="WxH", help="LR size in pixels")
    compare.add_argument("-o", "--output", required=True, metavar="OUT.png", help="the figure (PNG)")
    compare.add_argument("--crop", type=parse_crop, metavar="X,Y,SIZE", help="HR square (default: most detailed)")
    compare.add_argument(
        "--zoom", type=zoom_factor, default=2, help=f"panel enlargement, 1 to {MAX_ZOOM} (default %(default)s)"
    )
    compare.add_argument("--force", action="store_true", help="overwrite an existing output")
    _refine_flags(compare, None)
    _common(compare)

    commands.add_parser("info", help="version, devices and bundled models")

    export = commands.add_parser("export", help="ONNX graphs of a model's downscale and upscale (any image size)")
    export.add_argument(
        "--onnx", required=True, metavar="NAME", help="writes NAME-downscale.onnx and NAME-upscale.onnx"
    )
    export.add_argument("--force", action="store_true", help="overwrite existing files")
    group = export.add_mutually_exclusive_group()
    group.add_argument("--weights", metavar="PATH", help="a weight file (.safetensors)")
    group.add_argument("--model", metavar="NAME", help="a bundled model (default: default)")

    train = commands.add_parser("train", help="train a model on a folder of images")
    if train_flags:
        _train_arguments(train)

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
    ev.add_argument("--force", action="store_true", help="overwrite existing --json, --markdown and --plot files")
    _refine_flags(ev, CPU_EFFORT_FOR_TABLES)
    _common(ev, precision="fp32")
    return parser


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from .model import ModelConfig
    from .train import SHIPPED_MODEL, TrainConfig

    parser.add_argument("--config", metavar="FILE", help="YAML or JSON with TrainConfig fields (flags override)")
    parser.add_argument("--resume", metavar="auto|PATH", help="continue a run: auto = OUT/checkpoint.pt if present")
    parser.add_argument("--init-from", metavar="WEIGHTS", help="start from these weights (fine-tuning)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--stop-at", type=positive_int, metavar="STEP", help="end this invocation at STEP (resumable)")
    parser.add_argument(
        "--max-minutes", type=positive_float, metavar="M", help="end this invocation after M minutes (resumable)"
    )
    parser.add_argument(
        "--fit-steps",
        action="store_true",
        help="size the schedule to --max-minutes from the measured step rate (--steps: the most)",
    )
    for cls in (TrainConfig, ModelConfig):
        for f in dataclasses.fields(cls):
            if f.name == "model":
                continue
            shown = getattr(SHIPPED_MODEL, f.name) if cls is ModelConfig else f.default
            flag = "--" + f.name.replace("_", "-")
            if f.name == "data":
                parser.add_argument(flag, nargs="+", metavar="DIR", default=None, help="folders of HR images")
            elif f.type in ("bool", bool):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
            else:
                kind = {"int": int, "float": finite_float}.get(str(f.type), str)
                parser.add_argument(flag, type=kind, default=None, help=f"(default {shown})")


# -- jobs: which input goes to which output -------------------------------------------------


def _collect(inputs: list[str], output: str, suffix: str) -> list[tuple[Path, Path]]:
    """Plan every (input, output) pair of a batch before anything is written.

    One input file and an output that is not a folder: that file (`suffix` added when it has
    none). Otherwise the output is a folder mirroring the inputs' paths, with `suffix`. Refused
    up front, naming the files: two inputs that map to one output, an output that is one of the
    inputs, and a file-like output (`small.png`) for several inputs.
    """
    from .files import find_images

    sources: list[tuple[Path, Path]] = []  # (file, path relative to the output folder)
    for item in map(Path, inputs):
        if item.is_dir():
            files = find_images([item])
            if not files:
                raise CliError(f"{item}: folder holds no images")
            sources += [(p, p.relative_to(item)) for p in files]
        elif item.exists():
            sources.append((item, Path(item.name)))
        else:
            raise CliError(f"{item}: no such file or folder")
    out = Path(output)
    single_file = len(sources) == 1 and not Path(inputs[0]).is_dir() and not out.is_dir() and not output.endswith("/")
    if not single_file and not out.is_dir() and out.suffix.lower() in IMAGE_SUFFIXES:
        raise CliError(f"-o {output} names a file, but there are {len(sources)} inputs: give a folder")
    if not single_file and out.exists() and not out.is_dir():
        raise CliError(f"-o {output}: exists and is not a folder")
    jobs = []
    for source, relative in sources:
        target = (
            (out if out.suffix else out.with_suffix(suffix)) if single_file else (out / relative).with_suffix(suffix)
        )
        jobs.append((source, target))
    if single_file:
        from PIL import Image

        if jobs[0][1].suffix.lower() not in Image.registered_extensions():
            raise CliError(f"-o {output}: unknown image file extension {jobs[0][1].suffix!r}; use {suffix}")
    inputs_by_path = {_identity(source): source for source, _ in jobs}
    planned: dict = {}
    for source, target in jobs:
        key = _identity(target)
        if key in planned:
            raise CliError(f"{planned[key]} and {source} would both be written to {target}; give them separate folders")
        planned[key] = source
        if key in inputs_by_path and inputs_by_path[key] == source:
            raise CliError(f"{target}: is the input itself; iarn never overwrites an input")
        if key in inputs_by_path:
            raise CliError(f"{source} would be written over the input {target}; iarn never overwrites an input")
    return jobs


def _identity(path: Path):
    """A key equal for two paths of one file (links, `..`, case on case-insensitive disks)."""
    if path.exists():
        stat = path.stat()
        return (stat.st_dev, stat.st_ino)
    return os.path.normcase(os.path.abspath(path))


def _check_target(source: Path, target: Path, force: bool) -> None:
    if target.exists() and (target.resolve() == source.resolve() or os.path.samefile(target, source)):
        raise CliError(f"{target}: is the input itself; iarn never overwrites an input")
    if target.exists() and not force:
        raise CliError(f"{target}: exists; pass --force to overwrite")
    if target.is_dir():
        raise CliError(f"{target}: is a folder")


def _load_model(args):
    from .rescaler import load

    name = args.weights or args.model
    try:
        return load(name, device=args.device, precision=args.precision)
    except RuntimeError as error:
        raise CliError(str(error)) from None


def _run_batch(jobs, read, compute, write) -> int:
    """Per job (source, target): `read(source, target)`, `compute(item)`, `write(result, target)`.

    A pipeline: the next image is decoded and the previous result encoded in worker threads
    while the model runs (Pillow and zlib release the GIL), one of each at a time. A failed job
    is reported as one line and the batch goes on; returns the number of failures."""
    from concurrent.futures import ThreadPoolExecutor

    from .imageio import ImageError

    failures = 0
    bar = None
    if len(jobs) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="img", dynamic_ncols=True, file=sys.stderr)

    def attempt(call, *arguments):
        nonlocal failures
        try:
            return call(*arguments)
        except (CliError, ImageError, ValueError, OSError) as error:
            failures += 1
            if isinstance(error, OSError) and error.strerror:
                reason = f"{error.filename}: {error.strerror}".replace("\n", "\\n")
            else:
                reason = _one_line(error, escape=isinstance(error, (CliError, ImageError)))
            (print if bar is None else bar.write)(f"iarn: error: {reason}", file=sys.stderr)
            return None

    def finish(writing) -> None:
        if writing is not None:
            attempt(writing.result)
            if bar is not None:
                bar.update(1)

    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        reading = reader.submit(read, *jobs[0]) if jobs else None
        writing = None
        for index, (_, target) in enumerate(jobs):
            item = attempt(reading.result)
            if index + 1 < len(jobs):
                reading = reader.submit(read, *jobs[index + 1])
            result = None if item is None else attempt(compute, item)
            finish(writing)
            writing = None
            if result is not None:
                writing = writer.submit(write, result, target)
            elif bar is not None:
                bar.update(1)
        finish(writing)
    if bar is not None:
        bar.close()
    return failures


# -- commands ---------------------------------------------------------------------------------


def _step_progress(steps: int, single: bool = True):
    """A progress callback for refinement: a bar of steps on a terminal, for one image (a batch
    shows its bar of images instead); None otherwise."""
    if steps == 0 or not single or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bars: list = []

    def progress(step: int, total: int) -> None:
        if not bars or bars[-1].n >= bars[-1].total:
            bars.append(tqdm(total=total, unit="step", desc="refining", leave=False, file=sys.stderr))
        bars[-1].update(step - bars[-1].n)
        if step >= total:
            bars[-1].close()

    return progress


def cmd_downscale(args) -> int:
    from .api import downscale_picture
    from .geometry import target_size
    from .imageio import read_picture, write_picture

    jobs = _collect(args.inputs, args.output, ".png")
    model = _load_model(args)
    if args.scale is not None:
        from .geometry import check_scale

        check_scale(args.scale, model.config.max_scale)

    refine = refine_config(args, model)
    progress = _step_progress(refine.steps, single=len(jobs) == 1)

    def read(source: Path, target: Path):
        _check_target(source, target, args.force)
        picture = read_picture(source, allow_huge=args.allow_huge)
        if len(jobs) == 1 and sys.stderr.isatty():  # a batch has its bar; one large image says it started
            height, width = picture.size
            print(f"downscaling {source} ({width}x{height}) ...", file=sys.stderr, flush=True)
        return picture

    def compute(picture):
        lr_size = target_size(picture.size, model.config.max_scale, size=args.size, scale=args.scale)
        lr = downscale_picture(model, picture, size=lr_size, tile=args.tile, refine=refine, progress=progress)
        return lr, picture.size

    def write(result, target: Path) -> None:
        lr, hr_size = result
        if target.suffix.lower() != ".png":
            print(f"iarn: note: {target} is not PNG: upscaling it will need --size and lose fidelity", file=sys.stderr)
        write_picture(
            lr,
            target,
            hr_size=hr_size,
            png_level=args.png_level,
            model_id=model.model_id,
            overwrite=args.force,
            refine=refine.steps,
        )

    return 1 if _run_batch(jobs, read, compute, write) else 0


def _upscaler_for(args, given_model):
    """A function (picture, source) -> the runner to upscale it with: the model its file records
    when no model is given and that one is bundled, else `given_model`, with a warning when the
    file records another model (its LR then upscales only like a foreign image)."""
    from .rescaler import load
    from .weights import bundled_by_id, same_upscaler

    given = args.weights or args.model
    others: dict[str, object] = {}
    lock = threading.Lock()

    def pick(picture, source: Path):
        recorded = picture.model_id
        if recorded is None or given_model.model_id is None:
            return given_model
        if same_upscaler(recorded, given_model.model_id, given_model.path):
            return given_model
        name = bundled_by_id(recorded) if given is None else None
        if name is not None:
            with lock:
                if name not in others:
                    others[name] = load(name, device=args.device, precision=args.precision)
            return others[name]
        unknown = "" if given is not None else ", which this install does not have"
        print(
            f"iarn: warning: {source} was made by {recorded}{unknown}; upscaling it with "
            f"{given_model.model_id} restores only what an interpolator would (pass the weights that made it)",
            file=sys.stderr,
        )
        return given_model

    return pick


def cmd_upscale(args) -> int:
    from .api import upscale_picture
    from .geometry import check_upscale_size
    from .imageio import read_picture, write_picture

    jobs = _collect(args.inputs, args.output, "." + args.ext)
    pick = _upscaler_for(args, _load_model(args))
    warned = threading.Event()

    def read(source: Path, target: Path):
        _check_target(source, target, args.force)
        picture = read_picture(source, allow_huge=args.allow_huge)
        size = args.size or picture.hr_size
        if size is None:
            raise CliError(f"{source}: no original size given (--size WxH) and none recorded in the file")
        if picture.lossy and not warned.is_set():
            warned.set()
            print(
                f"iarn: warning: {source}: {picture.lossy}, so the detail hidden in the LR is partly lost "
                "(several dB); keep LR files as the PNGs iarn writes" + (" (said once)" if len(jobs) > 1 else ""),
                file=sys.stderr,
            )
        model = pick(picture, source)
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

    return 1 if _run_batch(jobs, read, compute, write) else 0


def sample_image_path() -> Path:
    return Path(str(resources.files("iarn") / "samples" / SAMPLE_IMAGE))


def cmd_roundtrip(args) -> int:
    from .api import resize_alpha
    from .evaluate import bicubic_roundtrip, model_roundtrip
    from .geometry import target_size
    from .imageio import as_written, read_picture, write_picture
    from .metrics import protocol_border, psnr_y

    path = Path(args.input) if args.input else sample_image_path()
    if args.save:
        folder = Path(args.save)
        if folder.exists() and not folder.is_dir():
            raise CliError(f"--save {folder}: exists and is not a folder")
        for name in ("lr.png", "restored.png"):
            _check_target(path, folder / name, args.force)
    model = _load_model(args)
    picture = read_picture(path, allow_huge=args.allow_huge)
    hr = picture.rgb
    lr_size = target_size(picture.size, model.config.max_scale, size=args.size, scale=args.scale)
    scale = (hr.shape[0] / lr_size[0], hr.shape[1] / lr_size[1])
    border = protocol_border(scale)
    refine = refine_config(args, model)
    lr, up = model_roundtrip(model, hr, lr_size, args.tile, refine, _step_progress(refine.steps))
    # the pictures --save writes, and the scores of exactly what they hold
    lr_picture = picture.with_pixels(lr, resize_alpha(picture.alpha, lr_size))
    restored = picture.with_pixels(up, picture.alpha)
    bic_lr, bic_up = bicubic_roundtrip(hr, lr_size)
    ours, bicubic = psnr_y(as_written(restored), hr, border), psnr_y(bic_up, hr, border)
    lr_fidelity = psnr_y(lr, bic_lr)
    print(
        f"{path.name}: {hr.shape[1]}x{hr.shape[0]} -> {lr_size[1]}x{lr_size[0]} (scale {scale[0]:.3g} x {scale[1]:.3g})"
    )
    spent = f" (effort: corrector {'on' if model.correct else 'off'}, {refine.steps} refinement steps)"
    print(f"  iarn round trip    PSNR-Y {ours:6.2f} dB{spent}")
    print(f"  bicubic round trip PSNR-Y {bicubic:6.2f} dB   (iarn {ours - bicubic:+.2f} dB)")
    print(f"  iarn LR against bicubic LR PSNR-Y {lr_fidelity:.2f} dB")
    if args.save:
        folder = Path(args.save)
        lr_path, restored_path = folder / "lr.png", folder / "restored.png"
        write_picture(
            lr_picture,
            lr_path,
            hr_size=picture.size,
            model_id=model.model_id,
            overwrite=args.force,
            refine=refine.steps,
            provisional=not lr_path.exists(),  # both or neither: a rerun must not stop on a lone lr.png
        )
        written = False
        try:
            write_picture(restored, restored_path, overwrite=args.force)
            written = True
        finally:
            settle(lr_path, keep=written)
        print(f"  wrote {lr_path} and {restored_path}")
    return 0


def cmd_compare(args) -> int:
    import numpy as np

    from .compare import comparison
    from .geometry import target_size
    from .imageio import picture_from_array, read_picture, write_picture

    path = Path(args.input) if args.input else sample_image_path()
    target = Path(args.output)
    if not target.suffix:
        target = target.with_suffix(".png")  # the name checked is the name written
    _check_target(path, target, args.force)
    model = _load_model(args)
    picture = read_picture(path, allow_huge=args.allow_huge)
    lr_size = target_size(picture.size, model.config.max_scale, size=args.size, scale=args.scale)
    refine = refine_config(args, model)
    figure, scores = comparison(
        model, picture.rgb, lr_size, args.crop, args.zoom, args.tile, refine, _step_progress(refine.steps)
    )
    write_picture(picture_from_array(np.asarray(figure)), target, overwrite=args.force)
    print(
        f"{path.name} -> {lr_size[1]}x{lr_size[0]}: PSNR-Y iarn {scores['iarn']:.2f} dB, bicubic "
        f"{scores['bicubic']:.2f} dB (crop: {scores['iarn_crop']:.2f} / {scores['bicubic_crop']:.2f}); "
        f"wrote {target}"
    )
    return 0


def cmd_info(args) -> int:
    import torch

    from . import __version__
    from .devices import cpu_has_amx
    from .weights import BUNDLED, bundled_path, read_metadata

    print(f"iarn {__version__}, torch {torch.__version__}, Python {sys.version.split()[0]}")
    cuda = torch.cuda.is_available()
    bf16 = "AMX, --precision auto = bf16" if cpu_has_amx() else "no AMX, --precision auto = fp32"
    print(
        f"devices: cpu ({torch.get_num_threads()} threads, {bf16})"
        + (f", cuda ({torch.cuda.get_device_name(0)})" if cuda else "")
        + (", mps" if torch.backends.mps.is_available() else "")
    )
    for name in BUNDLED:
        path = bundled_path(name)
        if path is None:
            print(f"model {name}: not bundled in this install")
            continue
        meta = read_metadata(path)
        training = json.loads(meta.get("training", "{}"))
        print(f"model {name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
        print(f"  config {meta.get('config')}")
        if meta.get("corrector"):
            print(f"  LR corrector {meta['corrector']}")
        if training.get("summary"):
            print(f"  {training['summary']}")
        elif training.get("steps") is not None:
            print(f"  trained {training['steps']} steps")
    return 0


def cmd_export(args) -> int:
    from .export import export_onnx, onnx_paths
    from .weights import load_weights, resolve_weights

    name = args.onnx
    stem = Path(name[: -len(".onnx")] if name.lower().endswith(".onnx") else name)
    if not stem.name or stem.name in (".", "..") or name.endswith(("/", os.sep)) or stem.is_dir():
        raise CliError(f"--onnx {name!r}: give a name for the files (NAME -> NAME-downscale.onnx), not a folder")
    down, up = onnx_paths(name)
    for path in (down, up):
        if path.is_dir():
            raise CliError(f"{path}: is a folder")
        if path.exists() and not args.force:
            raise CliError(f"{path} exists (use --force to overwrite)")
        folder = path.resolve().parent
        if folder.is_dir() and not os.access(folder, os.W_OK):  # checked before a 26 s export, not after
            raise CliError(f"{path}: its folder is not writable")
    print("exporting the downscale and upscale graphs (a few minutes on a CPU) ...", file=sys.stderr, flush=True)
    network = load_weights(resolve_weights(args.weights or args.model))
    if network.corrector is not None:
        print(
            "iarn: note: the downscale graph is the network's forward pass, without its LR corrector "
            "(its LRs restore like `iarn downscale --effort 0`)",
            file=sys.stderr,
        )
    export_onnx(network, down, up)
    print(f"wrote {down} (hr, lr_shape -> lr) and {up} (lr, hr_shape -> hr)")
    return 0


def cmd_train(args) -> int:
    from .model import ModelConfig
    from .train import TrainConfig, merge_config, read_checkpoint, read_config_file, resume_config, train

    given: dict = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name != "model" and getattr(args, f.name, None) is not None:
            given[f.name] = tuple(args.data) if f.name == "data" else getattr(args, f.name)
    model_given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(ModelConfig) if getattr(args, f.name) is not None
    }
    if model_given:
        given["model"] = model_given
    if args.config:
        base = read_config_file(args.config)
        model = {**(base.pop("model", None) or {}), **given.get("model", {})}
        given = {**base, **given, **({"model": model} if model else {})}
    if args.init_from and given.get("model"):
        _check_init_from(args.init_from, given["model"])
    out = Path(given.get("out", TrainConfig.out))
    resume = args.resume
    if resume == "auto":
        resume = str(out / "checkpoint.pt") if (out / "checkpoint.pt").exists() else None
    if resume:
        cfg = resume_config(read_checkpoint(resume)["train_config"], given)
    else:
        cfg = merge_config({}, given)
    final = train(
        cfg,
        resume=resume,
        init_from=args.init_from,
        progress=not args.no_progress,
        stop_at=args.stop_at,
        max_minutes=args.max_minutes,
        fit_steps=args.fit_steps,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {final}")
    return 0


def _check_init_from(path: str, asked: dict) -> None:
    """Refuse model flags (or a --config model) that differ from the --init-from weights': the
    run would otherwise silently train the weights' architecture instead."""
    from .model import ModelConfig
    from .weights import read_metadata, resolve_weights

    metadata = read_metadata(resolve_weights(path))
    if "config" not in metadata:
        return  # not an iarn weight file: loading it says so
    weights = ModelConfig.from_dict(json.loads(metadata["config"]))
    differ = {k: v for k, v in asked.items() if getattr(weights, k) != v}
    conflicts = [f"{k} {v!r} (the weights: {getattr(weights, k)!r})" for k, v in differ.items()]
    if conflicts:
        raise CliError(
            f"--init-from {path} fine-tunes its own architecture, but the run asks for {', '.join(conflicts)}; "
            "drop those model settings, or start a new model without --init-from"
        )


def _evaluate_outputs(args) -> dict[str, Path]:
    """evaluate's output files by kind, checked as every output is before any work: never an
    image it reads, not one another, not an existing file without --force, in a writable folder."""
    from .files import find_images

    outputs = {
        kind: Path(path)
        for kind, path in (("markdown", args.markdown), ("json", args.json), ("plot", args.plot))
        if path
    }
    inputs = {_identity(image) for folder in args.data for image in find_images([Path(folder)])}
    seen: dict = {}
    for kind, output in outputs.items():
        key = _identity(output)
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


def cmd_evaluate(args) -> int:
    from .evaluate import PROTOCOL_SCALES, evaluate, markdown_table, plot, write_json
    from .files import TargetExists, atomic_write
    from .geometry import check_scale

    scales = list(dict.fromkeys(args.scales or PROTOCOL_SCALES))  # each scale once, in the order given
    if any(value < 1 for scale in scales for value in scale):
        raise CliError("scales must be >= 1 (a downscale); got " + " ".join(f"{h:g},{w:g}" for h, w in scales))
    for folder in args.data:
        if not Path(folder).is_dir():
            raise CliError(f"{folder}: no such folder")
    outputs = _evaluate_outputs(args)
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (checked before hours of evaluation, not after)
        except ImportError:
            raise CliError("--plot needs matplotlib: pip install 'iarn[plot]'") from None
    model = None if args.bicubic_only else _load_model(args)
    if model is not None:
        for scale in scales:
            check_scale(scale, model.config.max_scale)
    bad: list = []

    def on_bad_image(error) -> None:
        bad.append(error)
        print(f"iarn: error: {_one_line(error, escape=True)} (left out)", file=sys.stderr)

    results = evaluate(
        model,
        args.data,
        scales,
        progress=sys.stderr.isatty(),
        tile=args.tile,
        allow_huge=args.allow_huge,
        refine=refine_config(args, model),
        on_bad_image=on_bad_image,
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


COMMANDS = {
    "downscale": cmd_downscale,
    "upscale": cmd_upscale,
    "roundtrip": cmd_roundtrip,
    "compare": cmd_compare,
    "info": cmd_info,
    "export": cmd_export,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(train_flags=argv[:1] == ["train"]).parse_args(argv)  # --help: no torch
    from .devices import keep_freed_memory
    from .imageio import ImageError
    from .weights import WeightsError

    keep_freed_memory()  # large feature maps reused, not paged in afresh (docs/performance.md)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not valid UTF-8 prints escaped, never fails
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        return COMMANDS[args.command](args)
    except (CliError, ImageError, WeightsError) as error:  # ours: a file name may hold a newline
        print(f"iarn: error: {_one_line(error, escape=True)}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"iarn: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of stdout left (`iarn info | head -1`): entry() ends quietly
        raise
    except OSError as error:  # a disk or permission problem outside image reading and writing
        where = f"{error.filename}: " if error.filename else ""
        print(f"iarn: error: {where}{error.strerror or _one_line(error)}", file=sys.stderr)
        return 1
    except RuntimeError as error:  # from torch: out of memory, a device failure, ...
        hint = f" ({_memory_advice(args)})" if "out of memory" in str(error).lower() else ""
        print(f"iarn: error: {_one_line(error)}{hint}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"iarn: error: {_memory_advice(args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:  # training's carries the signal: SIGTERM is 143, as everywhere
        print("iarn: interrupted", file=sys.stderr)
        return 128 + getattr(error, "signum", 2)


SMALL_TILE = 256


def _memory_advice(args) -> str:
    """What to try after running out of memory: only the settings this command has and has not
    already turned down (a smaller tile bounds the network's memory; bf16 halves the subnets')."""
    if args.command == "train":
        return "out of memory: try a smaller --batch-size or --crop"
    tries = []
    if hasattr(args, "tile") and (args.tile is None or args.tile > SMALL_TILE):
        tries.append(f"--tile {SMALL_TILE}")
    if getattr(args, "precision", None) in ("auto", "fp32"):
        tries.append("--precision bf16")
    if not tries:
        return "out of memory: the image is too large for this machine at these settings"
    return "out of memory: try " + ", or ".join(tries)


def _one_line(error: BaseException, escape: bool = False) -> str:
    """The message on one line: its first line, or (`escape`, iarn's own messages, where a
    line break can only come from a file name) all of it with line breaks shown as \\n."""
    text = str(error).strip() or type(error).__name__
    if escape:
        return text.replace("\r", "\\r").replace("\n", "\\n")
    return text.splitlines()[0]


def entry() -> NoReturn:
    import signal

    from .files import end_now

    # Ctrl-C and SIGTERM end the process at once, having removed what is half written. Not by
    # raising KeyboardInterrupt here: a C extension can swallow it, an import it cuts cannot be
    # redone, and it can escape a handler. Training installs its own (a checkpoint first).
    codes = {signal.SIGINT: 130, signal.SIGTERM: 143}

    def on_signal(signum, frame):
        end_now(codes[signum], "iarn: interrupted")

    for sig in codes:
        signal.signal(sig, on_signal)
    try:
        code = main()
        sys.stdout.flush()
    except KeyboardInterrupt:  # before main's own handler is in place (while torch imports)
        print("iarn: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # `iarn info | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
