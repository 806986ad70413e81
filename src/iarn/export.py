"""ONNX export: a model's downscale and upscale as two graphs that take any image size.

Why the sizes are graph inputs and the geometry is inside the graphs: the resampling matrices and
the scale-encoding maps depend only on the sizes, so each graph computes them itself (in float64,
with the same arithmetic as `resample.py` and `model/encoding.py`, then cast to float32), and a
caller needs nothing from iarn. A target size is given as the *shape* of a small input, because
an ONNX graph can size tensors by shapes but a value input would make every output shape
data-dependent:

    downscale.onnx  hr (1, 3, H, W) float32 in [0, 1], lr_shape (h, w) any values (uint8 zeros)
                    -> lr (1, 3, h, w) float32 in [0, 1], rounded to multiples of 1/255
    upscale.onnx    lr (1, 3, h, w) float32 in [0, 1], hr_shape (H, W) any values
                    -> hr (1, 3, H, W) float32 in [0, 1]

H, W and h, w are dynamic (each at least MIN_SIDE); 1 <= H/h, W/w <= the model's max_scale is
the caller's to keep, as for `Rescaler.downscale`; an input outside [0, 1] gives all NaN, and an
axis that keeps its size is resampled as `modes.Resample` does. `OnnxRescaler` runs the graphs
with the runner's checks in front; each graph's metadata holds the model's config. Whole images
only (no tiling) and z = 0; every mode; the downscale is the forward pass, without the LR corrector
(`OnnxRescaler` holds its LR to the 44 dB bound). The modes on a middle image (`naive`, `middle`) have
their resizes in the graphs too; the least-squares inverse back to the HR is computed in the
graph by Newton-Schulz iterations (`pinv_matrix_graph`, float64), and since the number of x2
steps of `middle` depends on the sizes, which a graph cannot branch on, its graphs compute every
step count the model has and select the one the sizes ask for (twice the work at most). Needs
the `onnx` extra (onnx, onnxscript; onnxruntime to run the graphs): `pip install iarn[onnx]`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .files import atomic_write
from .geometry import check_upscale_size, target_size
from .model import IARN, ModelConfig
from .model.encoding import ENCODINGS
from .model.haar import level_size
from .refine import LR_PSNR_MIN, hold_lr_bound
from .rescaler import RANGE_SLACK, Rescaler, check_image

MIN_SIDE = 16  # smallest exported side, HR or LR; the graphs are traced at larger sizes
OPSET = 18
CONFIG_KEY = "iarn:config"  # the model's ModelConfig (JSON) in each graph's metadata
_A = -0.5  # Keys' cubic, as resample.py


def _as_float64(size, like: torch.Tensor) -> torch.Tensor:
    """A scalar float64 tensor holding a (symbolic) size."""
    return torch.ones((), dtype=torch.float64, device=like.device) * size


def _cubic(t: torch.Tensor) -> torch.Tensor:
    t = t.abs()
    near = ((_A + 2) * t - (_A + 3)) * t * t + 1
    far = (((t - 5) * t + 8) * t - 4) * _A
    return torch.where(t < 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def resample_matrix_graph(in_size, out_size, like: torch.Tensor) -> torch.Tensor:
    """The (out_size, in_size) antialiased bicubic matrix of `resample.resample_matrix`, from
    tensor arithmetic alone (dense: every weight outside the kernel's support is 0), float32."""
    return _resample_matrix64(in_size, out_size, like).to(torch.float32)


def _resample_matrix64(in_size, out_size, like: torch.Tensor) -> torch.Tensor:
    scale = _as_float64(in_size, like) / _as_float64(out_size, like)
    support = torch.where(scale >= 1, 2 * scale, torch.full_like(scale, 2.0))
    inverse = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
    center = scale * (torch.arange(out_size, dtype=torch.float64, device=like.device) + 0.5)
    index = torch.arange(in_size, dtype=torch.float64, device=like.device)
    offset = index[None, :] - center[:, None] + 0.5
    weights = torch.where(offset.abs() < support, _cubic(offset * inverse), torch.zeros_like(offset))
    total = weights.sum(dim=1, keepdim=True)
    return weights / torch.where(total == 0, torch.ones_like(total), total)


PINV_ITERATIONS = 16  # Newton-Schulz steps: enough for cond(U) up to about 20 (the worst is ~15)


def pinv_matrix_graph(small, large, like: torch.Tensor) -> torch.Tensor:
    """`resample.pinv_matrix(small, large)`, the least-squares inverse of the bicubic upsampling,
    by Newton-Schulz iterations `X <- 2X - X U X` from `X = U^T / (|U|_1 |U|_inf)` (they converge
    to the pseudo-inverse of any matrix, quadratically once close), in float64; float32 out."""
    upsample = _resample_matrix64(small, large, like)
    step = 1 / (upsample.abs().sum(0).max() * upsample.abs().sum(1).max())
    inverse = upsample.t() * step
    for _ in range(PINV_ITERATIONS):
        inverse = 2 * inverse - inverse @ (upsample @ inverse)
    return inverse.to(torch.float32)


def middle_encoding_graph(kind: str, grid: tuple, cell: int, hr_size: tuple, middle: tuple, like: torch.Tensor):
    """`model.encoding.middle_encoding` for a whole image, from tensor arithmetic."""
    ratios = [_as_float64(middle[k], like) / (cell * _as_float64(hr_size[k], like)) for k in range(2)]
    steps = [_as_float64(hr_size[k], like) / _as_float64(middle[k], like) for k in range(2)]
    return _maps(kind, grid, ratios, [lambda index, k=k: index * cell * steps[k] for k in range(2)], like)


def encoding_graph(kind: str, grid: tuple, cell: int, hr_size: tuple, lr_size: tuple, like: torch.Tensor):
    """`model.encoding.scale_encoding` for a whole image, from tensor arithmetic: (1, K, gh, gw)."""
    ratios = [_as_float64(lr_size[k], like) / _as_float64(hr_size[k], like) for k in range(2)]
    centres = [lambda index, k=k: (index + 0.5) * cell * ratios[k] - 0.5 for k in range(2)]
    return _maps(kind, grid, ratios, centres, like)


def _maps(kind: str, grid: tuple, ratios: list, positions: list, like: torch.Tensor) -> torch.Tensor:
    """Ratio maps and the phases of `positions(index)` per axis, as `model.encoding._encoding`."""
    rows, cols = grid
    device = like.device
    zeros = torch.zeros((1, 1, rows, cols), dtype=torch.float32, device=device)
    if kind == "off":
        return zeros.expand(1, 4, rows, cols)

    def phase(count, axis):
        u = positions[axis](torch.arange(count, dtype=torch.float64, device=device))
        return u - torch.round(u)

    delta_h = phase(rows, 0).to(torch.float32)[None, None, :, None] + zeros
    delta_w = phase(cols, 1).to(torch.float32)[None, None, None, :] + zeros
    maps = [ratios[0].to(torch.float32) + zeros, ratios[1].to(torch.float32) + zeros]
    if kind == "pse":
        maps += [delta_h, delta_w]
    elif kind == "scale":
        maps += [zeros, zeros]
    elif kind == "sincos":
        for delta in (delta_h, delta_w):
            maps += [torch.sin(2 * math.pi * delta), torch.cos(2 * math.pi * delta)]
    else:
        raise ValueError(f"unknown encoding {kind!r}; expected one of {ENCODINGS}")
    return torch.cat(maps, dim=1)


class _Graph(nn.Module):
    def __init__(self, model: IARN) -> None:
        super().__init__()
        self.model = model

    def conds(self, hr_size: tuple, lr_size: tuple, like: torch.Tensor) -> list[torch.Tensor]:
        cfg = self.model.config
        return [
            encoding_graph(
                cfg.encoding, (level_size(hr_size[0], k), level_size(hr_size[1], k)), 2**k, hr_size, lr_size, like
            )
            for k in range(1, cfg.levels + 1)
        ]

    def lattice(self, hr_size: tuple) -> tuple:
        """The size of what the mode resamples the LR from (model/modes.py)."""
        return tuple(self.model.mode.lattice(self.model.levels, n)[1] for n in hr_size)


def _resize(x: torch.Tensor, size: tuple) -> torch.Tensor:
    rows = resample_matrix_graph(x.shape[-2], size[0], x)
    cols = resample_matrix_graph(x.shape[-1], size[1], x)
    return torch.matmul(rows, torch.matmul(x, cols.t()))


def _steps_graph(model: IARN, hr_size: tuple, lr_size: tuple, like: torch.Tensor) -> list:
    """[(k, selected)] for each x2 step count k a middle-image mode may take; `selected` is a
    scalar bool tensor, true for the k that `Naive.steps` / `Middle.steps` would pick."""
    if model.config.mode != "middle":
        return [(1, None)]
    fits = [
        (2**k * _as_float64(lr_size[0], like) >= _as_float64(hr_size[0], like))
        & (2**k * _as_float64(lr_size[1], like) >= _as_float64(hr_size[1], like))
        for k in range(1, model.levels)
    ]
    choices = []
    for k in range(1, model.levels + 1):
        earlier = [~fit for fit in fits[: k - 1]]
        now = fits[k - 1] if k < model.levels else None
        terms = earlier + ([now] if now is not None else [])
        selected = terms[0] if terms else None
        for term in terms[1:]:
            selected = selected & term
        choices.append((k, selected))
    return choices


def _select(choices: list) -> torch.Tensor:
    """The output of the selected choice of [(output, selected)]: one tensor, no branching."""
    out = choices[-1][0]
    for value, selected in reversed(choices[:-1]):
        out = torch.where(selected, value, out)
    return out


class _MiddleGraph(_Graph):
    """The middle-image modes' steps (model/modes.py `Naive`, `Middle`) for whole images."""

    def condition(self, level: int, grid: tuple, hr_size: tuple, middle: tuple, lr_size: tuple, like):
        kind = self.model.config.encoding
        if self.model.config.mode == "middle":
            return middle_encoding_graph(kind, grid, 2**level, hr_size, middle, like)
        return encoding_graph(kind, grid, 2**level, middle, lr_size, like)

    def down(self, hr: torch.Tensor, lr_size: tuple, steps: int) -> torch.Tensor:
        hr_size = (hr.shape[-2], hr.shape[-1])
        middle = (2**steps * lr_size[0], 2**steps * lr_size[1])
        y = _resize(hr, middle)
        for level in range(1, steps + 1):
            grid = (y.shape[-2] // 2, y.shape[-1] // 2)
            cond = self.condition(level, grid, hr_size, middle, lr_size, hr)
            stage = self.model.mode.stage_index(self.model.config, steps, level)
            y = self.model.encode_step(y, stage, cond)[:, :3]
        return y

    def up(self, lr: torch.Tensor, hr_size: tuple, steps: int) -> torch.Tensor:
        lr_size = (lr.shape[-2], lr.shape[-1])
        middle = (2**steps * lr_size[0], 2**steps * lr_size[1])
        y = lr
        for level in range(steps, 0, -1):
            cond = self.condition(level, (y.shape[-2], y.shape[-1]), hr_size, middle, lr_size, lr)
            z = torch.zeros_like(y[:, :1]).expand(-1, 9, -1, -1)
            stage = self.model.mode.stage_index(self.model.config, steps, level)
            y = self.model.decode_step(torch.cat([y, z], dim=1), stage, cond, (2 * y.shape[-2], 2 * y.shape[-1]))
        matrices = []
        for k in range(2):
            bicubic = resample_matrix_graph(middle[k], hr_size[k], lr)
            if self.model.config.back != "exact":
                matrices.append(bicubic)
                continue
            exact = _as_float64(middle[k], lr) >= _as_float64(hr_size[k], lr)
            matrices.append(torch.where(exact, pinv_matrix_graph(hr_size[k], middle[k], lr), bicubic))
        return torch.matmul(matrices[0], torch.matmul(y, matrices[1].t()))


def _keeps_an_axis(hr_size: tuple, lr_size: tuple, like: torch.Tensor) -> torch.Tensor:
    """`modes.keeps_an_axis` as a scalar bool tensor: where the graphs resample instead."""
    same = [_as_float64(hr_size[k], like) == _as_float64(lr_size[k], like) for k in range(2)]
    return same[0] | same[1]


def _guarded(out: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """`out`, or all NaN when `image` strays outside [0, 1] (by more than the runner's slack):
    a 0..255 input gives NaN, which no caller can mistake for an image."""
    low, high = image.amin(dim=(0, 1, 2, 3)), image.amax(dim=(0, 1, 2, 3))
    wrong = (low < -RANGE_SLACK) | (high > 1 + RANGE_SLACK) | torch.isnan(high) | torch.isnan(low)
    return torch.where(wrong, torch.full_like(out, float("nan")), out)


class DownscaleGraph(_MiddleGraph):
    """(hr, lr_shape) -> lr: `Rescaler.downscale` of a whole image, geometry computed in the graph."""

    def forward(self, hr: torch.Tensor, lr_shape: torch.Tensor) -> torch.Tensor:
        hr_size, lr_size = (hr.shape[-2], hr.shape[-1]), (lr_shape.shape[0], lr_shape.shape[1])
        if self.model.config.mode in ("naive", "middle"):
            choices = _steps_graph(self.model, hr_size, lr_size, hr)
            lr = _select([(self.down(hr, lr_size, k), selected) for k, selected in choices])
        else:
            grid = self.model.core_forward(hr, self.conds(hr_size, lr_size, hr))
            source, _ = self.model.mode.lr_source(grid, self.model.levels, hr_size)
            lr = _resize(source, lr_size)
        lr = torch.where(_keeps_an_axis(hr_size, lr_size, hr), _resize(hr, lr_size), lr)
        return _guarded(torch.round(lr.clamp(0, 1) * 255) / 255, hr)


class UpscaleGraph(_MiddleGraph):
    """(lr, hr_shape) -> hr: `Rescaler.upscale` of a whole image with z = 0."""

    def forward(self, lr: torch.Tensor, hr_shape: torch.Tensor) -> torch.Tensor:
        hr_size, lr_size = (hr_shape.shape[0], hr_shape.shape[1]), (lr.shape[-2], lr.shape[-1])
        if self.model.config.mode in ("naive", "middle"):
            choices = _steps_graph(self.model, hr_size, lr_size, lr)
            hr = _select([(self.up(lr, hr_size, k), selected) for k, selected in choices])
        else:
            grid = self.model.mode.grid_from_source(_resize(lr, self.lattice(hr_size)), self.model.levels)
            hr = self.model.core_inverse(grid, self.conds(hr_size, lr_size, lr), hr_size)
        hr = torch.where(_keeps_an_axis(hr_size, lr_size, lr), _resize(lr, hr_size), hr)
        return _guarded(hr.clamp(0, 1), lr)


def onnx_paths(name: str | os.PathLike) -> tuple[Path, Path]:
    """NAME-downscale.onnx and NAME-upscale.onnx (a trailing .onnx in NAME is dropped)."""
    name = str(name)
    stem = name[: -len(".onnx")] if name.lower().endswith(".onnx") else name
    return Path(f"{stem}-downscale.onnx"), Path(f"{stem}-upscale.onnx")


def export_onnx(model: IARN | Rescaler, downscale_path: str | os.PathLike, upscale_path: str | os.PathLike) -> None:
    """Write the downscale and upscale graphs of `model` (a network, or the network of a
    Rescaler; exported with float32 weights, from the CPU)."""
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise ValueError("ONNX export needs the onnx extra: pip install 'iarn[onnx]'") from None
    model = _float32_cpu(model.network if isinstance(model, Rescaler) else model)
    down_example = (torch.rand(1, 3, 67, 93), torch.zeros(29, 41, dtype=torch.uint8))
    up_example = (torch.rand(1, 3, 29, 41), torch.zeros(67, 93, dtype=torch.uint8))
    sides = [torch.export.Dim(f"side{k}", min=MIN_SIDE) for k in range(4)]
    graphs = (
        (DownscaleGraph(model), down_example, ("hr", "lr_shape"), "lr", downscale_path),
        (UpscaleGraph(model), up_example, ("lr", "hr_shape"), "hr", upscale_path),
    )
    for graph, example, inputs, output, path in graphs:
        image_dims = {2: sides[0], 3: sides[1]}
        shape_dims = {0: sides[2], 1: sides[3]}
        with torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(
                graph.eval(),
                example,
                input_names=list(inputs),
                output_names=[output],
                dynamic_shapes=(image_dims, shape_dims),
                opset_version=OPSET,
                dynamo=True,
                optimize=False,  # its rewriter took most of the export time; onnxruntime optimises at load
                verbose=False,
            )
        program.model.metadata_props[CONFIG_KEY] = model.config.to_json()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), lambda tmp, program=program: program.save(str(tmp)))


# The graphs run whole images (no tiles) and build (H, H) and (W, W) matrices: 4.55 GB at
# 0.24 MP, killed at 19.9 GB at 3.1 MP on a 24 GB machine. Larger images: iarn itself (it tiles).
ONNX_MAX_PIXELS = 500_000


def _check_pixels(hr_size: tuple[int, int]) -> None:
    if hr_size[0] * hr_size[1] > ONNX_MAX_PIXELS:
        raise ValueError(
            f"{hr_size[1]}x{hr_size[0]} is over the {ONNX_MAX_PIXELS / 1e6:g} MP the ONNX graphs are for "
            "(they run whole images, and their memory grows faster than the pixels); use iarn itself "
            "(`iarn.load()`, or the CLI), which tiles large images"
        )


class OnnxRescaler:
    """The exported graphs in onnxruntime, with `Rescaler`'s checks in front of them: numpy
    (1, 3, H, W) float32 in [0, 1] in and out, a wrong range, shape, size or scale refused with
    a one-line ValueError before the graph runs (the graphs themselves can only answer NaN).

        model = OnnxRescaler("iarn-downscale.onnx", "iarn-upscale.onnx")
        lr = model.downscale(hr, scale=2.7)
        restored = model.upscale(lr, size=hr.shape[-2:])
    """

    def __init__(
        self, downscale_path: str | os.PathLike, upscale_path: str | os.PathLike, providers: list[str] | None = None
    ) -> None:
        import onnxruntime

        providers = providers or ["CPUExecutionProvider"]
        self.down, self.up = (
            onnxruntime.InferenceSession(str(path), providers=providers) for path in (downscale_path, upscale_path)
        )
        stored = self.down.get_modelmeta().custom_metadata_map.get(CONFIG_KEY)
        self.config = ModelConfig.from_dict(json.loads(stored)) if stored else None
        self.max_scale = self.config.max_scale if self.config else ModelConfig().max_scale

    def downscale(self, hr, size: tuple[int, int] | None = None, scale=None):
        """HR (1, 3, H, W) float32 in [0, 1] -> LR (1, 3, h, w) rounded to 8 bits, PSNR-Y >= 44 dB
        against the bicubic LR (`refine.hold_lr_bound`); `size` or `scale` as in `Rescaler.downscale`."""
        _check_array(hr, "downscale")
        _check_pixels(tuple(hr.shape[-2:]))
        lr_size = target_size(tuple(hr.shape[-2:]), self.max_scale, size=size, scale=scale)
        _check_sides(tuple(hr.shape[-2:]), lr_size)
        (lr,) = self.down.run(None, {"hr": _float32(hr), "lr_shape": _shape_input(lr_size)})
        # the graph's forward pass, held to the LR bound as every LR iarn writes (rescaler.py)
        held = hold_lr_bound(torch.from_numpy(lr).double(), torch.from_numpy(_float32(hr)).double(), LR_PSNR_MIN)
        return held.float().numpy()

    def upscale(self, lr, size: tuple[int, int]):
        """LR (1, 3, h, w) float32 in [0, 1] -> HR (1, 3, H, W) in [0, 1] with `size=(H, W)`."""
        _check_array(lr, "upscale")
        hr_size = check_upscale_size(size, tuple(lr.shape[-2:]), self.max_scale)
        _check_pixels(hr_size)
        _check_sides(hr_size, tuple(lr.shape[-2:]))
        (hr,) = self.up.run(None, {"lr": _float32(lr), "hr_shape": _shape_input(hr_size)})
        return hr


def _check_array(x, what: str) -> None:
    import numpy as np

    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} takes a numpy array (1, 3, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"{what} takes a (1, 3, H, W) array (the graphs take batch 1), got shape {x.shape}")
    check_image(torch.from_numpy(np.ascontiguousarray(x)), what)


