"""Files: finding the images under a path, and atomic writing (every output goes through it).

The files being written are also listed process-wide (`_UNFINISHED`) so that `end_now`, which a
signal handler calls to end the whole process at once, can remove them first: raising
KeyboardInterrupt from a signal handler instead is unreliable (it can be lost in a C extension,
break an import half done, or escape a `finally`), see the CLI's `entry`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
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


# Paths that end_now removes: temporaries being written and provisional results. Guarded by
# _LOCK; _MAIN_DEPTH counts the main thread's critical sections, in which a signal handler
# (which runs in the main thread, between two bytecodes) must not end the process: it leaves
# the signal in _PENDING, and the section's end acts on it.
_UNFINISHED: set[str] = set()
_LOCK = threading.Lock()
_MAIN_DEPTH = 0
_PENDING: tuple[int, str] | None = None
_ENDING = False  # end_now has begun: a second signal during its cleanup must not wait on _LOCK


@contextlib.contextmanager
def _critical() -> Iterator[None]:
    """A block that end_now does not cut: the registry and the file system agree at its ends."""
    global _MAIN_DEPTH
    main = threading.current_thread() is threading.main_thread()
    if main:
        _MAIN_DEPTH += 1
    try:
        with _LOCK:
            yield
    finally:
        if main:
            _MAIN_DEPTH -= 1
            if _MAIN_DEPTH == 0 and _PENDING is not None:
                end_now(*_PENDING)


def end_now(code: int, message: str) -> None:
    """Remove every unfinished file, print `message` to stderr, end the process with `code`.

    For signal handlers (no exception to be swallowed on the way out). Called in a critical
    section of the main thread, it returns, and the section's end does it; another thread's
    section finishes first (they are short: a rename, an unlink)."""
    global _PENDING, _ENDING
    if _ENDING:
        return
    if _MAIN_DEPTH:
        _PENDING = (code, message)
        return
    _ENDING = True
    _LOCK.acquire()
    for path in _UNFINISHED:
        with contextlib.suppress(OSError):
            os.unlink(path)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        print(message, file=sys.stderr, flush=True)
    os._exit(code)


def settle(path: str | os.PathLike, keep: bool) -> None:
    """End the provisional state of `path` (atomic_write(..., provisional=True)): kept, or
    removed; a path that is not provisional is left alone."""
    path = str(path)
    with _critical():
        if path in _UNFINISHED:
            if not keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            _UNFINISHED.discard(path)


def atomic_write(
    path: str | os.PathLike, write: Callable[[str], None], replace: bool = True, provisional: bool = False
) -> None:
    """Call `write(temporary_path)`, then rename the temporary file onto `path`.

    The temporary file sits in the target folder (hidden, `.NAME.*.tmp`) and is removed if
    `write` fails or the process is interrupted, so `path` is either untouched or complete.
    The result gets the mode of the file it replaces, or 0666 less the umask for a new file
    (as `open` would give), not mkstemp's 0600. `replace=False`: the last step refuses to
    replace a file that exists by then (TargetExists), even one that appeared after any
    earlier check (another process writing the same name): a hard link, which fails if the
    name exists, where the file system has them.
    `provisional`: `path` stays listed for end_now to remove until `settle(path, keep)` (a
    result that must not outlive the process unless another one is written too).
    """
    path = Path(path)
    with _critical():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        _UNFINISHED.add(tmp)
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
        with _critical():
            if provisional:
                _UNFINISHED.add(str(path))
            try:
                if replace:
                    os.replace(tmp, path)
                else:
                    _place_new(tmp, path)
            except BaseException:
                _UNFINISHED.discard(str(path))
                raise
            if not provisional:
                _UNFINISHED.discard(str(path))  # _place_new's placeholder, now complete
    finally:
        with _critical():
            if os.path.exists(tmp):
                os.unlink(tmp)
            _UNFINISHED.discard(tmp)


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
                _UNFINISHED.add(str(path))  # empty until the rename: end_now removes it
        except FileExistsError:
            raise TargetExists(errno.EEXIST, "exists", str(path)) from None
        try:
            os.replace(tmp, path)
        except BaseException:
            os.unlink(path)
            raise
