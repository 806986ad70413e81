"""JPEG and WebP LRs: they keep iarn's record (the HR size, the model) in EXIF, a stripped one
upscales to the same pixels given --size, `--quality` is checked where it enters."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from iarn.cli import main
from iarn.imageio import read_picture


def strip_app1(data: bytes) -> bytes:
    """A JPEG's bytes without its APP1 (EXIF) segments, the entropy-coded data untouched: what a
    platform that strips metadata (and does not re-encode) leaves."""
    assert data[:2] == b"\xff\xd8"
    out, at = bytearray(data[:2]), 2
    while at < len(data):
        marker = data[at + 1]
        if marker == 0xDA:  # start of scan: the rest is image data
            out += data[at:]
            break
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if marker != 0xE1:
            out += data[at : at + 2 + length]
        at += 2 + length
    return bytes(out)


def downscale(photo_file, weights_file, target, *extra) -> int:
    return main(
        ["downscale", str(photo_file), "-o", str(target), "--scale", "2", "--weights", str(weights_file), *extra]
    )


def upscale(source, target, weights_file, *extra) -> int:
    return main(["upscale", str(source), "-o", str(target), "--weights", str(weights_file), *extra])


@pytest.mark.parametrize(
    "name, extra", [("lr.jpg", ["--quality", "90"]), ("lr.jpg", []), ("lr.webp", ["--quality", "80"])]
)
def test_a_lossy_lr_keeps_its_record(tmp_path, photo_file, weights_file, capsys, name, extra):
    lr = tmp_path / name
    assert downscale(photo_file, weights_file, lr, *extra) == 0
    assert "is lossy" in capsys.readouterr().err
    picture = read_picture(lr)
    assert picture.hr_size == (70, 90) and picture.model_id is not None and picture.lossy
    assert upscale(lr, tmp_path / "up.png", weights_file) == 0  # no --size: the record gives it
    assert Image.open(tmp_path / "up.png").size == (90, 70)


def test_the_quality_is_the_one_asked_for(tmp_path, photo_file, weights_file):
    sizes = []
    for quality in (30, 95):
        lr = tmp_path / f"q{quality}.jpg"
        assert downscale(photo_file, weights_file, lr, "--quality", str(quality)) == 0
        sizes.append(lr.stat().st_size)
    assert sizes[0] < sizes[1]


def test_a_stripped_jpeg_upscales_to_the_same_pixels_given_its_size(tmp_path, photo_file, weights_file, capsys):
    lr = tmp_path / "lr.jpg"
    assert downscale(photo_file, weights_file, lr, "--quality", "90") == 0
    stripped = tmp_path / "stripped.jpg"
    stripped.write_bytes(strip_app1(lr.read_bytes()))
    assert read_picture(stripped).hr_size is None
    assert np.array_equal(np.asarray(Image.open(stripped)), np.asarray(Image.open(lr)))
    capsys.readouterr()
    assert upscale(stripped, tmp_path / "nosize.png", weights_file) == 1  # no record, no --size
    err = capsys.readouterr().err
    assert "--size" in err and "Traceback" not in err and not (tmp_path / "nosize.png").exists()
    assert upscale(lr, tmp_path / "a.png", weights_file) == 0
    assert upscale(stripped, tmp_path / "b.png", weights_file, "--size", "90x70") == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))


def test_a_lossless_webp_lr_upscales_as_its_png_twin(tmp_path, photo_file, weights_file, capsys):
    assert downscale(photo_file, weights_file, tmp_path / "lr.webp") == 0
    assert downscale(photo_file, weights_file, tmp_path / "lr.png") == 0
    assert "is lossy" not in capsys.readouterr().err
    webp, png = read_picture(tmp_path / "lr.webp"), read_picture(tmp_path / "lr.png")
    assert webp.lossy is None and webp.hr_size == png.hr_size and webp.model_id == png.model_id
    assert np.array_equal(webp.rgb, png.rgb)
    assert upscale(tmp_path / "lr.webp", tmp_path / "a.png", weights_file) == 0
    assert upscale(tmp_path / "lr.png", tmp_path / "b.png", weights_file) == 0
    assert "warning" not in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))


@pytest.mark.parametrize("value", ["0", "101", "ninety", "9.5"])
def test_bad_quality_values_are_one_line_errors(tmp_path, photo_file, weights_file, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        downscale(photo_file, weights_file, tmp_path / "lr.jpg", "--quality", value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "1 to 100" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "lr.jpg").exists()


def test_quality_with_a_png_output_is_refused(tmp_path, photo_file, weights_file, capsys):
    assert downscale(photo_file, weights_file, tmp_path / "lr.png", "--quality", "90") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--quality is for JPEG and WebP" in err
    assert not (tmp_path / "lr.png").exists()


def test_the_codec_batch_is_pillows_codec_with_a_straight_gradient():
    import torch

    from iarn.codec import through_codec, through_codec_batch

    lr = (torch.rand(2, 3, 24, 40) * 255).round() / 255
    lr.requires_grad_(True)
    coded = through_codec_batch(lr, ("jpeg", 80))
    for k in range(2):
        image = (lr[k].detach().permute(1, 2, 0) * 255).round().byte().numpy()
        expected = through_codec(np.ascontiguousarray(image), ("jpeg", 80))[0]
        assert np.array_equal((coded[k].detach().permute(1, 2, 0) * 255).round().byte().numpy(), expected)
    coded.sum().backward()
    assert torch.equal(lr.grad, torch.ones_like(lr))


def test_training_with_jpeg_in_the_loop(image_folder, tmp_path):
    import json

    from iarn.train import codec_quality, train
    from iarn.train_config import TrainConfig

    from .conftest import first_config

    cfg = TrainConfig(
        data=(str(image_folder),),
        out=str(tmp_path / "run"),
        model=first_config(mode="middle", levels=2, blocks_per_level=1, growth=4),
        steps=3,
        batch_size=2,
        crop=32,
        log_every=1,
        codec="jpeg",
        codec_quality_min=70,
        codec_quality_max=90,
        codec_share=0.5,
    )
    qualities = [codec_quality(cfg, step) for step in range(200)]
    drawn = [q for q in qualities if q is not None]
    assert 60 < len(drawn) < 140 and min(drawn) >= 70 and max(drawn) <= 90 and len(set(drawn)) > 10
    assert qualities == [codec_quality(cfg, step) for step in range(200)]  # a function of (seed, step)
    assert codec_quality(TrainConfig(), 5) is None
    path = train(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    assert path.exists()
    with pytest.raises(ValueError, match="codec_quality_min <= codec_quality_max"):
        TrainConfig(codec="jpeg", codec_quality_min=90, codec_quality_max=80)
    with pytest.raises(ValueError, match="codec"):
        TrainConfig(codec="gif")