def _check_sides(hr_size: tuple, lr_size: tuple) -> None:
    if min(*hr_size, *lr_size) < MIN_SIDE:
        raise ValueError(
            f"the ONNX graphs take sides of at least {MIN_SIDE} pixels, got {hr_size[1]}x{hr_size[0]} and "
            f"{lr_size[1]}x{lr_size[0]} (iarn itself takes any size)"
        )


def _float32(x):
    import numpy as np

    return np.ascontiguousarray(x, dtype=np.float32)


def _shape_input(size: tuple[int, int]):
    import numpy as np

    return np.zeros(size, np.uint8)


@contextlib.contextmanager
def _quiet_exporter():
    """Without the exporter's notes (missing torchvision ops, deprecations): not ours to act on."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _float32_cpu(model: IARN) -> IARN:
    """A float32, NCHW copy on the CPU, its dense blocks unpadded: the graph gets the plain
    convolutions and the runtime picks its own kernels. The LR corrector is left out: the
    downscale graph is the network's forward pass (module docstring)."""
    copy = IARN(model.config)
    state = {k: v.float().cpu() for k, v in model.state_dict().items() if not k.startswith("corrector.")}
    copy.load_state_dict(state)
    for module in copy.modules():
        if hasattr(module, "channel_align"):
            module.channel_align = 1
    return copy.eval()
