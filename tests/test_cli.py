import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iarn.cli import main


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("iarn: error:") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_downscale_upscale_folders_end_to_end(tmp_path, capsys, photo, weights_file):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(photo).save(src / "a.png")
    Image.fromarray(photo[:51, :77]).save(src / "sub" / "b.jpg", quality=98)
    code, _, err = run(capsys, "downscale", src, "-o", tmp_path / "lr", "--scale", "1.5,3", "--weights", weights_file)
    assert code == 0, err
    assert Image.open(tmp_path / "lr" / "a.png").size == (30, 47)
    assert Image.open(tmp_path / "lr" / "sub" / "b.png").size == (26, 34)
    code, _, err = run(capsys, "upscale", tmp_path / "lr", "-o", tmp_path / "hr", "--weights", weights_file)
    assert code == 0, err
    assert Image.open(tmp_path / "hr" / "a.png").size == (90, 70)
    assert Image.open(tmp_path / "hr" / "sub" / "b.png").size == (77, 51)


def test_size_flag_and_existing_output_needs_force(tmp_path, capsys, photo_file, weights_file):
    out = tmp_path / "lr.png"
    args = ["downscale", photo_file, "-o", out, "--size", "40x33", "--weights", weights_file]
    assert run(capsys, *args)[0] == 0
    assert Image.open(out).size == (40, 33)
    stamp = out.stat().st_mtime_ns
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "exists", "--force")
    assert out.stat().st_mtime_ns == stamp
    assert run(capsys, *args, "--force")[0] == 0
    code, _, err = run(
        capsys, "upscale", out, "-o", tmp_path / "hr.png", "--size", "90x70", "--tile", "32", "--weights", weights_file
    )
    assert code == 0, err


def test_input_is_never_overwritten(capsys, photo_file, weights_file):
    before = photo_file.read_bytes()
    code, _, err = run(
        capsys, "downscale", photo_file, "-o", photo_file, "--scale", "2", "--force", "--weights", weights_file
    )
    assert_one_line_error(code, err, "input itself")
    assert photo_file.read_bytes() == before


def test_roundtrip_prints_psnr_against_bicubic(tmp_path, capsys, photo_file, weights_file):
    code, out, err = run(
        capsys, "roundtrip", photo_file, "--scale", "2.5", "--weights", weights_file, "--save", tmp_path / "trip"
    )
    assert code == 0, err
    assert "iarn round trip" in out and "bicubic round trip" in out and "dB" in out
    assert (tmp_path / "trip" / "lr.png").exists() and (tmp_path / "trip" / "restored.png").exists()


def test_info(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0 and "iarn" in out and "torch" in out


# -- bad input: one line on stderr, non-zero exit, no output file ------------------------------


def _bad_input_case(tmp_path, capsys, weights_file, source, *extra, fragments=()):
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "downscale", source, "-o", out, *extra, "--weights", weights_file)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.png")]


def test_missing_path(tmp_path, capsys, weights_file):
    _bad_input_case(tmp_path, capsys, weights_file, tmp_path / "nope.png", "--scale", "2", fragments=["no such"])


def test_not_an_image(tmp_path, capsys, weights_file):
    (tmp_path / "notes.png").write_text("hello, not a picture")
    _bad_input_case(tmp_path, capsys, weights_file, tmp_path / "notes.png", "--scale", "2", fragments=["not an image"])


def test_truncated_image(tmp_path, capsys, weights_file, photo_file):
    data = photo_file.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _bad_input_case(tmp_path, capsys, weights_file, tmp_path / "cut.png", "--scale", "2", fragments=["truncated"])


def test_corrupt_image(tmp_path, capsys, weights_file, photo_file):
    data = bytearray(photo_file.read_bytes())
    data[60:200] = bytes(140)
    (tmp_path / "bad.png").write_bytes(bytes(data))
    _bad_input_case(tmp_path, capsys, weights_file, tmp_path / "bad.png", "--scale", "2", fragments=["corrupt"])


def test_zero_size_image(tmp_path, capsys, weights_file):
    (tmp_path / "empty.png").write_bytes(b"")
    _bad_input_case(tmp_path, capsys, weights_file, tmp_path / "empty.png", "--scale", "2", fragments=["empty"])


def test_zero_pixel_image(tmp_path, capsys, weights_file, photo_file):
    data = bytearray(photo_file.read_bytes())
    data[16:20] = (0).to_bytes(4, "big")  # IHDR width 0
    (tmp_path / "zero.png").write_bytes(bytes(data))
    _bad_input_case(tmp_path, capsys, weights_file, tmp_path / "zero.png", "--scale", "2")


