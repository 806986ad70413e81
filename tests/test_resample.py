import pytest
import torch
import torch.nn.functional as F

from iarn.resample import apply_matrices, input_span, pinv_matrix, pinv_span, resample_matrix, resize

CASES = [(100, 77, 37, 50), (64, 64, 32, 32), (31, 17, 60, 45), (513, 300, 128, 211), (5, 7, 1, 1), (9, 9, 9, 4)]


@pytest.mark.parametrize("case", CASES)
def test_resize_matches_torch_antialiased_bicubic(case):
    height, width, h, w = case
    x = torch.rand(2, 3, height, width, dtype=torch.float64)
    reference = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    assert (resize(x, (h, w)) - reference).abs().max() < 1e-12


def test_cropped_matrix_equals_slice_of_whole():
    whole = resample_matrix(200, 71, dtype=torch.float64)
    start, stop = input_span(200, 71, 20, 30)
    part = resample_matrix(200, 71, (20, 30), (start, stop), dtype=torch.float64)
    assert torch.equal(part, whole[20:30, start:stop])
    assert whole[20:30, :start].abs().sum() == 0 and whole[20:30, stop:].abs().sum() == 0


def test_crop_gives_same_rows():
    x = torch.rand(1, 1, 120, 90, dtype=torch.float64)
    full = resize(x, (40, 31))
    r0, r1 = input_span(120, 40, 10, 20)
    c0, c1 = input_span(90, 31, 5, 12)
    rows = resample_matrix(120, 40, (10, 20), (r0, r1), dtype=torch.float64)
    cols = resample_matrix(90, 31, (5, 12), (c0, c1), dtype=torch.float64)
    part = apply_matrices(x[..., r0:r1, c0:c1], rows, cols)
    assert torch.allclose(part, full[..., 10:20, 5:12], atol=1e-12)


@pytest.mark.parametrize(
    "small, large",
    [(1, 2), (2, 3), (7, 8), (13, 26), (97, 131), (101, 102), (257, 258), (481, 482), (1001, 1002), (300, 300)]
    + [(333, 444), (350, 699)],
)
def test_banded_least_squares_inverse_matches_the_dense_one(small, large):
    """The banded inverse of a bicubic upsampling equals torch's dense pseudo-inverse and undoes
    the upsampling: odd, prime, equal and one-longer sides (the worst conditioned) included."""
    upsample = resample_matrix(small, large, dtype=torch.float64)
    inverse = pinv_matrix(small, large, dtype=torch.float64)
    assert (inverse - torch.linalg.pinv(upsample)).abs().max() < 1e-8
    assert (inverse @ upsample - torch.eye(small, dtype=torch.float64)).abs().max() < 1e-8


def test_least_squares_inverse_rows_read_only_their_span():
    whole = pinv_matrix(300, 437, dtype=torch.float64)
    start, stop = pinv_span(300, 437, 120, 180)
    assert 0 < start and stop < 437  # banded, not dense
    part = pinv_matrix(300, 437, (120, 180), (start, stop), dtype=torch.float64)
    assert torch.equal(part, whole[120:180, start:stop])
    assert whole[120:180, :start].abs().max() == 0 and whole[120:180, stop:].abs().max() == 0


def test_least_squares_inverse_needs_an_upsampling():
    with pytest.raises(ValueError, match="upsampling"):
        pinv_matrix(100, 99)
