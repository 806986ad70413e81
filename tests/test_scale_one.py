"""Scale 1 and axes at ratio 1 (issue 25): an axis that keeps its size is never changed, and no
accepted size and scale round-trips below bicubic."""

import numpy as np
import pytest
import torch
from PIL import Image

import iarn
from iarn.geometry import size_for_scale
from iarn.metrics import psnr_y
from iarn.model import quantize_8bit
from iarn.model.modes import RESAMPLE
from iarn.resample import resize
from tests.conftest import small_model
from tests.test_cli import run


@pytest.fixture(scope="module")
def bundled():
    return iarn.load("default", device="cpu")


def textured(size, seed=0) -> torch.Tensor:
    """Edges, smooth shading and noise: (1, 3, H, W) in [0, 1], 8-bit values."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float64)
    base = np.stack([np.sin(x / 3 + c) * np.cos(y / 5 - c) + (x + 2 * y > size[1]) * 0.6 for c in range(3)])
    pixels = np.clip((base + 1.2) / 3 + rng.normal(0, 0.05, base.shape), 0, 1)
    return torch.from_numpy(np.round(pixels * 255) / 255).float()[None]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()


def bicubic_round_trip(hr: torch.Tensor, lr_size) -> torch.Tensor:
    return resize(quantize_8bit(resize(hr, lr_size)), tuple(hr.shape[-2:])).clamp(0, 1)


@pytest.mark.parametrize("size", [(7, 5), (31, 29), (64, 48), (17, 300)])
def test_scale_one_is_the_identity(bundled, size):
    hr = textured(size)
    lr = bundled.downscale(hr, scale=1)
    assert torch.equal(lr, hr)
    assert torch.equal(bundled.upscale(lr, size=size), hr)


# (H, W), scale: tiny, odd, prime, long and thin; one axis at ratio 1, both near 1, and further
GRID = [
    ((7, 5), 1.01),
    ((7, 5), (1, 4)),
    ((17, 300), 1.01),
    ((17, 300), (1, 1.5)),
    ((64, 48), (1, 1.01)),
    ((64, 48), (1.01, 1)),
    ((64, 48), (1, 1.2)),
    ((64, 48), (1.3, 1)),
    ((61, 67), (1.5, 1)),
    ((61, 67), (1, 3.7)),
    ((61, 67), 1.02),
    ((61, 67), (1.05, 1.02)),
    ((96, 80), 1.1),
    ((96, 80), (1.05, 1.5)),
    ((97, 53), (4, 1.02)),
]


@pytest.mark.parametrize("size, scale", GRID, ids=[f"{s[0]}x{s[1]}@{c}" for s, c in GRID])
def test_no_round_trip_is_worse_than_bicubic(bundled, size, scale):
    hr = textured(size, seed=sum(size))
    lr_size = size_for_scale(size, scale)
    restored = bundled.upscale(bundled.downscale(hr, size=lr_size), size=size)
    ours = psnr_y(to_uint8(restored), to_uint8(hr))
    bicubic = psnr_y(to_uint8(bicubic_round_trip(hr, lr_size)), to_uint8(hr))
    assert ours >= bicubic - 1e-6, (ours, bicubic)


def test_a_kept_axis_is_left_alone_and_tiles_agree():
    model = small_model(mode="middle", levels=2, step_stages="per-count")
    hr = textured((70, 90))
    lr_whole = model.downscale(hr, size=(70, 41))
    assert model.network.geometry((70, 90), (70, 41)) is RESAMPLE
    assert torch.equal(lr_whole, quantize_8bit(resize(hr, (70, 41))))
    assert torch.equal(model.downscale(hr, size=(70, 41), tile=32), lr_whole)
    restored = model.upscale(lr_whole, size=(70, 90))
    assert torch.allclose(model.upscale(lr_whole, size=(70, 90), tile=32), restored, atol=1e-6)
    assert torch.allclose(restored, resize(lr_whole, (70, 90)).clamp(0, 1), atol=1e-6)


def test_cli_scale_one_round_trip_returns_the_input(tmp_path, capsys, photo_file):
    lr, back = tmp_path / "lr.png", tmp_path / "back.png"
    code, _, err = run(capsys, "downscale", photo_file, "-o", lr, "--scale", "1")
    assert code == 0, err
    code, _, err = run(capsys, "upscale", lr, "-o", back)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(back)), np.asarray(Image.open(photo_file)))
