"""The LR corrector: identity when fresh, the upscaler untouched, every scale, tiles, weight files,
its training, the LR bound on any content, a partial last pass, and the effort levels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from iarn import IARN, Rescaler, load_weights, save_weights
from iarn.corrector_train import CorrectorTrainConfig, attach_corrector, train_corrector
from iarn.effort import CPU_EFFORT, EFFORTS, GPU_EFFORT, effort_level, plan, set_corrector
from iarn.lr_bound import hold_lr_bound, lr_psnr_y, reference_lr
from iarn.metrics import Y_WEIGHTS
from iarn.model.corrector import (
    LAST_PASS_BLOCK,
    Corrector,
    CorrectorConfig,
    feature_channels,
    feedback_channels,
    split_passes,
    worst_block_runs,
)
from iarn.refine import RefineConfig
from iarn.weights import same_upscaler, weights_id

from .conftest import first_config, randomize

MIDDLE = {"mode": "middle", "levels": 2, "blocks_per_level": 2, "growth": 8, "step_stages": "per-count"}
SCALES = [2.0, 3.3, (1.5, 4.0), (4.0, 1.7), 1.3]


PASSES = [1, 2]
VARIANTS = {"one-pass": {}, "two-pass": {"passes": 2}, "per-count": {"passes": 2, "per_count": True}}


def corrected_network(seed: int = 0, passes: int = 1, per_count: bool = False, **overrides) -> IARN:
    """A small middle network with random weights and a corrector (of `passes` passes, its
    convolutions after the first shared or `per_count`) with random (non-zero) weights."""
    torch.manual_seed(seed)
    corrector = CorrectorConfig(width=8, depth=3, passes=passes, per_count=per_count)
    network = randomize(IARN(first_config(**{**MIDDLE, **overrides}), corrector), seed=seed)
    with torch.no_grad():
        for p in network.corrector.parameters():
            p.mul_(0.2)
    return network


def test_feature_channels_cover_the_middle_image():
    # one step: its 12-channel grid; two: that and the first step's detail, unshuffled (9 * 4)
    assert feature_channels(1) == 12 + 4
    assert feature_channels(2) == 12 + 36 + 4
    # the second pass: the first LR, the middle image's error on the LR's grid (3 * 4^k), the encoding
    assert feedback_channels(1) == 3 + 12 + 4 and feedback_channels(2) == 3 + 48 + 4


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_fresh_second_pass_changes_nothing(scale):
    one = corrected_network()
    two = IARN(one.config, CorrectorConfig(width=8, depth=3, passes=2))
    missing = two.load_state_dict(one.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("corrector.feedback.") for k in missing)
    x = torch.rand(1, 3, 37, 45)
    a = Rescaler(one, device="cpu").downscale(x, scale=scale)
    assert torch.equal(a, Rescaler(two, device="cpu").downscale(x, scale=scale))


def test_passes_are_chosen_at_run_time(monkeypatch):
    import iarn.model.modes.middle as middle

    monkeypatch.setattr(middle, "CHECK_EXTRA_PASSES", False)  # each extra pass kept, as it comes
    two = corrected_network(passes=2)
    one = IARN(two.config, CorrectorConfig(width=8, depth=3))
    one.load_state_dict(two.state_dict(), strict=False)
    model = Rescaler(two, device="cpu")
    x = torch.rand(1, 3, 150, 170)
    trained = model.downscale(x, scale=2.7)
    model.corrector_passes = 1  # the first pass alone: what a one-pass corrector gives
    assert torch.equal(model.downscale(x, scale=2.7), Rescaler(one, device="cpu").downscale(x, scale=2.7))
    model.corrector_passes = 4  # the feedback stack three times
    more = model.downscale(x, scale=2.7)
    assert not torch.equal(more, trained)
    tiled = model.downscale(x, scale=2.7, tile=48)
    assert (more - tiled).abs().max() <= 1 / 255 + 1e-6 and (more != tiled).float().mean() < 0.01


def test_worst_block_runs_pick_the_largest_means_as_runs():
    energy = torch.zeros(70, 100)  # blocks of 32: rows 32, 32, 6; columns 32, 32, 32, 4
    assert worst_block_runs(energy, 0.0) == []
    assert worst_block_runs(energy, 1.0) == [(0, 32, 0, 100), (32, 64, 0, 100), (64, 70, 0, 100)]
    energy[0:32, 32:96] = 2.0  # two neighbours: one run
    energy[64:70, 0:32] = 3.0  # a short block: ranked by its mean, not its sum
    energy[40, 96:100] = 1.0  # a narrow block's mean: 4 / (32 * 4)
    assert worst_block_runs(energy, 3 / 12) == [(0, 32, 32, 96), (64, 70, 0, 32)]
    assert worst_block_runs(energy, 4 / 12) == [(0, 32, 32, 96), (32, 64, 96, 100), (64, 70, 0, 32)]
    assert worst_block_runs(energy, 0.01) == [(64, 70, 0, 32)]  # above 0: at least one block
    assert worst_block_runs(torch.zeros(5, 5), 0.5) == [(0, 5, 0, 5)]  # one block, smaller than a block
    tie = torch.ones(32, 96)
    assert worst_block_runs(tie, 1 / 3) == [(0, 32, 0, 32)]  # ties: the earlier block


def test_split_passes():
    assert split_passes(2) == (2, 0.0) and split_passes(1) == (1, 0.0)
    whole, share = split_passes(2.4)
    assert whole == 2 and share == pytest.approx(0.4)
    for bad in (0, 0.5, 1.5):  # a fraction needs a full feedback pass before it: its error chooses
        with pytest.raises(ValueError, match="corrector passes"):
            split_passes(bad)


def partial_pass_lrs(network, x, lr_size, *passes):
    hr_size = (x.shape[-2], x.shape[-1])
    with torch.no_grad():
        return [network.down_region(x, hr_size, lr_size, correct=True, passes=p)[0] for p in passes]


def test_a_partial_last_pass_changes_only_its_blocks(monkeypatch):
    import iarn.model.modes.middle as middle

    monkeypatch.setattr(middle, "RUNAWAY", float("inf"))  # no block skipped
    monkeypatch.setattr(middle, "CHECK_EXTRA_PASSES", False)  # the third pass as it comes
    network = corrected_network(passes=2)
    x, lr_size = torch.rand(1, 3, 160, 200), (64, 80)  # x2.5: blocks 2 x 3, the last column smaller
    two, partial, three = partial_pass_lrs(network, x, lr_size, 2, 2.4, 3)
    changed = (partial != two).any(1)[0]
    blocks = [
        changed[i : i + LAST_PASS_BLOCK, j : j + LAST_PASS_BLOCK]
        for i in range(0, lr_size[0], LAST_PASS_BLOCK)
        for j in range(0, lr_size[1], LAST_PASS_BLOCK)
    ]
    assert [bool(b.all()) for b in blocks] == [bool(b.any()) for b in blocks]  # whole blocks or none
    assert sum(bool(b.all()) for b in blocks) == round(0.4 * 6)
    # where it acts, it moves the LR the way a full third pass does
    inside = changed[None, None].expand_as(two)
    assert float(((partial - three)[inside]).abs().mean()) < float(((two - three)[inside]).abs().mean())


def test_a_partial_last_pass_skips_runaway_blocks_and_small_scales(monkeypatch):
    import iarn.model.modes.middle as middle

    network = corrected_network(passes=2)
    x = torch.rand(1, 3, 160, 200)
    two, partial = partial_pass_lrs(network, x, (80, 100), 2, 2.4)  # x2: one x2 step
    assert torch.equal(partial, two)
    monkeypatch.setattr(middle, "RUNAWAY", 0.0)  # every block counts as one the last pass made worse
    two, partial = partial_pass_lrs(network, x, (64, 80), 2, 2.4)
    assert torch.equal(partial, two)


def test_a_partial_pass_with_all_blocks_and_context_is_the_full_pass(monkeypatch):
    import iarn.model.modes.middle as middle

    monkeypatch.setattr(middle, "LAST_PASS_MARGIN", 10_000)  # every window: the whole crop
    monkeypatch.setattr(middle, "RUNAWAY", float("inf"))
    monkeypatch.setattr(middle, "CHECK_EXTRA_PASSES", False)
    model = Rescaler(corrected_network(passes=2), device="cpu")
    x = torch.rand(1, 3, 150, 170)
    for tile in (None, 48):
        model.corrector_passes = 3
        full = model.downscale(x, scale=2.7, tile=tile)
        model.corrector_passes = 2.9999  # every block
        assert torch.equal(model.downscale(x, scale=2.7, tile=tile), full)


def test_local_error_is_the_windowed_mean_per_lr_pixel():
    from iarn.model.corrector import local_error

    error = torch.randn(2, 3, 36, 52, dtype=torch.float64)  # x4: an LR of 9 x 13
    per_pixel = error.pow(2).sum(1).reshape(2, 9, 4, 13, 4).mean((2, 4))
    for window in (1, 5, 33):
        r = window // 2
        expected = torch.empty(2, 9, 13, dtype=torch.float64)
        for i in range(9):
            for j in range(13):
                expected[:, i, j] = per_pixel[:, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].mean((1, 2))
        assert torch.allclose(local_error(error, 4, window)[:, 0], expected)


@pytest.mark.parametrize("scale", [2.0, 2.7], ids=str)
def test_passes_beyond_the_trained_hold_where_the_last_one_ran_away(monkeypatch, scale):
    import iarn.model.modes.middle as middle

    monkeypatch.setattr(middle, "CHECK_EXTRA_PASSES", False)  # the hold alone
    network = corrected_network(passes=2)
    x = torch.rand(1, 3, 150, 170)
    lr_size = (round(150 / scale), round(170 / scale))
    monkeypatch.setattr(middle, "RUNAWAY", float("inf"))  # no hold: each pass moves the LR
    two, three, four = partial_pass_lrs(network, x, lr_size, 2, 3, 4)
    assert not torch.equal(three, two) and not torch.equal(four, three)
    monkeypatch.setattr(middle, "RUNAWAY", 0.0)  # every pixel counts as one the last pass made worse
    held = partial_pass_lrs(network, x, lr_size, 2, 3, 4)
    assert torch.equal(held[0], two)  # the trained passes are never held
    assert torch.equal(held[1], two) and torch.equal(held[2], two)
    monkeypatch.setattr(middle, "RUNAWAY", 2.0)  # somewhere between: a pixel held or as without the hold
    _, guarded, _ = partial_pass_lrs(network, x, lr_size, 2, 3, 4)
    assert bool(((guarded == two) | (guarded == three)).all())


def test_hr_error_is_the_luma_error_the_hr_sees():
    from iarn.model.corrector import hr_error

    error = torch.randn(2, 3, 40, 48, dtype=torch.float64)
    luma = (error * torch.tensor(Y_WEIGHTS, dtype=torch.float64)[:, None, None]).sum(1)
    assert torch.allclose(hr_error(error, (40, 48), (40, 48)), luma.pow(2).mean((1, 2)))  # x2: the HR itself
    gray = torch.ones(1, 3, 40, 48, dtype=torch.float64)  # luma weights sum to 219/255
    checker = gray * (-1.0) ** (torch.arange(40)[:, None] + torch.arange(48)[None])
    smooth = gray * torch.linspace(-1, 1, 48, dtype=torch.float64)
    # a middle image 1.6x the HR: detail the HR cannot hold is dropped, smooth error kept
    assert float(hr_error(checker, (25, 30), (40, 48))) < 0.05 * float(hr_error(checker, (40, 48), (40, 48)))
    assert float(hr_error(smooth, (25, 30), (40, 48))) == pytest.approx(
        float(hr_error(smooth, (40, 48), (40, 48))), rel=0.05
    )


@pytest.mark.parametrize("seed", range(6))
def test_an_extra_pass_is_kept_only_if_it_lowers_the_error(monkeypatch, seed):
    import iarn.model.modes.middle as middle

    monkeypatch.setattr(middle, "RUNAWAY", float("inf"))
    network = corrected_network(seed=seed, passes=2)
    with torch.no_grad():  # feedback stacks that help on some images, harm on others
        for p in network.corrector.feedback.parameters():
            p.mul_(0.1 * (seed + 1))
    torch.manual_seed(seed)
    x, lr_size = torch.rand(2, 3, 96, 112), (48, 56)  # x2: the middle image is the HR
    monkeypatch.setattr(middle, "CHECK_EXTRA_PASSES", False)
    two, three = partial_pass_lrs(network, x, lr_size, 2, 3)
    monkeypatch.setattr(middle, "CHECK_EXTRA_PASSES", True)
    (checked,) = partial_pass_lrs(network, x, lr_size, 3)

    def error(lr, b):  # in luma, as PSNR-Y scores
        with torch.no_grad():
            restored = network.up_region(torch.round(lr[b : b + 1].clamp(0, 1) * 255) / 255, (96, 112), lr_size)
        return float(((restored - x[b : b + 1]) * torch.tensor(Y_WEIGHTS)[:, None, None]).sum(1).pow(2).mean())

    for b in range(2):  # each image its own choice, the one that restores better
        better = two if error(three, b) > error(two, b) else three
        assert torch.equal(checked[b], better[b])


def test_refinement_starts_from_unchecked_extra_passes(monkeypatch):
    # the check serves the LR that is written; where refinement follows, its own loss decides
    import iarn.rescaler as rescaler

    network = corrected_network(seed=0, passes=2)
    with torch.no_grad():
        for p in network.corrector.feedback.parameters():
            p.mul_(0.1)
    model = Rescaler(network, device="cpu")
    model.corrector_passes = 3
    x = torch.rand(1, 3, 96, 112)
    with torch.no_grad():
        checked, unchecked = (
            network.down_region(x, (96, 112), (48, 56), correct=True, passes=3, check_passes=c)[0]
            for c in (True, False)
        )
    assert not torch.equal(checked, unchecked)  # this network's third pass does not help: the check drops it
    starts = []
    monkeypatch.setattr(rescaler, "refine_lr", lambda network, x, lr, *rest: starts.append(lr) or lr)
    written = model.downscale(x, size=(48, 56))
    model.downscale(x, size=(48, 56), refine=1)
    assert torch.equal(written, hold_lr_bound(checked, x, 44.0))
    assert torch.equal(starts[0], hold_lr_bound(unchecked, x, 44.0))


@pytest.mark.parametrize("scale", [2.0, 2.7], ids=str)
def test_checked_extra_passes_in_tiles_choose_per_tile(monkeypatch, scale):
    # each tile keeps the extra pass or not: every pixel between the two choices, blends included
    import iarn.model.modes.middle as middle

    model = Rescaler(corrected_network(seed=3, passes=2), device="cpu")
    x = torch.rand(1, 3, 150, 170)
    model.corrector_passes = 3
    tiled = model.downscale(x, scale=scale, tile=48)
    monkeypatch.setattr(middle, "CHECK_EXTRA_PASSES", False)
    unchecked = model.downscale(x, scale=scale)
    model.corrector_passes = 2
    two = model.downscale(x, scale=scale)
    assert not torch.equal(two, unchecked)
    low, high = torch.minimum(two, unchecked), torch.maximum(two, unchecked)
    assert bool(((tiled >= low - 1 / 255 - 1e-6) & (tiled <= high + 1 / 255 + 1e-6)).all())


@pytest.mark.parametrize("scale", [2.7, (1.5, 3.3)], ids=str)
@pytest.mark.parametrize("variant", ["two-pass", "per-count"])
def test_a_partial_pass_in_tiles_differs_only_by_its_choice_of_blocks(monkeypatch, scale, variant):
    # each tile chooses its own share of blocks (the time it spends stays the share of a pass):
    # within one level of the whole image's LR, and in fewer pixels than the pass itself moves
    import iarn.model.modes.middle as middle

    monkeypatch.setattr(middle, "CHECK_EXTRA_PASSES", False)  # the full third pass as it comes
    model = Rescaler(corrected_network(**VARIANTS[variant]), device="cpu")
    x = torch.rand(1, 3, 150, 170)
    whole = {}
    for passes in (2, 3, 2.4):
        model.corrector_passes = passes
        whole[passes] = model.downscale(x, scale=scale)
    tiled = model.downscale(x, scale=scale, tile=48)
    assert (whole[2.4] - tiled).abs().max() <= 1 / 255 + 1e-6
    assert (whole[2.4] != tiled).float().mean() < 0.5 * (whole[2] != whole[3]).float().mean()


def test_a_two_pass_run_starts_from_a_one_pass_corrector():
    one = corrected_network()
    base = randomize(IARN(first_config(**MIDDLE)))
    two = attach_corrector(base, CorrectorConfig(width=8, depth=3, passes=2), init=one)
    for name, tensor in one.corrector.state_dict().items():
        assert torch.equal(two.corrector.state_dict()[name], tensor), name
    assert all(float(p.detach().abs().max()) == 0 for p in two.corrector.feedback.last.parameters())
    with pytest.raises(ValueError, match="init-from's corrector"):  # two passes into one: refused
        attach_corrector(randomize(IARN(first_config(**MIDDLE))), CorrectorConfig(width=8, depth=3), init=two)
    with pytest.raises(ValueError, match="init-from's corrector"):  # another width: refused
        attach_corrector(randomize(IARN(first_config(**MIDDLE))), CorrectorConfig(width=4, depth=3, passes=2), init=one)


@pytest.mark.parametrize("passes", PASSES)
def test_a_per_count_run_starts_from_a_shared_corrector(passes):
    """Every step count's convolutions start as the shared ones: the same LRs at x(1, 2] and
    x(2, 4]; each then has its own (a per-count corrector is never made shared)."""
    shared = corrected_network(passes=passes)
    config = CorrectorConfig(width=8, depth=3, passes=passes, per_count=True)
    split = attach_corrector(randomize(IARN(first_config(**MIDDLE))), config, init=shared)
    split.load_state_dict(
        {k: v for k, v in shared.state_dict().items() if not k.startswith("corrector.")}, strict=False
    )
    assert len(split.corrector.last) == 2 and split.corrector.last[0] is not split.corrector.last[1]
    x = torch.rand(1, 3, 61, 67)
    for scale in (1.7, 2.0, 3.1, (1.5, 4.0)):
        expected = Rescaler(shared, device="cpu").downscale(x, scale=scale)
        assert torch.equal(Rescaler(split, device="cpu").downscale(x, scale=scale), expected), scale
    with torch.no_grad():
        split.corrector.last[1].bias.add_(0.05)  # x(2, 4]'s own: x(1, 2] keeps its LR
    assert torch.equal(
        Rescaler(split, device="cpu").downscale(x, scale=1.7), Rescaler(shared, device="cpu").downscale(x, scale=1.7)
    )
    assert not torch.equal(
        Rescaler(split, device="cpu").downscale(x, scale=3.1), Rescaler(shared, device="cpu").downscale(x, scale=3.1)
    )
    with pytest.raises(ValueError, match="init-from's corrector"):
        attach_corrector(randomize(IARN(first_config(**MIDDLE))), shared.corrector.config, init=split)


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_fresh_corrector_changes_nothing(scale):
    plain = randomize(IARN(first_config(**MIDDLE)))
    with_corrector = IARN(first_config(**MIDDLE), CorrectorConfig(width=8, depth=3))
    with_corrector.load_state_dict({**with_corrector.state_dict(), **plain.state_dict()})
    x = torch.rand(1, 3, 37, 45)
    a = Rescaler(plain, device="cpu").downscale(x, scale=scale)
    b = Rescaler(with_corrector, device="cpu").downscale(x, scale=scale)
    assert torch.equal(a, b)


@pytest.mark.parametrize("scale", SCALES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_corrector_changes_the_lr_not_the_upscaler(scale, variant):
    network = corrected_network(**VARIANTS[variant])
    model = Rescaler(network, device="cpu")
    x = torch.rand(1, 3, 41, 53)
    corrected = model.downscale(x, scale=scale)
    model.correct = False
    forward = model.downscale(x, scale=scale)
    assert corrected.shape == forward.shape
    if 1 < x.shape[-2] / corrected.shape[-2] and 1 < x.shape[-1] / corrected.shape[-1]:
        assert not torch.equal(corrected, forward)  # the corrector acts on every scale the model serves
    up = model.upscale(corrected, size=x.shape[-2:])
    plain = IARN(network.config)
    plain.load_state_dict({k: v for k, v in network.state_dict().items() if not k.startswith("corrector.")})
    assert torch.equal(up, Rescaler(plain, device="cpu").upscale(corrected, size=x.shape[-2:]))


@pytest.mark.parametrize("scale", [2.7, (1.5, 3.3)], ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_corrected_tiles_equal_whole(scale, variant):
    model = Rescaler(corrected_network(**VARIANTS[variant]), device="cpu")
    x = torch.rand(1, 3, 150, 170)
    whole = model.downscale(x, scale=scale)
    tiled = model.downscale(x, scale=scale, tile=48)
    assert (whole - tiled).abs().max() <= 1 / 255 + 1e-6
    assert (whole != tiled).float().mean() < 0.01


@pytest.mark.parametrize("variant", VARIANTS)
def test_weight_file_round_trip_keeps_the_corrector(tmp_path, variant):
    network = corrected_network(**VARIANTS[variant])
    path = tmp_path / "c.safetensors"
    save_weights(network, path)
    loaded = load_weights(path)
    assert loaded.corrector is not None and loaded.corrector.config == network.corrector.config
    for (name, a), (_, b) in zip(network.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_lrs_of_the_base_upscale_with_the_corrected_file(tmp_path):
    base = randomize(IARN(first_config(**MIDDLE)))
    base_path, corrected_path = tmp_path / "base.safetensors", tmp_path / "corrected.safetensors"
    save_weights(base, base_path)
    network = attach_corrector(load_weights(base_path), CorrectorConfig(width=8, depth=3))
    save_weights(network, corrected_path, same_upscaler_as=base_path)
    assert same_upscaler(weights_id(base_path), weights_id(corrected_path), corrected_path)
    assert not same_upscaler(weights_id(corrected_path), weights_id(base_path), base_path)
    stages = {k: v for k, v in load_weights(corrected_path).state_dict().items() if not k.startswith("corrector.")}
    for name, tensor in base.state_dict().items():
        assert torch.equal(stages[name], tensor), name  # the upscaler bit-identical


def test_corrector_config_is_checked():
    with pytest.raises(ValueError, match="corrector width"):
        CorrectorConfig(width=0)
    with pytest.raises(ValueError, match="unknown corrector config fields"):
        CorrectorConfig.from_dict({"widht": 8})
    with torch.device("meta"):
        assert Corrector(CorrectorConfig()).last.weight.is_meta
    with pytest.raises(ValueError, match="per_count"):
        CorrectorConfig(per_count="yes")


def content(kind: str, size=(96, 120)) -> torch.Tensor:
    """Content unlike any training photo: text-like strokes, line art, a checkerboard, noise."""
    rng = np.random.default_rng(1)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    if kind == "checkerboard":
        plane = ((y // 3 + x // 3) % 2).astype(np.float64)
        image = np.stack([plane, 1 - plane, plane], axis=2)
    elif kind == "noise":
        image = rng.random((h, w, 3))
    elif kind == "lines":
        plane = ((x + 2 * y) % 7 == 0) | (x % 11 == 0)
        image = np.stack([plane] * 3, axis=2).astype(np.float64)
    else:  # "text": dark strokes of random short bars on white
        image = np.ones((h, w, 3))
        for _ in range(120):
            r, c = rng.integers(0, h - 8), rng.integers(0, w - 8)
            if rng.random() < 0.5:
                image[r : r + 7, c : c + 1] = 0
            else:
                image[r : r + 1, c : c + 5] = 0
    return torch.from_numpy(image).permute(2, 0, 1)[None].float().contiguous()


@pytest.mark.parametrize("kind", ["text", "lines", "checkerboard", "noise"])
@pytest.mark.parametrize(
    "effort, variant", [(0, "one-pass"), (1, "one-pass"), (1, "two-pass"), (2, "two-pass"), (1, "per-count")]
)
def test_every_lr_keeps_the_bound_on_any_content(kind, effort, variant):
    model = Rescaler(corrected_network(**VARIANTS[variant]), device="cpu")
    chosen = EFFORTS[effort]
    set_corrector(model, chosen)
    x = content(kind)
    for scale in (2.0, 3.0, (1.5, 4.0)):
        lr = model.downscale(x, scale=scale, refine=chosen.refine)
        reference = reference_lr(x, lr.shape[-2:], lr.dtype)
        assert float(lr_psnr_y(lr, reference).min()) >= 44.0, (kind, scale)
        assert torch.equal(lr, torch.round(lr * 255) / 255)


def test_hold_lr_bound_moves_only_what_it_must():
    x = torch.rand(2, 3, 40, 40)
    reference = reference_lr(x, (20, 20), torch.float32)
    near = reference + 0.001 * torch.randn_like(reference)
    far = reference + 0.05 * torch.randn_like(reference)
    held = hold_lr_bound(torch.cat([near[:1], far[1:]]), x, 44.0)
    assert torch.equal(held[0], torch.round(near[0].clamp(0, 1) * 255) / 255)  # already inside: rounded only
    assert float(lr_psnr_y(held[1:], reference[1:])) >= 44.0
    assert torch.equal(hold_lr_bound(far, x, 0.0), torch.round(far.clamp(0, 1) * 255) / 255)  # 0: no bound


def test_effort_plan():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert plan(None, None, cpu) == EFFORTS[CPU_EFFORT] and plan(None, None, cuda) == EFFORTS[GPU_EFFORT]
    assert plan(0, None, cpu).corrector is False and plan(0, 7, cpu).refine == 7
    assert plan(None, 3, cpu) == type(EFFORTS[1])(corrector=True, refine=3, passes=EFFORTS[1].passes)
    assert [EFFORTS[e].refine for e in sorted(EFFORTS)] == sorted(EFFORTS[e].refine for e in EFFORTS)
    highest = max(EFFORTS)
    assert plan(highest, 8, cpu).rounding == EFFORTS[highest].rounding == "both"  # --refine N keeps the rule
    assert effort_level(f"{highest - 1}+100").rounding == "every-step"  # the highest effort before both rules
    config = effort_level(f"{highest}+12").refine_config(loss="rgb")
    assert (config.steps, config.rounding, config.loss) == (12, "both", "rgb")


def test_effort_one_runs_whole_passes_for_a_codec_trained_model():
    import iarn

    lossless, lossy = iarn.load("default", device="cpu"), iarn.load("jpeg", device="cpu")
    unnamed = Rescaler(corrected_network(passes=2), device="cpu")  # no file: nothing recorded
    for model in (lossless, lossy, unnamed):
        set_corrector(model, EFFORTS[1])
    assert lossless.corrector_passes == unnamed.corrector_passes == EFFORTS[1].passes == 2.4
    assert lossy.corrector_passes == 2
    set_corrector(lossy, EFFORTS[2])
    assert lossy.corrector_passes == EFFORTS[2].passes


def test_corrector_training_learns_and_writes_a_complete_file(tmp_path, image_folder):
    base = randomize(IARN(first_config(**MIDDLE)))
    base_path = tmp_path / "base.safetensors"
    save_weights(base, base_path)
    cfg = CorrectorTrainConfig(
        data=(str(image_folder),),
        out=str(tmp_path / "run"),
        base=str(base_path),
        corrector=CorrectorConfig(width=8, depth=3),
        steps=4,
        batch_size=2,
        crop=32,
        checkpoint_every=2,
        log_every=1,
        learning_rate=1e-2,
    )
    path = train_corrector(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "corrector-log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in records)
    trained = load_weights(path)
    assert any(float(p.detach().abs().max()) > 0 for p in trained.corrector.last.parameters())  # moved off zero
    for name, tensor in base.state_dict().items():
        assert torch.equal(trained.state_dict()[name], tensor), name
    metadata_training = json.loads(__import__("iarn.weights").weights.read_metadata(path)["training"])
    assert "data" not in metadata_training["corrector"] and "out" not in metadata_training["corrector"]
    # continuing to the same step count changes nothing; a run out of time before a step writes nothing
    assert train_corrector(cfg, resume=True) == path
    empty = CorrectorTrainConfig.from_dict({**cfg.to_dict(), "out": str(tmp_path / "none")})
    assert train_corrector(empty, max_minutes=1e-9, clock=iter([0.0, 1.0, 2.0, 3.0]).__next__) is None
    assert not (tmp_path / "none" / "model.safetensors").exists()


def test_corrector_training_through_a_codec(tmp_path, image_folder):
    """With a codec, the loss is the HR error of what the real codec gives back (its pixels; the
    surrogate's gradient), each step at a quality drawn from the recipe's range and logged."""
    from iarn.codec import through_codec_batch
    from iarn.corrector_train import corrector_loss
    from iarn.model import quantize_8bit
    from iarn.refine import error_per_image

    cfg = CorrectorTrainConfig(codec="jpeg", codec_quality_min=70, codec_quality_max=90, lr_psnr_min=0.0)
    network = corrected_network(passes=2)
    hr = torch.rand(2, 3, 48, 40)
    coded = corrector_loss(network, hr, (24, 20), cfg, quality=80)["loss"]
    with torch.no_grad():
        lr = quantize_8bit(network.down_region(hr, (48, 40), (24, 20), correct=True)[0].clamp(0, 1))
        restored = network.up_region(through_codec_batch(lr, ("jpeg", 80)), (48, 40), (24, 20))
        expected = torch.log(error_per_image(restored, hr, "y") / (48 * 40)).mean()
    assert torch.allclose(coded, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(coded, corrector_loss(network, hr, (24, 20), cfg)["loss"], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="codec must be one of"):
        CorrectorTrainConfig(codec="png")
    with pytest.raises(ValueError, match="codec_quality_min <= codec_quality_max"):
        CorrectorTrainConfig(codec="jpeg", codec_quality_min=95, codec_quality_max=75)
    base_path = tmp_path / "base.safetensors"
    save_weights(randomize(IARN(first_config(**MIDDLE))), base_path)
    run = dict(base=str(base_path), corrector=CorrectorConfig(width=8, depth=3), steps=3, batch_size=2, crop=32)
    train_corrector(dataclasses.replace(cfg, data=(str(image_folder),), out=str(tmp_path / "run"), log_every=1, **run))
    records = [json.loads(line) for line in (tmp_path / "run" / "corrector-log.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(70 <= r["quality"] <= 90 and np.isfinite(r["loss"]) for r in records)


def test_the_recipe_files_load():
    from pathlib import Path

    from iarn.model import ModelConfig
    from iarn.train_config import TrainConfig, read_config_file

    recipes = Path(__file__).resolve().parents[1] / "config"
    cfg = CorrectorTrainConfig.from_dict(read_config_file(recipes / "corrector.json"))
    assert cfg.corrector.detail_gain == 16.0 and cfg.data == ()
    networks = sorted(recipes.glob("network_*.json"))
    assert len(networks) == 2
    for recipe in networks:  # the shipped architecture, no data path of this machine
        network = TrainConfig.load(recipe)
        assert network.model == ModelConfig() and network.data == ()
    jpeg = TrainConfig.load(recipes / "jpeg.json")  # the bundled `jpeg` model's fine-tuning
    assert jpeg.codec == "jpeg" and jpeg.codec_gradient == "surrogate" and jpeg.model == ModelConfig()
    jpeg_corrector = CorrectorTrainConfig.from_dict(read_config_file(recipes / "jpeg_corrector.json"))
    assert jpeg_corrector.base == "jpeg" and jpeg_corrector.codec == "jpeg" and jpeg_corrector.data == ()
    assert jpeg_corrector.corrector == cfg.corrector  # the default's architecture: it starts from its corrector
    # the shipped per-count legs: the same corrector with its own convolutions per step count,
    # each trained on one path only (so the other path's LRs stay as they were)
    x2_4 = CorrectorTrainConfig.from_dict(read_config_file(recipes / "corrector_x2-4.json"))
    x2_4b = CorrectorTrainConfig.from_dict(read_config_file(recipes / "corrector_x2-4b.json"))
    x1_2 = CorrectorTrainConfig.from_dict(read_config_file(recipes / "corrector_x1-2.json"))
    for leg in (x2_4, x2_4b, x1_2):
        assert leg.corrector == dataclasses.replace(cfg.corrector, per_count=True) and leg.data == ()
    for leg in (x2_4, x2_4b):
        assert 2.0 < leg.scale_min and leg.scale_max == 4.0
    assert x1_2.scale_min == 1.0 and x1_2.scale_max == 2.0


def test_the_bound_reference_is_the_protocol_bicubic_in_bands():
    from iarn.lr_bound import REFERENCE_BAND
    from iarn.model.network import quantize_8bit
    from iarn.resample import resize

    x = torch.randint(0, 256, (1, 3, 4 * REFERENCE_BAND + 37, 23), dtype=torch.uint8)
    for lr_size in ((REFERENCE_BAND * 2 + 5, 11), (x.shape[-2], 23), (3, 7)):
        expected = quantize_8bit(resize(x.double() / 255, lr_size)).float()
        assert torch.equal(reference_lr(x, lr_size, torch.float32), expected)


def test_a_model_with_a_corrector_exports_its_forward_pass(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from iarn.export import OnnxRescaler, export_onnx, onnx_paths

    network = corrected_network()
    down, up = onnx_paths(tmp_path / "m")
    export_onnx(network, down, up)
    hr = torch.rand(1, 3, 48, 64)
    model = Rescaler(network, device="cpu")
    model.correct = False  # the graph: the forward pass, no corrector, no bound
    expected = model.downscale(hr, scale=2, refine=RefineConfig(lr_psnr_min=0))
    (got,) = OnnxRescaler(down, up).down.run(None, {"hr": hr.numpy(), "lr_shape": np.zeros((24, 32), np.uint8)})
    assert (torch.from_numpy(got) - expected).abs().max() <= 1 / 255 + 1e-6


def test_training_flags_of_true_or_false_fields_are_switches():
    from iarn.cli import build_parser

    def parsed(*flags):
        return build_parser().parse_args(["train-corrector", "--data", "d", *flags]).per_count

    assert parsed() is None and parsed("--per-count") is True and parsed("--no-per-count") is False


def test_effort_levels_by_name():
    assert effort_level("1") == EFFORTS[1] and effort_level("0+10") == type(EFFORTS[0])(False, 10)
    assert effort_level("1@3") == type(EFFORTS[1])(True, 0, 3) and effort_level("2+5").passes == EFFORTS[2].passes
    assert effort_level("1@2.4").passes == 2.4 and EFFORTS[1].passes == 2.4
    for bad in ("9", "x", "1+y", "", "1@1.5", "1@0", "1@y"):
        with pytest.raises(ValueError, match="effort level"):
            effort_level(bad)
