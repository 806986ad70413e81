"""The `iarn` command line: one module per command family (docs/design.md, "Where to add ...").

    errors.py   the error policy: one line on stderr, exit 1 (2 for malformed arguments)
    args.py     argument types and the flag groups the commands share, each defined once
    batch.py    planning every output before writing, and the threaded batch pipeline
    main.py     the parser, the command table, `main` and `entry` (signals)
    downscale.py, upscale.py, roundtrip.py (and compare), info.py (and export),
    train.py (and train-corrector), evaluate.py: the commands

Nothing here imports torch before a command runs, so `iarn --help` is fast.
"""

from __future__ import annotations

from .args import parse_scale, parse_size, sample_image_path
from .batch import run_batch
from .errors import CliError
from .main import COMMANDS, build_parser, entry, main

__all__ = [
    "COMMANDS",
    "CliError",
    "build_parser",
    "entry",
    "main",
    "parse_scale",
    "parse_size",
    "run_batch",
    "sample_image_path",
]
