"""The bad-input and fault corpus: every case ends in the expected exit code and one clear line,
leaves no new or changed file behind, and never touches an input.

Each CLI case builds its files in a fresh folder (names ending in `/` are folders), runs
`iarn ARGS` there, and compares every file's bytes and mode before and after; `{w}` stands for a
small weight file. API cases check the exception type and message.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import load_file, save_file

import iarn
from iarn.cli import main
from iarn.imageio import read_picture

from .conftest import small_model

SRC = Path(__file__).resolve().parents[1] / "src"


def _png(size=(40, 56), seed=0, hr_size: str | None = None, mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    info = PngImagePlugin.PngInfo()
    if hr_size:
        info.add_text("iarn:hr_size", hr_size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _jpg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 56, 3), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _png16() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(40 * 56, dtype=np.uint16).reshape(40, 56) * 20).save(buffer, format="PNG")
    return buffer.getvalue()


def _animated(fmt: str) -> bytes:
    frames = [Image.fromarray(np.full((40, 56, 3), v, np.uint8)) for v in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:])
    return buffer.getvalue()


PNG, JPG = _png(), _jpg()
LR = _png((20, 28), seed=1, hr_size="56x40")
TAMPERED = _png((20, 28), seed=1, hr_size="9999x40")
NO_SIZE = _png((20, 28), seed=1)


@dataclass
class Case:
    name: str
    files: dict[str, bytes | None]
    args: list[str]
    message: str
    code: int = 1
    may_create: list[str] = field(default_factory=list)  # outputs a partly failed batch may write


CASES = [
    # outputs that would lose data
    Case(
        "two inputs, one output name",
        {"photos/a.jpg": JPG, "photos/a.png": PNG},
        ["downscale", "photos", "-o", "photos", "--scale", "2", "--force"],
        "would be written over the input photos/a.png",
    ),
    Case(
        "same names from two folders",
        {"x/a.png": PNG, "y/a.png": PNG},
        ["downscale", "x/a.png", "y/a.png", "-o", "out/", "--scale", "2", "--force"],
        "would both be written",
    ),
    Case(
        "output is the input",
        {"a.png": PNG},
        ["downscale", "a.png", "-o", "a.png", "--scale", "2", "--force"],
        "the input itself",
    ),
    Case(
        "output folder holds the inputs",
        {"p/a.png": PNG},
        ["downscale", "p", "-o", "p", "--scale", "2", "--force"],
        "the input itself",
    ),
    Case(
        "a file name for several inputs",
        {"a.png": PNG, "b.png": PNG},
        ["downscale", "a.png", "b.png", "-o", "small.png", "--scale", "2"],
        "names a file",
    ),
    Case(
        "existing output without --force",
        {"a.png": PNG, "o.png": PNG},
        ["downscale", "a.png", "-o", "o.png", "--scale", "2"],
        "exists; pass --force",
    ),
    Case(
        "unknown output extension",
        {"a.png": PNG},
        ["downscale", "a.png", "-o", "lr.xyz", "--scale", "2"],
        "unknown image file extension",
    ),
    Case(
        "output parent is a file",
        {"a.png": PNG, "f": b"x"},
        ["downscale", "a.png", "-o", "f/o.png", "--scale", "2"],
        "cannot write it",
    ),
    Case(
        "roundtrip --save over results",
        {"a.png": PNG, "d/lr.png": PNG},
        ["roundtrip", "a.png", "--scale", "2", "--save", "d"],
        "exists; pass --force",
    ),
    Case(
        "roundtrip --save over its input",
        {"d/lr.png": PNG},
        ["roundtrip", "d/lr.png", "--scale", "2", "--save", "d", "--force"],
        "the input itself",
    ),
    Case(
        "compare over its input",
        {"a.png": PNG},
        ["compare", "a.png", "--scale", "2", "-o", "a.png", "--force"],
        "the input itself",
    ),
    # inputs that cannot be processed
    Case(
        "not an image",
        {"a.png": b"hello"},
        ["downscale", "a.png", "-o", "o.png", "--scale", "2"],
        "not an image Pillow can read",
    ),
    Case(
        "truncated PNG",
        {"a.png": PNG[:200]},
        ["downscale", "a.png", "-o", "o.png", "--scale", "2"],
        "truncated or corrupt",
    ),
    Case("empty file", {"a.png": b""}, ["downscale", "a.png", "-o", "o.png", "--scale", "2"], "empty file"),
    Case("16-bit PNG", {"a.png": _png16()}, ["downscale", "a.png", "-o", "o.png", "--scale", "2"], "16-bit"),
    Case(
        "animated GIF",
        {"a.gif": _animated("GIF")},
        ["downscale", "a.gif", "-o", "o.png", "--scale", "2"],
        "animated image (2 frames)",
    ),
    Case(
        "animated PNG",
        {"a.png": _animated("PNG")},
        ["downscale", "a.png", "-o", "o.png", "--scale", "2"],
        "animated image (2 frames)",
    ),
    Case(
        "animated GIF in a folder",
        {"p/a.gif": _animated("GIF")},
        ["downscale", "p", "-o", "out", "--scale", "2"],
        "animated image",
    ),
    Case("missing input", {}, ["downscale", "nope.png", "-o", "o.png", "--scale", "2"], "no such file"),
    Case("empty folder", {"p/": None}, ["downscale", "p", "-o", "out", "--scale", "2"], "holds no images"),
    Case(
        "one bad file among good ones",
        {"p/a.png": PNG, "p/b.png": b"junk"},
        ["downscale", "p", "-o", "out", "--scale", "2"],
        "not an image",
        may_create=["out/a.png"],
    ),
    # scales, sizes and tiles
    Case("scale below 1", {"a.png": PNG}, ["downscale", "a.png", "-o", "o.png", "--scale", "0.5"], "out of range"),
    Case(
        "scale above the range", {"a.png": PNG}, ["downscale", "a.png", "-o", "o.png", "--scale", "5"], "out of range"
    ),
    Case(
        "malformed scale",
        {"a.png": PNG},
        ["downscale", "a.png", "-o", "o.png", "--scale", "abc"],
        "malformed scale",
        code=2,
    ),
    Case("zero size", {"a.png": PNG}, ["downscale", "a.png", "-o", "o.png", "--size", "0x10"], "at least 1x1", code=2),
    Case(
        "tiny tile",
        {"a.png": PNG},
        ["downscale", "a.png", "-o", "o.png", "--scale", "2", "--tile", "3"],
        "at least 32",
        code=2,
    ),
    Case(
        "upscale to a smaller size",
        {"lr.png": LR},
        ["upscale", "lr.png", "-o", "o.png", "--size", "10x10"],
        "smaller than the LR image",
    ),
    Case("tampered recorded size", {"lr.png": TAMPERED}, ["upscale", "lr.png", "-o", "o.png"], "not plausible"),
    Case("no recorded size", {"lr.png": NO_SIZE}, ["upscale", "lr.png", "-o", "o.png"], "no original size"),
    # weights
    Case(
        "missing weight file",
        {"a.png": PNG},
        ["downscale", "a.png", "-o", "o.png", "--scale", "2", "--weights", "none.safetensors"],
        "no such weight file",
    ),
    Case(
        "unknown bundled model",
        {"a.png": PNG},
        ["downscale", "a.png", "-o", "o.png", "--scale", "2", "--model", "bogus"],
        "bundled: default",
    ),
    Case(
        "weight file of garbage",
        {"a.png": PNG, "w.safetensors": b"garbage"},
        ["downscale", "a.png", "-o", "o.png", "--scale", "2", "--weights", "w.safetensors"],
        "not a readable",
    ),
    # training
    Case(
        "checkpoint every 0",
        {"d/a.png": _png((64, 64))},
        ["train", "--data", "d", "--out", "r", "--checkpoint-every", "0"],
        "checkpoint_every must be a whole number from 1 to",
    ),
    Case(
        "log every 0",
        {"d/a.png": _png((64, 64))},
        ["train", "--data", "d", "--out", "r", "--log-every", "0"],
        "log_every must be a whole number from 1 to",
    ),
    Case(
        "batch size 0",
        {"d/a.png": _png((64, 64))},
        ["train", "--data", "d", "--out", "r", "--batch-size", "0"],
        "batch_size must be a whole number from 1 to",
    ),
    Case(
        "negative steps",
        {"d/a.png": _png((64, 64))},
        ["train", "--data", "d", "--out", "r", "--steps", "-3"],
        "steps must be a whole number from 1 to",
    ),
    Case(
        "resume from a non-checkpoint",
        {"d/a.png": _png((64, 64)), "junk.pt": b"junk"},
        ["train", "--data", "d", "--out", "r", "--resume", "junk.pt"],
        "not an iarn training checkpoint",
    ),
    Case(
        "out names a file",
        {"d/a.png": _png((64, 64)), "r": b"x"},
        ["train", "--data", "d", "--out", "r"],
        "is not a folder",
    ),
    Case("no training data", {}, ["train", "--out", "r"], "no training data"),
    Case(
        "only unreadable training images",
        {"d/a.png": b"junk"},
        ["train", "--data", "d", "--out", "r"],
        "no readable training image",
    ),
    Case("bad config file", {"c.json": b"{not json"}, ["train", "--config", "c.json", "--out", "r"], "not valid JSON"),
    *(
        Case(f"--max-minutes {value}", {}, ["train", "--data", "d", "--max-minutes", value], "expected a", code=2)
        for value in ("inf", "nan", "0", "-1", "x")
    ),
    Case("--stop-at 0", {}, ["train", "--data", "d", "--stop-at", "0"], "positive whole number", code=2),
    *(
        Case(f"export --onnx {name!r}", {"models/": None}, ["export", "--onnx", name], "give a name for the files")
        for name in ("models", "models/", ".", "", "x/..")
    ),
    Case("export over a folder", {"m-downscale.onnx/": None}, ["export", "--onnx", "m", "--force"], "is a folder"),
    Case("a recipe flag of nan", {}, ["train", "--data", "d", "--lr", "nan"], "finite number", code=2),
    Case(
        "--init-from with another architecture",
        {"d/a.png": PNG},
        ["train", "--data", "d", "--init-from", "naive-x2", "--mode", "cycle", "--growth", "16"],
        "asks for mode 'cycle' (the weights: 'naive')",
    ),
    Case(
        "compare --zoom 100000", {"a.png": PNG}, ["compare", "a.png", "-o", "f.png", "--zoom", "100000"], "1 to", code=2
    ),
    # evaluation
    Case("no scales", {"s/a.png": PNG}, ["evaluate", "--data", "s", "--scales"], "expected at least one", code=2),
    Case("old scale list", {"s/a.png": PNG}, ["evaluate", "--data", "s", "--scales", "1.5,2,4"], "SH,SW", code=2),
    Case("scale below 1", {"s/a.png": PNG}, ["evaluate", "--data", "s", "--bicubic-only", "--scales", ".5"], ">= 1"),
    Case(
        "images too small",
        {"s/a.png": _png((12, 12))},
        ["evaluate", "--data", "s", "--scales", "4"],
        "no image is large enough",
    ),
    Case(
        "json into a missing folder",
        {"s/a.png": PNG},
        ["evaluate", "--data", "s", "--scales", "2", "--json", "no/r.json"],
        "folder does not exist",
    ),
    Case(
        "json over a folder",
        {"s/a.png": PNG, "r.json/": None},
        ["evaluate", "--data", "s", "--scales", "2", "--json", "r.json"],
        "is a folder",
    ),
    Case(
        "scale beyond the model",
        {"s/a.png": PNG},
        ["evaluate", "--data", "s", "--scales", "5"],
        "out of range",
    ),
    # usage
    Case("usage hint names the command", {}, ["downscale"], "(see iarn downscale --help)", code=2),
]


def _short_png() -> bytes:
    """A PNG whose image data is a complete zlib stream of half its rows (Pillow fills the rest)."""
    import struct
    import zlib

    data = _png()
    at = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[at : at + 4])[0]
    short = zlib.compress(zlib.decompress(data[at + 8 : at + 8 + length])[: 20 * (1 + 56 * 3)])
    chunk = struct.pack(">I", len(short)) + b"IDAT" + short + struct.pack(">I", zlib.crc32(b"IDAT" + short))
    return data[:at] + chunk + data[at + 12 + length :]


def _lossy_webp() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(LR)).save(buffer, format="WEBP", quality=80)
    return buffer.getvalue()


def _cycle_weights() -> bytes:
    from .conftest import small_network

    model = small_network()
    buffer_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"iarn-cycle-{os.getpid()}.safetensors"
    iarn.save_weights(model, buffer_path)
    content = buffer_path.read_bytes()
    buffer_path.unlink()
    return content


# The surfaces of round 4 (issue 41) and of effort and the corrector (issue 38)
TRAIN_DATA = {"d/a.png": _png((40, 40)), "d/b.png": _png((40, 40), seed=2)}
CASES += [
    Case("effort above 6", {"a.png": PNG}, ["downscale", "a.png", "-o", "b.png", "-s", "2", "-e", "7"], "0 to 6", 2),
    Case("effort not a number", {"a.png": PNG}, ["roundtrip", "a.png", "-s", "2", "--effort", "max"], "effort", 2),
    Case(
        "negative refine", {"a.png": PNG}, ["compare", "a.png", "-o", "f.png", "-s", "2", "--refine", "-1"], "0 to", 2
    ),
    Case(
        "unknown device",
        {"a.png": PNG},
        ["downscale", "a.png", "-o", "b.png", "-s", "2", "--device", "gpu"],
        "cuda:N",
        2,
    ),
    Case(
        "device cuda:x", {"a.png": PNG}, ["upscale", "a.png", "-o", "b.png", "--device", "cuda:x"], "unknown device", 2
    ),
    Case(
        "evaluate json onto an input",
        {"s/a.png": PNG},
        ["evaluate", "--data", "s", "--scales", "2", "--json", "s/a.png", "--force"],
        "never overwrites an input",
    ),
    Case(
        "evaluate plot onto an input",
        {"s/a.png": PNG},
        ["evaluate", "--data", "s", "--scales", "2", "--plot", "s/a.png"],
        "never overwrites an input",
    ),
    Case(
        "evaluate markdown over a file",
        {"s/a.png": PNG, "t.md": b"mine"},
        ["evaluate", "--data", "s", "--scales", "2", "--markdown", "t.md"],
        "--force",
    ),
    Case(
        "evaluate json and markdown one file",
        {"s/a.png": PNG},
        ["evaluate", "--data", "s", "--scales", "2", "--markdown", "t", "--json", "t", "--force"],
        "same file",
    ),
    Case(
        "image data ends early", {"a.png": _short_png()}, ["downscale", "a.png", "-o", "b.png", "-s", "2"], "truncated"
    ),
    Case("roundtrip of a short png", {"a.png": _short_png()}, ["roundtrip", "a.png", "-s", "2"], "truncated"),
    Case(
        "lossy webp without a size", {"a.webp": _lossy_webp()}, ["upscale", "a.webp", "-o", "b.png"], "no original size"
    ),
    Case("jpeg without a size", {"a.jpg": JPG}, ["upscale", "a.jpg", "-o", "b.png"], "no original size"),
    Case(
        "downscale onto itself, forced",
        {"a.png": PNG},
        ["downscale", "a.png", "-o", "a.png", "-s", "2", "--force"],
        "input",
    ),
    Case("corrector without data", {}, ["train-corrector", "--out", "r"], "no training data"),
    Case("upscaler without data", {}, ["train-upscaler", "--out", "r"], "no training data"),
    Case("upscaler quality 0", TRAIN_DATA, ["train-upscaler", "--data", "d", "--quality", "0"], "quality"),
    Case(
        "upscaler qualities reversed",
        TRAIN_DATA,
        ["train-upscaler", "--data", "d", "--quality-min", "90", "--quality-max", "80"],
        "quality_min <= quality_max",
    ),
    Case(
        "upscaler serves nothing",
        TRAIN_DATA,
        ["train-upscaler", "--data", "d", "--serve-min", "99", "--serve-max", "90"],
        "low <= high",
    ),
    Case("upscaler crop", TRAIN_DATA, ["train-upscaler", "--data", "d", "--crop", "30"], "multiple of 8"),
    Case(
        "upscaler merge of no file",
        {},
        ["train-upscaler", "--out", "r", "--merge", "missing.safetensors"],
        "no such weight file",
    ),
    Case("corrector width 0", TRAIN_DATA, ["train-corrector", "--data", "d", "--width", "0"], "corrector width"),
    Case("corrector bound", TRAIN_DATA, ["train-corrector", "--data", "d", "--lr-bound", "clip"], "lr_bound"),
    Case("corrector crop", TRAIN_DATA, ["train-corrector", "--data", "d", "--crop", "30"], "multiple of 8"),
    Case("corrector codec", TRAIN_DATA, ["train-corrector", "--data", "d", "--codec", "png"], "codec must be one of"),
    Case(
        "corrector for a cycle model",
        {**TRAIN_DATA, "w.safetensors": _cycle_weights()},
        ["train-corrector", "--data", "d", "--out", "r", "--base", "w.safetensors", "--crop", "32"],
        "middle or naive",
    ),
    Case(
        "corrector out of time",
        TRAIN_DATA,
        ["train-corrector", "--data", "d", "--out", "r", "--crop", "32", "--max-minutes", "1e-9"],
        "before its first step",
        may_create=["r/corrector-log.jsonl"],
    ),
    Case(
        "train out of time",
        TRAIN_DATA,
        ["train", "--data", "d", "--out", "r", "--max-minutes", "1e-9"],
        "before its first step",
        may_create=["r/log.jsonl", "r/config.json"],
    ),
]
WITH_WEIGHTS = ("downscale", "upscale", "roundtrip", "compare", "evaluate")


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode)
        for p in root.rglob("*")
        if p.is_file() and "weights" not in p.parts
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_corpus(case, tmp_path, capsys, monkeypatch, weights_file):
    root = tmp_path / "case"
    root.mkdir()
    for name, content in case.files.items():
        path = root / name
        if content is None:
            path.mkdir(parents=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    monkeypatch.chdir(root)
    args = list(case.args)
    if args[0] in WITH_WEIGHTS and "--weights" not in args and "--model" not in args:
        args += ["--weights", str(weights_file)]
    if args[0] == "train":
        args += ["--steps", "1"] if "--steps" not in args else []
        args += ["--crop", "32", "--batch-size", "1"] if "--batch-size" not in args else ["--crop", "32"]
        args += ["--blocks-per-level", "1", "--growth", "4", "--no-progress"]
    before = _snapshot(root)
    with pytest.raises(SystemExit) if case.code == 2 else _no_exit() as raised:
        code = main(args)
    if case.code == 2:
        code = raised.value.code
    err = capsys.readouterr().err
    progress = ("img/s]", "img]")  # a folder batch's progress bar shares stderr
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("iarn: warning")]
    lines = [line for line in lines if not line.rstrip().endswith(progress)]
    assert code == case.code, err
    assert len(lines) == 1 and lines[0].startswith("iarn: error:") and "Traceback" not in err, err
    assert case.message in lines[0], lines[0]
    after = _snapshot(root)
    for name, value in before.items():
        assert after.get(name) == value, f"{name} was changed or removed"
    created = sorted(set(after) - set(before) - set(case.may_create))
    assert not created, f"left behind: {created}"


class _no_exit:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_nan_weights_and_absurd_configs_are_refused(tmp_path, weights_file):
    tensors = load_file(str(weights_file))
    name = next(iter(tensors))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    metadata = iarn.weights.read_metadata(weights_file)
    nan_file = tmp_path / "nan.safetensors"
    save_file(tensors, str(nan_file), metadata=metadata)
    with pytest.raises(iarn.WeightsError, match="NaN"):
        iarn.load(nan_file, device="cpu")
    huge = tmp_path / "huge.safetensors"
    config = json.loads(metadata["config"])
    config["growth"] = 200000
    save_file({"x": torch.zeros(1)}, str(huge), metadata={**metadata, "config": json.dumps(config)})
    with pytest.raises(iarn.WeightsError, match="growth must be"):
        iarn.load(huge, device="cpu")
    config["growth"] = 512  # within bounds, but the file holds none of those tensors: refused before building
    save_file({"x": torch.zeros(1)}, str(huge), metadata={**metadata, "config": json.dumps(config)})
    with pytest.raises(iarn.WeightsError, match="do not fit"):
        iarn.load(huge, device="cpu")


def test_plot_without_matplotlib_fails_before_evaluating(tmp_path, capsys, monkeypatch, weights_file):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.png").write_bytes(PNG)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    args = [
        "evaluate",
        "--data",
        str(tmp_path / "s"),
        "--plot",
        str(tmp_path / "p.png"),
        "--weights",
        str(weights_file),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and "| s |" not in capsys.readouterr().out


API_CASES = [
    ("numpy array", lambda m: m.downscale(np.zeros((1, 3, 8, 8), np.float32), scale=2), TypeError, "torch tensor"),
    ("scale as a string", lambda m: m.downscale(torch.rand(1, 3, 8, 8), scale="2"), TypeError, "scale must be"),
    ("0..255 floats", lambda m: m.downscale(torch.rand(1, 3, 8, 8) * 255, scale=2), ValueError, "divide by 255"),
    ("NaN input", lambda m: m.downscale(torch.full((1, 3, 8, 8), float("nan")), scale=2), ValueError, "NaN"),
    ("values above 1", lambda m: m.downscale(torch.rand(1, 3, 8, 8) + 0.5, scale=2), ValueError, "values in [0, 1]"),
    ("uint8 tensor", lambda m: m.downscale(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), scale=2), ValueError, "float"),
    ("upscale without size", lambda m: m.upscale(torch.rand(1, 3, 8, 8), None), ValueError, "original size"),
    ("upscale smaller", lambda m: m.upscale(torch.rand(1, 3, 8, 8), (4, 4)), ValueError, "smaller than the LR"),
    ("tile below minimum", lambda m: m.downscale(torch.rand(1, 3, 64, 64), scale=2, tile=3), ValueError, "at least 32"),
    (
        "PIL image without a recorded size",
        lambda m: iarn.upscale_image(m, Image.open(io.BytesIO(NO_SIZE))),
        ValueError,
        "none is recorded",
    ),
    (
        "16-bit PIL image",
        lambda m: iarn.downscale_image(m, Image.open(io.BytesIO(_png16())), scale=2),
        ValueError,
        "more than 8 bits",
    ),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_corpus(call, error, message):
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        call(small_model())


def test_pil_upscale_reads_the_recorded_size():
    restored = iarn.upscale_image(small_model(), Image.open(io.BytesIO(LR)))
    assert restored.size == (56, 40)


def test_outputs_respect_the_umask_and_keep_an_existing_mode(tmp_path, capsys, weights_file):
    (tmp_path / "a.png").write_bytes(PNG)
    old = os.umask(0o022)
    try:
        common = ["downscale", str(tmp_path / "a.png"), "--scale", "2", "--weights", str(weights_file)]
        assert main([*common, "-o", str(tmp_path / "new.png")]) == 0
        assert (tmp_path / "new.png").stat().st_mode & 0o777 == 0o644
        (tmp_path / "new.png").chmod(0o640)
        assert main([*common, "-o", str(tmp_path / "new.png"), "--force"]) == 0
        assert (tmp_path / "new.png").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_sigterm_leaves_no_temporary_file(tmp_path):
    """Whenever it comes (imports, reading, the network, writing), SIGTERM ends the run with a
    one-line message and 143 (or, before iarn's handler is in place, as SIGTERM does) and
    leaves no file behind."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1200, 1400, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    command = [sys.executable, "-m", "iarn", "downscale", "big.png", "-o", "out/", "--scale", "2",
               "--precision", "fp32", "--force"]  # fmt: skip
    for delay in (0.3, 1.0, 1.5, 2.0, 2.5, 3.5, 6.0):
        shutil.rmtree(tmp_path / "out", ignore_errors=True)  # each run answers for its own outputs
        process = subprocess.Popen(
            command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(SRC)}, stderr=subprocess.PIPE, text=True
        )
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
        assert "Traceback" not in err, err
        assert process.returncode in (0, 143, -signal.SIGTERM), (delay, process.returncode, err)
        if process.returncode == 143:
            assert err.strip().splitlines()[-1] == "iarn: interrupted", err
        assert not list(tmp_path.rglob(".*.tmp")), "a temporary file was left behind"
        if process.returncode != 0:  # nothing, or (the signal came after the rename) the whole LR
            for output in (tmp_path / "out").glob("*") if (tmp_path / "out").exists() else []:
                picture = read_picture(output)
                assert picture.size == (600, 700) and picture.hr_size == (1200, 1400), delay


