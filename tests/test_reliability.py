"""Issue 25's cases outside training: advice that can help, lossy LR files, evaluate's bad images."""

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
