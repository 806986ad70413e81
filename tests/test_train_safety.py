"""Training never loses a run: non-finite steps are skipped, a diverged run stops with its last
good checkpoint, no weight file or checkpoint holds a NaN, Ctrl-C / SIGTERM checkpoint the step,
and config files meet the command line's checks, field by field (issue 25)."""

import dataclasses
import json
import os
import signal

import pytest
import torch

import iarn.train as train_module
from iarn import IARN, load_weights
from iarn.cli import main
from iarn.model import ModelConfig
from iarn.train import TrainingDiverged, train
from iarn.train_config import TRAIN_BOUNDS, TrainConfig
from iarn.weights import WeightsError, resolve_weights, save_weights
from tests.test_train import small_config, tiny_train_args

from .conftest import first_config


def poison_steps(monkeypatch, bad: set[int] | range) -> None:
    """Make the loss of the given training steps (1-based) NaN, as a diverging run's would be."""
    real = train_module.RescaleLoss.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        losses = real(self, *args, **kwargs)
        if calls["n"] in bad:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(train_module.RescaleLoss, "forward", forward)


def finite(state: dict) -> bool:
    return all(bool(t.isfinite().all()) for t in state.values() if t.is_floating_point())


def test_a_non_finite_step_is_skipped_and_counted(image_folder, tmp_path, monkeypatch):
    reference = train(small_config(image_folder, tmp_path / "a", steps=6), progress=False, stop_at=3)
    poison_steps(monkeypatch, {4})
    final = train(small_config(image_folder, tmp_path / "b", steps=6), progress=False)
    records = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records] == [0, 0, 0, 1, 1, 1]
    assert finite(load_weights(final).state_dict())
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 6 and finite(saved["model"])
    assert load_weights(reference).state_dict().keys() == saved["model"].keys()


def test_a_diverged_run_stops_and_keeps_the_last_good_checkpoint(image_folder, tmp_path, monkeypatch):
    good = train(small_config(image_folder, tmp_path / "good", steps=100), progress=False, stop_at=3)
    poison_steps(monkeypatch, range(4, 10_000))
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"20 steps in a row up to step 23 .*checkpoint.pt \(the last good"):
        train(small_config(image_folder, out, steps=100, checkpoint_every=3), progress=False)
    assert not (out / "model.safetensors").exists()
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert finite(saved["model"]) and finite({"lambda": torch.tensor(saved["log_lambda_lr"])})
    for name, tensor in load_weights(good).state_dict().items():  # nothing after step 3 was applied
        assert torch.equal(saved["model"][name], tensor), name


def test_the_cli_reports_divergence_in_one_line(image_folder, tmp_path, monkeypatch, capsys):
    poison_steps(monkeypatch, range(1, 10_000))
    assert main(tiny_train_args(image_folder, tmp_path / "run", 50, "--no-progress")) == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and len(err.strip().splitlines()) == 1


def test_no_weight_file_or_checkpoint_with_a_nan_is_written(tmp_path):
    model = IARN(first_config(blocks_per_level=1, growth=4))
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    before = path.read_bytes()
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(WeightsError, match="not written, .* non-finite"):
        save_weights(model, path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["w.safetensors"]

    optimizer = torch.optim.Adam(model.parameters())
    state = train_module.TrainState(model, optimizer, 0, torch.tensor(0.0))
    with pytest.raises(WeightsError, match="non-finite"):
        train_module.save_checkpoint(state, TrainConfig(), tmp_path / "checkpoint.pt")
    assert not (tmp_path / "checkpoint.pt").exists()


class SignalAtStep:
    """A clock that sends `signum` to this process during step `step`: the run must finish that
    step, checkpoint it and raise KeyboardInterrupt."""

    def __init__(self, monkeypatch, step: int, signum: int) -> None:
        self.now, real = 0.0, train_module.train_step

        def train_step(loss_module, state, *args, **kwargs):
            if state.step + 1 == step:
                os.kill(os.getpid(), signum)
            return real(loss_module, state, *args, **kwargs)

        monkeypatch.setattr(train_module, "train_step", train_step)

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_the_current_step(image_folder, tmp_path, monkeypatch, capsys, signum):
    before = signal.getsignal(signum)
    clock = SignalAtStep(monkeypatch, 4, signum)
    cfg = small_config(image_folder, tmp_path / "run", steps=20, checkpoint_every=100)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, clock=clock)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 4
    assert "interrupted at step 4" in capsys.readouterr().out
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert signal.getsignal(signum) == before  # the handlers are put back
    monkeypatch.undo()
    train(cfg, resume="auto", progress=False, stop_at=6)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 6