def test_decompression_bomb(tmp_path, capsys, weights_file, photo_file, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    _bad_input_case(tmp_path, capsys, weights_file, photo_file, "--scale", "2", fragments=["--allow-huge"])
    code, _, err = run(
        capsys,
        "downscale",
        photo_file,
        "-o",
        tmp_path / "ok.png",
        "--scale",
        "2",
        "--allow-huge",
        "--weights",
        weights_file,
    )
    assert code == 0, err
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_scale_below_one(tmp_path, capsys, weights_file, photo_file):
    _bad_input_case(tmp_path, capsys, weights_file, photo_file, "--scale", "0.5", fragments=["1 to 4"])


def test_scale_above_range(tmp_path, capsys, weights_file, photo_file):
    _bad_input_case(tmp_path, capsys, weights_file, photo_file, "--scale", "2,4.5", fragments=["1 to 4"])


def test_target_larger_than_input(tmp_path, capsys, weights_file, photo_file):
    _bad_input_case(tmp_path, capsys, weights_file, photo_file, "--size", "100x50", fragments=["larger than the input"])


@pytest.mark.parametrize(
    "flag, value",
    [("--size", "40by30"), ("--size", "0x10"), ("--scale", "two"), ("--scale", "1,2,3"), ("--scale", "nan")],
)
def test_malformed_size_or_scale(tmp_path, capsys, weights_file, photo_file, flag, value):
    out = tmp_path / "out.png"
    with pytest.raises(SystemExit) as exit_info:
        main(["downscale", str(photo_file), "-o", str(out), flag, value, "--weights", str(weights_file)])
    err = capsys.readouterr().err
    assert_one_line_error(exit_info.value.code, err, "malformed" if value != "0x10" else "at least")
    assert not out.exists()


def test_upscale_without_size(tmp_path, capsys, weights_file, photo_file):
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "upscale", photo_file, "-o", out, "--weights", weights_file)
    assert_one_line_error(code, err, "no original size")
    assert not out.exists()


def test_missing_weights_file(tmp_path, capsys, photo_file):
    code, _, err = run(
        capsys,
        "downscale",
        photo_file,
        "-o",
        tmp_path / "o.png",
        "--scale",
        "2",
        "--weights",
        tmp_path / "none.safetensors",
    )
    assert_one_line_error(code, err, "no such weight file")


def test_console_script_runs_as_a_process(tmp_path, photo_file, weights_file):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "iarn",
            "downscale",
            str(photo_file),
            "-o",
            str(tmp_path / "o.png"),
            "--scale",
            "9",
            "--weights",
            str(weights_file),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not np.any([p.name == "o.png" for p in tmp_path.iterdir()])


def test_precision_flag(tmp_path, capsys, photo_file, weights_file):
    from iarn.cli import build_parser

    assert build_parser().parse_args(["upscale", "a.png", "-o", "b.png"]).precision == "auto"
    assert build_parser().parse_args(["evaluate", "--data", "d"]).precision == "fp32"  # reproducible tables
    outputs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.png"
        flags = ["--scale", "2.5", "--precision", precision, "--weights", weights_file]
        code, _, err = run(capsys, "downscale", photo_file, "-o", out, *flags)
        assert code == 0, err
        outputs[precision] = np.asarray(Image.open(out), dtype=np.int16)
    assert np.abs(outputs["fp32"] - outputs["bf16"]).max() <= 2
    with pytest.raises(SystemExit) as exit_info:
        main(["downscale", str(photo_file), "-o", str(tmp_path / "x.png"), "--precision", "int4"])
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "invalid choice")


def test_compare_writes_a_four_panel_figure(tmp_path, capsys, photo_file, weights_file):
    out = tmp_path / "figure.png"
    code, printed, err = run(capsys, "compare", photo_file, "--scale", "2.5", "-o", out, "--weights", weights_file)
    assert code == 0, err
    assert "PSNR-Y iarn" in printed and "bicubic" in printed
    with Image.open(out) as figure:
        side = 2 * 48  # the most detailed 48-px square (the photo is 70x90), zoomed twice
        assert figure.size == (4 * side + 12, side + 16)
    code, printed, err = run(capsys, "compare", photo_file, "--scale", "2", "-o", out, "--weights", weights_file)
    assert_one_line_error(code, err, "exists; pass --force")
    args = ("compare", photo_file, "--scale", "2", "-o", out, "--weights", weights_file, "--force", "--crop", "80,0,40")
    code, printed, err = run(capsys, *args)
    assert_one_line_error(code, err, "does not fit")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["downscale", "--help"], ["train", "--help"]])
