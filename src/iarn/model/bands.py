"""Quality bands: extra upscalers for LRs that went through JPEG (docs/design.md section 3).

A lossy model's downscaler is its network's forward pass; by default its upscaler is the same
network's inverse. A band is a copy of that network whose inverse was trained, with the
downscaler frozen, on LRs decoded from JPEG at about one quality (`iarn train-upscaler`). It
is used only to upscale a JPEG whose estimated quality lies in [low, high]: the LRs the file
writes, and every lossless LR, stay exactly what they were.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..fields import check_number

QUALITY_RANGE = (1, 100)


@dataclass(frozen=True)
class UpscalerBand:
    """The band trained at JPEG quality `quality`, serving estimated qualities `low`..`high`."""

    quality: int
    low: int
    high: int

    def __post_init__(self) -> None:
        for name in ("quality", "low", "high"):
            check_number(name, getattr(self, name), *QUALITY_RANGE, whole=True)
        if self.low > self.high:
            raise ValueError(f"a band needs low <= high, got {self.low} and {self.high}")

    @property
    def key(self) -> str:
        """Its module name in the network (`band_networks.q90...` in a weight file)."""
        return f"q{self.quality}"

    def serves(self, quality: int | None) -> bool:
        return quality is not None and self.low <= quality <= self.high


def bands_to_json(bands: tuple[UpscalerBand, ...]) -> str:
    return json.dumps([asdict(band) for band in bands], sort_keys=True)


def bands_from_json(text: str) -> tuple[UpscalerBand, ...]:
    """The bands a weight file records; ValueError when they overlap or repeat a quality."""
    values = json.loads(text)
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise ValueError(f"bands must be a list of objects, got {text[:80]!r}")
    return check_bands(tuple(UpscalerBand(**v) for v in values))


def check_bands(bands: tuple[UpscalerBand, ...]) -> tuple[UpscalerBand, ...]:
    """`bands` in the order of their ranges, refused when two share a quality or their ranges overlap."""
    bands = tuple(sorted(bands, key=lambda band: band.low))
    for first, second in zip(bands, bands[1:]):
        if first.quality == second.quality or second.low <= first.high:
            raise ValueError(f"bands overlap: {first} and {second}")
    return bands


__all__ = ["UpscalerBand", "bands_from_json", "bands_to_json", "check_bands"]
