import math
import random

import pytest
import torch

from iarn import IARN, ModelConfig, Rescaler
from iarn.geometry import size_for_scale, target_size
from iarn.model import quantize_8bit
from iarn.model.coupling import CouplingBlock
from iarn.model.encoding import encoding_channels
from iarn.weights import load_weights, resolve_weights

from .conftest import first_config, randomize, small_model, small_network

VARIANTS = [
    {"mode": "cycle"},
    {"mode": "split"},
    {"mode": "cycle", "encoding": "sincos"},
    {"mode": "split", "encoding": "off"},
    {"mode": "split", "levels": 2},
    {"mode": "cycle", "levels": 2, "encoding": "sincos"},
]
# Modes whose core runs on a middle image, one x2 step at a time (not `encode`/`decode`).
STEP_VARIANTS = [
    {"mode": "naive"},
    {"mode": "middle", "levels": 2},
    {"mode": "middle", "levels": 2, "encoding": "sincos", "back": "bicubic"},
    {"mode": "middle", "levels": 2, "step_stages": "per-count"},
]


def _random_geometry(rng: random.Random) -> tuple[tuple[int, int], tuple[int, int]]:
    hr = (rng.choice([1, 2, 3, 5, 7, 13, 17, 31, 41, 64]), rng.choice([1, 2, 4, 11, 19, 23, 37, 50]))
    scale = (rng.uniform(1, 4), rng.uniform(1, 4))
    return hr, size_for_scale(hr, scale)


def test_default_config_is_the_shipped_architecture():
    shipped = load_weights(resolve_weights("default"))
    assert ModelConfig() == shipped.config
    shapes = {k: v.shape for k, v in IARN().state_dict().items()}
    assert shapes == {k: v.shape for k, v in shipped.state_dict().items() if not k.startswith("corrector.")}


def test_fresh_blocks_are_identity():
    block = CouplingBlock(12, 4, growth=8, clamp=1.0)
    x, cond = torch.randn(2, 12, 5, 6), torch.randn(1, 4, 5, 6)
    assert torch.allclose(block(x, cond), x)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_core_inverts_on_random_sizes_and_scales(variant):
    model = small_network(**variant)
    rng = random.Random(1)
    for _ in range(12):
        hr, lr = _random_geometry(rng)
        x = torch.rand(2, 3, *hr)
        grid = model.encode(x, hr, lr)
        assert (model.decode(grid, hr, lr, hr) - x).abs().max() < 1e-5, (hr, lr)


