"""The runner: a network ready for inference, with its device, precision, layout and tiling policy.

    import iarn
    model = iarn.load()                              # a Rescaler: bundled weights, best device
    lr = model.downscale(hr, scale=2.7)              # (B, 3, H, W) in [0, 1] -> (B, 3, h, w)
    restored = model.upscale(lr, size=hr.shape[-2:])

The I/O contract (docs/design.md section 1). `downscale` takes HR (B, 3, H, W) float RGB in
[0, 1] and returns the LR (B, 3, h, w) rounded to 8 bits (a saved PNG holds exactly it);
`upscale` returns HR clamped to [0, 1] but not rounded. Any 1 <= H/h, W/w <= `max_scale`, the two
factors independent; any size, odd or tiny. Both are deterministic: the lost detail z is 0
unless a seed asks for a sample (modes that sample z only). Results are on the model's device.

The network (`IARN`) only knows regions; this class decides whole image or tiles (tiling.py),
moves pixels to the device, and holds the precision and memory layout chosen by devices.py.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import torch

from .devices import resolve_device, resolve_memory_format, resolve_precision
from .geometry import Size, check_tile, check_upscale_size, target_size
from .lr_bound import hold_lr_bound
from .model import IARN, ModelConfig
from .refine import (
    REFINE_BYTES_PER_PIXEL,
    REFINE_TILE,
    REFINE_WHOLE_BYTES,
    RefineConfig,
    as_refine_config,
    check_refine_steps,
    refine_lr,
)
from .tiling import AUTO_TILE_PIXELS, CUDA_BYTES_PER_PIXEL, as_float, seeded_noise, tiled_downscale, tiled_upscale
from .weights import load_weights, resolve_weights, weights_id

RANGE_SLACK = 1e-3  # how far outside [0, 1] an input may stray (float rounding) before it is refused


class Rescaler:
    """`network` on `device` with its subnets in `precision` (fp32, bf16, fp16 or auto: see
    devices.py); images of at most `AUTO_TILE_PIXELS` (CPU), or that fit (CUDA), run whole,
    larger ones in tiles. The network is moved and converted in place."""

    def __init__(self, network: IARN, device: str | torch.device = "auto", precision: str = "fp32") -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        layout = resolve_memory_format(self.device, self.dtype)
        self.network = network.to(self.device, self.dtype).to(memory_format=layout).eval()
        self.model_id: str | None = None  # NAME@HASH of the weight file (`load` sets it)
        self.path: str | None = None  # the weight file (`load` sets it)
        self.correct = True  # downscale through the network's LR corrector, where it has one
        self.corrector_passes: float | None = None  # its passes (None: as trained; 2.4: effort 1's)
        self._fp32: IARN | None = None  # fp32_network's copy

    @property
    def config(self) -> ModelConfig:
        return self.network.config

    def __repr__(self) -> str:
        return f"Rescaler({self.config}, device={self.device}, dtype={self.dtype})"

    # -- tensors ------------------------------------------------------------------------

    @torch.inference_mode()
    def downscale(
        self,
        x: torch.Tensor,
        size: Size | None = None,
        scale: float | tuple[float, float] | None = None,
        tile: int | None = None,
        refine: int | RefineConfig = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """HR (B, 3, H, W) in [0, 1] -> LR (B, 3, h, w) in [0, 1], rounded to 8 bits.

        Give `size=(h, w)` or `scale=s` / `(s_h, s_w)`; a scale means
        `h = max(1, round(H / s_h))` (halves up). Geometry then uses the actual ratio H/h.
        `tile` forces tiles with cores of about `tile` HR pixels a side.
        `refine=N` (or a `RefineConfig`) spends N optimisation steps choosing the 8-bit LR that
        this model's upscale restores best, its PSNR-Y against bicubic held at 44 dB or more
        (refine.py); 0 is the network's LR. `progress(step, steps)` follows the refinement.
        """
        check_image(x, "downscale")
        check_tile(tile)
        if not isinstance(refine, RefineConfig):
            check_refine_steps(refine)
            refine = int(refine)
        lr_size = target_size((x.shape[-2], x.shape[-1]), self.config.max_scale, size=size, scale=scale)
        return self.downscale_pixels(x, lr_size, tile, refine, progress)

    @torch.inference_mode()
    def upscale(
        self,
        lr: torch.Tensor,
        size: Size,
        tile: int | None = None,
        seed: int | None = None,
        temperature: float = 1.0,
        jpeg_quality: int | None = None,
    ) -> torch.Tensor:
        """LR (B, 3, h, w) in [0, 1] -> HR (B, 3, H, W) in [0, 1] with `size=(H, W)`.

        `seed` draws z from N(0, temperature^2) instead of taking it as 0 (reproducible for a
        fixed seed and tiling). `tile` as in `downscale`. `jpeg_quality`: the LR was decoded
        from a JPEG of this quality (1-100): the model's upscaler band for it, where it has one
        (model/bands.py).
        """
        check_image(lr, "upscale")
        hr_size = check_upscale_size(size, (lr.shape[-2], lr.shape[-1]), self.config.max_scale)
        check_tile(tile)
        self.check_seed(seed)
        return self.upscale_pixels(lr, hr_size, tile, seed, temperature, jpeg_quality)

    # -- checked sizes, uint8 or float pixels on any device --------------------------------

    def downscale_pixels(
        self,
        x: torch.Tensor,
        lr_size: Size,
        tile: int | None = None,
        refine: int | RefineConfig = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """(B, 3, H, W) uint8, or float in [0, 1] -> 8-bit-rounded LR (B, 3, h, w), float.
        `refine`, `progress`: as in `downscale`."""
        config = as_refine_config(refine)
        x = x.to(self.device)
        hr_size = (x.shape[-2], x.shape[-1])
        final = config.steps == 0 or hr_size == lr_size  # an LR of the HR's size is the HR: nothing to refine
        lr = hold_lr_bound(self._network_lr(x, lr_size, tile, final), x, config.lr_psnr_min)
        if final:  # else it is refinement's start, and refinement's own loss decides
            return lr
        with torch.inference_mode(False):  # the LR is optimised through the upscaler's autograd
            network = self.fp32_network()
            return refine_lr(network, x, lr.clone(), config, self.refine_tile(hr_size, lr_size, tile), progress)

    def fp32_network(self) -> IARN:
        """The network with fp32 subnets, what refinement steps through: in bf16 or fp16 the
        gradient is too coarse to improve an 8-bit LR (a first bf16 step raised the loss 42 %).
        The network itself when it is fp32 already, else an fp32 copy made once."""
        if self.dtype == torch.float32:
            return self.network
        if self._fp32 is None:
            self._fp32 = copy.deepcopy(self.network).to(dtype=torch.float32).eval()
        return self._fp32

    @torch.inference_mode()
    def _network_lr(self, x: torch.Tensor, lr_size: Size, tile: int | None, final: bool = True) -> torch.Tensor:
        """The network's LR, through its corrector when it has one and `correct` is on; unquantised.
        `final`: the LR written (its passes beyond the trained checked), not refinement's start."""
        hr_size = (x.shape[-2], x.shape[-1])
        corrector = {"correct": self.correct, "passes": self.corrector_passes, "check_passes": final}
        if self.whole_image(hr_size, tile, lr_size):
            return self.network.down_region(as_float(x, self.network.state_dtype), hr_size, lr_size, **corrector)[0]
        return tiled_downscale(self.network, x, lr_size, tile, **corrector)

    @torch.inference_mode()
    def upscale_pixels(
        self,
        lr: torch.Tensor,
        hr_size: Size,
        tile: int | None = None,
        seed: int | None = None,
        temperature: float = 1.0,
        jpeg_quality: int | None = None,
    ) -> torch.Tensor:
        """LR (B, 3, h, w) uint8, or float in [0, 1] -> HR (B, 3, H, W) float, clamped to [0, 1];
        `jpeg_quality` as in `upscale`."""
        lr = lr.to(self.device)
        lr_size = (lr.shape[-2], lr.shape[-1])
        network = self.network.upscaler_for(jpeg_quality)
        if self.whole_image(hr_size, tile, lr_size):
            noise = seeded_noise(seed, temperature, (0, 0))
            hr = network.up_region(as_float(lr, network.state_dtype), hr_size, lr_size, noise=noise)
            return hr.clamp_(0, 1)
        return tiled_upscale(network, lr, hr_size, tile, seed, temperature)

    def whole_image(self, hr_size: Size, tile: int | None, lr_size: Size | None = None) -> bool:
        """The tiling policy: whole images unless `tile` is given or the image is too large
        (CPU, MPS: over AUTO_TILE_PIXELS HR pixels; CUDA: when CUDA_BYTES_PER_PIXEL per pixel
        of the HR, or of the middle image of a mode that has one (`middle`: up to 4x the HR's
        just above x1 and x2), exceed half the free memory)."""
        if tile is not None:
            return False
        pixels = hr_size[0] * hr_size[1]
        if self.device.type == "cuda":
            geometry = self.network.geometry(hr_size, lr_size) if lr_size else None
            core = geometry.core_size(self.network, hr_size, lr_size) if geometry else None
            pixels = max(pixels, core[0] * core[1] if core else 0)
            free, _ = torch.cuda.mem_get_info(self.device)
            return pixels * CUDA_BYTES_PER_PIXEL <= free // 2
        return pixels <= AUTO_TILE_PIXELS

    def refine_tile(self, hr_size: Size, lr_size: Size, tile: int | None) -> int | None:
        """The HR tile side refinement computes its gradient in (None: the whole image at once).
        Refinement keeps the upscaler's activations for the backward pass, about
        REFINE_BYTES_PER_PIXEL per pixel of the image the core runs on: whole images while that
        is under REFINE_WHOLE_BYTES (CPU, MPS) or half the free memory (CUDA); `tile` forces tiles."""
        if tile is not None:
            return tile
        core = self.network.geometry(hr_size, lr_size).core_size(self.network, hr_size, lr_size) or hr_size
        need = max(core[0] * core[1], hr_size[0] * hr_size[1]) * REFINE_BYTES_PER_PIXEL
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = free // 2
        else:
            budget = REFINE_WHOLE_BYTES
        return None if need <= budget else REFINE_TILE

    def check_seed(self, seed: int | None) -> None:
        if seed is not None and not self.network.mode.samples_z:
            raise ValueError(f"sampling z (seed) needs a model in split mode; this one is {self.config.mode}")


