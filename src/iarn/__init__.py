"""iarn: learned, invertible image rescaling at arbitrary scales (IARN, WACV 2023).

import iarn
model = iarn.load()                          # a Rescaler: bundled weights, best device
lr = model.downscale(hr, scale=2.7)          # (B, 3, H, W) in [0, 1] -> (B, 3, h, w)
restored = model.upscale(lr, size=hr.shape[-2:])

The names below are imported on first use, so `import iarn` (and `iarn --help`) does not
import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "IARN": ".model",
    "ModelConfig": ".model",
    "Rescaler": ".rescaler",
    "WeightsError": ".weights",
    "downscale_file": ".api",
    "downscale_image": ".api",
    "load": ".rescaler",
    "load_weights": ".weights",
    "save_weights": ".weights",
    "upscale_file": ".api",
    "upscale_image": ".api",
}
__all__ = [
    "IARN",
    "ModelConfig",
    "Rescaler",
    "WeightsError",
    "__version__",
    "downscale_file",
    "downscale_image",
    "load",
    "load_weights",
    "save_weights",
    "upscale_file",
    "upscale_image",
]

if TYPE_CHECKING:
    from .api import downscale_file, downscale_image, upscale_file, upscale_image
    from .model import IARN, ModelConfig
    from .rescaler import Rescaler, load
    from .weights import WeightsError, load_weights, save_weights


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    if not name.startswith("_"):  # a submodule, as `iarn.weights` after `import iarn`
        try:
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            pass
    raise AttributeError(f"module 'iarn' has no attribute {name!r}")
