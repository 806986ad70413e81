"""Each graph twin (what an exported ONNX graph computes from symbolic sizes) equals the eager code
beside it: the resampling and least-squares matrices, the encodings, and every mode's whole-image
down and up (model/modes/). The ONNX round trip itself is tests/test_export.py."""

from __future__ import annotations

import pytest
import torch

from iarn.geometry import size_for_scale
from iarn.model.encoding import (
    ENCODINGS,
    middle_encoding,
    middle_encoding_graph,
    scale_encoding,
    scale_encoding_graph,
)
from iarn.model.modes import MODES, RESAMPLE, keeps_an_axis, keeps_an_axis_graph
from iarn.resample import pinv_matrix, pinv_matrix_graph, resample_matrix, resample_matrix_graph, resize, resize_graph

from .conftest import small_network

LIKE = torch.zeros(1)
SIZES = [(7, 3), (3, 7), (61, 23), (23, 61), (40, 40), (17, 16), (97, 13), (13, 97)]


@pytest.mark.parametrize("in_size, out_size", SIZES, ids=str)
def test_resample_matrix_graph_equals_resample_matrix(in_size, out_size):
    eager = resample_matrix(in_size, out_size, dtype=torch.float64)
    assert torch.allclose(resample_matrix_graph(in_size, out_size, LIKE).double(), eager, atol=1e-6)


def test_resize_graph_equals_resize():
    x = torch.rand(1, 3, 31, 45)
    assert torch.allclose(resize_graph(x, (13, 29)), resize(x, (13, 29)), atol=1e-5)


@pytest.mark.parametrize("small, large", [(5, 7), (16, 17), (23, 61), (30, 60), (33, 40)], ids=str)
def test_pinv_matrix_graph_equals_pinv_matrix(small, large):
    eager = pinv_matrix(small, large, dtype=torch.float64)
    assert torch.allclose(pinv_matrix_graph(small, large, LIKE).double(), eager, atol=1e-5)


GEOMETRIES = [((37, 53), (13, 20)), ((64, 64), (32, 32)), ((41, 29), (11, 19))]


@pytest.mark.parametrize("kind", ENCODINGS)
@pytest.mark.parametrize("hr_size, lr_size", GEOMETRIES, ids=str)
def test_scale_encoding_graph_equals_scale_encoding(kind, hr_size, lr_size):
    for cell in (2, 4):
        grid = (hr_size[0] // cell, hr_size[1] // cell)
        eager = scale_encoding(kind, (0, 0), grid, cell, hr_size, lr_size)
        assert torch.allclose(scale_encoding_graph(kind, grid, cell, hr_size, lr_size, LIKE), eager, atol=1e-6)


@pytest.mark.parametrize("kind", ENCODINGS)
@pytest.mark.parametrize("hr_size, lr_size", GEOMETRIES, ids=str)
def test_middle_encoding_graph_equals_middle_encoding(kind, hr_size, lr_size):
    middle = (4 * lr_size[0], 4 * lr_size[1])
    for cell in (2, 4):
        grid = (middle[0] // cell, middle[1] // cell)
        eager = middle_encoding(kind, (0, 0), grid, cell, hr_size, middle)
        assert torch.allclose(middle_encoding_graph(kind, grid, cell, hr_size, middle, LIKE), eager, atol=1e-6)


def mode_network(name: str):
    """A small random network of mode `name` (the fewest levels the mode allows past one: two, so
    the step-count choice is exercised where a mode has one)."""
    levels = 1 if name == "naive" else 2
    return small_network(mode=name, levels=levels)


SCALES = [2, 3.3, (1.5, 3.5), (3.7, 1.3), 1.6]


@pytest.mark.parametrize("name", sorted(MODES))
@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_every_modes_graphs_equal_its_eager_path(name, scale):
    net = mode_network(name)
    hr = torch.rand(1, 3, 52, 61)
    hr_size = (52, 61)
    lr_size = size_for_scale(hr_size, scale)
    with torch.no_grad():
        eager_lr, _ = net.down_region(hr, hr_size, lr_size)
        graph_lr = net.mode.down_graph(net, hr, lr_size)
        assert torch.allclose(graph_lr, eager_lr, atol=2e-5), (graph_lr - eager_lr).abs().max()
        lr = torch.rand(1, 3, *lr_size)
        eager_hr = net.up_region(lr, hr_size, lr_size)
        graph_hr = net.mode.up_graph(net, lr, hr_size)
        assert torch.allclose(graph_hr, eager_hr, atol=2e-5), (graph_hr - eager_hr).abs().max()


@pytest.mark.parametrize("hr_size, lr_size", [((40, 30), (40, 15)), ((40, 30), (20, 30)), ((40, 30), (40, 30))])
def test_resample_graphs_equal_resample_where_an_axis_is_kept(hr_size, lr_size):
    net = mode_network("middle")
    hr, lr = torch.rand(1, 3, *hr_size), torch.rand(1, 3, *lr_size)
    assert keeps_an_axis(hr_size, lr_size) and bool(keeps_an_axis_graph(hr_size, lr_size, LIKE))
    with torch.no_grad():
        assert torch.allclose(
            RESAMPLE.down_graph(net, hr, lr_size), net.down_region(hr, hr_size, lr_size)[0], atol=1e-5
        )
        assert torch.allclose(RESAMPLE.up_graph(net, lr, hr_size), net.up_region(lr, hr_size, lr_size), atol=1e-5)
    assert not bool(keeps_an_axis_graph((40, 30), (20, 15), LIKE))