@pytest.mark.parametrize("variant", STEP_VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_every_x2_step_inverts_on_random_sizes(variant):
    model = small_network(**variant)
    rng = random.Random(3)
    for stage in range(len(model.stages)):
        for _ in range(6):
            size = (2 * rng.randint(1, 20), 2 * rng.randint(1, 20))
            x = torch.rand(2, 3, *size)
            cond = torch.rand(1, encoding_channels(model.config.encoding), size[0] // 2, size[1] // 2)
            grid = model.encode_step(x, stage, cond)
            assert grid.shape == (2, 12, size[0] // 2, size[1] // 2)
            assert (model.decode_step(grid, stage, cond, size) - x).abs().max() < 1e-5


@pytest.mark.parametrize(
    "hr, lr, steps",
    [
        ((64, 64), (32, 32), 1),
        ((64, 64), (43, 43), 1),
        ((64, 64), (16, 16), 2),
        ((60, 64), (21, 24), 2),
        ((30, 64), (20, 16), 2),
        ((9, 9), (9, 9), 1),
        ((64, 64), (31, 64), 2),
        ((9, 9), (2, 2), 2),
    ],
)
def test_middle_geometry(hr, lr, steps):
    """k = ceil(log2 max scale), at least 1, at most `levels`; the middle 2^k x the LR covers the
    HR on both axes (but where a rounded size gives more than 2^levels: x4.5 from 9 to 2 rows),
    and the LR is exactly its requested size."""
    model = small_network(mode="middle", levels=2)
    assert model.mode.steps(model, hr, lr) == steps
    middle = model.mode.core_size(model, hr, lr)
    assert middle == (2**steps * lr[0], 2**steps * lr[1])
    assert (middle[0] >= hr[0] and middle[1] >= hr[1]) or max(hr[0] / lr[0], hr[1] / lr[1]) > 4
    out, _ = model.down_region(torch.rand(1, 3, *hr), hr, lr)
    assert out.shape[-2:] == lr
    assert model.up_region(out, hr, lr).shape[-2:] == hr


def test_middle_needs_a_stage_per_step():
    with pytest.raises(ValueError, match="2\\^levels >= max_scale"):
        first_config(mode="middle", levels=1)
    with pytest.raises(ValueError, match="back must be one of"):
        first_config(mode="middle", levels=2, back="nearest")


def test_middle_round_trip_is_exact_where_the_core_is_the_identity():
    """Fresh blocks are the identity and z = 0 is then the Haar details' loss only: an image
    that is constant on 2^k x 2^k cells comes back exactly at x2 and x4 (the middle is the HR)."""
    model = Rescaler(IARN(first_config(mode="middle", levels=2, blocks_per_level=1, growth=4)), device="cpu")
    cells = torch.rand(1, 3, 8, 10)
    for factor in (2, 4):
        x = cells.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        lr = model.network.down_region(x, x.shape[-2:], (8, 10))[0]
        assert (lr - cells).abs().max() < 1e-6
        assert (model.network.up_region(lr, x.shape[-2:], (8, 10)) - x).abs().max() < 1e-5


@pytest.mark.parametrize("variant", VARIANTS + STEP_VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_forward_inverse_backward_finite_and_every_parameter_learns(variant):
    """Two geometries, so that a middle model runs one x2 step and two (every stage it has)."""
    model = small_network(**variant).train()
    hr = torch.rand(2, 3, 24, 20)
    loss = 0
    for lr_size in ((9, 13), (16, 14)):
        lr, aux = model.down_region(hr, (24, 20), lr_size)
        restored = model.up_region(quantize_8bit(lr), (24, 20), lr_size)
        assert lr.shape == (2, 3, *lr_size) and restored.shape == hr.shape
        loss = loss + (restored - hr).abs().mean() + (lr - 0.5).pow(2).mean() + aux.pow(2).mean()
        for tensor in (lr, aux, restored):
            assert torch.isfinite(tensor).all()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode", ["cycle", "split", "naive", "middle"])
def test_api_returns_exactly_the_requested_sizes(mode):
    model = small_model(mode=mode, levels=2 if mode == "middle" else 1)
    rng = random.Random(2)
    for _ in range(15):
        hr, lr = _random_geometry(rng)
        x = torch.rand(1, 3, *hr)
        down = model.downscale(x, size=lr)
        assert down.shape[-2:] == lr
        assert model.upscale(down, size=hr).shape[-2:] == hr


def test_scale_is_sugar_for_size():
    model = small_model()
    x = torch.rand(1, 3, 101, 77)
    assert model.downscale(x, scale=2.7).shape[-2:] == (37, 29)  # round(37.4), round(28.5) half up
    assert model.downscale(x, scale=(1.5, 4)).shape[-2:] == (67, 19)
    assert size_for_scale((10, 10), 4) == (3, 3)  # 2.5 rounds up


def test_downscale_output_is_8bit_and_in_range():
    lr = small_model().downscale(torch.rand(1, 3, 40, 40), scale=2.5)
    assert lr.min() >= 0 and lr.max() <= 1
    assert torch.equal(lr, torch.round(lr * 255) / 255)


def test_upscale_is_deterministic_and_seeded_sampling_reproducible():
    model = small_model(mode="split")
    lr = model.downscale(torch.rand(1, 3, 30, 30), scale=2)
    assert torch.equal(model.upscale(lr, (30, 30)), model.upscale(lr, (30, 30)))
    a, b = model.upscale(lr, (30, 30), seed=3), model.upscale(lr, (30, 30), seed=3)
    assert torch.equal(a, b) and not torch.equal(a, model.upscale(lr, (30, 30)))
    with pytest.raises(ValueError, match="split"):
        small_model(mode="cycle").upscale(lr, (30, 30), seed=1)


def test_quantize_has_straight_through_gradient():
    x = torch.tensor([-0.2, 0.31, 0.50001, 1.4], requires_grad=True)
    q = quantize_8bit(x)
    assert torch.allclose(q, torch.tensor([0.0, 79 / 255, 128 / 255, 1.0]))
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones(4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": 0.9}, "out of range"),
        ({"scale": 4.5}, "1 to 4"),
        ({"size": (50, 10)}, "larger than the input"),
        ({"size": (5, 10)}, "below the model's range"),
        ({"size": (0, 10)}, "at least 1x1"),
        ({}, "exactly one"),
    ],
)
def test_bad_targets_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_model().downscale(torch.rand(1, 3, 40, 40), **kwargs)


def test_bad_tensors_are_refused():
    model = small_model()
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model.downscale(torch.rand(3, 40, 40), scale=2)
    with pytest.raises(ValueError, match="float"):
        model.downscale(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), scale=2)


def test_max_scale_rounding_boundary_accepted():
    # scale 4 on 9 rows gives round(2.25) = 2 rows, an actual ratio of 4.5: still accepted
    assert target_size((9, 9), 4.0, scale=4) == (2, 2)


def test_config_validation_and_json_round_trip():
    cfg = first_config(mode="split", encoding="sincos", levels=2)
    assert ModelConfig.from_dict(__import__("json").loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="mode"):
        ModelConfig(mode="nope")
    with pytest.raises(ValueError, match="unknown config fields"):
        ModelConfig.from_dict({"mode": "cycle", "width": 3})


def test_encoding_phases():
    from iarn.model.encoding import scale_encoding

    maps = scale_encoding("pse", (0, 0), (4, 3), 2, (8, 6), (4, 2))
    assert maps.shape == (1, 4, 4, 3)
    assert torch.allclose(maps[0, 0], torch.full((4, 3), 0.5)) and torch.allclose(maps[0, 1], torch.full((4, 3), 1 / 3))
    assert maps[0, 2].abs().max() < 1e-6  # x2: every grid cell sits on an LR pixel centre
    assert maps[0, 3].abs().max() <= 0.5 and maps[0, 3].abs().max() > 0.1
    sincos = scale_encoding("sincos", (3, 1), (2, 2), 2, (20, 20), (7, 9))
    assert torch.allclose(sincos[0, 2] ** 2 + sincos[0, 3] ** 2, torch.ones(2, 2))
    assert scale_encoding("off", (0, 0), (2, 2), 2, (4, 4), (2, 2)).abs().sum() == 0
    assert not math.isnan(float(maps.sum()))


def test_randomize_helper_breaks_identity():
    model = randomize(IARN(first_config(blocks_per_level=1, growth=4)))
    x = torch.rand(1, 3, 8, 8)
    assert not torch.allclose(model.encode(x, (8, 8), (4, 4)), model.encode(torch.zeros_like(x), (8, 8), (4, 4)))


@pytest.mark.parametrize("levels", [1, 2])
def test_core_round_trip_under_bf16_autocast(levels):
    """GPU training may use bf16 autocast: subnets in bf16, coupling arithmetic in fp32."""
    model = randomize(IARN(first_config(blocks_per_level=4, growth=16, levels=levels)), std=0.02, seed=1)
    x = torch.rand(2, 3, 48, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grid = model.encode(x, (48, 40), (17, 19))
        restored = model.decode(grid, (48, 40), (17, 19), (48, 40))
    assert grid.dtype == torch.float32 and restored.dtype == torch.float32
    assert (restored - x).abs().max() < 1 / 255
    assert (restored - x).abs().mean() < 1e-4


@pytest.mark.parametrize("layout", ["aligned", "unaligned", "channels_last"])
@pytest.mark.parametrize("variant", VARIANTS[:2] + VARIANTS[4:5], ids=lambda v: "-".join(map(str, v.values())))
def test_inference_path_of_the_subnets_matches_the_autograd_path(variant, layout):
    """Without autograd, dense blocks append to one buffer instead of concatenating, with
    channel counts padded (aligned, the default) or not, in either memory layout."""
    model = small_network(**variant)
    x = torch.rand(2, 3, 21, 18)
    with_grad = model.encode(x, (21, 18), (8, 7))
    assert with_grad.requires_grad
    for module in model.modules():
        if hasattr(module, "channel_align") and layout == "unaligned":
            module.channel_align = 1
    if layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        buffered = model.encode(x, (21, 18), (8, 7))
    assert (buffered - with_grad.detach()).abs().max() < 1e-5


def test_float64_model_keeps_float64_state():
    model = small_network().double()
    x = torch.rand(1, 3, 14, 11, dtype=torch.float64)
    with torch.no_grad():
        grid = model.encode(x, (14, 11), (5, 4))
        restored = model.decode(grid, (14, 11), (5, 4), (14, 11))
    assert model.state_dtype == grid.dtype == torch.float64
    assert (restored - x).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_subnets_keep_float32_images_and_invert(dtype):
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    config = first_config(blocks_per_level=4, growth=16)
    reference = Rescaler(randomize(IARN(config), std=0.02, seed=1), device="cpu")
    model = Rescaler(randomize(IARN(config), std=0.02, seed=1), device="cpu", precision=precision)
    assert model.network.stages[0][0].f.out.weight.dtype == dtype and model.network.state_dtype == torch.float32
    x = torch.rand(1, 3, 40, 36)
    with torch.no_grad():
        grid = model.network.encode(x, (40, 36), (15, 13))
        restored = model.network.decode(grid, (40, 36), (15, 13), (40, 36))
    assert grid.dtype == restored.dtype == torch.float32
    assert (restored - x).abs().max() < 1 / 255
    lr, lr_reference = model.downscale(x, scale=2.5), reference.downscale(x, scale=2.5)
    assert lr.dtype == torch.float32
    assert (lr - lr_reference).abs().max() <= 2 / 255
    up = model.upscale(lr, (40, 36))
    assert (up - reference.upscale(lr, (40, 36))).abs().max() < 2 / 255


def test_middle_encoding_tells_the_real_geometry():
    """At IRN's geometries (x2: middle = HR, x4: cells of 4 HR pixels) the phases are 0 and the
    ratio maps the step's grid over the HR; at x3 (middle 4/3 of the HR) they vary per cell."""
    from iarn.model.encoding import middle_encoding

    x2 = middle_encoding("pse", (0, 0), (4, 4), 2, (8, 8), (8, 8))
    assert torch.allclose(x2, torch.tensor([0.5, 0.5, 0, 0])[None, :, None, None].expand(1, 4, 4, 4))
    x4 = middle_encoding("pse", (0, 0), (2, 2), 4, (8, 8), (8, 8))
    assert torch.allclose(x4[0, :2], torch.full((2, 2, 2), 0.25)) and x4[0, 2:].abs().max() == 0
    x3 = middle_encoding("pse", (0, 0), (4, 1), 2, (6, 6), (8, 8))  # cells of 2 middle = 1.5 HR px
    assert torch.allclose(x3[0, 0], torch.full((4, 1), 8 / 12))
    assert torch.allclose(x3[0, 2, :, 0], torch.tensor([0.0, -0.5, 0.0, 0.5]))  # e = 1.5 i, half to even
    shifted = middle_encoding("pse", (2, 0), (2, 1), 2, (6, 6), (8, 8))
    assert torch.equal(shifted[0, 2], x3[0, 2, 2:])  # a crop's maps are the whole image's rows
