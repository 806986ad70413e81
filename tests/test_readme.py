"""Every code block of the README runs as written, in a folder holding what its examples name
(photo.png, photos/, Set5/), with the bundled weights.

The one edit: the training commands get `--steps 2` (and small crops), since a test cannot
train for 20,000 steps; every other line runs exactly as the README has it. The ONNX blocks run
on graphs of a small model exported under the names it uses (exporting the bundled model takes
minutes; tests/test_export.py checks that export)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iarn.cli import main, sample_image_path

README = Path(__file__).resolve().parents[1] / "README.md"
TRAINING_EDITS = {"train": ["--steps", "2", "--crop", "32", "--batch-size", "2"]}
TRAINING_EDITS["train-corrector"] = TRAINING_EDITS["train-upscaler"] = TRAINING_EDITS["train"]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    sample = Image.open(sample_image_path()).convert("RGB")
    photo = sample.crop((200, 100, 392, 228))  # 192x128: every example runs in seconds
    photo.save(tmp_path / "photo.png")
    for folder, count in (("photos", 2), ("Set5", 2)):
        (tmp_path / folder).mkdir()
        for k in range(count):
            sample.crop((64 * k, 64 * k, 64 * k + 160, 64 * k + 144)).save(tmp_path / folder / f"{k}.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def commands() -> list[list[str]]:
    lines = [line.split("#")[0].strip() for block in blocks("sh") for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line]


def test_the_readme_has_the_blocks_this_test_runs():
    assert len(commands()) >= 10 and all(argv[0] == "iarn" for argv in commands())
    assert len(blocks("python")) == 3


def test_every_shell_block_runs_as_written(workspace, capsys):
    for argv in commands():
        args = argv[1:] + TRAINING_EDITS.get(argv[1], [])
        code = main(args)
        assert code == 0, (argv, capsys.readouterr().err)
    assert Image.open(workspace / "restored.png").size == (192, 128)
    assert (workspace / "small" / "0.png").exists() and (workspace / "table.md").exists()


def test_the_python_api_block_runs_as_written(workspace):
    exec(compile(blocks("python")[0], "README.md (Python API)", "exec"), {})
    assert Image.open(workspace / "restored.png").size == (192, 128)


def test_the_onnx_block_runs_as_written(workspace):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from iarn.export import export_onnx, onnx_paths

    from .conftest import small_network

    export_onnx(small_network(mode="middle", levels=2), *onnx_paths("iarn"))
    for block in blocks("python")[1:]:  # onnxruntime alone (also run without iarn: test_export.py), and OnnxRescaler
        namespace: dict = {}
        exec(compile(block, "README.md (ONNX)", "exec"), namespace)
        assert namespace["restored"].shape == (1, 3, 128, 192)
        assert np.isfinite(namespace["restored"]).all()
