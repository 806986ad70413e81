"""ONNX export: a model's downscale and upscale as two graphs that take any image size.

Why the sizes are graph inputs and the geometry is inside the graphs: the resampling matrices and
the scale-encoding maps depend only on the sizes, so each graph computes them itself (in float64,
by the graph twins beside the eager code: `resample.resample_matrix_graph`,
`encoding.scale_encoding_graph`, ..., then cast to float32), and a caller needs nothing from
iarn. The graphs ask the model's mode for its whole-image path (`Mode.down_graph`,
`Mode.up_graph`, model/modes/), as the eager code asks it for regions; nothing here names a
mode. A target size is given as the *shape* of a small input, because an ONNX graph can size
tensors by shapes but a value input would make every output shape data-dependent:

    downscale.onnx  hr (1, 3, H, W) float32 in [0, 1], lr_shape (h, w) any values (uint8 zeros)
                    -> lr (1, 3, h, w) float32 in [0, 1], rounded to multiples of 1/255
    upscale.onnx    lr (1, 3, h, w) float32 in [0, 1], hr_shape (H, W) any values
                    -> hr (1, 3, H, W) float32 in [0, 1]

H, W and h, w are dynamic (each at least MIN_SIDE); 1 <= H/h, W/w <= the model's max_scale is
the caller's to keep, as for `Rescaler.downscale`; an input outside [0, 1] gives all NaN, and an
axis that keeps its size is resampled as `modes.Resample` does. `OnnxRescaler` runs the graphs
with the runner's checks in front; each graph's metadata holds the model's config. Whole images
only (no tiling) and z = 0; every mode; the downscale is the forward pass, without the LR corrector
(`OnnxRescaler` holds its LR to the 44 dB bound). The modes on a middle image have their resizes
in the graphs too; the least-squares inverse back to the HR is computed in the graph by
Newton-Schulz iterations (`resample.pinv_matrix_graph`, float64), and where the number of x2
steps depends on the sizes, which a graph cannot branch on, the graphs compute every step count
the model has and select the one the sizes ask for (twice the work at most). Needs
the `onnx` extra (onnx, onnxscript; onnxruntime to run the graphs): `pip install iarn[onnx]`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .files import atomic_write
from .geometry import check_upscale_size, target_size
from .lr_bound import LR_PSNR_MIN, hold_lr_bound
from .model import IARN, ModelConfig
from .model.modes import RESAMPLE, keeps_an_axis_graph
from .rescaler import RANGE_SLACK, Rescaler, check_image

MIN_SIDE = 16  # smallest exported side, HR or LR; the graphs are traced at larger sizes
OPSET = 18
CONFIG_KEY = "iarn:config"  # the model's ModelConfig (JSON) in each graph's metadata


def _guarded(out: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """`out`, or all NaN when `image` strays outside [0, 1] (by more than the runner's slack):
    a 0..255 input gives NaN, which no caller can mistake for an image."""
    low, high = image.amin(dim=(0, 1, 2, 3)), image.amax(dim=(0, 1, 2, 3))
    wrong = (low < -RANGE_SLACK) | (high > 1 + RANGE_SLACK) | torch.isnan(high) | torch.isnan(low)
    return torch.where(wrong, torch.full_like(out, float("nan")), out)


class DownscaleGraph(nn.Module):
    """(hr, lr_shape) -> lr: `Rescaler.downscale` of a whole image (the mode's `down_graph`, or
    `RESAMPLE`'s where an axis keeps its size), rounded to 8 bits."""

    def __init__(self, model: IARN) -> None:
        super().__init__()
        self.model = model

    def forward(self, hr: torch.Tensor, lr_shape: torch.Tensor) -> torch.Tensor:
        hr_size, lr_size = (hr.shape[-2], hr.shape[-1]), (lr_shape.shape[0], lr_shape.shape[1])
        lr = self.model.mode.down_graph(self.model, hr, lr_size)
        kept = RESAMPLE.down_graph(self.model, hr, lr_size)
        lr = torch.where(keeps_an_axis_graph(hr_size, lr_size, hr), kept, lr)
        return _guarded(torch.round(lr.clamp(0, 1) * 255) / 255, hr)


class UpscaleGraph(nn.Module):
    """(lr, hr_shape) -> hr: `Rescaler.upscale` of a whole image with z = 0, clamped."""

    def __init__(self, model: IARN) -> None:
        super().__init__()
        self.model = model

    def forward(self, lr: torch.Tensor, hr_shape: torch.Tensor) -> torch.Tensor:
        hr_size, lr_size = (hr_shape.shape[0], hr_shape.shape[1]), (lr.shape[-2], lr.shape[-1])
        hr = self.model.mode.up_graph(self.model, lr, hr_size)
        kept = RESAMPLE.up_graph(self.model, lr, hr_size)
        hr = torch.where(keeps_an_axis_graph(hr_size, lr_size, lr), kept, hr)
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
        self.config = ModelConfig.from_stored(json.loads(stored)) if stored else None
        self.max_scale = self.config.max_scale if self.config else ModelConfig().max_scale

    def downscale(self, hr, size: tuple[int, int] | None = None, scale=None):
        """HR (1, 3, H, W) float32 in [0, 1] -> LR (1, 3, h, w) rounded to 8 bits, PSNR-Y >= 44 dB
        against the bicubic LR (`lr_bound.hold_lr_bound`); `size` or `scale` as in `Rescaler.downscale`."""
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
