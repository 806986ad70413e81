"""Encode-time refinement: choose the 8-bit LR that the model's own upscaler restores best.

The encoder has the HR, so it can spend compute at downscale time: starting from the network's
LR, `steps` optimisation steps on the LR pixels (normalised gradient descent with momentum by
default, Adam as an option) minimise the HR error of `upscale(LR)` for an 8-bit LR, while the
LR stays a good-looking downscale: after every step its Y deviation from the 8-bit reference
bicubic LR is projected back onto the bound `lr_psnr_min` (PSNR-Y in dB). The 8-bit rounding
(`RefineConfig.rounding`): `every-step` (the default) rounds at every step with a
straight-through gradient (always the rule through a codec); `progressive` takes its first
steps on the LR unrounded, then rounds it in stages, the values nearest an 8-bit level first
(half of them, three quarters, ...), each stage followed by steps on the values still free,
which make up for the others' rounding (better on Set5, not on Set14: docs/history.md,
"Progressive rounding"); `both` spends half of the steps on each rule from the same start and
keeps, per image, the LR that restores better. The step size decays (cosine; past
REFINE_CYCLE steps of one phase in cycles of it, each restarted from the best LR so far). The
8-bit LR returned restores at least as well as the network's own on the loss, per image (else
it is the network's own), and is never below the bound (unless the network's own LR already
is, in which case that level is the bound). The upscaler is unchanged:
a refined LR is an ordinary iarn LR (docs/design.md section 3, "Refinement"). An LR that will be
written as a JPEG (or lossy WebP) is refined through that codec (`RefineConfig.codec`): the loss
is that of what the codec gives back, so the steps move detail to where the codec keeps it.

Large images: the gradient of the whole-image loss is accumulated over tiles of the HR (each
tile upscaled from its LR crop with the tiler's context, its loss on its core only) and the
step is taken on the whole LR, so a tiled refinement follows the whole one's iterates up to the
tiler's own tolerance and cannot show seams.

Shapes: HR (B, 3, H, W) float in [0, 1] (or uint8); LR (B, 3, h, w) float, 8-bit values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .codec import jpeg_surrogate, through_codec_batch
from .fields import check_choice, check_number
from .geometry import Size
from .lr_bound import LR_PSNR_MARGIN, LR_PSNR_MIN, LRBound, lr_psnr_y, luma, reference_lr
from .model.network import quantize_8bit
from .rounding import HELD_STEP_SHARE, round_nearest_first, rounding_schedule
from .tiling import CONTEXT, as_float, upscale_spans

if TYPE_CHECKING:
    from .model import IARN

LOSSES = ("rgb", "y")
OPTIMIZERS = ("adam", "gd")
ROUNDINGS = ("every-step", "progressive", "both")
# the rules each rounding runs: "both" spends half of the steps on each, from the same start,
# and keeps per image the LR that restores better on the loss
RULES_OF = {"every-step": ("every-step",), "progressive": ("progressive",), "both": ("every-step", "progressive")}
LOSSY_CODECS = ("jpeg", "webp")  # what RefineConfig.codec may name
MAX_REFINE_STEPS = 10_000
# Memory policy (Rescaler.refine_tile): bytes kept for the backward pass per pixel of the image
# the core runs on (a generous bound on the activations of the bundled model's upscale in fp32),
# whole images up to a budget on CPUs.
REFINE_BYTES_PER_PIXEL = 2000
REFINE_WHOLE_BYTES = 4 << 30
REFINE_TILE = 512
ROUNDING_STEP_DB = 0.05  # refine_lr: how much higher an image aims after rounding took it under the floor


@dataclass(frozen=True)
class RefineConfig:
    """steps: optimisation steps on the LR (0: the network's LR unchanged).
    lr_psnr_min: the LR's PSNR-Y against the 8-bit reference bicubic LR stays at least this
        (dB); 0 lifts the bound.
    loss: what the HR error is measured in: `y` (BT.601 luma, the protocol's channel, plus a
        tenth of the RGB error so that colour cannot drift) or `rgb` (R, G and B alike).
    optimizer: `gd` (gradient descent with momentum, each image's step normalised to an RMS of
        `step_size` over its LR pixels) or `adam` (every pixel's first steps are `step_size`).
    step_size: the first step in 8-bit LR levels (1/255); a cosine takes it down to a tenth.
    momentum: of `gd`: the share of the previous step that each step carries on, 0 to 0.99.
    codec: ("jpeg" or "webp", quality) when the LR will be written through that lossy codec:
        the HR error is then that of the LR as the codec gives it back (the real codec's
        pixels; the gradient of `codec.jpeg_surrogate`, as the `jpeg` model was trained).
    rounding: `every-step` (the straight-through rule; the rule through a codec, whatever this
        says), `progressive` (unrounded steps, then rounding in stages; `rounding_schedule`) or
        `both` (half of the steps each, per image the better LR on the loss).
    The defaults are the measured best (docs/history.md, "Refinement")."""

    steps: int = 0
    lr_psnr_min: float = LR_PSNR_MIN
    loss: str = "y"
    optimizer: str = "gd"
    step_size: float = 0.3
    momentum: float = 0.8
    codec: tuple[str, int] | None = None
    rounding: str = "every-step"

    def __post_init__(self) -> None:
        check_refine_steps(self.steps)
        check_number("refine_lr_psnr (the LR PSNR bound, dB)", self.lr_psnr_min, 0, 100)
        check_choice("refine_loss", self.loss, LOSSES)
        check_choice("refine_optimizer", self.optimizer, OPTIMIZERS)
        check_number("refine_step_size (8-bit levels)", self.step_size, 0, 64)
        if self.step_size == 0:
            raise ValueError("refine_step_size (8-bit levels) must be above 0, got 0")
        check_number("refine_momentum", self.momentum, 0, 0.99)
        check_choice("refine_rounding", self.rounding, ROUNDINGS)
        if self.codec is not None:
            if not isinstance(self.codec, tuple) or len(self.codec) != 2:
                raise ValueError(f"refine codec: expected (name, quality), got {self.codec!r}")
            check_choice("refine codec", self.codec[0], LOSSY_CODECS)
            check_number("refine codec quality", self.codec[1], 1, 100, whole=True)


def as_refine_config(refine: int | RefineConfig) -> RefineConfig:
    """`refine` as a RefineConfig: a number of steps (checked) with the other settings' defaults."""
    if isinstance(refine, RefineConfig):
        return refine
    check_refine_steps(refine)
    return RefineConfig(steps=int(refine))


def check_refine_steps(steps) -> None:
    """Refuse what is not a whole number of steps from 0 to MAX_REFINE_STEPS."""
    check_number("refine (steps)", steps, 0, MAX_REFINE_STEPS, whole=True)


def error_per_image(pred: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-image sum of the squared error (B,), in the loss's channels."""
    diff = pred.clamp(0, 1) - target
    rgb = diff.pow(2).sum(dim=(1, 2, 3)) / 3
    if loss == "rgb":
        return rgb
    return luma(diff).pow(2).sum(dim=(1, 2, 3)) + 0.1 * rgb


class TiledObjective:
    """The whole-image HR loss of an LR and its gradient, accumulated over HR tiles (or at once)."""

    def __init__(
        self,
        network: IARN,
        hr: torch.Tensor,
        lr_size: Size,
        tile: int | None,
        loss: str,
        context: int = CONTEXT,
        codec: tuple[str, int] | None = None,
    ) -> None:
        self.network, self.hr, self.lr_size, self.loss, self.codec = network, hr, lr_size, loss, codec
        self.hr_size = (hr.shape[-2], hr.shape[-1])
        self.context = context
        self.pixels = self.hr_size[0] * self.hr_size[1]
        if tile is None:
            self.tiles = [((0, self.hr_size[0]), (0, self.hr_size[1]))]
        else:
            rows = _bounds(self.hr_size[0], tile)
            cols = _bounds(self.hr_size[1], tile)
            self.tiles = [(r, c) for r in rows for c in cols]

    def _tile(
        self, lr: torch.Tensor, rows, cols, grad: torch.Tensor | None, coded: torch.Tensor | None, rounded: bool
    ) -> torch.Tensor:
        net, dtype = self.network, self.network.state_dtype
        whole = len(self.tiles) == 1
        if whole:
            hr_rows, hr_cols, lr_rows, lr_cols = rows, cols, (0, self.lr_size[0]), (0, self.lr_size[1])
        else:
            spans = upscale_spans(net, self.hr_size, self.lr_size, rows, cols, self.context)
            hr_rows, hr_cols, lr_rows, lr_cols = spans
        # a leaf of its own (never an inference tensor), so each tile's backward is its own
        crop = lr[..., lr_rows[0] : lr_rows[1], lr_cols[0] : lr_cols[1]].detach().clone()
        crop.requires_grad_(grad is not None)
        with torch.set_grad_enabled(grad is not None):
            seen = quantize_8bit(crop) if rounded else crop.clamp(0, 1)
            if coded is not None:  # the codec's pixels, the surrogate's gradient (through_codec_batch)
                stand_in = jpeg_surrogate(seen, self.codec[1], (lr_rows[0], lr_cols[0]))
                seen = coded[..., lr_rows[0] : lr_rows[1], lr_cols[0] : lr_cols[1]] + (stand_in - stand_in.detach())
            pred = net.up_region(seen, self.hr_size, self.lr_size, (lr_rows[0], lr_cols[0]), hr_rows, hr_cols)
            pred = pred[..., rows[0] - hr_rows[0] : rows[1] - hr_rows[0], cols[0] - hr_cols[0] : cols[1] - hr_cols[0]]
            target = as_float(self.hr[..., rows[0] : rows[1], cols[0] : cols[1]], dtype)
            error = error_per_image(pred, target, self.loss)
            if grad is not None:
                (crop_grad,) = torch.autograd.grad(error.sum() / self.pixels, crop)
                grad[..., lr_rows[0] : lr_rows[1], lr_cols[0] : lr_cols[1]] += crop_grad
        return error.detach()

    def __call__(
        self, lr: torch.Tensor, with_grad: bool = True, rounded: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(per-image loss of q(lr), through the codec where there is one: mean squared error per HR
        pixel (B,), its gradient or None). `rounded` False: the loss of `lr` as it is (clamped to
        [0, 1]), not rounded to 8 bits (no codec then)."""
        grad = torch.zeros_like(lr) if with_grad else None
        total = torch.zeros(lr.shape[0], dtype=torch.float64, device=lr.device)
        coded = None
        if self.codec is not None:  # the whole LR through the codec once: its blocks are the image's
            if not rounded:
                raise ValueError("a codec reads 8-bit pixels: its loss is of the rounded LR")
            coded = through_codec_batch(quantize_8bit(lr.detach()), self.codec).detach()
        for rows, cols in self.tiles:
            total += self._tile(lr, rows, cols, grad, coded, rounded).double()
        return total / self.pixels, grad


def _bounds(length: int, tile: int) -> list[tuple[int, int]]:
    count = max(1, -(-length // max(1, tile)))
    edges = [round(k * length / count) for k in range(count + 1)]
    return [(edges[k], edges[k + 1]) for k in range(count) if edges[k + 1] > edges[k]]


REFINE_CYCLE = 30  # steps of one cosine; more steps run more cycles, each from the best LR so far


def cycle_of(step: int, steps: int) -> tuple[int, int]:
    """(first step, length) of the cosine cycle that `step` of `steps` is in: one cycle of all
    the steps up to REFINE_CYCLE, else cycles of REFINE_CYCLE (the last one shorter), so that N
    steps past REFINE_CYCLE begin exactly as REFINE_CYCLE steps do and can only improve on them."""
    if steps <= REFINE_CYCLE:
        return 0, steps
    start = step // REFINE_CYCLE * REFINE_CYCLE
    return start, min(REFINE_CYCLE, steps - start)


def refine_lr(
    network: IARN,
    hr: torch.Tensor,
    lr: torch.Tensor,
    config: RefineConfig,
    tile: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The refined 8-bit LR (B, 3, h, w) for HR `hr` (B, 3, H, W, float in [0, 1] or uint8),
    starting from the network's 8-bit LR `lr`. `tile`: HR tile side for the gradient (None:
    whole image). `progress(step, steps)` is called after every step."""
    if config.steps == 0:
        return lr
    dtype = network.state_dtype
    lr_size = (lr.shape[-2], lr.shape[-1])
    reference = reference_lr(hr, lr_size, dtype)
    objective = TiledObjective(network, hr, lr_size, tile, config.loss, codec=config.codec)
    v = lr.detach().to(dtype).clone()
    start_db = lr_psnr_y(v, reference)
    bounded = config.lr_psnr_min > 0
    bound_db = torch.full_like(start_db, config.lr_psnr_min)
    floor_db = torch.minimum(bound_db, start_db)  # never stricter than where the network already is
    aim_db = torch.where(start_db < bound_db, start_db, bound_db + LR_PSNR_MARGIN)
    rules = ("every-step",) if config.codec is not None else RULES_OF[config.rounding]
    counter = _Counter(config.steps, progress)
    chosen, chosen_loss = None, None
    for k, rule in enumerate(rules):  # "both": the first rule's half of the steps, then the other's
        steps = config.steps // len(rules) + (k < config.steps % len(rules))
        if steps == 0:
            continue
        bound = LRBound(reference, floor_db, aim_db, bounded)  # each rule from the same bound
        refine_with = _round_every_step if rule == "every-step" else _round_progressively
        out, loss = refine_with(objective, v, steps, bound, config, counter)
        if chosen is not None:  # per image, the LR that restores better
            better = (loss < chosen_loss).view(-1, 1, 1, 1)
            out, loss = torch.where(better, out, chosen), torch.minimum(loss, chosen_loss)
        chosen, chosen_loss = out, loss
    return chosen


def _round_every_step(
    objective: TiledObjective, start: torch.Tensor, steps: int, bound: LRBound, config: RefineConfig, counter: _Counter
) -> tuple[torch.Tensor, torch.Tensor]:
    """(8-bit LR, its loss) after `steps` of the straight-through rule: every step rounded."""
    best, best_loss, _ = _descend(objective, start, steps, bound, config, counter, rounded=True)
    return best, best_loss


def _round_progressively(
    objective: TiledObjective, start: torch.Tensor, steps: int, bound: LRBound, config: RefineConfig, counter: _Counter
) -> tuple[torch.Tensor, torch.Tensor]:
    """(8-bit LR, its loss) after `steps` of progressive rounding (`rounding_schedule`); per
    image the 8-bit `start` where the result restores worse on the loss."""
    start = quantize_8bit(start)
    unrounded, stages = rounding_schedule(steps)
    v, _, start_loss = _descend(objective, start, unrounded, bound, config, counter, rounded=False)
    held = torch.zeros_like(v, dtype=torch.bool)
    for k, stage_steps in enumerate(stages, start=1):
        held = round_nearest_first(v, held, 1 - 0.5**k)
        v = torch.where(held, quantize_8bit(v), v)
        v = _descend(objective, v, stage_steps, bound, config, counter, False, held, HELD_STEP_SHARE)[0]
    q = bound.round(v)
    loss = objective(q, with_grad=False)[0]
    better = bound.feasible(q) & (loss < start_loss)  # else the LR it started from
    return torch.where(better.view(-1, 1, 1, 1), q, start), torch.where(better, loss, start_loss)


class _Counter:
    """Calls `progress(step, steps)` after every step of a refinement, whatever phase it is in."""

    def __init__(self, steps: int, progress: Callable[[int, int], None] | None) -> None:
        self.steps, self.progress, self.done = steps, progress, 0

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.steps)


def _descend(
    objective: TiledObjective,
    v: torch.Tensor,
    steps: int,
    bound: LRBound,
    config: RefineConfig,
    counter: _Counter,
    rounded: bool,
    held: torch.Tensor | None = None,
    step_share: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(best LR, its loss, the loss of `v`; losses (B,)) after `steps` >= 1 steps from `v`: with
    `rounded` the loss and the LR kept are those of the 8-bit LR, else of the LR as it is. The best
    iterate is kept per image among the feasible ones (inside the bound); the LR after the last
    step is evaluated without a gradient. With `held` (a mask: values that stay as they are, the
    rest make up for them) the last iterate is returned instead, not evaluated (its loss: inf)."""
    v = v.clone()
    best, best_loss = v.clone(), torch.full((v.shape[0],), math.inf, dtype=torch.float64, device=v.device)
    first_loss = best_loss
    first_step = config.step_size * step_share / 255
    velocity = torch.zeros_like(v)
    adam = torch.optim.Adam([v], lr=first_step) if config.optimizer == "adam" else None
    for step in range(steps + 1):
        last = step == steps
        if last and held is not None:
            return v, torch.full_like(best_loss, math.inf), first_loss
        seen = quantize_8bit(v) if rounded else v.clamp(0, 1)
        loss, grad = objective(v, with_grad=not last, rounded=rounded)  # the loss of what would be kept
        if step == 0:
            first_loss = loss
        feasible = bound.feasible(seen)
        better = feasible & (loss < best_loss)
        best_loss = torch.where(better, loss, best_loss)
        best[better] = seen[better]
        if last:
            break
        if bound.bounded:  # rounding took an image under its floor: aim higher, so its next steps count
            bound.aim_db = torch.where(feasible, bound.aim_db, bound.aim_db + ROUNDING_STEP_DB)
        start, length = cycle_of(step, steps)
        if step == start and step > 0:  # a new cycle starts from the best LR so far
            v.copy_(best.to(v.dtype))
            velocity.zero_()
        if held is not None:
            grad = grad.masked_fill(held, 0)
        size = first_step * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - start) / length)))  # cosine to a tenth
        if adam is not None:
            adam.param_groups[0]["lr"] = size
            v.grad = grad
            adam.step()
        else:
            rms = grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-30)
            velocity = config.momentum * velocity + grad / rms
            v -= size * velocity
        moved = bound.project(v)
        v.copy_(moved if held is None else torch.where(held, v, moved))
        counter.step()
    return best, best_loss, first_loss