# A command (in place of `iarn info`) whose signal comes at a chosen moment of its writing.
SIGNAL_SCRIPT = """
import os, signal, sys, time
from pathlib import Path
from iarn import cli, files

folder = Path(sys.argv[1])

def stop(*_):
    os.kill(os.getpid(), signal.SIG{signal})
    time.sleep(5)  # the handler runs here; were it lost, the file would be finished

def command(args):
{body}
    print("finished")
    return 0

cli.COMMANDS["info"] = command
sys.argv = ["iarn", "info"]
cli.entry()
"""

SIGNAL_CASES = {
    "mid-write": (
        "    files.atomic_write(folder / 'a.png', lambda tmp: (Path(tmp).write_bytes(b'half'), stop()))",
        [],
    ),
    "provisional": (  # roundtrip --save: lr.png goes with restored.png
        "    files.atomic_write(folder / 'lr.png', lambda tmp: Path(tmp).write_bytes(b'lr'), provisional=True)\n"
        "    files.atomic_write(folder / 'restored.png', lambda tmp: (Path(tmp).write_bytes(b'half'), stop()))",
        [],
    ),
    "settled": (
        "    files.atomic_write(folder / 'lr.png', lambda tmp: Path(tmp).write_bytes(b'lr'), provisional=True)\n"
        "    files.settle(folder / 'lr.png', keep=True)\n"
        "    stop()",
        ["lr.png"],
    ),
    "critical": (  # the signal waits for the section's end: the rename lands
        "    files.atomic_write(folder / 'a.png', lambda tmp: Path(tmp).write_bytes(b'done'))\n"
        "    with files._critical():\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(0.2)\n"
        "        print('section ended', flush=True)\n"
        "    time.sleep(5)",
        ["a.png"],
    ),
}


@pytest.mark.parametrize("signal_name, code", [("TERM", 143), ("INT", 130)])
@pytest.mark.parametrize("case", sorted(SIGNAL_CASES))
def test_a_signal_removes_what_is_unfinished_and_nothing_else(tmp_path, case, signal_name, code):
    body, kept = SIGNAL_CASES[case]
    script = SIGNAL_SCRIPT.format(signal=signal_name, body=body)
    folder = tmp_path / "out"
    folder.mkdir()
    ended = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=60)
    expected = 143 if case == "critical" else code
    assert ended.returncode == expected and ended.stderr == "iarn: interrupted\n", ended.stderr
    assert "finished" not in ended.stdout
    assert ("section ended" in ended.stdout) == (case == "critical")
    assert sorted(p.name for p in folder.iterdir()) == kept


def test_torch_runtime_errors_become_one_line_with_a_hint(tmp_path, capsys, monkeypatch, weights_file):
    from iarn import cli

    def out_of_memory(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore detail")

    monkeypatch.setitem(cli.COMMANDS, "downscale", out_of_memory)
    (tmp_path / "a.png").write_bytes(PNG)
    assert main(["downscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--scale", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory" in err[0] and "--tile" in err[0]
