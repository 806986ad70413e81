"""Upscaler bands for JPEG LRs: the quality read from a JPEG's tables, band choice, weight files,
training with the downscaler frozen, merging, and `iarn upscale` of a JPEG (stripped too)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from iarn import IARN, Rescaler, load_weights, save_weights
from iarn.cli import main
from iarn.codec import quantisation_tables
from iarn.imageio import read_picture
from iarn.jpeg_quality import estimate_jpeg_quality
from iarn.model.bands import UpscalerBand, bands_from_json, bands_to_json
from iarn.upscaler_train import UpscalerTrainConfig, merge_bands, step_quality, train_upscaler
from iarn.weights import BAND_DTYPE, read_metadata

from .conftest import first_config, randomize
from .test_lossy_lr import strip_app1

MIDDLE = {"mode": "middle", "levels": 2, "blocks_per_level": 1, "growth": 4, "step_stages": "per-count"}
BANDS = (UpscalerBand(90, 83, 100), UpscalerBand(75, 60, 82))


def jpeg_of(rgb: np.ndarray, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def banded_network(seed: int = 0, bands=BANDS) -> IARN:
    """A small middle network whose bands hold weights of their own (random, unlike its own)."""
    network = randomize(IARN(first_config(**MIDDLE)), seed=seed)
    network.set_bands({band: randomize(IARN(network.config), seed=seed + 1 + k) for k, band in enumerate(bands)})
    return network.eval()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_the_quality_of_every_pillow_jpeg_is_read_from_its_tables(mode):
    rgb = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    image = rgb if mode == "RGB" else rgb[..., 0]
    for quality in range(1, 101):
        assert estimate_jpeg_quality(jpeg_of(image, quality).quantization) == quality


def test_our_tables_are_libjpegs_at_every_quality():
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for quality in (1, 7, 23, 30, 49, 50, 75, 90, 100):  # 23 and 30: libjpeg's integer 5000 // q
        written = jpeg_of(rgb, quality).quantization
        luma, chroma = quantisation_tables(quality)
        assert luma.flatten().int().tolist() == list(written[0])
        assert chroma.flatten().int().tolist() == list(written[1])


def test_custom_tables_get_the_nearest_quality_and_no_tables_none():
    luma, chroma = (t.flatten() for t in quantisation_tables(80))
    nudged = {0: (luma * 1.05).round().int().tolist(), 1: (chroma * 0.97).round().int().tolist()}
    assert abs(estimate_jpeg_quality(nudged) - 80) <= 2
    assert estimate_jpeg_quality(None) is None and estimate_jpeg_quality({}) is None
    assert estimate_jpeg_quality({0: [16] * 10}) is None  # not an 8x8 table


def test_a_read_picture_knows_its_jpeg_quality(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "a.jpg", quality=83)
    Image.fromarray(photo).save(tmp_path / "a.png")
    Image.fromarray(photo).save(tmp_path / "a.webp", quality=83)
    assert read_picture(tmp_path / "a.jpg").jpeg_quality == 83
    assert read_picture(tmp_path / "a.png").jpeg_quality is None
    assert read_picture(tmp_path / "a.webp").jpeg_quality is None  # WebP: no tables, the network's inverse


def test_bands_are_checked_and_stored_as_json():
    assert bands_from_json(bands_to_json(BANDS)) == tuple(sorted(BANDS, key=lambda b: b.low))
    with pytest.raises(ValueError, match="overlap"):
        bands_from_json(bands_to_json((UpscalerBand(90, 80, 100), UpscalerBand(75, 60, 80))))
    with pytest.raises(ValueError, match="low <= high"):
        UpscalerBand(90, 95, 85)
    with pytest.raises(ValueError):
        UpscalerBand(0, 1, 100)


def test_the_band_that_serves_a_quality_upscales_it():
    network = banded_network()
    assert network.upscaler_for(None) is network and network.upscaler_for(59) is network
    assert network.upscaler_for(60) is network.band_networks["q75"]
    assert network.upscaler_for(82) is network.band_networks["q75"]
    assert network.upscaler_for(83) is network.band_networks["q90"]
    assert network.upscaler_for(100) is network.band_networks["q90"]


@pytest.mark.parametrize("scale", [2.0, (1.5, 3.7), 3.3])
def test_a_band_changes_only_the_upscale_of_jpegs_it_serves(scale):
    network = banded_network()
    plain = IARN(network.config)
    plain.load_state_dict({k: v for k, v in network.state_dict().items() if not k.startswith("band_networks.")})
    banded, base = Rescaler(network, device="cpu"), Rescaler(plain.eval(), device="cpu")
    x = torch.rand(1, 3, 97, 113)
    lr = banded.downscale(x, scale=scale)
    assert torch.equal(lr, base.downscale(x, scale=scale))  # the LRs it writes: the base's
    size = (97, 113)
    assert torch.equal(banded.upscale(lr, size), base.upscale(lr, size))
    assert torch.equal(banded.upscale(lr, size, jpeg_quality=40), base.upscale(lr, size))
    by_band = banded.upscale(lr, size, jpeg_quality=90)
    assert not torch.allclose(by_band, base.upscale(lr, size), atol=1e-3)
    alone = Rescaler(network.band_networks["q90"], device="cpu").upscale(lr, size)
    assert torch.equal(by_band, alone)
    tiled = banded.upscale(lr, size, tile=32, jpeg_quality=90)  # tiles: the band's, seamless
    assert (tiled - by_band).abs().max() < 1e-4


def test_a_banded_weight_file_round_trips(tmp_path):
    network = banded_network()
    path = tmp_path / "banded.safetensors"
    save_weights(network, path)
    assert json.loads(read_metadata(path)["bands"]) == json.loads(bands_to_json(network.bands))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
    assert all((dtype == "F16") == name.startswith("band_networks.") for name, dtype in dtypes.items())
    loaded = load_weights(path)
    assert loaded.bands == network.bands
    for name, value in network.state_dict().items():
        expected = value.to(BAND_DTYPE).float() if name.startswith("band_networks.") else value
        assert torch.equal(loaded.state_dict()[name], expected), name
    plain = tmp_path / "plain.safetensors"
    save_weights(IARN(network.config), plain)
    assert "bands" not in read_metadata(plain) and load_weights(plain).bands == ()


def test_a_band_trains_with_the_downscaler_frozen_and_resumes(image_folder, tmp_path):
    base = tmp_path / "base.safetensors"
    network = randomize(IARN(first_config(**MIDDLE)), seed=3)
    save_weights(network, base)
    cfg = UpscalerTrainConfig(
        data=(str(image_folder),),
        out=str(tmp_path / "run"),
        base=str(base),
        quality=80,
        quality_min=75,
        quality_max=85,
        serve_min=70,
        serve_max=90,
        steps=4,
        batch_size=2,
        crop=32,
        learning_rate=1e-3,
        log_every=1,
        checkpoint_every=2,
        threads=1,
    )
    qualities = [step_quality(cfg, step) for step in range(100)]
    assert min(qualities) >= 75 and max(qualities) <= 85 and len(set(qualities)) > 5
    clock = iter([0.0] * 5 + [120.0]).__next__  # the start, then each step's check and log time
    stopped = train_upscaler(cfg, max_minutes=1, clock=clock)
    assert stopped is not None  # two steps, then the clock said the time was up
    records = [json.loads(line) for line in (tmp_path / "run" / "upscaler-log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    path = train_upscaler(cfg, resume=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "upscaler-log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in records)
    trained = load_weights(path)
    assert trained.bands == (UpscalerBand(80, 70, 90),)
    for name, value in network.state_dict().items():  # the network itself: bit for bit
        assert torch.equal(trained.state_dict()[name], value), name
    moved = [
        not torch.equal(p.to(BAND_DTYPE).float(), q)
        for p, q in zip(network.stages.parameters(), trained.band_networks["q80"].stages.parameters())
    ]
    assert any(moved)
    training = json.loads(read_metadata(path)["training"])
    assert training["upscaler_bands"]["q80"]["steps"] == 4
    assert "data" not in training["upscaler_bands"]["q80"]["recipe"]  # no paths of this machine


def test_the_run_ends_before_its_first_step_writes_nothing(image_folder, tmp_path):
    base = tmp_path / "base.safetensors"
    save_weights(randomize(IARN(first_config(**MIDDLE))), base)
    cfg = UpscalerTrainConfig(data=(str(image_folder),), out=str(tmp_path / "run"), base=str(base), crop=32)
    assert train_upscaler(cfg, max_minutes=1, clock=iter([0.0, 120.0]).__next__) is None
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_merging_gathers_bands_of_one_base_and_refuses_another(tmp_path):
    base = banded_network(bands=())
    base_path = tmp_path / "base.safetensors"
    save_weights(base, base_path)
    sources = []
    for k, band in enumerate(BANDS):
        one = load_weights(base_path)
        one.set_bands({band: randomize(IARN(one.config), seed=10 + k)})
        sources.append(tmp_path / f"{band.key}.safetensors")
        save_weights(one, sources[-1])
    merged = load_weights(merge_bands(str(base_path), [str(s) for s in sources], tmp_path / "m.safetensors"))
    assert merged.bands == tuple(sorted(BANDS, key=lambda b: b.low))
    for band, source in zip(BANDS, sources):
        alone = load_weights(source).band_networks[band.key].state_dict()
        assert all(torch.equal(v, alone[k]) for k, v in merged.band_networks[band.key].state_dict().items())
    served = merge_bands(str(base_path), [str(s) for s in sources], tmp_path / "s.safetensors", {75: (50, 82)})
    assert load_weights(served).upscaler_for(50) is not load_weights(served)
    with pytest.raises(ValueError, match="no band trained at quality 60"):
        merge_bands(str(base_path), [str(sources[0])], tmp_path / "x.safetensors", {60: (50, 70)})
    other = tmp_path / "other.safetensors"
    save_weights(banded_network(seed=7), other)
    with pytest.raises(ValueError, match="its network is not"):
        merge_bands(str(base_path), [str(other)], tmp_path / "y.safetensors")


def test_the_cli_trains_and_merges_bands(image_folder, tmp_path, capsys):
    base = tmp_path / "base.safetensors"
    save_weights(randomize(IARN(first_config(**MIDDLE))), base)
    common = ["--data", str(image_folder), "--base", str(base), "--steps", "1", "--crop", "32", "--batch-size", "1"]
    assert main(["train-upscaler", *common, "--out", str(tmp_path / "a"), "--threads", "1"]) == 0
    assert main(["train-upscaler", "--base", str(base), "--out", str(tmp_path / "m"), "--merge",
                 str(tmp_path / "a" / "model.safetensors"), "--serve", "90:85-100"]) == 0  # fmt: skip
    assert load_weights(tmp_path / "m" / "model.safetensors").bands == (UpscalerBand(90, 85, 100),)
    capsys.readouterr()
    assert main(["train-upscaler", "--base", str(base), "--out", str(tmp_path / "n"), "--serve", "90:1-2"]) != 0
    with pytest.raises(SystemExit) as exit_:
        main(["train-upscaler", "--base", str(base), "--merge", str(base), "--serve", "90-1-2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Q:LOW-HIGH" in err


def test_upscale_of_a_jpeg_uses_its_band_stripped_or_not(tmp_path, photo_file, capsys):
    path = tmp_path / "banded.safetensors"
    save_weights(banded_network(), path)
    lr = tmp_path / "lr.jpg"
    weights = ["--weights", str(path)]
    assert main(["downscale", str(photo_file), "-o", str(lr), "--scale", "2", "--quality", "90", *weights]) == 0
    assert read_picture(lr).jpeg_quality == 90
    stripped = tmp_path / "stripped.jpg"
    stripped.write_bytes(strip_app1(lr.read_bytes()))
    png = tmp_path / "same.png"  # the JPEG's pixels, losslessly: the network's own inverse
    Image.fromarray(read_picture(lr).rgb).save(png)
    capsys.readouterr()
    assert main(["upscale", str(lr), "-o", str(tmp_path / "a.png"), *weights]) == 0
    assert main(["upscale", str(stripped), "-o", str(tmp_path / "b.png"), "--size", "90x70", *weights]) == 0
    assert main(["upscale", str(png), "-o", str(tmp_path / "c.png"), "--size", "90x70", *weights]) == 0
    assert "partly lost" not in capsys.readouterr().err  # a band serves it: no lossy warning
    a, b, c = (np.asarray(Image.open(tmp_path / f"{k}.png")) for k in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    network = load_weights(path)
    expected = Rescaler(network.band_networks["q90"], device="cpu").upscale_pixels(
        torch.from_numpy(read_picture(lr).rgb).permute(2, 0, 1)[None], (70, 90)
    )
    assert np.array_equal(a, (expected[0].permute(1, 2, 0) * 255).round().byte().numpy())


def test_the_band_recipes_load_and_their_bands_do_not_overlap():
    from pathlib import Path

    from iarn.model.bands import check_bands
    from iarn.train_config import read_config_file

    recipes = sorted((Path(__file__).resolve().parents[1] / "config").glob("upscaler_*.json"))
    configs = [UpscalerTrainConfig.from_dict(read_config_file(path)) for path in recipes]
    assert [c.quality for c in configs] == [75, 90] and all(c.base == "jpeg" for c in configs)
    assert all(c.quality_min <= c.quality <= c.quality_max for c in configs)
    check_bands(tuple(c.band for c in configs))


@pytest.mark.parametrize("codec_trained", [True, False])
def test_a_band_learns_from_the_lrs_its_base_writes_at_the_default_effort(tmp_path, codec_trained):
    from iarn.codec import through_codec_batch
    from iarn.effort import CPU_EFFORT, DEFAULT_PASSES, EFFORTS, corrector_passes, set_corrector
    from iarn.rescaler import load
    from iarn.upscaler_train import written_lr

    from .test_corrector import corrected_network

    path = tmp_path / "base.safetensors"
    training = {"train_config": {"codec": "jpeg"}} if codec_trained else None
    save_weights(corrected_network(passes=2), path, training=training)
    model = load(path, device="cpu")
    set_corrector(model, EFFORTS[CPU_EFFORT])
    passes = corrector_passes(DEFAULT_PASSES, path)
    assert passes == (2 if codec_trained else DEFAULT_PASSES)
    x = torch.rand(2, 3, 96, 96)
    for scale in (2.0, 3.3, (1.5, 4.0)):
        lr = model.downscale(x, scale=scale)
        expected = through_codec_batch(lr, ("jpeg", 85))
        assert torch.equal(written_lr(load_weights(path), x, tuple(lr.shape[-2:]), 85, passes), expected)


def test_merging_runs_from_a_banded_base_takes_what_each_run_trained(tmp_path):
    """Each run's file carries the base's other bands unchanged: merging two runs that retrained
    one band each keeps both retrained bands, whatever the order."""
    base_path = tmp_path / "base.safetensors"
    save_weights(banded_network(), base_path)
    sources = []
    for k, quality in enumerate((90, 75)):
        one = load_weights(base_path)
        retrained = {b: (randomize(IARN(one.config), seed=20 + k) if b.quality == quality else one.band_networks[b.key])
                     for b in one.bands}  # fmt: skip
        one.set_bands(retrained)
        sources.append(tmp_path / f"q{quality}.safetensors")
        save_weights(one, sources[-1])
    for order in (sources, sources[::-1]):
        merged = load_weights(merge_bands(str(base_path), [str(s) for s in order], tmp_path / "m.safetensors"))
        for quality, source in zip((90, 75), sources):
            expected = load_weights(source).band_networks[f"q{quality}"].state_dict()
            got = merged.band_networks[f"q{quality}"].state_dict()
            assert all(torch.equal(v, expected[k]) for k, v in got.items()), (quality, order)


def test_a_band_that_would_overlap_the_bases_others_is_refused_before_training(image_folder, tmp_path):
    base = tmp_path / "base.safetensors"
    save_weights(banded_network(), base)  # bands 90 (83-100) and 75 (60-82)
    cfg = UpscalerTrainConfig(
        data=(str(image_folder),), out=str(tmp_path / "run"), base=str(base), quality=90, serve_min=80, crop=32
    )
    with pytest.raises(ValueError, match="overlap.*serve-min"):
        train_upscaler(cfg, clock=iter([]).__next__)  # no step taken: the clock is never read
    assert not (tmp_path / "run" / "upscaler-log.jsonl").exists()
