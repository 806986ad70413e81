"""iarn: learned, invertible image rescaling at arbitrary scales (IARN, WACV 2023).

import iarn
model = iarn.load()                          # bundled weights, best device
lr = model.downscale(hr, scale=2.7)          # (B, 3, H, W) in [0, 1] -> (B, 3, h, w)
restored = model.upscale(lr, size=hr.shape[-2:])
"""

from .api import downscale_image, upscale_image
from .model import IARN, ModelConfig
from .weights import WeightsError, load, load_weights, save_weights

__version__ = "0.1.0"
__all__ = [
    "IARN",
    "ModelConfig",
    "WeightsError",
    "__version__",
    "downscale_image",
    "load",
    "load_weights",
    "save_weights",
    "upscale_image",
]
