"""Training an upscaler band (model/bands.py): a JPEG quality's own upscaler, the downscaler frozen.

    iarn train-upscaler --base jpeg --quality 90 --data DIR --out runs/q90 --steps 5000

The base model is not changed at all: every LR it writes stays the same. A copy of its network
learns, through its inverse only, to restore HR crops from the LRs the base writes at the
default effort (the corrector's, where it has one, in the passes effort 1 runs for it, held to
the 44 dB LR bound and rounded to 8 bits), decoded from Pillow's JPEG at a quality drawn from
[quality_min, quality_max] each step. The loss is the L1 error of the restored crop. The
output weight file is the base's (its bands too) plus this band, replacing one trained at the
same quality; `upscale` uses the band for JPEGs whose estimated quality is in
[serve_min, serve_max] (codec.estimate_jpeg_quality). `merge_bands` gathers bands trained
apart from one base into one file.

Every step's crops, scale and quality are a function of (seed, step), as in train.py, so
`--resume` continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .codec import through_codec_batch
from .data import CropSampler
from .devices import resolve_device
from .effort import DEFAULT_PASSES, corrector_passes
from .files import atomic_write
from .frozen_train import FROZEN_TRAIN_BOUNDS, WHOLE, check_recipe, recipe, run_steps
from .lr_bound import LR_PSNR_MIN, hold_lr_bound, luma
from .model import IARN
from .model.bands import QUALITY_RANGE, UpscalerBand, check_bands
from .train import next_batch
from .weights import load_weights, read_metadata, resolve_weights, save_weights, weights_id

QUALITY_FIELDS = ("quality", "quality_min", "quality_max", "serve_min", "serve_max")
UPSCALER_TRAIN_BOUNDS = {**FROZEN_TRAIN_BOUNDS, **{name: QUALITY_RANGE for name in QUALITY_FIELDS}}
HALVINGS = (0.5, 0.75, 0.9)  # shares of the steps after which the learning rate halves
QUALITY_STREAM = 0x6A706567  # "jpeg": keeps the quality draws apart from next_batch's


@dataclass(frozen=True)
class UpscalerTrainConfig:
    """A band's run: the frozen `base` (a path or bundled name), the band's quality and the
    qualities it serves, and the recipe (Adam, halved at `HALVINGS`; crops and scales as in
    train.py)."""

    data: tuple[str, ...] = ()
    out: str = "runs/upscaler"
    base: str = "jpeg"
    quality: int = 90
    quality_min: int = 85
    quality_max: int = 95
    serve_min: int = 86
    serve_max: int = 100
    steps: int = 4500
    batch_size: int = 8
    crop: int = 64
    learning_rate: float = 1e-4
    scale_min: float = 1.0
    scale_max: float = 4.0
    scale_power: float = 1.0
    asymmetric_share: float = 0.3
    integer_share: float = 0.3
    seed: int = 5
    checkpoint_every: int = 250
    log_every: int = 25
    threads: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_recipe(self, UPSCALER_TRAIN_BOUNDS, WHOLE + QUALITY_FIELDS)
        if not self.quality_min <= self.quality_max:
            raise ValueError(f"need quality_min <= quality_max, got {self.quality_min} and {self.quality_max}")
        self.band  # noqa: B018 (its checks: serve_min <= serve_max)

    @property
    def band(self) -> UpscalerBand:
        return UpscalerBand(self.quality, self.serve_min, self.serve_max)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> UpscalerTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown upscaler training fields {unknown}")
        return cls(**{**values, "data": tuple(values.get("data", ()))})


def step_quality(cfg: UpscalerTrainConfig, step: int) -> int:
    """The JPEG quality of step `step`: a function of (seed, step) alone."""
    rng = np.random.default_rng([cfg.seed, step, QUALITY_STREAM])
    return int(rng.integers(cfg.quality_min, cfg.quality_max + 1))


def learning_rate(cfg: UpscalerTrainConfig, step: int) -> float:
    return cfg.learning_rate * 0.5 ** sum(step >= share * cfg.steps for share in HALVINGS)


def written_lr(
    base: IARN, hr: torch.Tensor, lr_size: tuple[int, int], quality: int, passes: float | None = DEFAULT_PASSES
) -> torch.Tensor:
    """The LR the base writes for HR crops (B, 3, c, c) with its corrector in `passes` passes
    (`effort.corrector_passes` of the default effort's), decoded from a JPEG of `quality`:
    (B, 3, h, w) in [0, 1]."""
    with torch.no_grad():
        hr_size = (hr.shape[-2], hr.shape[-1])
        lr, _ = base.down_region(hr, hr_size, lr_size, correct=True, passes=passes)
        lr = hold_lr_bound(lr, hr, LR_PSNR_MIN)
        return through_codec_batch(lr, ("jpeg", quality))


def upscaler_loss(band: IARN, hr: torch.Tensor, lr: torch.Tensor) -> dict[str, torch.Tensor]:
    """The band's L1 error restoring `hr` from `lr`, and its PSNR-Y for the log."""
    restored = band.up_region(lr, (hr.shape[-2], hr.shape[-1]), (lr.shape[-2], lr.shape[-1]))
    loss = (restored - hr).abs().mean()
    with torch.no_grad():
        mse_y = luma(restored.clamp(0, 1) - hr).pow(2).mean()
        psnr_y = 10 * torch.log10(1 / mse_y.clamp_min(1e-12))
    return {"loss": loss, "psnr_y": psnr_y}


def train_upscaler(
    cfg: UpscalerTrainConfig,
    resume: bool = False,
    init_from: str | None = None,
    max_minutes: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Path | None:
    """Run (or continue) a band's run; returns the weight file written, or None when the run
    ended before its first step. `init_from`: weights whose band at `cfg.quality` (else whose
    network) the band starts from; by default the base's network (never a band of the base's)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "upscaler-checkpoint.pt"
    base_path = resolve_weights(cfg.base)
    device = resolve_device(cfg.device)
    base = load_weights(base_path, device)
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    kept = tuple(b for b in base.bands if b.quality != cfg.quality)
    try:  # before any step: the band must fit beside the base's other bands
        check_bands((*kept, cfg.band))
    except ValueError as error:
        raise ValueError(f"{base_path}: {error}; give this band other --serve-min/--serve-max") from None
    band = IARN(base.config).to(device)
    start = base  # its network, not a band it may have: a run from `base` is the same run with or without bands
    if init_from:
        start = load_weights(resolve_weights(init_from)).upscaler_for(cfg.quality)
        if start.config != base.config:
            raise ValueError(f"{init_from}: its config {start.config} differs from the base's {base.config}")
    band.stages.load_state_dict(start.stages.state_dict())
    band.train()
    optimizer = torch.optim.Adam(band.parameters(), lr=cfg.learning_rate)
    step = 0
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        band.load_state_dict(state["band"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
    sampler = CropSampler(list(cfg.data), cfg.crop, device)
    passes = corrector_passes(DEFAULT_PASSES, base_path)  # what `downscale` runs at the default effort

    def save_checkpoint(step: int) -> None:
        state = {"band": band.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        atomic_write(checkpoint_path, lambda tmp: torch.save(state, tmp))

    def learn(step: int) -> dict:
        hr, lr_size, scale = next_batch(sampler, cfg, 0, step)
        quality = step_quality(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        values = upscaler_loss(band, hr, written_lr(base, hr, lr_size, quality, passes))
        optimizer.zero_grad(set_to_none=True)
        values["loss"].backward()
        optimizer.step()
        return {"scale": scale, "quality": quality, **values}

    step = run_steps(cfg, step, learn, out / "upscaler-log.jsonl", save_checkpoint, max_minutes, clock)
    if step == 0:
        return None
    save_checkpoint(step)
    band.eval()
    record = {"recipe": recipe(cfg), "steps": step, "base": weights_id(base_path)}
    bands = {b.quality: (b, base.band_networks[b.key]) for b in base.bands}
    bands[cfg.quality] = (cfg.band, band)  # replacing the base's band at this quality, if any
    return _write(base, base_path, bands, out / "model.safetensors", {cfg.band.key: record})


def merge_bands(
    base: str, sources: list[str], out: str | Path, serve: dict[int, tuple[int, int]] | None = None
) -> Path:
    """Write to `out` the weights of `base` with its bands and those of `sources` (files that
    `train_upscaler` wrote from `base`: the same network bit for bit; a source's band replaces
    one of the same quality, but for a band of the base's own that a source only carried over).
    `serve`: by band quality, the JPEG qualities (low, high) it serves, in place of those it was
    trained to serve."""
    base_path = resolve_weights(base)
    network = load_weights(base_path)
    bands = {b.quality: (b, network.band_networks[b.key]) for b in network.bands}
    records = {}
    for source in sources:
        path = resolve_weights(source)
        other = load_weights(path)
        if not _same_network(network, other):
            raise ValueError(f"{source}: its network is not that of {base_path}; train its band from that base")
        trained = [b for b in other.bands if not _base_band(network, b, other.band_networks[b.key])]
        bands.update({b.quality: (b, other.band_networks[b.key]) for b in trained})
        theirs = _training(path).get("upscaler_bands", {})
        records.update({b.key: theirs[b.key] for b in trained if b.key in theirs})
    for quality, (low, high) in (serve or {}).items():
        if quality not in bands:
            raise ValueError(f"no band trained at quality {quality} to serve {low}-{high} (bands: {sorted(bands)})")
        bands[quality] = (UpscalerBand(quality, low, high), bands[quality][1])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return _write(network, base_path, bands, Path(out), records)


def _write(
    network: IARN, base_path: Path, bands: dict[int, tuple[UpscalerBand, IARN]], path: Path, records: dict
) -> Path:
    """`network` with `bands` (by quality) to `path`; `records`: the bands' training records by
    key, kept in the `training` metadata beside the base's own."""
    network.set_bands(dict(bands.values()))
    training = _training(base_path)
    kept = {b.key for b in network.bands}
    previous = {k: v for k, v in training.get("upscaler_bands", {}).items() if k in kept}
    training["upscaler_bands"] = {**previous, **{k: v for k, v in records.items() if k in kept}}
    save_weights(network, path, training=training, same_upscaler_as=base_path)
    return path


def _base_band(base: IARN, band: UpscalerBand, network: IARN) -> bool:
    """Whether `network` is the base's own band at `band.quality`, bit for bit (a run's file
    carries the base's other bands unchanged: merging takes only what each run trained)."""
    own = next((b for b in base.bands if b.quality == band.quality), None)
    if own is None:
        return False
    theirs = network.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in base.band_networks[own.key].state_dict().items())


def _same_network(first: IARN, second: IARN) -> bool:
    """Whether two models hold the same network (and corrector), their bands aside."""
    own = {k: v for k, v in first.state_dict().items() if not k.startswith("band_networks.")}
    theirs = {k: v for k, v in second.state_dict().items() if not k.startswith("band_networks.")}
    return own.keys() == theirs.keys() and all(torch.equal(v, theirs[k]) for k, v in own.items())


def _training(path: Path) -> dict:
    """The `training` metadata of a weight file (an empty record when it has none)."""
    return json.loads(read_metadata(path).get("training", "{}"))


__all__ = ["UpscalerTrainConfig", "merge_bands", "step_quality", "train_upscaler", "upscaler_loss", "written_lr"]
