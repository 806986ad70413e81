import json

import pytest
import torch
from safetensors.torch import save_file

import iarn
from iarn import IARN, Rescaler, WeightsError, load_weights, save_weights
from iarn import weights as weights_module

from .conftest import first_config, small_network


def test_round_trip_keeps_config_and_every_tensor(tmp_path):
    model = small_network(mode="split", encoding="sincos", levels=2)
    path = tmp_path / "m.safetensors"
    save_weights(model, path, training={"steps": 3})
    loaded = load_weights(path)
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.rand(1, 3, 20, 20)
    before, after = Rescaler(model, device="cpu"), Rescaler(loaded, device="cpu")
    assert torch.equal(before.downscale(x, scale=2.5), after.downscale(x, scale=2.5))
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file


def test_config_that_does_not_fit_is_refused(tmp_path):
    model = small_network()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    base = {"format": "iarn", "format_version": "1"}

    bad_field = tmp_path / "field.safetensors"
    save_file(tensors, bad_field, metadata={**base, "config": json.dumps({"mode": "cycle", "wings": 2})})
    with pytest.raises(WeightsError, match="config does not fit"):
        load_weights(bad_field)

    wrong_shape = tmp_path / "shape.safetensors"
    other = json.loads(model.config.to_json()) | {"growth": 16}
    save_file(tensors, wrong_shape, metadata={**base, "config": json.dumps(other)})
    with pytest.raises(WeightsError, match="do not fit its config"):
        load_weights(wrong_shape)

    no_format = tmp_path / "plain.safetensors"
    save_file(tensors, no_format)
    with pytest.raises(WeightsError, match="not an iarn weight file"):
        load_weights(no_format)

    future = tmp_path / "future.safetensors"
    save_file(tensors, future, metadata={**base, "format_version": "9", "config": model.config.to_json()})
    with pytest.raises(WeightsError, match="version"):
        load_weights(future)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors at all")
    with pytest.raises(WeightsError, match="not a readable"):
        load_weights(garbage)


def test_load_without_bundled_weights_fails_clearly(monkeypatch):
    monkeypatch.setattr(weights_module, "bundled_path", lambda name: None)
    with pytest.raises(WeightsError, match="no bundled 'default' weights"):
        iarn.load()


def test_load_by_path_and_device(weights_file):
    model = iarn.load(weights_file, device="cpu")
    assert isinstance(model, Rescaler) and isinstance(model.network, IARN) and not model.network.training
    assert model.config == first_config(blocks_per_level=2, growth=8)


@pytest.mark.parametrize("name", weights_module.BUNDLED)
def test_bundled_weights_load_when_present(name):
    path = weights_module.bundled_path(name)
    if path is None:
        pytest.skip(f"no bundled {name} weights in this checkout")
    model = iarn.load(name, device="cpu")
    assert path.stat().st_size < 20e6
    lr = model.downscale(torch.rand(1, 3, 32, 32), scale=2)
    assert lr.shape[-2:] == (16, 16)


def test_precision_auto_follows_the_device(monkeypatch):
    from iarn import devices

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: True)
    assert devices.resolve_precision("auto", cpu) == torch.float32  # bf16 cost 0.49 dB there (issue 41)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert devices.resolve_precision("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 5))
    assert devices.resolve_precision("auto", cuda) == torch.float32
    assert devices.resolve_precision("auto", torch.device("mps")) == torch.float32
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: False)
    assert devices.resolve_precision("auto", cpu) == torch.float32
    assert devices.resolve_memory_format(cpu, torch.float32) == torch.channels_last
    assert devices.resolve_memory_format(cpu, torch.bfloat16) == torch.contiguous_format
    assert devices.resolve_memory_format(cuda, torch.bfloat16) == torch.contiguous_format
    assert devices.resolve_precision("fp16", cpu) == torch.float16
    with pytest.raises(ValueError, match="precision"):
        devices.resolve_precision("int8", cpu)


def test_load_in_bf16_runs_the_subnets_in_bf16(weights_file):
    model = iarn.load(weights_file, device="cpu", precision="bf16")
    assert {p.dtype for p in model.network.parameters()} == {torch.bfloat16}
    assert model.network.state_dtype == torch.float32
    assert model.downscale(torch.rand(1, 3, 16, 16), scale=2).dtype == torch.float32
    assert {p.dtype for p in iarn.load(weights_file, device="cpu").network.parameters()} == {torch.float32}
