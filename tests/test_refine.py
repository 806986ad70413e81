"""Encode-time refinement of the LR (refine.py): it helps, it holds its bound, tiles match."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from iarn import load
from iarn.cli import main
from iarn.convert import to_tensor
from iarn.imageio import REFINE_KEY, read_picture
from iarn.lr_bound import lr_psnr_y, luma, project_lr
from iarn.metrics import Y_WEIGHTS
from iarn.refine import RefineConfig, TiledObjective, refine_lr
from iarn.resample import resize
from iarn.rounding import rounding_schedule

from .conftest import small_model


@pytest.fixture(scope="module")
def bundled():
    return load("default", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def crop() -> torch.Tensor:
    """A detailed 64 x 80 crop of the bundled sample, (1, 3, 64, 80) float in [0, 1]."""
    from iarn.cli import sample_image_path

    rgb = read_picture(sample_image_path()).rgb[200:264, 300:380]
    return to_tensor(rgb).float() / 255


def hr_error(model, lr, hr) -> float:
    up = model.upscale(lr, size=tuple(hr.shape[-2:]))
    return float(luma((up * 255).round() / 255 - hr).pow(2).mean())


def reference_lr(hr, lr_size):
    return (resize(hr.double(), lr_size).clamp(0, 1) * 255).round().float() / 255


# steps: where the corrector's LR leaves less to gain, more of them (x(2, 4] since 2026-12-07)
@pytest.mark.parametrize("scale, steps", [(2, 8), (3, 8), ((1.5, 4), 12)], ids=["x2", "x3", "1.5x4"])
def test_refinement_restores_better_and_keeps_the_lr_bound(bundled, crop, scale, steps):
    corrected = bundled.downscale(crop, scale=scale)  # refinement starts from the corrector's LR
    lr = bundled.downscale(crop, scale=scale, refine=steps)
    bundled.correct = False
    lr0 = bundled.downscale(crop, scale=scale)  # the network's forward pass
    bundled.correct = True
    assert lr.shape == lr0.shape
    assert torch.equal(lr, (lr * 255).round() / 255)  # 8-bit values, as saved
    assert hr_error(bundled, lr, crop) < 0.95 * hr_error(bundled, lr0, crop)  # 0.2 dB or more
    assert hr_error(bundled, lr, crop) < 0.99 * hr_error(bundled, corrected, crop)  # and past the corrector
    reference = reference_lr(crop, tuple(lr.shape[-2:]))
    assert float(lr_psnr_y(lr, reference)) >= 44.0


def test_refine_zero_is_the_network_lr(bundled, crop):
    assert torch.equal(bundled.downscale(crop, scale=2.5, refine=0), bundled.downscale(crop, scale=2.5))


def test_a_strict_bound_is_held_and_the_best_iterate_never_loses(bundled, crop):
    lr0 = bundled.downscale(crop, scale=3)
    reference = reference_lr(crop, tuple(lr0.shape[-2:]))
    start = float(lr_psnr_y(lr0, reference))
    strict = RefineConfig(steps=6, lr_psnr_min=start - 0.3, step_size=2)
    free = RefineConfig(steps=6, lr_psnr_min=0, step_size=2)
    lr_strict = bundled.downscale(crop, scale=3, refine=strict)
    lr_free = bundled.downscale(crop, scale=3, refine=free)
    assert float(lr_psnr_y(lr_strict, reference)) >= start - 0.3
    for lr in (lr_strict, lr_free):
        assert hr_error(bundled, lr, crop) <= hr_error(bundled, lr0, crop)
    # a bound above where the network's LR already is: that level is kept, never worse
    above = bundled.downscale(crop, scale=3, refine=RefineConfig(steps=4, lr_psnr_min=start + 5))
    assert float(lr_psnr_y(above, reference)) >= start - 1e-6


def test_projection_scales_only_the_luma_of_the_deviation():
    torch.manual_seed(0)
    reference = torch.rand(2, 3, 9, 11) * 0.5 + 0.25
    v = reference + torch.randn(2, 3, 9, 11) * 0.02
    floor = torch.tensor([40.0, 10.0])  # the first is violated, the second is not
    projected = project_lr(v, reference, floor)
    db = lr_psnr_y(projected, reference)
    assert abs(float(db[0]) - 40.0) < 1e-3
    assert torch.allclose(projected[1], v[1])
    w = torch.tensor(Y_WEIGHTS).view(1, 3, 1, 1)

    def unseen(d):  # the part of a deviation that luma does not see
        return d - luma(d) * w / w.pow(2).sum()

    assert torch.allclose(unseen(projected - reference), unseen(v - reference), atol=1e-6)


@pytest.mark.parametrize("mode,scale", [("middle", 2.7), ("middle", (1.3, 3.6)), ("cycle", 2.2)])
def test_tiled_gradient_equals_the_whole_image_gradient(mode, scale):
    model = small_model(mode=mode, levels=2 if mode == "middle" else 1)
    torch.manual_seed(1)
    hr = torch.rand(1, 3, 101, 87)
    lr = model.downscale(hr, scale=scale)
    whole_loss, whole = TiledObjective(model.network, hr, tuple(lr.shape[-2:]), None, "y")(lr)
    tiled_loss, tiled = TiledObjective(model.network, hr, tuple(lr.shape[-2:]), 32, "y")(lr)
    assert torch.allclose(whole_loss, tiled_loss, rtol=1e-4)
    assert (whole - tiled).abs().max() <= 1e-3 * whole.abs().max()


def test_tiled_refinement_matches_whole_refinement_without_seams(bundled):
    """Small tiles (40 HR pixels) on a 120 x 104 image: the tiled refinement follows the whole
    one's iterates; bound: 0.05 dB of restored PSNR-Y, and no LR pixel more than 2 levels off."""
    from iarn.cli import sample_image_path

    hr = to_tensor(read_picture(sample_image_path()).rgb[180:300, 280:384]).float() / 255
    whole = bundled.downscale(hr, scale=2.7, refine=6)
    tiled = bundled.downscale(hr, scale=2.7, refine=6, tile=40)
    assert (whole - tiled).abs().max() <= 2 / 255 + 1e-6
    psnr_whole = -10 * math.log10(hr_error(bundled, whole, hr))
    psnr_tiled = -10 * math.log10(hr_error(bundled, tiled, hr))
    assert abs(psnr_whole - psnr_tiled) < 0.05