def test_help_and_version_do_not_import_torch_unless_needed(argv):
    code = (
        "import sys\nfrom iarn.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    # train's flags come from TrainConfig (torch); everything else answers without it
    assert result.stdout.strip().splitlines()[-1] == str(argv[0] == "train")


def test_every_public_name_resolves():
    import iarn

    assert set(iarn.__all__) == {"__version__", *iarn._EXPORTS}
    assert all(getattr(iarn, name) is not None for name in iarn.__all__)
    assert "default" in iarn.weights.BUNDLED  # submodules too, as before the names were lazy
    with pytest.raises(AttributeError):
        iarn.no_such_name  # noqa: B018


def test_batch_pipeline_reports_each_failure_once_and_writes_the_rest(capsys):
    from iarn.cli import CliError
    from iarn.cli import run_batch as _run_batch

    jobs = [(Path(f"in{k}"), Path(f"out{k}")) for k in range(6)]
    written = []

    def read(source, target):
        if source.name == "in1":
            raise CliError("in1: unreadable")
        return source.name

    def compute(item):
        if item == "in3":
            raise ValueError("in3: too small")
        return item.upper()

    def write(result, target):
        if target.name == "out4":
            raise OSError(28, "No space left on device", "out4")
        written.append((result, target.name))

    assert _run_batch(jobs, read, compute, write) == 3
    assert written == [("IN0", "out0"), ("IN2", "out2"), ("IN5", "out5")]
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("iarn: error:")]
    assert errors == [
        "iarn: error: in1: unreadable",
        "iarn: error: in3: too small",
        "iarn: error: out4: No space left on device",
    ]


def test_lr_records_its_model_and_upscale_uses_it(tmp_path, capsys, photo_file, weights_file):
    """A naive-x2 LR upscaled without flags uses naive-x2 (as `--model naive-x2` does); one
    upscaled with another model says so on stderr; a hand-edited record is ignored."""
    from iarn.weights import resolve_weights, weights_id

    lr = tmp_path / "lr.png"
    assert run(capsys, "downscale", photo_file, "-o", lr, "--scale", "1.5", "--model", "naive-x2")[0] == 0
    assert Image.open(lr).info["iarn:model"] == weights_id(resolve_weights("naive-x2"))
    assert weights_id(resolve_weights("naive-x2")).startswith("naive-x2@")
    code, _, err = run(capsys, "upscale", lr, "-o", tmp_path / "auto.png")
    assert code == 0 and err == "", err
    assert run(capsys, "upscale", lr, "-o", tmp_path / "given.png", "--model", "naive-x2")[0] == 0
    assert np.array_equal(np.array(Image.open(tmp_path / "auto.png")), np.array(Image.open(tmp_path / "given.png")))
    code, _, err = run(capsys, "upscale", lr, "-o", tmp_path / "other.png", "--weights", weights_file)
    assert code == 0 and "warning" in err and "naive-x2@" in err and len(err.strip().splitlines()) == 1
    edited = Image.open(lr)
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_text("iarn:hr_size", edited.info["iarn:hr_size"])
    info.add_text("iarn:model", "naive-x2@not-a-hash\n")
    edited.save(tmp_path / "edited.png", pnginfo=info)
    code, _, err = run(capsys, "upscale", tmp_path / "edited.png", "-o", tmp_path / "e.png", "--weights", weights_file)
    assert code == 0 and err == "", err


def test_compare_writes_the_name_it_checked(tmp_path, capsys, photo_file, weights_file):
    """`-o photo.jpg` once wrote photo.png over the input; `-o fig` replaced fig.png unasked."""
    before = photo_file.read_bytes()
    out = photo_file.with_suffix(".jpg")
    code, _, err = run(capsys, "compare", photo_file, "--scale", "2", "-o", out, "--weights", weights_file)
    assert code == 0, err
    assert out.exists() and photo_file.read_bytes() == before
    (tmp_path / "fig.png").write_bytes(b"keep")
    code, _, err = run(capsys, "compare", photo_file, "--scale", "2", "-o", tmp_path / "fig", "--weights", weights_file)
    assert_one_line_error(code, err, "fig.png", "exists")
    assert (tmp_path / "fig.png").read_bytes() == b"keep"


