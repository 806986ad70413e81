"""Golden test: the bundled model's output on a fixed crop of the sample image is pinned.

A change in geometry, resampling, the encoding or the coupling arithmetic that would silently
break the shipped weights fails here. The LR must match the stored 8-bit PNG (a handful of
pixels may differ by one level, for float rounding on other CPUs), the restored image's PSNR-Y
must match to 0.01 dB. After shipping new weights on purpose: `python tests/golden/regenerate.py`.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import iarn
from iarn.metrics import psnr_y

GOLDEN = Path(__file__).parent / "golden"
CASES = json.loads((GOLDEN / "expected.json").read_text())  # name: bundled model, scale, what it gave


def test_every_trained_bundled_model_is_pinned():
    from iarn.weights import BUNDLED

    assert {case["model"] for case in CASES.values()} == set(BUNDLED) - {"naive-x2"}  # the baseline: no golden


@pytest.mark.parametrize("name", sorted(CASES))
def test_bundled_model_output_is_pinned(name):
    expected = CASES[name]
    hr = np.asarray(Image.open(GOLDEN / "hr.png").convert("RGB"))
    stored_lr = np.asarray(Image.open(GOLDEN / f"lr_{name}.png"))
    model = iarn.load(expected["model"], device="cpu", precision="fp32")
    x = torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].float() / 255
    scale = tuple(expected["scale"])
    lr = model.downscale(x, scale=scale)
    lr8 = (lr[0].permute(1, 2, 0) * 255).round().byte().numpy()
    assert list(lr8.shape) == expected["lr_shape"]
    difference = np.abs(lr8.astype(int) - stored_lr.astype(int))
    assert difference.max() <= 1 and np.mean(difference > 0) < 0.002
    restored = model.upscale(torch.from_numpy(stored_lr.copy()).permute(2, 0, 1)[None].float() / 255, hr.shape[:2])
    up8 = (restored[0].permute(1, 2, 0) * 255).round().byte().numpy()
    assert psnr_y(up8, hr) == pytest.approx(expected["restored_psnr_y"], abs=0.01)


LEGACY = GOLDEN / "legacy"  # LR files of the previous release's default (and jpeg) and what it restored from them


@pytest.mark.parametrize("name", json.loads((LEGACY / "legacy.json").read_text())["images"])
def test_lrs_of_the_previous_release_upscale_to_the_same_pixels(name, tmp_path, capsys):
    """Shipping an LR corrector (or new metadata) leaves the upscaler bit-identical: an LR file
    written by the previous release upscales with the bundled model it names (the default; the
    `jpeg` before its corrector) to what it gave then, and `iarn upscale` takes it as that
    model's own (no warning of a foreign model)."""
    from iarn.cli import main

    legacy = json.loads((LEGACY / "legacy.json").read_text())
    code = main(["upscale", str(LEGACY / f"lr_{name}.png"), "-o", str(tmp_path / "up.png")])
    err = capsys.readouterr().err
    assert code == 0 and "warning" not in err, err
    restored = np.asarray(Image.open(tmp_path / "up.png").convert("RGB")).astype(int)
    then = np.asarray(Image.open(LEGACY / f"restored_{name}.png").convert("RGB")).astype(int)
    assert restored.shape[:2] == tuple(legacy["hr_size"])
    difference = np.abs(restored - then)
    assert difference.max() <= 1 and np.mean(difference > 0) < 0.002