def test_a_batch_refines_each_image_as_alone():
    model = small_model(mode="middle", levels=2)
    torch.manual_seed(2)
    hr = torch.rand(2, 3, 40, 36)
    both = model.downscale(hr, scale=2.5, refine=4)
    for i in range(2):
        alone = model.downscale(hr[i : i + 1], scale=2.5, refine=4)
        assert (both[i : i + 1] - alone).abs().max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("rounding", ["progressive", "every-step", "both"])
@pytest.mark.parametrize("optimizer,loss", [("adam", "rgb"), ("gd", "rgb"), ("gd", "y")])
def test_every_optimizer_loss_and_rounding_runs_and_never_loses(optimizer, loss, rounding):
    model = small_model(mode="middle", levels=2)
    torch.manual_seed(3)
    hr = torch.rand(2, 3, 33, 29)
    lr0 = model.downscale(hr, scale=2)
    config = RefineConfig(steps=5, optimizer=optimizer, loss=loss, rounding=rounding)
    lr = refine_lr(model.network, hr, lr0, config)
    assert torch.equal(lr, (lr * 255).round() / 255)
    objective = TiledObjective(model.network, hr, tuple(lr.shape[-2:]), None, loss)
    assert bool((objective(lr, with_grad=False)[0] <= objective(lr0, with_grad=False)[0]).all())  # per image