def test_final_rename_never_replaces_a_file_that_appeared_meanwhile(tmp_path, monkeypatch, capsys, photo_file):
    """Two batches into one folder: the check passes for both, the last step must still refuse."""
    from iarn import files
    from iarn.imageio import ImageError, picture_from_array, write_picture

    (tmp_path / "o").mkdir()
    target = tmp_path / "o" / "out.png"

    def write(tmp):
        Path(tmp).write_bytes(b"new")
        target.write_bytes(b"theirs")  # another process finished first

    with pytest.raises(FileExistsError):
        files.atomic_write(target, write, replace=False)
    assert target.read_bytes() == b"theirs" and list(target.parent.iterdir()) == [target]
    files.atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"forced"))
    assert target.read_bytes() == b"forced"
    with pytest.raises(ImageError, match="exists"):
        write_picture(picture_from_array(np.zeros((4, 4, 3), np.uint8)), target, overwrite=False)
    assert target.read_bytes() == b"forced"
    monkeypatch.setattr(files.os, "link", lambda a, b: (_ for _ in ()).throw(OSError("no links here")))
    files.atomic_write(target.parent / "fresh.png", lambda tmp: Path(tmp).write_bytes(b"x"), replace=False)
    assert (target.parent / "fresh.png").read_bytes() == b"x"
    with pytest.raises(FileExistsError):
        files.atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"y"), replace=False)


def test_roundtrip_save_lands_both_files_or_neither(tmp_path, capsys, monkeypatch, photo_file, weights_file):
    from iarn import imageio

    real = imageio.write_picture

    def full_disk_on_the_second(picture, path, **kwargs):
        if Path(path).name == "restored.png":
            raise imageio.ImageError(f"{path}: cannot write it (No space left on device)")
        real(picture, path, **kwargs)

    monkeypatch.setattr(imageio, "write_picture", full_disk_on_the_second)
    save = tmp_path / "out"
    code, _, err = run(capsys, "roundtrip", photo_file, "--scale", "2", "--save", save, "--weights", weights_file)
    assert_one_line_error(code, err, "No space left")
    assert not (save / "lr.png").exists() and not (save / "restored.png").exists()


def test_evaluate_runs_a_repeated_scale_once(tmp_path, capsys, photo_file):
    args = ["evaluate", "--data", photo_file.parent, "--bicubic-only", "--scales", "2", "2", "1.5,4", "2"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "| set | method | x2 | (1.5, 4) |" in out, out
    assert out.count("\n| x2 | -") == 1 and out.count("\n| (1.5, 4) | -") == 1, out


def test_a_file_name_with_a_newline_is_shown_whole_on_one_line(tmp_path, capsys):
    bad = tmp_path / "bad\nname.png"
    bad.write_bytes(b"not an image")
    code, _, err = run(capsys, "downscale", bad, "-o", tmp_path / "o.png", "--scale", "2")
    assert_one_line_error(code, err, "bad\\nname.png")


def test_info_into_a_closed_pipe_is_quiet(tmp_path):
    """`iarn info | head -1` with unbuffered output: no "Broken pipe", exit 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    script = "import sys; from iarn.cli import entry; sys.argv = ['iarn', 'info']; entry()"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left before the first line: every write fails, no race
    try:
        writer = subprocess.run([sys.executable, "-c", script], stdout=write_end, stderr=subprocess.PIPE, env=env)
    finally:
        os.close(write_end)
    assert writer.returncode == 0 and b"Broken pipe" not in writer.stderr, writer.stderr


def test_a_failed_write_names_the_real_file_not_the_temporary(tmp_path):
    import errno

    from iarn.files import atomic_write

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", tmp)

    with pytest.raises(OSError) as raised:
        atomic_write(tmp_path / "model-downscale.onnx", full)
    assert raised.value.filename == str(tmp_path / "model-downscale.onnx") and not list(tmp_path.iterdir())


def test_roundtrip_says_how_many_corrector_passes_ran(photo_file, capsys):
    """Effort 1's partial third pass runs above x2 only: the report says what ran."""
    for scale, passes in (("2", "in 2 passes"), ("2.5", "in 2.4 passes")):
        assert main(["roundtrip", str(photo_file), "--scale", scale]) == 0
        assert f"corrector on {passes}," in capsys.readouterr().out
