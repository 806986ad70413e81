"""The parser of every command, the command table, and the process's error and signal policy.

Every user error ends in one line `iarn: error: ...` on stderr and a non-zero exit (2 for
malformed arguments, 1 otherwise); no traceback, no partial output file; Ctrl-C and SIGTERM end
the process at once (130 and 143) having removed what was half written.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import NoReturn

from . import downscale, evaluate, info, roundtrip, train, train_upscaler, upscale
from .errors import CliError, Parser, memory_advice, one_line


def build_parser(train_flags: bool = True) -> argparse.ArgumentParser:
    """The whole command line; `train_flags=False` leaves out the training commands' flags (they
    come from the training configs, whose import brings torch), so `iarn --help` stays fast."""
    from .. import __version__

    parser = Parser(prog="iarn", description="Invertible arbitrary-scale image rescaling (IARN).")
    parser.add_argument("--version", action="version", version=f"iarn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    downscale.add_parser(commands)
    upscale.add_parser(commands)
    roundtrip.add_parsers(commands)
    info.add_parsers(commands)
    train.add_parsers(commands, train_flags)
    train_upscaler.add_parser(commands, train_flags)
    evaluate.add_parser(commands)
    return parser


COMMANDS = {
    "downscale": downscale.run,
    "upscale": upscale.run,
    "roundtrip": roundtrip.run_roundtrip,
    "compare": roundtrip.run_compare,
    "info": info.run_info,
    "export": info.run_export,
    "train": train.run,
    "train-corrector": train.run_corrector,
    "train-upscaler": train_upscaler.run,
    "evaluate": evaluate.run,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    training = argv[:1] in (["train"], ["train-corrector"], ["train-upscaler"])
    args = build_parser(train_flags=training).parse_args(argv)  # --help: no torch
    from ..devices import keep_freed_memory
    from ..imageio import ImageError
    from ..weights import WeightsError

    keep_freed_memory()  # large feature maps reused, not paged in afresh (docs/performance.md)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not valid UTF-8 prints escaped, never fails
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        return COMMANDS[args.command](args)
    except (CliError, ImageError, WeightsError) as error:  # ours: a file name may hold a newline
        print(f"iarn: error: {one_line(error, escape=True)}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"iarn: error: {one_line(error)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of stdout left (`iarn info | head -1`): entry() ends quietly
        raise
    except OSError as error:  # a disk or permission problem outside image reading and writing
        where = f"{error.filename}: " if error.filename else ""
        print(f"iarn: error: {where}{error.strerror or one_line(error)}", file=sys.stderr)
        return 1
    except RuntimeError as error:  # from torch: out of memory, a device failure, ...
        hint = f" ({memory_advice(args)})" if "out of memory" in str(error).lower() else ""
        print(f"iarn: error: {one_line(error)}{hint}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"iarn: error: {memory_advice(args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:  # training's carries the signal: SIGTERM is 143, as everywhere
        print("iarn: interrupted", file=sys.stderr)
        return 128 + getattr(error, "signum", 2)


def entry() -> NoReturn:
    import signal

    from ..files import end_now

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
