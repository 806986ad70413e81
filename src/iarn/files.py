"""Files: finding the images under a path, and atomic writing (every output goes through it)."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# zlib levels of the PNGs iarn writes (docs/performance.md, "Batches"): LR images are what users
# keep and send, and small, so they get Pillow's level 6; restored HR images are large and level 1
# encodes them 1.8-4.7x faster than level 6 for 13-16 % more bytes.
PNG_LEVEL = 6
PNG_LEVEL_RESTORED = 1


def find_images(paths: list[str | Path]) -> list[Path]:
    """Image files under `paths` (files or folders, searched recursively), sorted."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], replace: bool = True) -> None:
    """Call `write(temporary_path)`, then rename the temporary file onto `path`.

    The temporary file sits in the target folder (hidden, `.NAME.*.tmp`) and is removed if
    `write` fails or the process is interrupted, so `path` is either untouched or complete.
    The result gets the mode of the file it replaces, or 0666 less the umask for a new file
    (as `open` would give), not mkstemp's 0600. `replace=False`: the last step refuses to
    replace a file that exists by then (TargetExists), even one that appeared after any
    earlier check (another process writing the same name): a hard link, which fails if the
    name exists, where the file system has them.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            write(tmp)
        except OSError as error:  # name the file the user asked for, not the hidden temporary one
            if error.errno is None or error.filename not in (tmp, Path(tmp)):
                raise
            raise OSError(error.errno, error.strerror, str(path)) from None
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        if replace:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class TargetExists(FileExistsError):
    """The file `atomic_write(..., replace=False)` was to create exists by the time it is done."""


def _place_new(tmp: str, path: Path) -> None:
    """Give the finished `tmp` the name `path` only if no file has it (TargetExists)."""
    try:
        os.link(tmp, path)  # atomic, and fails if `path` exists
    except FileExistsError:
        raise TargetExists(errno.EEXIST, "exists", str(path)) from None
    except OSError:  # no hard links here (some network and FUSE file systems): exclusive create
        try:
            with open(path, "xb"):
                pass
        except FileExistsError:
            raise TargetExists(errno.EEXIST, "exists", str(path)) from None
        os.replace(tmp, path)
