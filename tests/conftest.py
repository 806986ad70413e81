"""Shared fixtures: small models with random non-zero weights, weight files, test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iarn import IARN, ModelConfig, Rescaler, save_weights
from iarn.model.network import FIRST_DEFAULTS

SHARED = Path(__file__).resolve().parents[2] / "shared"
BENCHMARK = SHARED / "data" / "benchmark"


def randomize(model: IARN, std: float = 0.05, seed: int = 0) -> IARN:
    """Non-zero weights everywhere, so no block is the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model.eval()


def first_config(**fields) -> ModelConfig:
    """A ModelConfig whose unnamed fields are the first release's defaults (a `cycle` model of one
    level, `shared` stages): what the tests were written against before ModelConfig()'s defaults
    became the shipped architecture."""
    return ModelConfig(**{**FIRST_DEFAULTS, **fields})


def small_network(**overrides) -> IARN:
    """A small IARN (2 blocks, growth 8; `overrides` are ModelConfig fields, the rest as
    `first_config`), random weights."""
    config = first_config(**{"blocks_per_level": 2, "growth": 8, **overrides})
    torch.manual_seed(0)
    return randomize(IARN(config))


def small_model(**overrides) -> Rescaler:
    """`small_network` ready for inference on the CPU in fp32."""
    return Rescaler(small_network(**overrides), device="cpu")


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "small.safetensors"
    save_weights(small_network(), path)
    return path


@pytest.fixture
def photo() -> np.ndarray:
    """A smooth, textured 8-bit RGB test image (H, W, 3) = (70, 90, 3)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:70, 0:90].astype(np.float64)
    base = np.stack([np.sin(x / 7) + np.cos(y / 5), np.sin((x + y) / 9), np.cos(x / 4 - y / 11)], axis=2)
    noisy = (base + 2) / 4 + rng.normal(0, 0.03, base.shape)
    return (np.clip(noisy, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture
def photo_file(tmp_path, photo) -> Path:
    """`photo` as a PNG file (in a folder of its own)."""
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    Image.fromarray(photo).save(path)
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Four small training images (PNG and lossless WebP, one nested) and one too small to crop."""
    folder = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    (folder / "nested").mkdir()
    for k in range(4):
        size = (40 + 8 * k, 56)
        y, x = np.mgrid[0 : size[0], 0 : size[1]]
        base = np.stack([np.sin(x / (3 + k)), np.cos(y / 4), np.sin((x + y) / 6)], axis=2)
        pixels = ((base + 1) / 2 * 200 + rng.normal(0, 10, base.shape)).clip(0, 255).astype(np.uint8)
        target = folder / ("nested" if k % 2 else "") / f"img{k}.{['png', 'webp'][k % 2]}"
        Image.fromarray(pixels).save(target, lossless=True) if k % 2 else Image.fromarray(pixels).save(target)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(folder / "too_small.png")
    return folder
