"""How a mode forms the LR from the invertible core, and back: one class per mode.

The invertible core (`IARN.encode` / `IARN.decode`: Haar levels and coupling blocks) maps an HR
crop to a working grid of 3 * 4^L channels at 1 / 2^L of its size, and back. A mode says what
the LR is resampled from (its *source*, on a *lattice*: the HR pixels or the grid's cells), what
the training loss keeps small besides (the *by-product*), and how the grid is rebuilt from an
upsampled LR. Everything mode-specific lives here; the network, the tiler, the exporter and the
training loss ask the mode (docs/design.md section 3). A new mode is a new `Mode` subclass in
`MODES`.

Shapes: `x` HR (B, 3, Hc, Wc); grid (B, 3 * 4^L, ...); LR (B, 3, h, w); float.
"""

from .base import Core, Mode, NoiseFn, Range, resample_crop
from .grid import Cycle, Split
from .middle import Middle, MiddleImageMode, Naive
from .resampled import RESAMPLE, Resample, keeps_an_axis, keeps_an_axis_graph

MODES: dict[str, Mode] = {"cycle": Cycle(), "split": Split(), "naive": Naive(), "middle": Middle()}

__all__ = [
    "MODES",
    "RESAMPLE",
    "Core",
    "Cycle",
    "Middle",
    "MiddleImageMode",
    "Mode",
    "Naive",
    "NoiseFn",
    "Range",
    "Resample",
    "Split",
    "keeps_an_axis",
    "keeps_an_axis_graph",
    "resample_crop",
]
