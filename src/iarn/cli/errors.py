"""The command line's error policy: one line on stderr, the exit status, advice for memory."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

SMALL_TILE = 256


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"iarn: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def memory_advice(args) -> str:
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


def one_line(error: BaseException, escape: bool = False) -> str:
    """The message on one line: its first line, or (`escape`, iarn's own messages, where a
    line break can only come from a file name) all of it with line breaks shown as \\n."""
    text = str(error).strip() or type(error).__name__
    if escape:
        return text.replace("\r", "\\r").replace("\n", "\\n")
    return text.splitlines()[0]
