"""Training smoke tests on small synthetic images: steps, interrupt and resume, DDP, evaluate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iarn import load_weights
from iarn.cli import main
from iarn.data import CropSampler, sample_scale
from iarn.model import ModelConfig
from iarn.train import TrainConfig, learning_rate, train

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
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


def small_config(folder, out, **overrides) -> TrainConfig:
    values = dict(
        data=(str(folder),),
        out=str(out),
        model=ModelConfig(blocks_per_level=1, growth=4),
        steps=6,
        batch_size=2,
        crop=32,
        checkpoint_every=3,
        log_every=1,
        warmup=2,
    )
    values.update(overrides)
    return TrainConfig(**values)


def tiny_train_args(folder, out, steps, *extra) -> list[str]:
    """`iarn train` arguments for a few steps of a one-block model on 32-pixel crops."""
    sizes = ["--batch-size", "2", "--crop", "32", "--blocks-per-level", "1", "--growth", "4"]
    return ["train", "--data", str(folder), "--out", str(out), "--steps", str(steps), *sizes, *extra]


def test_sampler_crops_augments_and_skips_small_images(image_folder):
    sampler = CropSampler([image_folder], crop=32)
    assert len(sampler.images) == 4
    batch = sampler.batch(5, np.random.default_rng(0))
    assert batch.shape == (5, 3, 32, 32) and batch.dtype == torch.uint8


def test_scale_sampling_covers_the_range_with_an_asymmetric_share():
    rng = np.random.default_rng(0)
    draws = [sample_scale(rng, 1.1, 4.0, 2.0, 0.3) for _ in range(4000)]
    values = np.array(draws)
    assert values.min() >= 1.1 and values.max() <= 4.0
    asymmetric = np.mean(values[:, 0] != values[:, 1])
    assert 0.25 < asymmetric < 0.35
    assert np.mean(values[:, 0] > 2.55) > 0.6  # s^2 density favours large scales


def test_learning_rate_schedules():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 100) == pytest.approx(0, abs=1e-12)
    step = TrainConfig(steps=100, warmup=0, lr=1e-3, schedule="step")
    assert learning_rate(step, 60) == pytest.approx(5e-4) and learning_rate(step, 95) == pytest.approx(1.25e-4)


@pytest.mark.parametrize("mode", ["cycle", "split"])
def test_interrupted_and_resumed_run_equals_uninterrupted(image_folder, tmp_path, mode):
    model = ModelConfig(blocks_per_level=1, growth=4, mode=mode)
    straight = train(small_config(image_folder, tmp_path / "a", model=model), progress=False)
    partial = train(small_config(image_folder, tmp_path / "b", model=model), progress=False, stop_at=3)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 3
    assert load_weights(partial).config == model
    resumed = train(small_config(image_folder, tmp_path / "b", model=model), resume="auto", progress=False)
    a, b = load_weights(straight).state_dict(), load_weights(resumed).state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    records = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) and r["steps_per_s"] > 0 for r in records)


def test_init_from_fine_tunes_given_weights(image_folder, tmp_path):
    first = train(small_config(image_folder, tmp_path / "first", steps=2), progress=False)
    tuned = train(
        small_config(image_folder, tmp_path / "tuned", steps=2, model=ModelConfig()),
        init_from=str(first),
        progress=False,
    )
    assert load_weights(tuned).config == load_weights(first).config


def test_cli_train_then_evaluate(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_train_args(image_folder, out, 3, "--mode", "split", "--no-progress", "--log-every", "1")
    assert main(args) == 0
    assert "model.safetensors" in capsys.readouterr().out
    table, results = tmp_path / "table.md", tmp_path / "results.json"
    code = main(
        [
            "evaluate",
            "--data",
            str(image_folder),
            "--scales",
            "2,3",
            "--asym",
            "1.5x4",
            "--weights",
            str(out / "model.safetensors"),
            "--markdown",
            str(table),
            "--json",
            str(results),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and f"| {image_folder.name} | iarn |" in printed and "bicubic" in printed
    data = json.loads(results.read_text())[image_folder.name]
    assert set(data) == {"x2", "x3", "(1.5, 4)"}
    assert data["x2"]["images"] == 4 and data["x2"]["skipped_too_small"] == 1 and data["x2"]["iarn"]["lr_psnr_y"] > 20


def test_config_file_and_unknown_fields(image_folder, tmp_path, capsys):
    config = tmp_path / "cfg.json"
    config.write_text(
        json.dumps(
            {
                "data": [str(image_folder)],
                "steps": 1,
                "crop": 32,
                "batch_size": 1,
                "model": {"blocks_per_level": 1, "growth": 4},
            }
        )
    )
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    config.write_text(json.dumps({"steps": 1, "wat": 2}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r2")]) == 1
    assert "unknown training config fields" in capsys.readouterr().err


def test_ddp_two_processes_on_cpu(image_folder, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "iarn"]
    command = launcher + tiny_train_args(image_folder, tmp_path / "ddp", 4, "--checkpoint-every", "2", "--no-progress")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 x cpu" in result.stdout
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and len(state["rng"]) == 2
    assert load_weights(tmp_path / "ddp" / "model.safetensors").config.blocks_per_level == 1
