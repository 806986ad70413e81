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

from iarn import IARN, load_weights
from iarn.cli import main
from iarn.data import CropSampler, sample_scale
from iarn.model import ModelConfig
from iarn.train import learning_rate, train
from iarn.train_config import TrainConfig

from .conftest import first_config

SRC = Path(__file__).resolve().parents[1] / "src"


def small_config(folder, out, **overrides) -> TrainConfig:
    values = dict(
        data=(str(folder),),
        out=str(out),
        model=first_config(blocks_per_level=1, growth=4),
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
    assert len(sampler) == 4
    batch = sampler.batch(5, np.random.default_rng(0))
    assert batch.shape == (5, 3, 32, 32) and batch.dtype == torch.uint8 and batch.is_contiguous()


def test_sampler_gather_equals_numpy_crop_flip_and_rotation(image_folder):
    """The one-gather batch equals cutting, flipping and np.rot90-ing each crop on the host."""
    sampler = CropSampler([image_folder], crop=32)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in sampler.sources]
    for seed in range(6):
        draws = sampler.draw(16, np.random.default_rng(seed))
        batch = sampler.batch(16, np.random.default_rng(seed)).numpy()
        assert set(draws[4]) == {0, 1, 2, 3} or seed  # every rotation shows up in some batch
        for k, (image, top, left, flip, turns) in enumerate(draws.T):
            crop = arrays[image][top : top + 32, left : left + 32]
            crop = np.rot90(crop[:, ::-1] if flip else crop, k=int(turns))
            assert np.array_equal(batch[k].transpose(1, 2, 0), crop)


def test_sampler_shards_and_skips_unreadable_files(image_folder, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    for path in sorted(image_folder.rglob("*.png")) + sorted(image_folder.rglob("*.webp")):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    everything = CropSampler([folder], crop=32)
    assert len(everything) == 4 and "skipping" in capsys.readouterr().err and "broken.png" not in map(str, [])
    halves = [CropSampler([folder], crop=32, shard=(k, 2)) for k in range(2)]
    assert sorted(p.name for h in halves for p in h.sources) == sorted(p.name for p in everything.sources)


def test_scale_sampling_covers_the_range_with_an_asymmetric_share():
    rng = np.random.default_rng(0)
    draws = [sample_scale(rng, 1.1, 4.0, 2.0, 0.3) for _ in range(4000)]
    values = np.array(draws)
    assert values.min() >= 1.1 and values.max() <= 4.0
    asymmetric = np.mean(values[:, 0] != values[:, 1])
    assert 0.25 < asymmetric < 0.35
    assert np.mean(values[:, 0] > 2.55) > 0.6  # s^2 density favours large scales


def test_learning_rate_schedules():
    cfg = TrainConfig(steps=100, warmup=10, learning_rate=1e-3)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 100) == pytest.approx(0, abs=1e-12)
    step = TrainConfig(steps=100, warmup=0, learning_rate=1e-3, schedule="step")
    assert learning_rate(step, 60) == pytest.approx(5e-4) and learning_rate(step, 95) == pytest.approx(1.25e-4)


class StepClock:
    """A clock that advances `seconds(k)` for the k-th training step (one second by default),
    whatever the machine's speed."""

    def __init__(self, monkeypatch, seconds=lambda k: 1.0) -> None:
        import iarn.train as train_module

        self.now, self.steps = 0.0, 0
        real_step = train_module.train_step

        def step(*args, **kwargs):
            self.steps += 1
            self.now += seconds(self.steps)
            return real_step(*args, **kwargs)

        monkeypatch.setattr(train_module, "train_step", step)

    def __call__(self) -> float:
        return self.now


def test_fit_steps_sizes_the_schedule_to_the_time(image_folder, tmp_path, monkeypatch):
    clock = StepClock(monkeypatch)  # 1 step/s: the probe (steps 10-50) measures exactly that
    cfg = small_config(image_folder, tmp_path / "fit", steps=10_000, checkpoint_every=1000, warmup=100)
    train(cfg, progress=False, max_minutes=2, fit_steps=True, clock=clock)
    saved = torch.load(tmp_path / "fit" / "checkpoint.pt", weights_only=True)
    # 120 s less 2 % = 117.6 s; at step 50 (50 s gone) 67.6 s at 1 step/s are left: step 117
    assert saved["train_config"]["steps"] == saved["step"] == 117


