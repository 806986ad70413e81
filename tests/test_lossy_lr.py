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


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_a_lossy_lr_is_made_and_restored_by_the_jpeg_model(tmp_path, photo_file, capsys):
    """No model named: a JPEG LR is the bundled `jpeg` model's, recorded so; `upscale` takes that
    model from the record, or for a stripped JPEG from its being lossy, and says nothing."""
    lr = tmp_path / "lr.jpg"
    assert main(["downscale", str(photo_file), "-o", str(lr), "--scale", "2", "--quality", "90"]) == 0
    assert "is lossy" not in capsys.readouterr().err
    assert read_picture(lr).model_id.startswith("jpeg@")
    stripped = tmp_path / "stripped.jpg"
    stripped.write_bytes(strip_app1(lr.read_bytes()))
    assert main(["upscale", str(lr), "-o", str(tmp_path / "a.png")]) == 0
    assert main(["upscale", str(stripped), "-o", str(tmp_path / "b.png"), "--size", "90x70"]) == 0
    assert main(["upscale", str(stripped), "-o", str(tmp_path / "c.png"), "--size", "90x70", "--model", "jpeg"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "c.png"))
    assert main(["upscale", str(stripped), "-o", str(tmp_path / "d.png"), "--size", "90x70", "--model", "default"]) == 0
    assert "partly lost" in capsys.readouterr().err  # the lossless model, told to: warned
    assert not np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "d.png"))


def test_roundtrip_through_jpeg_saves_the_jpeg_that_restores_to_its_image(tmp_path, photo_file, capsys):
    """`roundtrip --lr-format jpeg:90` scores what the saved lr.jpg restores to, bicubic through
    the same JPEG beside it, with the `jpeg` model unless told."""
    save = tmp_path / "trip"
    code = main(["roundtrip", str(photo_file), "--scale", "2", "--lr-format", "jpeg:90", "--save", str(save)])
    out = capsys.readouterr().out
    assert code == 0 and "through jpeg:90" in out and "corrector on in 2 passes" in out  # the jpeg model's own
    assert sorted(p.name for p in save.iterdir()) == ["lr.jpg", "restored.png"]
    assert read_picture(save / "lr.jpg").model_id.startswith("jpeg@")
    assert main(["upscale", str(save / "lr.jpg"), "-o", str(tmp_path / "again.png")]) == 0
    assert np.array_equal(pixels(tmp_path / "again.png"), pixels(save / "restored.png"))


def test_a_lossy_lr_from_the_lossless_model_says_so(tmp_path, photo_file, capsys):
    lr = tmp_path / "lr.jpg"
    assert main(["downscale", str(photo_file), "-o", str(lr), "--scale", "2", "--model", "default"]) == 0
    err = capsys.readouterr().err
    assert "is lossy and default@" in err and "trained for lossless" in err
    assert read_picture(lr).model_id.startswith("default@")
    assert main(["upscale", str(lr), "-o", str(tmp_path / "a.png")]) == 0  # its record: the default
    err = capsys.readouterr().err
    assert "partly lost" in err and len(err.strip().splitlines()) == 1


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


def test_the_jpeg_surrogate_follows_pillows_codec_and_prices_coarse_coefficients(photo):
    """Close to the real JPEG at each quality (an odd size: padded as libjpeg pads); its gradient
    is the quantiser's: the finest detail, which the quantiser drops, moves the output less than
    the coarsest, which it keeps."""
    import torch

    from iarn.codec import jpeg_surrogate, soft_round, through_codec, through_codec_batch

    image = np.ascontiguousarray(photo[:61, :75])
    x = torch.from_numpy(image).permute(2, 0, 1)[None].double() / 255
    for quality in (50, 90):
        real = torch.from_numpy(through_codec(image, ("jpeg", quality))[0]).permute(2, 0, 1)[None] / 255
        surrogate = jpeg_surrogate(x, quality)
        to_real, to_input = ((surrogate - real) ** 2).mean(), ((x - real) ** 2).mean()
        assert to_real < 0.25 * to_input  # nearer the codec's output than the input is
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    checker = ((rows + cols) % 2 * 2 - 1).double()  # the highest DCT frequency
    ramp = (rows / 63 - 0.5).double()  # low frequencies
    base = torch.full((1, 3, 64, 64), 0.5, dtype=torch.float64)
    moved = []
    for pattern in (checker, ramp):
        step = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        out = jpeg_surrogate(base + step * pattern, 50)
        (gradient,) = torch.autograd.grad((out * pattern).sum(), step)
        moved.append(float(gradient))
    assert moved[0] < 0.2 * moved[1]
    values = torch.tensor([-1.2, 0.0, 0.25, -0.4, 2.5, 7.1], dtype=torch.float64, requires_grad=True)
    rounded = soft_round(values)
    assert torch.equal(rounded.detach(), torch.round(values.detach()))
    (slopes,) = torch.autograd.grad(rounded.sum(), values)
    assert torch.allclose(slopes, torch.tensor([1.0, 0.0, 0.25, 0.64, 1.0, 1.0], dtype=torch.float64))
    lr = (torch.rand(2, 3, 24, 40) * 255).round() / 255
    lr.requires_grad_(True)
    coded = through_codec_batch(lr, ("jpeg", 80), "surrogate")
    plain = through_codec_batch(lr.detach(), ("jpeg", 80))
    assert torch.equal(coded.detach(), plain)  # forward: the real codec
    coded.sum().backward()
    (expected,) = torch.autograd.grad(jpeg_surrogate(lr, 80).sum(), lr)
    assert torch.allclose(lr.grad, expected)


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
        codec_gradient="surrogate",
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
    with pytest.raises(ValueError, match="codec_gradient"):
        TrainConfig(codec="jpeg", codec_gradient="exact")
