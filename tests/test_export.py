"""ONNX export: both graphs in onnxruntime against PyTorch, on odd sizes and asymmetric scales."""

import numpy as np
import pytest
import torch

import iarn
from iarn.cli import main
from iarn.export import OnnxRescaler, export_onnx, onnx_paths
from iarn.geometry import size_for_scale
from iarn.model import IARN
from iarn.model.modes import MODES, MiddleImageMode
from iarn.refine import RefineConfig

from .conftest import first_config

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# (H, W), scale: odd, prime and even sides; non-integer, asymmetric, identity and extreme factors
CASES = [
    ((131, 197), (1.7, 3.3)),
    ((200, 201), 2.5),
    ((97, 113), (4, 1.5)),
    ((64, 61), 1.0),
    ((64, 61), (1, 2.5)),
    ((127, 89), 3.7),
]


def _image(size, seed=0) -> torch.Tensor:
    """Smooth structure with texture, (1, 3, H, W) in [0, 1]."""
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    rng = np.random.default_rng(seed)
    base = np.stack([np.sin(x / 5 + c) * np.cos(y / 7 - c) for c in range(3)]) * 0.35 + 0.5
    return torch.from_numpy((base + rng.normal(0, 0.03, base.shape)).clip(0, 1)).float()[None]


def _sessions(folder, model):
    down, up = onnx_paths(folder / "model")
    export_onnx(model, down, up)
    options = ort.SessionOptions()
    return tuple(ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (down, up))


@pytest.fixture(scope="module")
def bundled_files(tmp_path_factory):
    down, up = onnx_paths(tmp_path_factory.mktemp("onnx") / "model")
    export_onnx(iarn.load("default", device="cpu"), down, up)
    return down, up


@pytest.fixture(scope="module")
def bundled_sessions(bundled_files):
    return tuple(ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in bundled_files)


def test_graphs_answer_nan_for_values_outside_0_1(bundled_sessions):
    down, up = bundled_sessions
    hr = _image((40, 48)).numpy()
    (lr,) = down.run(None, {"hr": hr * 255, "lr_shape": np.zeros((20, 24), np.uint8)})
    assert np.isnan(lr).all()
    (good,) = down.run(None, {"hr": hr, "lr_shape": np.zeros((20, 24), np.uint8)})
    assert np.isfinite(good).all()
    (back,) = up.run(None, {"lr": good * 255, "hr_shape": np.zeros((40, 48), np.uint8)})
    assert np.isnan(back).all()


def test_onnx_rescaler_refuses_bad_input_in_one_line(bundled_files):
    model = OnnxRescaler(*bundled_files)
    assert model.config == iarn.load("default", device="cpu").config
    hr = _image((40, 48)).numpy()
    cases = [
        (lambda: model.downscale(hr * 255, scale=2), "0..255"),
        (lambda: model.downscale(hr, size=(0, 12)), "at least 1x1"),
        (lambda: model.downscale(hr, size=(10, 12)), "at least 16 pixels"),
        (lambda: model.downscale(hr, scale=5), "out of range"),
        (lambda: model.downscale(hr[0], scale=2), "(1, 3, H, W)"),
        (lambda: model.upscale(hr[:, :, :20, :24], size=(100, 100)), "upscales by 1 to 4"),
    ]
    for call, message in cases:
        with pytest.raises((ValueError, TypeError)) as error:
            call()
        assert message in str(error.value) and "\n" not in str(error.value)
    lr = model.downscale(hr, scale=2)
    assert lr.shape == (1, 3, 20, 24) and model.upscale(lr, size=(40, 48)).shape == (1, 3, 40, 48)


