import pytest
import torch

from iarn.model.haar import haar_forward, haar_forward_levels, haar_inverse, haar_inverse_levels, level_size

SIZES = [(1, 1), (1, 7), (2, 2), (3, 5), (7, 13), (16, 16), (31, 2), (97, 61)]


@pytest.mark.parametrize("size", SIZES)
def test_haar_inverts_exactly(size):
    x = torch.rand(2, 3, *size, dtype=torch.float64)
    y = haar_forward(x)
    assert y.shape == (2, 12, (size[0] + 1) // 2, (size[1] + 1) // 2)
    assert torch.allclose(haar_inverse(y, size), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("size", SIZES)
def test_haar_levels_invert(levels, size):
    x = torch.rand(1, 3, *size)
    y = haar_forward_levels(x, levels)
    assert y.shape == (1, 3 * 4**levels, level_size(size[0], levels), level_size(size[1], levels))
    assert (haar_inverse_levels(y, levels, size) - x).abs().max() < 1e-6


def test_haar_band_order_puts_rgb_means_first():
    x = torch.rand(1, 3, 4, 6)
    y = haar_forward(x)
    means = x.reshape(1, 3, 2, 2, 3, 2).mean(dim=(3, 5))
    assert torch.allclose(y[:, :3], means, atol=1e-6)
    constant = torch.full((1, 3, 4, 4), 0.3)
    assert haar_forward(constant)[:, 3:].abs().max() < 1e-7