def test_the_cli_exits_130_after_checkpointing_on_ctrl_c(image_folder, tmp_path, monkeypatch, capsys):
    SignalAtStep(monkeypatch, 2, signal.SIGINT)
    assert main(tiny_train_args(image_folder, tmp_path / "run", 10, "--no-progress")) == 130
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert "iarn: interrupted" in capsys.readouterr().err


@pytest.mark.parametrize(
    "values, message",
    [
        ({"integer_share": "0.5"}, "integer_share must be a number from 0 to 1, got '0.5'"),
        ({"lr_shortfall_power": float("inf")}, "lr_shortfall_power must be a number from 0 to 16, got inf"),
        ({"lr_shortfall_power": 30}, "lr_shortfall_power must be a number from 0 to 16, got 30"),
        ({"learning_rate": float("nan")}, "learning_rate must be a number"),
        ({"steps": 10.5}, "steps must be a whole number from 1 to"),
        ({"steps": True}, "steps must be a whole number"),
        ({"batch_size": "8"}, "batch_size must be a whole number from 1 to 4096, got '8'"),
        ({"compile": "yes"}, "compile must be true or false, got 'yes'"),
        ({"schedule": 3}, "schedule must be one of cosine, step, got 3"),
        ({"data": "photos"}, "data must be a list of folders"),
        ({"model": {"growth": "16"}}, "growth must be a whole number from 1 to 512, got '16'"),
        ({"model": {"clamp": None}}, "clamp must be a number from 0.01 to 10, got None"),
        ({"model": [1]}, "model must be a mapping"),
    ],
)
def test_config_file_values_get_the_command_lines_checks(tmp_path, capsys, values, message):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"data": ["x"], **values}))  # json writes inf as Infinity, as a user may
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", sorted(TRAIN_BOUNDS))
def test_every_numeric_field_names_itself_when_mistyped(name):
    with pytest.raises(ValueError, match=f"^{name} must be a (whole )?number from .*, got 'x'$"):
        TrainConfig(**{name: "x"})


def test_the_command_line_refuses_what_the_config_refuses(image_folder, tmp_path, capsys):
    assert main(tiny_train_args(image_folder, tmp_path / "r", 2, "--lr-shortfall-power", "30")) == 1
    assert "lr_shortfall_power must be a number from 0 to 16, got 30" in capsys.readouterr().err


def test_train_defaults_are_the_shipped_recipe(image_folder, tmp_path):
    shipped = load_weights(resolve_weights("default")).config
    assert TrainConfig().model == ModelConfig() == shipped
    assert (TrainConfig().lr_psnr_target, TrainConfig().lr_shortfall_power) == (44.0, 2.0)
    assert TrainConfig().scale_min == 1.0  # trained down to ratio 1 (issue 25)
    assert TrainConfig.from_dict({"model": {"mode": "middle"}}).model == shipped  # --mode middle alone
    assert TrainConfig.from_dict({"model": {"mode": "naive"}}).model.levels == 1  # another mode: its defaults
    assert main(tiny_train_args(image_folder, tmp_path / "r", 1, "--no-progress", "--mode", "middle")) == 0
    model = load_weights(tmp_path / "r" / "model.safetensors").config
    assert model == dataclasses.replace(shipped, blocks_per_level=1, growth=4)