def _compare(model, sessions, size, scale):
    down, up = sessions
    hr = _image(size)
    lr_size = size_for_scale(size, scale)
    model.correct = False  # the graph is the forward pass: no corrector, no LR bound (OnnxRescaler holds it)
    lr_torch = model.downscale(hr, size=lr_size, refine=RefineConfig(lr_psnr_min=0))
    (lr_onnx,) = down.run(None, {"hr": hr.numpy(), "lr_shape": np.zeros(lr_size, np.uint8)})
    assert lr_onnx.shape == (1, 3, *lr_size)
    differ = np.round(lr_onnx * 255) != np.round(lr_torch.numpy() * 255)
    (hr_onnx,) = up.run(None, {"lr": lr_torch.numpy(), "hr_shape": np.zeros(size, np.uint8)})
    hr_torch = model.upscale(lr_torch, size=size)
    assert hr_onnx.shape == (1, 3, *size)
    return differ.mean(), np.abs(hr_onnx - hr_torch.numpy()).max()


@pytest.mark.parametrize("size, scale", CASES, ids=[f"{s[0]}x{s[1]}@{c}" for s, c in CASES])
def test_bundled_model_graphs_match_pytorch(bundled_sessions, size, scale):
    model = iarn.load("default", device="cpu")
    lr_share, hr_error = _compare(model, bundled_sessions, size, scale)
    assert lr_share < 1e-3  # 8-bit LR values that differ (a rounding tie now and then)
    assert hr_error < 1 / 255


# every mode (the bundled model's layout is the test above): two levels where the mode allows
MODE_CONFIGS = {name: {"mode": name, "levels": 1 if name == "naive" else 2} for name in MODES}
MODE_CONFIGS["middle-per-count"] = {**MODE_CONFIGS["middle"], "step_stages": "per-count"}


@pytest.mark.parametrize("config", MODE_CONFIGS.values(), ids=list(MODE_CONFIGS))
def test_other_modes_export(tmp_path, config):
    torch.manual_seed(0)
    model = IARN(first_config(**config, blocks_per_level=1, growth=4)).eval()
    for parameter in model.parameters():  # not the identity a fresh model is
        parameter.data.add_(torch.randn_like(parameter) * 0.02)
    sessions = _sessions(tmp_path, model)
    runner = iarn.Rescaler(model, device="cpu")
    # the middle image's modes: one x2 step or two, the least-squares inverse (x1.3; an odd side
    # at x2, its worst conditioned case) and bicubic back (naive at x2.5)
    extra = [((61, 83), 1.3), ((67, 71), 2)] if isinstance(MODES[config["mode"]], MiddleImageMode) else []
    for size, scale in CASES[:3] + extra:
        lr_share, hr_error = _compare(runner, sessions, size, scale)
        assert lr_share < 1e-3 and hr_error < 1 / 255, (size, scale)


def test_cli_export_writes_both_graphs_and_refuses_to_overwrite(tmp_path, capsys):
    small = tmp_path / "small.safetensors"
    iarn.save_weights(IARN(first_config(blocks_per_level=1, growth=4)), small)
    name = tmp_path / "out" / "iarn.onnx"
    assert main(["export", "--onnx", str(name), "--weights", str(small)]) == 0
    down, up = onnx_paths(name)
    assert down.name == "iarn-downscale.onnx" and up.stat().st_size > 10_000 and down.stat().st_size > 10_000
    assert capsys.readouterr().out.strip().startswith("wrote ")  # the exporter's own chatter is kept quiet
    assert main(["export", "--onnx", str(name)]) == 1
    assert "exists" in capsys.readouterr().err


def test_readme_onnx_example_runs_without_iarn(tmp_path):
    """The README's onnxruntime example, verbatim, in a process that cannot import iarn."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## ONNX") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    small = tmp_path / "small.safetensors"
    iarn.save_weights(IARN(first_config(blocks_per_level=1, growth=4)), small)
    assert main(["export", "--onnx", str(tmp_path / "iarn"), "--weights", str(small)]) == 0
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    blocker = "import sys\nsys.modules['iarn'] = None\n"  # `import iarn` would now fail
    subprocess.run([sys.executable, "-c", blocker + code], cwd=tmp_path, check=True, timeout=120)
    with Image.open(tmp_path / "lr.png") as lr, Image.open(tmp_path / "restored.png") as restored:
        assert lr.size == (48, 33) and restored.size == (130, 90)
