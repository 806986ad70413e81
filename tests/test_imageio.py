import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms

from iarn.api import downscale_image, downscale_picture, upscale_image, upscale_picture
from iarn.imageio import HR_SIZE_KEY, ImageError, Picture, picture_from_array, read_picture, to_pil, write_picture

from .conftest import small_model


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_exif_orientation_is_applied(tmp_path, photo):
    image = Image.fromarray(photo)  # 90 wide, 70 high
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    picture = read_picture(tmp_path / "rotated.jpg")
    assert picture.size == (90, 70)


def test_grayscale_is_processed_as_rgb_and_written_back_gray(tmp_path, photo):
    Image.fromarray(photo[..., 1]).save(tmp_path / "gray.png")
    picture = read_picture(tmp_path / "gray.png")
    assert picture.grayscale and picture.rgb.shape == (70, 90, 3)
    assert np.array_equal(picture.rgb[..., 0], picture.rgb[..., 2])
    lr = downscale_picture(small_model(), picture, scale=2)
    write_picture(lr, tmp_path / "out.png")
    assert Image.open(tmp_path / "out.png").mode == "L"


def test_rgba_alpha_is_resized_with_plain_bicubic(tmp_path, photo):
    alpha = np.tile(np.linspace(0, 255, 90).round().astype(np.uint8), (70, 1))
    Image.fromarray(np.concatenate([photo, alpha[..., None]], axis=2), "RGBA").save(tmp_path / "a.png")
    picture = read_picture(tmp_path / "a.png")
    lr = downscale_picture(small_model(), picture, size=(30, 40))
    expected = F.interpolate(
        torch.from_numpy(alpha)[None, None].float() / 255, size=(30, 40), mode="bicubic", antialias=True
    )
    expected = expected[0, 0].mul(255).round().clamp(0, 255).byte().numpy()
    assert np.array_equal(lr.alpha, expected)
    write_picture(lr, tmp_path / "lr.png")
    assert Image.open(tmp_path / "lr.png").mode == "RGBA"


def test_palette_and_transparency_and_cmyk_are_converted(tmp_path, photo):
    Image.fromarray(photo).convert("P").save(tmp_path / "p.png")
    assert read_picture(tmp_path / "p.png").alpha is None
    palette = Image.fromarray(photo).convert("P")
    palette.save(tmp_path / "pt.png", transparency=0)
    assert read_picture(tmp_path / "pt.png").alpha is not None
    cmyk = Image.fromarray(photo).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", icc_profile=b"not-an-rgb-profile")
    picture = read_picture(tmp_path / "c.jpg")
    assert picture.rgb.shape == (70, 90, 3) and picture.icc_profile is None


def test_icc_profile_is_carried_to_the_output(tmp_path, photo):
    icc = _srgb_icc()
    Image.fromarray(photo).save(tmp_path / "icc.png", icc_profile=icc)
    picture = read_picture(tmp_path / "icc.png")
    write_picture(downscale_picture(small_model(), picture, scale=2), tmp_path / "lr.png")
    assert Image.open(tmp_path / "lr.png").info.get("icc_profile") == icc


def test_16_bit_png_is_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(ImageError, match="16-bit PNG"):
        read_picture(tmp_path / "deep.png")


def test_lr_png_records_the_original_size(tmp_path, photo):
    write_picture(Picture(rgb=photo[:35, :45]), tmp_path / "lr.png", hr_size=(70, 90))
    assert Image.open(tmp_path / "lr.png").info[HR_SIZE_KEY] == "90x70"
    assert read_picture(tmp_path / "lr.png").hr_size == (70, 90)


def test_failed_write_leaves_no_file(tmp_path, photo):
    with_alpha = Picture(rgb=photo, alpha=np.zeros(photo.shape[:2], np.uint8))
    with pytest.raises(ImageError, match="alpha"):
        write_picture(with_alpha, tmp_path / "x.jpg")
    assert list(tmp_path.iterdir()) == []


def test_pil_and_numpy_helpers_keep_their_kind(photo):
    model = small_model()
    small = downscale_image(model, Image.fromarray(photo), scale=2)
    assert isinstance(small, Image.Image) and small.size == (45, 35)
    assert upscale_image(model, small, size=(70, 90)).size == (90, 70)
    array = downscale_image(model, photo[..., 0], size=(35, 45))  # a grayscale LR keeps its three channels
    assert array.shape == (35, 45, 3) and array.dtype == np.uint8
    assert upscale_image(model, photo[::2, ::2, 0], size=(70, 90)).shape == (70, 90)  # the upscale is grayscale
    rgba = np.concatenate([photo, np.full((70, 90, 1), 200, np.uint8)], axis=2)
    assert downscale_image(model, rgba, scale=2).shape == (35, 45, 4)
    with pytest.raises(ImageError):
        picture_from_array(photo.astype(np.float32))


def test_upscale_picture_checks_size(photo):
    model = small_model()
    with pytest.raises(ValueError, match="smaller than the LR image"):
        upscale_picture(model, Picture(rgb=photo), size=(10, 10))
    assert to_pil(Picture(rgb=photo, grayscale=True)).mode == "L"