@pytest.mark.parametrize("steps", [1, 2, 4, 7])
def test_both_rules_keep_per_image_the_better_of_each_rule_on_half_the_steps(steps):
    model = small_model(mode="middle", levels=2)
    torch.manual_seed(8)
    hr = torch.rand(3, 3, 33, 29)
    hr[1] = hr[1] * 0.2 + 0.4  # low contrast beside noise: at 4 steps each rule wins an image
    lr0 = model.downscale(hr, scale=2)
    objective = TiledObjective(model.network, hr, tuple(lr0.shape[-2:]), None, "y")
    calls = []
    config = RefineConfig(steps=steps, rounding="both")
    both = refine_lr(model.network, hr, lr0, config, progress=lambda *a: calls.append(a))
    assert calls == [(k, steps) for k in range(1, steps + 1)]  # one count over both rules
    alone = [
        refine_lr(model.network, hr, lr0, RefineConfig(steps=n, rounding=rule)) if n else lr0
        for rule, n in (("every-step", (steps + 1) // 2), ("progressive", steps // 2))
    ]
    losses = torch.stack([objective(lr, with_grad=False)[0] for lr in alone])
    assert torch.equal(objective(both, with_grad=False)[0], losses.min(dim=0).values)
    winners = losses.argmin(dim=0).tolist()
    for i, winner in enumerate(winners):  # per image, the LR of the rule that won
        assert torch.equal(both[i], alone[winner][i])
    assert steps != 4 or len(set(winners)) == 2


@pytest.mark.parametrize("steps", range(1, 121))
def test_the_rounding_schedule_spends_every_step(steps):
    import iarn.rounding as rounding

    unrounded, stages = rounding.rounding_schedule(steps)
    assert unrounded >= 1 and unrounded + sum(stages) == steps
    assert len(stages) <= rounding.ROUNDING_STAGES - 1 and all(n >= 1 for n in stages)


def test_rounding_holds_a_growing_share_nearest_a_level_first():
    from iarn.rounding import round_nearest_first

    torch.manual_seed(5)
    v = torch.rand(2, 3, 7, 9)
    held = torch.zeros_like(v, dtype=torch.bool)
    for share in (0.5, 0.75, 0.875):
        before = held
        held = round_nearest_first(v, held, share)
        assert bool((held | ~before).all())  # what was held stays held
        distance = (v * 255 - (v * 255).round()).abs()
        for i in range(2):  # per image: its share, and no newly held value farther than a free one
            assert int(held[i].sum()) == math.ceil(share * v[i].numel())
            newly = held[i] & ~before[i]
            assert float(distance[i][newly].max()) <= float(distance[i][~held[i]].min())
    assert bool(round_nearest_first(v, held, 1.0).all())


def test_progressive_rounding_keeps_held_values_and_rounds_them_all_in_the_end(monkeypatch):
    import iarn.refine as refine

    model = small_model(mode="middle", levels=2)
    torch.manual_seed(6)
    hr = torch.rand(1, 3, 41, 37)
    lr0 = model.downscale(hr, scale=2.5)
    stages_seen = []

    def spy(objective, v, steps, bound, config, counter, rounded, held=None, step_share=1.0):
        out = descend(objective, v, steps, bound, config, counter, rounded, held, step_share)
        assert not rounded  # progressive rounding: the loss of the LR as it is, not rounded
        if held is not None:
            stages_seen.append(float(held.float().mean()))
            assert torch.equal(out[0][held], v[held])  # held values do not move
            assert torch.equal(v[held], (v[held] * 255).round() / 255)  # and sit on 8-bit levels
        return out

    descend = refine._descend
    monkeypatch.setattr(refine, "_descend", spy)
    lr = refine_lr(model.network, hr, lr0, RefineConfig(steps=9, lr_psnr_min=0, rounding="progressive"))
    assert torch.equal(lr, (lr * 255).round() / 255)
    assert len(stages_seen) == len(rounding_schedule(9)[1]) > 1
    assert stages_seen == sorted(stages_seen) and abs(stages_seen[0] - 0.5) < 0.01


def test_the_loss_of_the_unrounded_lr_is_the_loss_of_its_own_values():
    model = small_model(mode="middle", levels=2)
    torch.manual_seed(7)
    hr = torch.rand(1, 3, 33, 29)
    lr = model.downscale(hr, scale=2)
    objective = TiledObjective(model.network, hr, tuple(lr.shape[-2:]), None, "y")
    between = (lr + 0.4 / 255).clamp(0, 1)  # under half a level: rounds back to `lr`
    assert torch.equal(objective(between, with_grad=False)[0], objective(lr, with_grad=False)[0])
    assert not torch.equal(objective(between, False, rounded=False)[0], objective(lr, False, rounded=False)[0])
    assert torch.equal(objective(lr, False, rounded=False)[0], objective(lr, with_grad=False)[0])
    coded = TiledObjective(model.network, hr, tuple(lr.shape[-2:]), None, "y", codec=("jpeg", 90))
    with pytest.raises(ValueError, match="8-bit"):
        coded(lr, rounded=False)


def test_more_steps_than_a_cycle_never_restore_worse(monkeypatch):
    import iarn.refine as refine

    monkeypatch.setattr(refine, "REFINE_CYCLE", 3)
    assert [refine.cycle_of(k, 8) for k in (0, 2, 3, 5, 6, 7)] == [(0, 3), (0, 3), (3, 3), (3, 3), (6, 2), (6, 2)]
    assert refine.cycle_of(2, 3) == (0, 3) and refine.cycle_of(1, 2) == (0, 2)  # one cycle up to its length
    model = small_model(mode="middle", levels=2)
    torch.manual_seed(4)
    hr = torch.rand(3, 3, 33, 29)
    lr0 = model.downscale(hr, scale=2)
    objective = TiledObjective(model.network, hr, tuple(lr0.shape[-2:]), None, "y")
    config = RefineConfig(steps=3)  # cycles of the rule that rounds every step (the default)
    assert config.rounding == "every-step"
    one_cycle = objective(refine_lr(model.network, hr, lr0, config), with_grad=False)[0]
    three = objective(refine_lr(model.network, hr, lr0, replace(config, steps=8)), with_grad=False)[0]
    assert bool((three <= one_cycle).all())  # per image


@pytest.mark.parametrize(
    "field,value",
    [("steps", -1), ("steps", 1.5), ("steps", "3"), ("steps", True), ("steps", 10**9), ("lr_psnr_min", math.nan),
     ("lr_psnr_min", -1), ("loss", "l1"), ("optimizer", "sgd"), ("step_size", 0), ("step_size", math.inf),
     ("momentum", 1), ("momentum", -0.1), ("rounding", "sometimes")],
)  # fmt: skip
def test_bad_refine_settings_are_refused(field, value):
    with pytest.raises(ValueError, match="refine|LR PSNR"):
        RefineConfig(**{field: value})


@pytest.mark.parametrize("value", ["-1", "nan", "abc", "1e3", "99999999", "2.5", ""])
def test_bad_refine_flags_are_one_line_errors(tmp_path, capsys, photo_file, weights_file, value):
    out = tmp_path / "lr.png"
    with pytest.raises(SystemExit) as exit_info:
        main(["downscale", str(photo_file), "-o", str(out), "--scale", "2", "--weights", str(weights_file),
              "--refine", value])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("iarn: error:") and len(err.strip().splitlines()) == 1 and "--refine" in err
    assert not out.exists()


def test_lr_png_records_its_refinement(tmp_path, capsys, photo_file, weights_file):
    for steps in (0, 2):
        out = tmp_path / f"lr{steps}.png"
        code = main(["downscale", str(photo_file), "-o", str(out), "--scale", "2", "--weights", str(weights_file),
                     "--refine", str(steps)])  # fmt: skip
        assert code == 0
        assert Image.open(out).text[REFINE_KEY] == str(steps)
    restored = tmp_path / "restored.png"  # the upscaler is unchanged: a refined LR upscales as any
    assert main(["upscale", str(tmp_path / "lr2.png"), "-o", str(restored), "--weights", str(weights_file)]) == 0
    assert np.asarray(Image.open(restored)).shape == read_picture(photo_file).rgb.shape


def test_ctrl_c_mid_refinement_leaves_no_file(tmp_path, capsys, monkeypatch, photo_file, weights_file):
    import iarn.lr_bound

    calls = []
    real = iarn.lr_bound.project_lr

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:  # in the middle of the refinement
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(iarn.lr_bound, "project_lr", interrupted)
    out = tmp_path / "out" / "lr.png"
    code = main(["downscale", str(photo_file), "-o", str(out), "--scale", "2", "--weights", str(weights_file),
                 "--refine", "5"])  # fmt: skip
    assert code == 130 and len(calls) == 2
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no temporary file either


def test_evaluate_and_roundtrip_take_refine(tmp_path, capsys, photo_file, weights_file):
    folder = tmp_path / "set"
    folder.mkdir()
    Image.open(photo_file).save(folder / "a.png")
    assert main(["evaluate", "--data", str(folder), "--scales", "2", "--weights", str(weights_file),
                 "--refine", "2", "--json", str(tmp_path / "r.json")]) == 0  # fmt: skip
    assert main(["roundtrip", str(photo_file), "--scale", "2", "--weights", str(weights_file), "--refine", "2"]) == 0
    assert "2 refinement steps" in capsys.readouterr().out


# -- refinement through the codec the LR will be written with ----------------------------------


@pytest.mark.parametrize("origin", [(16, 32), (5, 11)])
def test_the_jpeg_surrogate_of_a_crop_falls_on_the_codecs_blocks(origin):
    from iarn.codec import jpeg_surrogate

    torch.manual_seed(3)
    x = resize(torch.rand(1, 3, 16, 20), (64, 80))  # smooth: every block has work to do
    whole = jpeg_surrogate(x, 80)
    r, c = origin
    crop = jpeg_surrogate(x[..., r:, c:], 80, origin)
    # from the first block the crop holds whole (and a pixel of chroma interpolation past it)
    top, left = -(-r // 16) * 16 + 2, -(-c // 16) * 16 + 2
    assert torch.allclose(crop[..., top - r :, left - c :], whole[..., top:, left:], atol=1e-6)
    if r % 16 or c % 16:  # blocks from the crop's own corner are not the codec's
        unaligned = jpeg_surrogate(x[..., r:, c:], 80)
        assert not torch.allclose(unaligned[..., top - r :, left - c :], whole[..., top:, left:], atol=1e-3)


@pytest.mark.parametrize("tile", [None, 32])
def test_refinement_through_the_codec_scores_what_the_codec_gives_back(tile):
    from iarn.codec import through_codec
    from iarn.convert import to_uint8

    model = small_model(mode="middle", levels=2)
    torch.manual_seed(4)
    hr = resize(torch.rand(1, 3, 25, 22), (101, 87)).clamp(0, 1)
    lr = model.downscale(hr, scale=2.7)
    codec = ("jpeg", 70)
    loss, grad = TiledObjective(model.network, hr, tuple(lr.shape[-2:]), tile, "y", codec=codec)(lr)
    decoded = to_tensor(through_codec(to_uint8(lr), codec)[0]).float() / 255
    up = model.upscale(decoded, size=tuple(hr.shape[-2:]))
    error = luma(up - hr).pow(2).mean() + 0.1 * (up - hr).pow(2).mean()
    assert torch.allclose(loss.float(), error, rtol=1e-3)
    plain_loss, plain_grad = TiledObjective(model.network, hr, tuple(lr.shape[-2:]), tile, "y")(lr)
    assert not torch.allclose(loss, plain_loss) and grad.abs().max() > 0
    # the gradient is the surrogate's: through its blocks, not the identity's
    assert not torch.allclose(grad, plain_grad, rtol=0.05, atol=0)


def test_the_codec_of_a_refinement_is_checked():
    assert RefineConfig(steps=2, codec=("jpeg", 90)).codec == ("jpeg", 90)
    for codec in [("png", 90), ("jpeg", 0), ("jpeg", 101), ("jpeg",), "jpeg:90"]:
        with pytest.raises(ValueError, match="codec"):
            RefineConfig(steps=2, codec=codec)


LOSSY_OUTPUTS = [
    ("lr.png", [], None),
    ("lr.jpg", [], ("jpeg", 95)),
    ("lr.jpg", ["--quality", "80"], ("jpeg", 80)),
    ("lr.webp", ["--quality", "70"], ("webp", 70)),
    ("lr.webp", [], None),  # lossless WebP
]


@pytest.mark.parametrize("name, extra, codec", LOSSY_OUTPUTS)
def test_a_lossy_output_is_refined_through_its_codec(
    tmp_path, monkeypatch, photo_file, weights_file, name, extra, codec
):
    import iarn.rescaler
    from iarn import downscale_file

    seen = []

    def spy(network, hr, lr, config, tile=None, progress=None):
        seen.append(config.codec)
        return lr

    monkeypatch.setattr(iarn.rescaler, "refine_lr", spy)
    argv = ["downscale", str(photo_file), "-o", str(tmp_path / name), "--scale", "2", "--refine", "2"]
    assert main([*argv, "--weights", str(weights_file), *extra]) == 0
    assert seen == [codec]
    downscale_file(small_model(), photo_file, tmp_path / ("api-" + name), scale=2, refine=2)  # no quality: 95
    assert seen[-1] == (("jpeg", 95) if name.endswith(".jpg") else None)
