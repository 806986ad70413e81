import pytest
import torch

from iarn.geometry import MIN_TILE
from iarn.tiling import tiled_upscale

from .conftest import small_model


@pytest.mark.parametrize("mode", ["cycle", "split", "naive", "middle"])
@pytest.mark.parametrize("scale", [2.7, (1.5, 3.3), 1.7], ids=["x2.7", "1.5x3.3", "x1.7"])
def test_tiled_equals_untiled(mode, scale):
    model = small_model(mode=mode, blocks_per_level=3, levels=2 if mode == "middle" else 1)
    x = torch.rand(1, 3, 203, 271)  # several 64-pixel tiles wide and high
    lr = model.downscale(x, scale=scale)
    lr_tiled = model.downscale(x, scale=scale, tile=64)
    assert (lr - lr_tiled).abs().max() <= 1 / 255 + 1e-6
    hr = model.upscale(lr, size=(203, 271))
    hr_tiled = model.upscale(lr, size=(203, 271), tile=64)
    assert (hr - hr_tiled).abs().max() <= 1 / 255


def test_tiling_accepts_uint8_input_and_matches_float():
    model = small_model()
    pixels = torch.randint(0, 256, (1, 3, 90, 70), dtype=torch.uint8)
    a = model.downscale_pixels(pixels, (31, 40), tile=40)  # uint8, tiled (through tiled_downscale)
    b = model.downscale_pixels(pixels.float() / 255, (31, 40))  # whole
    assert (a - b).abs().max() <= 1 / 255 + 1e-6
    up = tiled_upscale(model.network, a, (90, 70), tile=32)
    assert up.shape == (1, 3, 90, 70)


@pytest.mark.parametrize("scale", [4, (1.2, 3.7), 1.3], ids=["x4", "1.2x3.7", "x1.3"])
@pytest.mark.parametrize("mode", ["naive", "middle"])
def test_middle_image_modes_tile_with_the_smallest_tile(scale, mode):
    """Naive and middle tiles are cut in the middle image (2^k x the LR size), not the HR; on
    the way up the least-squares inverse reads only its band of the middle."""
    model = small_model(mode=mode, levels=2 if mode == "middle" else 1)
    x = torch.rand(1, 3, 97, 131)
    lr = model.downscale(x, scale=scale)
    assert (model.downscale(x, scale=scale, tile=MIN_TILE) - lr).abs().max() <= 1 / 255 + 1e-6
    up = model.upscale(lr, (97, 131))
    assert (model.upscale(lr, (97, 131), tile=MIN_TILE) - up).abs().max() <= 1 / 255


def test_tiny_images_and_the_smallest_tile():
    model = small_model(levels=2)
    x = torch.rand(1, 3, 13, 9)
    for tile in (MIN_TILE, 100):
        lr = model.downscale(x, size=(5, 4), tile=tile)
        assert lr.shape[-2:] == (5, 4)
        assert model.upscale(lr, (13, 9), tile=tile).shape[-2:] == (13, 9)


@pytest.mark.parametrize("tile", [0, 1, 4, MIN_TILE - 1])
def test_tiles_below_the_minimum_are_refused(tile):
    """Tiles of a few pixels broke "tiled equals untiled" (51/255 off at x4 with tile 8)."""
    model = small_model()
    with pytest.raises(ValueError, match=f"at least {MIN_TILE}"):
        model.downscale(torch.rand(1, 3, 40, 40), scale=2, tile=tile)
    with pytest.raises(ValueError, match=f"at least {MIN_TILE}"):
        model.upscale(torch.rand(1, 3, 20, 20), (40, 40), tile=tile)


@pytest.mark.parametrize("scale", [2.0, 2.7, 4.0, (1.5, 3.7)])
def test_smallest_tile_keeps_tiled_equal_to_untiled(scale):
    model = small_model()
    x = torch.rand(1, 3, 75, 83, generator=torch.Generator().manual_seed(1))
    lr = model.downscale(x, scale=scale)
    assert (model.downscale(x, scale=scale, tile=MIN_TILE) - lr).abs().max() <= 1 / 255 + 1e-6
    up = model.upscale(lr, (75, 83))
    assert (model.upscale(lr, (75, 83), tile=MIN_TILE) - up).abs().max() <= 1 / 255


def test_uint8_conversion_in_strips_equals_one_shot():
    from iarn.convert import to_uint8

    x = torch.rand(1, 3, 37, 11)
    x[0, :, 0, 0] = torch.tensor([0.0, 1.0, 0.5 / 255])  # the ends and a half step
    one_shot = x[0].mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    for strip_pixels in (1, 50, 11 * 37, 1 << 22):
        assert (to_uint8(x, strip_pixels) == one_shot).all()


def test_whole_images_on_cuda_when_they_fit(monkeypatch):
    """CPU: tiles above 1 MP; CUDA: whole images while they fit in half the free memory."""
    from iarn.tiling import AUTO_TILE_PIXELS, CUDA_BYTES_PER_PIXEL

    model = small_model()
    big = (2353, 3528)  # 8.3 MP
    assert not model.whole_image(big, None) and model.whole_image((1000, 1000), None)
    assert AUTO_TILE_PIXELS < big[0] * big[1]
    model.device = torch.device("cuda")  # the policy only; nothing runs there
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (16 << 30, 80 << 30))
    assert model.whole_image(big, None) and not model.whole_image(big, 512)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (big[0] * big[1] * CUDA_BYTES_PER_PIXEL, 0))
    assert not model.whole_image(big, None)