def load(
    path_or_name: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
) -> Rescaler:
    """A ready model from a weight file path or a bundled name (weights.BUNDLED; default: default).

    `precision` (fp32, bf16, fp16 or auto, see devices.py) is the dtype the subnets run in;
    images and the invertible arithmetic stay float32 (`IARN.state_dtype`). fp32 is exact and
    reproducible. Raises WeightsError when the weights are missing or do not fit; never falls
    back to random weights.
    """
    device = resolve_device(device)
    path = resolve_weights(path_or_name)
    runner = Rescaler(load_weights(path), device, precision)
    runner.model_id = weights_id(path)
    runner.path = str(path)
    return runner


def check_image(x, what: str) -> None:
    """Refuse what would give silently wrong output: not a (B, 3, H, W) float tensor in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        hint = "; for numpy arrays and Pillow images use iarn.downscale_image / upscale_image" if x is not None else ""
        raise TypeError(f"{what} takes a torch tensor (B, 3, H, W), got {type(x).__name__}{hint}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{what} takes a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{what} takes float values in [0, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{what} got an empty tensor of shape {tuple(x.shape)}")
    low, high = torch.aminmax(x)
    if not (torch.isfinite(low) and torch.isfinite(high)):
        raise ValueError(f"{what} got NaN or infinite values")
    if low < -RANGE_SLACK or high > 1 + RANGE_SLACK:
        hint = " (it looks like 0..255: divide by 255)" if high > 2 else ""
        raise ValueError(f"{what} takes values in [0, 1], got {float(low):.4g} to {float(high):.4g}{hint}")
