"""Batches: every output planned before anything is written, and the threaded pipeline.

`plan_jobs` maps inputs to outputs and refuses clashes up front; `run_batch` decodes the next
image and encodes the last result in worker threads while the model runs, and reports a failed
job as one line while the batch goes on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..files import IMAGE_SUFFIXES
from .errors import CliError, one_line


def plan_jobs(inputs: list[str], output: str, suffix: str) -> list[tuple[Path, Path]]:
    """Plan every (input, output) pair of a batch before anything is written.

    One input file and an output that is not a folder: that file (`suffix` added when it has
    none). Otherwise the output is a folder mirroring the inputs' paths, with `suffix`. Refused
    up front, naming the files: two inputs that map to one output, an output that is one of the
    inputs, and a file-like output (`small.png`) for several inputs.
    """
    from ..files import find_images

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
    inputs_by_path = {identity(source): source for source, _ in jobs}
    planned: dict = {}
    for source, target in jobs:
        key = identity(target)
        if key in planned:
            raise CliError(f"{planned[key]} and {source} would both be written to {target}; give them separate folders")
        planned[key] = source
        if key in inputs_by_path and inputs_by_path[key] == source:
            raise CliError(f"{target}: is the input itself; iarn never overwrites an input")
        if key in inputs_by_path:
            raise CliError(f"{source} would be written over the input {target}; iarn never overwrites an input")
    return jobs


def identity(path: Path):
    """A key equal for two paths of one file (links, `..`, case on case-insensitive disks)."""
    if path.exists():
        stat = path.stat()
        return (stat.st_dev, stat.st_ino)
    return os.path.normcase(os.path.abspath(path))


def check_target(source: Path, target: Path, force: bool) -> None:
    if target.exists() and (target.resolve() == source.resolve() or os.path.samefile(target, source)):
        raise CliError(f"{target}: is the input itself; iarn never overwrites an input")
    if target.exists() and not force:
        raise CliError(f"{target}: exists; pass --force to overwrite")
    if target.is_dir():
        raise CliError(f"{target}: is a folder")


def run_batch(jobs, read, compute, write) -> int:
    """Per job (source, target): `read(source, target)`, `compute(item)`, `write(result, target)`.

    A pipeline: the next image is decoded and the previous result encoded in worker threads
    while the model runs (Pillow and zlib release the GIL), one of each at a time. A failed job
    is reported as one line and the batch goes on; returns the number of failures."""
    from concurrent.futures import ThreadPoolExecutor

    from ..imageio import ImageError

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
                reason = one_line(error, escape=isinstance(error, (CliError, ImageError)))
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


def step_progress(steps: int, single: bool = True):
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