def test_fit_steps_sizes_the_schedule_again_when_the_machine_speeds_up(image_folder, tmp_path, monkeypatch):
    """A probe on a busy machine (4 s a step for the first 60 steps, then 1 s) must not leave the
    run ending at half its time: the schedule is sized again at each tenth of the time up to half."""
    clock = StepClock(monkeypatch, seconds=lambda k: 4.0 if k <= 60 else 1.0)
    cfg = small_config(image_folder, tmp_path / "refit", steps=10_000, checkpoint_every=1000, warmup=10)
    train(cfg, progress=False, max_minutes=10, fit_steps=True, clock=clock)
    saved = torch.load(tmp_path / "refit" / "checkpoint.pt", weights_only=True)
    # the probe (steps 10-50, 4 s each) alone would end the schedule at step 50 + (588 - 200) / 4 = 147;
    # at 1 step/s from step 60 (240 s) on, the refits size it to the 588 s: about step 408
    assert 400 <= saved["step"] == saved["train_config"]["steps"] <= 410
    assert clock.now <= 600


def test_the_log_records_the_step_the_clock_stops_at(image_folder, tmp_path, monkeypatch):
    """A slow machine's run may end by the clock between log steps: its last step is logged."""
    clock = StepClock(monkeypatch)
    cfg = small_config(image_folder, tmp_path / "clock", steps=1000, log_every=25)
    train(cfg, progress=False, max_minutes=0.3, clock=clock)  # 18 s: 19 steps, none a log step
    records = [json.loads(line) for line in (tmp_path / "clock" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [19]
    train(small_config(image_folder, tmp_path / "stop", steps=1000, log_every=25), progress=False, stop_at=7)
    assert [json.loads(line)["step"] for line in (tmp_path / "stop" / "log.jsonl").read_text().splitlines()] == [7]

    capped = train(
        small_config(image_folder, tmp_path / "cap", steps=55), progress=False, max_minutes=5, fit_steps=True
    )
    assert torch.load(tmp_path / "cap" / "checkpoint.pt", weights_only=True)["step"] == 55
    assert load_weights(capped).config == cfg.model
    with pytest.raises(ValueError, match="max_minutes"):
        train(cfg, progress=False, fit_steps=True)


@pytest.mark.parametrize("mode", ["cycle", "split"])
def test_interrupted_and_resumed_run_equals_uninterrupted(image_folder, tmp_path, mode):
    model = first_config(blocks_per_level=1, growth=4, mode=mode)
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


def test_fine_tuning_the_bundled_default_by_name_drops_its_corrector(image_folder, tmp_path):
    """`--init-from default` names the bundled file; its corrector was trained against the
    upscaler this run changes, so the tuned file has none; a codec run records its codec."""
    from iarn.weights import resolve_weights, trained_codec

    assert load_weights(resolve_weights("default")).corrector is not None
    cfg = small_config(image_folder, tmp_path / "tuned", steps=1, codec="jpeg", crop=32)
    tuned = train(cfg, init_from="default", progress=False)
    model = load_weights(tuned)
    assert model.corrector is None and model.config == load_weights(resolve_weights("default")).config
    assert trained_codec(tuned) == "jpeg" and trained_codec(resolve_weights("default")) is None


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
            "2",
            "3",
            "1.5,4",
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
    """torchrun with gloo: two ranks, each decoding half the images; robust to a busy machine
    (a free port from --standalone, long rendezvous and collective timeouts)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TORCH_GLOO_TIMEOUT_SECONDS": "600"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launcher += ["--rdzv-conf", "join_timeout=600", "-m", "iarn"]
    command = launcher + tiny_train_args(image_folder, tmp_path / "ddp", 4, "--checkpoint-every", "2", "--no-progress")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 x cpu, 2 images on rank 0" in result.stdout
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4
    assert load_weights(tmp_path / "ddp" / "model.safetensors").config.blocks_per_level == 1


def test_resume_keeps_the_recipe_and_takes_new_runtime_settings(image_folder, tmp_path, capsys):
    """`--resume auto` needs no --data (the checkpoint's), takes a moved data folder, a new
    step target, device and threads; --steps defaults to the checkpoint's; recipe flags that
    differ are refused in one line."""
    out = tmp_path / "run"
    assert main(tiny_train_args(image_folder, out, 4, "--no-progress", "--stop-at", "2", "--lr", "5e-4")) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    capsys.readouterr()
    resumed = ["train", "--out", str(out), "--resume", "auto", "--no-progress"]
    assert main(resumed + ["--stop-at", "3", "--device", "cpu", "--threads", "1"]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and state["train_config"]["learning_rate"] == 5e-4 and state["train_config"]["steps"] == 4
    moved = tmp_path / "moved"
    moved.symlink_to(image_folder, target_is_directory=True)
    assert main(resumed + ["--data", str(moved), "--steps", "5"]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 5 and tuple(state["train_config"]["data"]) == (str(moved),)
    capsys.readouterr()
    assert main(resumed + ["--steps", "6", "--lr", "1e-3"]) == 1
    assert main(resumed + ["--steps", "6", "--growth", "8"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("iarn: warning")]
    assert len(errors) == 2 and "cannot change learning_rate when resuming" in errors[0] and "model.growth" in errors[1]
    assert main(resumed + ["--steps", "6", "--lr", "5e-4", "--growth", "4"]) == 0  # the same values are fine


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device", "cuda"], "no usable CUDA"),
        (["--device", "cuda:1"], "no usable CUDA"),
        (["--device", "tpu"], "unknown device"),
        (["--checkpoint-every", "0"], "checkpoint_every must be a whole number from 1 to"),
        (["--log-every", "0"], "log_every must be a whole number from 1 to"),
        (["--batch-size", "0"], "batch_size must be a whole number from 1 to"),
        (["--compile-mode", "fast"], "compile_mode must be one of"),
    ],
)
def test_bad_training_settings_fail_in_one_line(image_folder, tmp_path, capsys, extra, message):
    if torch.cuda.is_available() and "cuda" in " ".join(extra):
        pytest.skip("this machine has CUDA")
    assert main(tiny_train_args(image_folder, tmp_path / "run", 2, "--no-progress", *extra)) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_negative_steps_and_bad_resume_targets(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_train_args(image_folder, run, -3, "--no-progress")) == 1
    assert "steps must be a whole number from 1 to" in capsys.readouterr().err and not run.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(tiny_train_args(image_folder, run, 2, "--no-progress", "--resume", str(junk))) == 1
    assert "not an iarn training checkpoint" in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(tiny_train_args(image_folder, a_file, 2, "--no-progress")) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_cuda_device_choice_without_cuda():
    from iarn.devices import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        if not torch.backends.mps.is_available():
            assert resolve_device("auto", local_rank=1) == torch.device("cpu")
        with pytest.raises(ValueError, match="no usable CUDA"):
            resolve_device("cuda", local_rank=1)


def test_adaptive_lr_weight_moves_toward_the_target():
    from iarn.train import adapt_lambda_lr

    log_lambda = torch.tensor(0.0)
    adapt_lambda_lr(log_lambda, torch.tensor(1e-3), target=45.0)  # 30 dB: below, so raise
    assert log_lambda > 0
    log_lambda = torch.tensor(0.0)
    adapt_lambda_lr(log_lambda, torch.tensor(1e-7), target=45.0)  # 70 dB: above, so lower
    assert log_lambda < 0


def test_lr_shortfall_weighs_only_a_step_below_the_target():
    """The LR term is lambda * mse, times (mse / target mse)**p when the LR misses the target."""
    from iarn.train import MAX_LAMBDA_LR, RescaleLoss

    model = IARN(first_config(mode="middle", levels=2, blocks_per_level=1, growth=4))
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def terms(**fields) -> dict:
        torch.manual_seed(0)
        with torch.no_grad():
            return RescaleLoss(model, TrainConfig(crop=32, **fields))(hr, (11, 24), 3.0)

    plain = terms(lr_psnr_target=80.0, lr_shortfall_power=0.0)
    psnr = -10 * float(torch.log10(plain["lr_fit"]))
    assert psnr < 80
    for target, p in ((80.0, 2.0), (80.0, 0.5), (psnr + 1.0, 2.0), (psnr - 1.0, 2.0)):
        weighted = terms(lr_psnr_target=target, lr_shortfall_power=p)
        factor = max(1.0, float(plain["lr_fit"]) * 10 ** (target / 10)) ** p
        weight = min(3.0 * factor, MAX_LAMBDA_LR)  # bounded: a large power cannot overflow it
        expected = plain["loss"] + (weight - 3.0) * plain["lr_fit"]
        assert torch.allclose(weighted["loss"], expected, rtol=1e-5), (target, p)
    assert terms(lr_psnr_target=80.0, lr_shortfall_power=16.0)["loss"].isfinite()
    assert torch.equal(terms(lr_psnr_target=psnr - 1.0, lr_shortfall_power=2.0)["loss"], plain["loss"])
    with pytest.raises(ValueError, match="lr_shortfall_power"):
        TrainConfig(lr_psnr_target=0.0, lr_shortfall_power=2.0)


def test_adaptive_lr_weight_trains_and_resumes(image_folder, tmp_path):
    overrides = dict(lr_psnr_target=45.0, model=first_config(blocks_per_level=1, growth=4))
    straight = train(small_config(image_folder, tmp_path / "a", **overrides), progress=False)
    train(small_config(image_folder, tmp_path / "b", **overrides), progress=False, stop_at=3)
    resumed = train(small_config(image_folder, tmp_path / "b", **overrides), resume="auto", progress=False)
    a, b = load_weights(straight).state_dict(), load_weights(resumed).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    records = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["lambda_lr"] != records[0]["lambda_lr"]


def test_resume_cleans_a_killed_runs_leftovers_and_its_log(image_folder, tmp_path):
    """A SIGKILL during a checkpoint write leaves `.checkpoint.pt.*.tmp`; steps logged after the
    checkpoint are redone on resume: the log keeps each step once."""
    run = tmp_path / "run"
    cfg = small_config(image_folder, run, checkpoint_every=100)
    train(cfg, progress=False, stop_at=4)
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"x" * 1000)
    with open(run / "log.jsonl", "a") as log:  # what the killed run had logged past its checkpoint
        log.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + '{"step": 6, "lo')
    train(cfg, resume="auto", progress=False)
    assert not list(run.glob(".*.tmp"))
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_full_disk_while_checkpointing_says_so(tmp_path, monkeypatch):
    from iarn.train_runtime import TrainState, save_checkpoint

    def full(payload, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1536 vs 1424")

    monkeypatch.setattr(torch, "save", full)
    model = IARN(first_config(blocks_per_level=1, growth=4))
    state = TrainState(model, torch.optim.Adam(model.parameters()), 3, torch.tensor(0.0))
    with pytest.raises(OSError, match="no space left") as raised:
        save_checkpoint(state, TrainConfig(), tmp_path / "checkpoint.pt")
    assert raised.value.filename == str(tmp_path / "checkpoint.pt") and not list(tmp_path.iterdir())


def test_integer_share_draws_whole_scales_and_leaves_other_runs_alone():
    rng = np.random.default_rng(0)
    draws = np.array([sample_scale(rng, 1.1, 4.0, 1.0, 0.3, integer_share=0.5) for _ in range(4000)])
    whole = draws[(draws[:, 0] == np.round(draws[:, 0])) & (draws[:, 0] == draws[:, 1])]
    assert 0.45 < len(whole) / len(draws) < 0.55
    assert sorted(set(whole[:, 0])) == [2.0, 3.0, 4.0]
    assert all(0.28 < np.mean(whole[:, 0] == s) < 0.39 for s in (2, 3, 4))
    none = np.array([sample_scale(np.random.default_rng(1), 1.1, 1.9, 1.0, 0.3, integer_share=0.9) for _ in range(50)])
    assert np.all(none != np.round(none))  # no whole scale in [1.1, 1.9]: no whole draws
    before, after = np.random.default_rng(7), np.random.default_rng(7)
    assert [sample_scale(before, 1.1, 4.0, 2.0, 0.3) for _ in range(20)] == [
        sample_scale(after, 1.1, 4.0, 2.0, 0.3, integer_share=0.0) for _ in range(20)
    ]
    with pytest.raises(ValueError, match="integer_share"):
        TrainConfig(integer_share=1.5)


def test_the_learning_rate_keeps_its_old_name_in_files_and_flags(image_folder, tmp_path, capsys):
    """`lr` became `learning_rate` (beside `lambda_lr` and `lr_psnr_target`, where LR is the small
    image): a config file, a checkpoint or a flag of the old name still works, with a warning."""
    from iarn.train_config import resume_config

    cfg = TrainConfig.from_dict({"lr": 2e-4, "data": ["x"]})
    assert cfg.learning_rate == 2e-4 and "'lr' is now 'learning_rate'" in capsys.readouterr().err
    assert resume_config({"lr": 2e-4, "data": ["x"]}, {"learning_rate": 2e-4}).learning_rate == 2e-4
    with pytest.raises(ValueError, match="cannot change learning_rate"):
        resume_config({"lr": 2e-4, "data": ["x"]}, {"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="both given"):
        TrainConfig.from_dict({"lr": 2e-4, "learning_rate": 1e-3})
    out = tmp_path / "old-flag"
    assert main(tiny_train_args(image_folder, out, 2, "--no-progress", "--lr", "3e-4")) == 0
    assert "--lr is now --learning-rate" in capsys.readouterr().err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["train_config"]["learning_rate"] == 3e-4


def test_fine_tuning_the_bundled_jpeg_drops_its_bands(image_folder, tmp_path):
    """Its JPEG upscaler bands were trained against the downscaler this run changes."""
    from iarn.weights import resolve_weights

    assert load_weights(resolve_weights("jpeg")).bands
    cfg = small_config(image_folder, tmp_path / "tuned", steps=1, codec="jpeg", crop=32)
    model = load_weights(train(cfg, init_from="jpeg", progress=False))
    assert model.bands == () and model.band_networks is None and model.corrector is None
