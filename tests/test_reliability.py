"""Issue 25's cases outside training: advice that can help, lossy LR files, evaluate's bad images."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import iarn.imageio as imageio
from iarn import cli
from tests.test_cli import assert_one_line_error, run


def test_a_bomb_let_through_says_what_is_too_large_and_advises_no_tile(tmp_path, capsys, photo_file, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(imageio, "available_memory", lambda: 20_000)  # bytes: less than 70x90 pixels decode to
    out = tmp_path / "lr.png"
    code, _, err = run(capsys, "downscale", photo_file, "-o", out, "--scale", "2", "--allow-huge")
    assert_one_line_error(code, err, "too large to decode", "90x70 pixels", "GiB", "no --tile")
    assert "try --tile" not in err and "try --precision" not in err and not out.exists()


@pytest.mark.parametrize(
    "extra, advice, not_advice",
    [
        ((), ["--tile 256", "--precision bf16"], []),
        (("--tile", "256"), ["--precision bf16"], ["--tile"]),
        (("--tile", "128", "--precision", "bf16"), ["too large for this machine"], ["--tile", "bf16"]),
    ],
)
def test_out_of_memory_advice_names_only_untried_settings(
    tmp_path, capsys, monkeypatch, photo_file, extra, advice, not_advice
):
    def out_of_memory(args):
        raise MemoryError

    monkeypatch.setitem(cli.COMMANDS, "downscale", out_of_memory)
    code, _, err = run(capsys, "downscale", photo_file, "-o", tmp_path / "lr.png", "--scale", "2", *extra)
    assert_one_line_error(code, err, "out of memory", *advice)
    for words in not_advice:
        assert words not in err


def _downscaled(tmp_path, capsys, photo_file, weights_file):
    lr = tmp_path / "lr.png"
    code, _, err = run(capsys, "downscale", photo_file, "-o", lr, "--scale", "2", "--weights", weights_file)
    assert code == 0, err
    return lr


def test_upscaling_a_jpeg_or_reencoded_lr_warns_once(tmp_path, capsys, photo_file, weights_file):
    lr = _downscaled(tmp_path, capsys, photo_file, weights_file)
    image = Image.open(lr)
    folder = tmp_path / "lossy"
    folder.mkdir()
    image.convert("RGB").save(folder / "a.jpg", quality=90)
    image.convert("RGB").save(folder / "b.jpg", quality=90)
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[0, 0] ^= 1  # an edit (or a lossy round trip) that keeps the PNG's text chunks
    edited = Image.fromarray(pixels)
    info = PngInfo()
    for key, value in image.info.items():
        if isinstance(value, str):
            info.add_text(key, value)
    edited.save(tmp_path / "edited.png", pnginfo=info)

    code, _, err = run(capsys, "upscale", folder, "-o", tmp_path / "up", "--weights", weights_file, "--size", "90x70")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "JPEG" in warnings[0] and "partly lost" in warnings[0], err

    code, _, err = run(capsys, "upscale", tmp_path / "edited.png", "-o", tmp_path / "e.png", "--weights", weights_file)
    assert code == 0, err
    assert "no longer those iarn wrote" in err

    code, _, err = run(capsys, "upscale", lr, "-o", tmp_path / "clean.png", "--weights", weights_file)
    assert code == 0 and "warning" not in err, err


def test_evaluate_reports_a_bad_image_and_goes_on(tmp_path, capsys, photo, weights_file):
    data = tmp_path / "set"
    data.mkdir()
    Image.fromarray(photo).save(data / "good.png")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, out, err = run(capsys, "evaluate", "--data", data, "--scales", "2", "--weights", weights_file)
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert any("broken.png" in line and "(left out)" in line for line in lines), err
    assert any("1 image(s) could not be read" in line for line in lines), err
    assert "x2" in out or "2" in out  # the table of the good image is printed
    assert "good" not in err


_KEPT_MEMORY = """
import ctypes, sys, torch
from iarn.devices import keep_freed_memory

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory(sys.argv[1] == "keep")
torch.ones(24 * 1024 * 1024)  # 96 MB, freed at once
print(applied, libc.mallinfo2().fordblks)  # bytes free in malloc's heap, kept for reuse
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_large_tensors_stay_in_the_heap_for_reuse():
    """The CLI's allocator setting (docs/performance.md): a freed 96 MB tensor stays in
    malloc's heap for the next one, where glibc's default returns its pages to the system
    (which then come back zeroed, one page fault per 4 KB). Counted in malloc's own books, not
    in page faults: this machine's kernel also faults pages it merely samples."""
    free_bytes = {}
    for how in ("keep", "default"):
        out = subprocess.run([sys.executable, "-c", _KEPT_MEMORY, how], capture_output=True, text=True)
        if out.returncode or out.stdout.split()[0] != "True":
            pytest.skip(f"not glibc 2.33 or newer: {out.stderr.strip()[-200:]}")
        free_bytes[how] = int(out.stdout.split()[1])
    assert free_bytes["keep"] >= 96 * 2**20 > 16 * 2**20 > free_bytes["default"]
