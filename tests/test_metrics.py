import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from iarn.metrics import protocol_border, psnr, psnr_rgb, psnr_y, rgb_to_y, ssim, ssim_y


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (48, 57, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-12, 13, a.shape), 0, 255).astype(np.uint8)
    return a, b


def test_y_is_bt601():
    assert rgb_to_y(np.array([[[0, 0, 0]]], np.uint8))[0, 0] == pytest.approx(16)
    assert rgb_to_y(np.array([[[255, 255, 255]]], np.uint8))[0, 0] == pytest.approx(235)


def test_psnr_matches_scikit_image(pair):
    a, b = pair
    assert psnr_rgb(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-10)
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    assert psnr_y(a, b, border=3) == pytest.approx(
        peak_signal_noise_ratio(ya[3:-3, 3:-3], yb[3:-3, 3:-3], data_range=255), abs=1e-10
    )
    assert psnr(a, a) == float("inf")


def test_ssim_matches_scikit_image(pair):
    a, b = pair
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    expected = structural_similarity(
        ya[2:-2, 2:-2], yb[2:-2, 2:-2], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim_y(a, b, border=2) == pytest.approx(expected, abs=1e-10)
    assert ssim(ya, ya) == pytest.approx(1.0)


def test_border_is_ceil_of_largest_scale():
    assert protocol_border((1.5, 1.5)) == 2
    assert protocol_border((1.6, 3.05)) == 4
    assert protocol_border((2.0, 2.0)) == 2
