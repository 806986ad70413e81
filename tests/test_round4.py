"""Reliability round 4 (issue 41): one test per defect found, each failing before its fix."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import iarn
from iarn import devices
from iarn.cli import build_parser, main, sample_image_path
from iarn.imageio import luma_8bit, read_picture
from iarn.lr_bound import lr_psnr_y, reference_lr
from iarn.metrics import protocol_border, psnr_y
from iarn.refine import RefineConfig, refine_lr

from .conftest import BENCHMARK, first_config, small_model
from .test_cli import assert_one_line_error, run

SAMPLE = sample_image_path()


# 1. evaluate's outputs obey the rules of every output ------------------------------------


@pytest.mark.parametrize("flag", ["--json", "--markdown", "--plot"])
def test_evaluate_never_writes_over_an_image_it_reads(tmp_path, capsys, photo, weights_file, flag):
    folder = tmp_path / "set"
    folder.mkdir()
    Image.fromarray(photo).save(folder / "e0.png")
    before = (folder / "e0.png").read_bytes()
    args = ["evaluate", "--data", folder, "--scales", "2", "--weights", weights_file, flag, folder / "e0.png"]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "e0.png", "never overwrites an input")
    code, _, err = run(capsys, *args, "--force")
    assert_one_line_error(code, err, "never overwrites an input")
    assert (folder / "e0.png").read_bytes() == before


def test_evaluate_needs_force_to_replace_and_names_a_file_it_cannot_write(
    tmp_path, capsys, photo, weights_file, monkeypatch
):
    folder = tmp_path / "set"
    folder.mkdir()
    Image.fromarray(photo).save(folder / "a.png")
    table = tmp_path / "t.json"
    table.write_text("keep")
    args = ["evaluate", "--data", folder, "--scales", "2", "--weights", weights_file, "--json", table]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "t.json", "--force")
    assert table.read_text() == "keep"
    code, _, err = run(capsys, *args, "--markdown", table, "--force")
    assert_one_line_error(code, err, "same file")
    assert run(capsys, *args, "--force")[0] == 0
    assert json.loads(table.read_text())["set"]["x2"]["images"] == 1

    import iarn.evaluate as evaluate_module

    def full(path, write, replace=True, provisional=False):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluate_module, "atomic_write", full)
    code, _, err = run(capsys, *args, "--force")
    assert_one_line_error(code, err, str(table), "No space left")


def test_a_constant_image_keeps_evaluate_json_standard(tmp_path, capsys, photo, weights_file):
    folder = tmp_path / "set"
    folder.mkdir()
    Image.fromarray(photo).save(folder / "a.png")
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(folder / "flat.png")
    out = tmp_path / "r.json"
    code, stdout, err = run(
        capsys, "evaluate", "--data", folder, "--scales", "2", "--weights", weights_file, "--json", out
    )
    assert code == 0, err
    text = out.read_text()
    assert "Infinity" not in text and "NaN" not in text
    results = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard {name}"))
    bicubic = results["set"]["x2"]["bicubic"]["psnr_y"]
    assert np.isfinite(bicubic) and bicubic <= 100
    assert "inf" not in stdout.split("PSNR-Y in dB")[0]


# 2. a grayscale photo keeps what iarn hid in its LR --------------------------------------


def _gray_pair(tmp_path, source: Path = SAMPLE, box=(0, 0, 224, 160)) -> tuple[Path, Path]:
    gray = np.asarray(Image.open(source).convert("L").crop(box))
    as_l, as_rgb = tmp_path / "gray_l.png", tmp_path / "gray_rgb.png"
    Image.fromarray(gray, "L").save(as_l)
    Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB").save(as_rgb)
    return as_l, as_rgb


def _gray_and_rgb_scores(tmp_path, capsys, as_l, as_rgb, scale: str) -> tuple[float, float, float]:
    """PSNR-Y of the grayscale file's CLI round trip, of its RGB twin's, and of the twin's
    restored image written as grayscale (the one rounding a grayscale output cannot avoid)."""
    restored = {}
    for source in (as_l, as_rgb):
        lr, up = tmp_path / f"{source.stem}.lr.png", tmp_path / f"{source.stem}.up.png"
        assert run(capsys, "downscale", source, "-o", lr, "--scale", scale, "--effort", "1")[0] == 0
        assert Image.open(lr).mode == "RGB"  # the colour channels carry hidden detail
        assert run(capsys, "upscale", lr, "-o", up)[0] == 0
        restored[source] = Image.open(up)
    assert restored[as_l].mode == "L" and restored[as_rgb].mode == "RGB"
    hr, border = read_picture(as_l).rgb, protocol_border((float(scale),) * 2)
    twin_as_gray = np.repeat(luma_8bit(np.asarray(restored[as_rgb]))[..., None], 3, axis=2)
    return (
        psnr_y(np.asarray(restored[as_l].convert("RGB")), hr, border),
        psnr_y(np.asarray(restored[as_rgb]), hr, border),
        psnr_y(twin_as_gray, hr, border),
    )


@pytest.mark.parametrize("scale", ["2", "4"])
def test_a_grayscale_photo_restores_as_well_as_its_rgb_twin(tmp_path, capsys, scale):
    gray, rgb, rgb_written_gray = _gray_and_rgb_scores(tmp_path, capsys, *_gray_pair(tmp_path), scale)
    assert abs(gray - rgb_written_gray) < 0.02, (gray, rgb, rgb_written_gray)  # was 10 dB under at x2
    assert gray > rgb - 1.0


@pytest.mark.skipif(not (BENCHMARK / "Set5").is_dir(), reason="needs ../shared/data/benchmark/Set5")
@pytest.mark.parametrize("scale", ["2", "4"])
def test_the_butterfly_as_grayscale_restores_within_a_tenth_of_a_db(tmp_path, capsys, scale):
    butterfly = next((BENCHMARK / "Set5").glob("butterfly*"))
    with Image.open(butterfly) as image:
        box = (0, 0, *image.size)
    gray, rgb, _ = _gray_and_rgb_scores(tmp_path, capsys, *_gray_pair(tmp_path, butterfly, box), scale)
    assert gray >= rgb - 0.1, (gray, rgb)


def test_roundtrip_reports_what_its_saved_files_give_back(tmp_path, capsys):
    as_l, _ = _gray_pair(tmp_path)
    code, out, err = run(capsys, "roundtrip", as_l, "--scale", "2", "--effort", "1", "--save", tmp_path / "s")
    assert code == 0, err
    printed = float(out.split("iarn round trip    PSNR-Y")[1].split("dB")[0])
    hr = read_picture(as_l).rgb
    saved = np.asarray(Image.open(tmp_path / "s" / "restored.png").convert("RGB"))
    assert abs(psnr_y(saved, hr, 2) - printed) < 0.005
    assert run(capsys, "upscale", tmp_path / "s" / "lr.png", "-o", tmp_path / "again.png")[0] == 0
    again = np.asarray(Image.open(tmp_path / "again.png").convert("RGB"))
    assert abs(psnr_y(again, hr, 2) - printed) < 0.005


def test_roundtrip_save_keeps_alpha(tmp_path, capsys, photo, weights_file):
    alpha = np.tile(np.linspace(0, 255, photo.shape[1]).astype(np.uint8), (photo.shape[0], 1))
    source = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(source)
    args = ["roundtrip", source, "--scale", "2", "--weights", weights_file, "--save", tmp_path / "s"]
    assert run(capsys, *args)[0] == 0
    assert Image.open(tmp_path / "s" / "lr.png").mode == "RGBA"
    restored = Image.open(tmp_path / "s" / "restored.png")
    assert restored.mode == "RGBA" and np.array_equal(np.asarray(restored)[..., 3], alpha)


def test_downscale_image_keeps_three_channels_for_gray_input():
    model = small_model()
    gray = np.asarray(Image.open(SAMPLE).convert("L"))[:64, :64]
    assert iarn.downscale_image(model, Image.fromarray(gray), scale=2).mode == "RGB"
    assert iarn.downscale_image(model, gray, scale=2).shape == (32, 32, 3)


# 3. refinement never silently does nothing ----------------------------------------------


def test_refinement_improves_an_lr_that_starts_under_the_bound():
    model = small_model(mode="middle", levels=2)
    hr = torch.rand(1, 3, 48, 48)
    network_lr = model.downscale_pixels(hr, (24, 24), refine=0)
    reference = reference_lr(hr, (24, 24), torch.float32)
    start = (reference + 0.02 * torch.randn_like(reference)).clamp(0, 1)  # far under 44 dB
    start = torch.round(start * 255) / 255
    assert float(lr_psnr_y(start, reference)) < 44
    config = RefineConfig(steps=8, loss="rgb")
    refined = refine_lr(model.network, hr, start, config)
    assert not torch.equal(refined, start)
    assert float(lr_psnr_y(refined, reference)) >= float(lr_psnr_y(start, reference)) - 1e-9
    del network_lr


# 4. damaged input -----------------------------------------------------------------------


def _png_with_short_image_data(path: Path) -> None:
    pixels = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()
    at = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[at : at + 4])[0]
    raw = zlib.decompress(data[at + 8 : at + 8 + length])
    short = zlib.compress(raw[: len(raw) // 2])  # a complete zlib stream of half the rows
    chunk = struct.pack(">I", len(short)) + b"IDAT" + short + struct.pack(">I", zlib.crc32(b"IDAT" + short))
    path.write_bytes(data[:at] + chunk + data[at + 12 + length :])


def _interlaced_png(path: Path, pixels: np.ndarray) -> None:
    """An Adam7-interlaced RGB PNG (Pillow does not write them), filter 0 on every row."""
    height, width = pixels.shape[:2]
    passes = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
    raw = b"".join(
        b"".join(b"\x00" + row.tobytes() for row in pixels[r0::rs, c0::cs])
        for r0, c0, rs, cs in passes
        if pixels[r0::rs, c0::cs].size
    )

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def test_a_png_whose_image_data_ends_early_is_refused(tmp_path, capsys, weights_file, photo):
    bad = tmp_path / "set" / "short.png"
    bad.parent.mkdir()
    _png_with_short_image_data(bad)
    Image.fromarray(photo).save(tmp_path / "set" / "good.png")
    with pytest.raises(iarn.imageio.ImageError, match="truncated or corrupt"):
        read_picture(bad)
    code, _, err = run(capsys, "downscale", bad, "-o", tmp_path / "lr.png", "--scale", "2", "--weights", weights_file)
    assert_one_line_error(code, err, "short.png", "truncated")
    assert not (tmp_path / "lr.png").exists()
    code, out, err = run(capsys, "evaluate", "--data", tmp_path / "set", "--scales", "2", "--weights", weights_file)
    assert code == 1 and "short.png" in err and "(1 images)" in out


def test_interlaced_and_every_mode_of_png_still_read(tmp_path):
    pixels = (np.random.default_rng(1).random((13, 17, 3)) * 255).astype(np.uint8)
    _interlaced_png(tmp_path / "adam7.png", pixels)
    assert np.array_equal(read_picture(tmp_path / "adam7.png").rgb, pixels)
    for mode in ("1", "L", "LA", "P", "RGBA"):
        Image.fromarray(pixels).convert(mode).save(tmp_path / f"{mode}.png")
        read_picture(tmp_path / f"{mode}.png")


# 5. the lossy-LR warning compares pixels -------------------------------------------------


def _lr_file(tmp_path, capsys, photo_file, weights_file) -> Path:
    lr = tmp_path / "lr.png"
    assert run(capsys, "downscale", photo_file, "-o", lr, "--scale", "2", "--weights", weights_file)[0] == 0
    return lr


def _resave(image: Image.Image, path: Path, mode: str) -> None:
    info = PngInfo()
    for key, value in image.info.items():
        if isinstance(value, str):
            info.add_text(key, value)
    image.convert(mode).save(path, pnginfo=info)


def test_an_opaque_rgba_resave_does_not_warn(tmp_path, capsys, photo_file, weights_file):
    image = Image.open(_lr_file(tmp_path, capsys, photo_file, weights_file))
    _resave(image, tmp_path / "re.png", "RGBA")
    code, _, err = run(capsys, "upscale", tmp_path / "re.png", "-o", tmp_path / "up.png", "--weights", weights_file)
    assert code == 0 and "warning" not in err, err


def test_a_palette_resave_of_few_colours_does_not_warn(tmp_path, capsys, weights_file):
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    lr = colours[np.random.default_rng(0).integers(0, 4, (20, 30))]
    source = tmp_path / "lr.png"
    info = PngInfo()
    info.add_text("iarn:hr_size", "60x40")
    info.add_text("iarn:crc32", f"{zlib.crc32(Image.fromarray(lr).tobytes()):08x}")
    Image.fromarray(lr).save(source, pnginfo=info)
    image = Image.open(source)
    _resave(image.quantize(4), tmp_path / "p.png", "P")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert read_picture(tmp_path / "p.png").lossy is None


def test_a_lossy_webp_warns_and_a_missing_size_is_one_line(tmp_path, capsys, photo_file, weights_file):
    image = Image.open(_lr_file(tmp_path, capsys, photo_file, weights_file)).convert("RGB")
    image.save(tmp_path / "lossy.webp", quality=80)
    image.save(tmp_path / "lossless.webp", lossless=True)
    args = ["-o", tmp_path / "up.png", "--weights", weights_file, "--size", "90x70", "--force"]
    code, _, err = run(capsys, "upscale", tmp_path / "lossy.webp", *args)
    assert code == 0 and "lossy WebP" in err, err
    code, _, err = run(capsys, "upscale", tmp_path / "lossless.webp", *args)
    assert code == 0 and "warning" not in err, err
    image.save(tmp_path / "x.jpg", quality=90)
    code, _, err = run(capsys, "upscale", tmp_path / "x.jpg", "-o", tmp_path / "j.png", "--weights", weights_file)
    assert_one_line_error(code, err, "no original size")


# 6. training ------------------------------------------------------------------------------


def test_a_run_that_trains_no_step_writes_no_model(tmp_path, capsys, image_folder):
    from .test_train_safety import tiny_train_args

    code = main(tiny_train_args(image_folder, tmp_path / "run", 10, "--no-progress", "--max-minutes", "1e-9"))
    assert code == 1 and "before its first step" in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_sigterm_during_training_exits_143(image_folder, tmp_path, monkeypatch, capsys):
    from .test_train_safety import SignalAtStep, tiny_train_args

    SignalAtStep(monkeypatch, 2, signal.SIGTERM)
    assert main(tiny_train_args(image_folder, tmp_path / "run", 10, "--no-progress")) == 143
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2


# 7. smaller ------------------------------------------------------------------------------


def test_numpy_integers_are_whole_numbers():
    model = small_model()
    x = torch.rand(1, 3, 32, 32)
    a = model.downscale(x, scale=2, refine=np.int64(2), tile=np.int64(32))
    b = model.downscale(x, scale=2, refine=2, tile=32)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="whole number"):
        model.downscale(x, scale=2, refine=np.float64(2.5))


def test_an_undecodable_file_name_prints_escaped(tmp_path, weights_file, photo_file):
    folder = os.fsencode(tmp_path)
    target = folder + b"/fig\xff.png"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONUTF8": "1"}
    code = (
        "import sys; from iarn.cli import main; "
        f"sys.exit(main(['compare', {str(photo_file)!r}, '--scale', '2', '--weights', {str(weights_file)!r}, "
        f"'-o', {target!r}.decode('utf-8', 'surrogateescape')]))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert os.path.exists(target)


# 8. precision ----------------------------------------------------------------------------


def test_auto_precision_is_fp32_on_every_cpu(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: True)
    assert devices.resolve_precision("auto", torch.device("cpu")) == torch.float32


def test_refinement_works_in_bf16():
    model = iarn.Rescaler(small_model(mode="middle", levels=2).network, device="cpu", precision="bf16")
    hr = torch.rand(1, 3, 48, 48)
    start = model.downscale_pixels(hr, (24, 24), refine=0)
    refined = model.downscale_pixels(hr, (24, 24), refine=4)
    assert not torch.equal(start, refined)
    assert model.network.stages[0][0].f.out.weight.dtype == torch.bfloat16  # the runner's own stays bf16


# 9-11. the README's examples, ONNX memory, devices, info, export --------------------------


def test_cuda_n_is_a_device_the_parser_takes():
    args = build_parser().parse_args(["downscale", "a.png", "-o", "b.png", "--scale", "2", "--device", "cuda:0"])
    assert args.device == "cuda:0"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["downscale", "a.png", "-o", "b.png", "--scale", "2", "--device", "gpu"])


def test_info_shows_no_path_of_a_developers_machine(capsys):
    assert main(["info"]) == 0
    details = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]  # not the install path
    assert details and not any("runs/" in line or "/tmp/" in line for line in details), details


def test_onnx_rescaler_refuses_what_it_cannot_hold():
    from iarn.export import ONNX_MAX_PIXELS, _check_pixels

    _check_pixels((500, 1000))
    with pytest.raises(ValueError, match="tiles large images"):
        _check_pixels((ONNX_MAX_PIXELS // 1000 + 1, 1001))


def test_file_api_writes_an_lr_that_upscales_without_arguments(tmp_path, photo_file):
    model = small_model()
    lr = iarn.downscale_file(model, photo_file, tmp_path / "small.png", scale=2.7)
    assert read_picture(tmp_path / "small.png").hr_size == (70, 90)
    restored = iarn.upscale_file(model, tmp_path / "small.png", tmp_path / "back.png")
    assert restored.size == (70, 90) and lr.size == (26, 33)
    with pytest.raises(ValueError, match="never overwrites an input"):
        iarn.downscale_file(model, photo_file, photo_file, scale=2, overwrite=True)


def test_one_image_on_a_terminal_says_it_started(tmp_path, capsys, monkeypatch, photo_file, weights_file):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run(
        capsys, "downscale", photo_file, "-o", tmp_path / "lr.png", "--scale", "2", "--weights", weights_file
    )
    assert code == 0 and "downscaling" in err and "90x70" in err


def test_export_says_what_it_is_doing_before_the_long_part(tmp_path, capsys):
    from iarn import IARN, save_weights

    small = tmp_path / "small.safetensors"
    save_weights(IARN(first_config(blocks_per_level=1, growth=4)), small)
    assert main(["export", "--onnx", str(tmp_path / "m"), "--weights", str(small)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("exporting")


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_the_main_job_improves_with_refinement_in_any_precision(tmp_path, capsys, precision):
    photo = tmp_path / "photo.png"
    Image.open(SAMPLE).convert("RGB").crop((200, 100, 392, 228)).save(photo)

    def printed(*flags) -> float:
        code, out, err = run(capsys, "roundtrip", photo, "--scale", "2", "--precision", precision, *flags)
        assert code == 0, err
        return float(out.split("iarn round trip    PSNR-Y")[1].split("dB")[0])

    assert printed("--effort", "4") > printed("--effort", "0") + 0.1
