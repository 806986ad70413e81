"""`iarn train-upscaler`: a JPEG quality band's own upscaler for a frozen model (model/bands.py),
or (`--merge`) the bands of several such runs gathered into one weight file."""

from __future__ import annotations

import argparse
import dataclasses
import re

from .errors import CliError


def add_parser(commands, train_flags: bool) -> None:
    parser = commands.add_parser(
        "train-upscaler", help="train a model's upscaler for JPEG LRs of one quality band, its downscaler frozen"
    )
    if train_flags:
        arguments(parser)


def arguments(parser: argparse.ArgumentParser) -> None:
    from ..upscaler_train import UpscalerTrainConfig
    from .train import field_flags, frozen_run_flags

    frozen_run_flags(
        parser, "UpscalerTrainConfig", "upscaler-checkpoint.pt", "start from its band at --quality (or its network)"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="WEIGHTS",
        help="train nothing: write OUT/model.safetensors, --base with the bands of these files (trained from it)",
    )
    parser.add_argument(
        "--serve",
        nargs="+",
        type=serve_range,
        default=[],
        metavar="Q:LOW-HIGH",
        help="with --merge: the band trained at quality Q serves JPEG qualities LOW..HIGH",
    )
    field_flags(parser, list(dataclasses.fields(UpscalerTrainConfig)))


def serve_range(text: str) -> tuple[int, tuple[int, int]]:
    match = re.fullmatch(r"(\d+):(\d+)-(\d+)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected Q:LOW-HIGH (e.g. 90:83-100), got {text!r}")
    quality, low, high = (int(g) for g in match.groups())
    return quality, (low, high)


def run(args) -> int:
    from pathlib import Path

    from ..train_config import read_config_file
    from ..upscaler_train import UpscalerTrainConfig, merge_bands, train_upscaler
    from .train import run_frozen

    values = read_config_file(args.config) if args.config else {}
    for f in dataclasses.fields(UpscalerTrainConfig):
        if getattr(args, f.name, None) is not None:
            values[f.name] = tuple(args.data) if f.name == "data" else getattr(args, f.name)
    cfg = UpscalerTrainConfig.from_dict(values)
    if args.merge:
        final = merge_bands(cfg.base, args.merge, Path(cfg.out) / "model.safetensors", dict(args.serve))
        print(f"wrote {final}")
        return 0
    if args.serve:
        raise CliError("--serve goes with --merge; a run's band serves --serve-min..--serve-max")
    return run_frozen(train_upscaler, cfg, args)
