"""The modes on a middle image (`Naive`, the baseline; `Middle`, the method's geometry) and what
they share (`MiddleImageMode`), the LR corrector's place among their steps included."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import torch
from torch import nn

from ...geometry import Size
from ...resample import (
    apply_matrices,
    as_float64,
    input_span,
    pinv_matrix,
    pinv_matrix_graph,
    pinv_span,
    resample_matrix,
    resample_matrix_graph,
    resize_graph,
)
from ..corrector import (
    LAST_PASS_BLOCK,
    LAST_PASS_MARGIN,
    corrector_features,
    feedback_features,
    hr_error,
    local_error,
    split_passes,
    worst_block_runs,
)
from ..coupling import LR_CHANNELS
from ..encoding import middle_encoding, middle_encoding_graph, scale_encoding_graph
from ..haar import haar_forward_levels
from .base import Core, Range, resample_crop
from .grid import Split

# A partial last pass (a fractional count of passes) runs for 2 or more x2 steps (scales above
# 2): the x(1, 2] stacks applied once more lost up to 0.44 dB at x1.5 (Kodak), the x(2, 4] ones
# gain. It skips a block where the last full pass had made the error RUNAWAY times larger (a
# slide's flat text: Set14 ppt3 at x2.5 lost 2.4 dB without this). docs/history.md, "A partial
# third pass". Whole passes beyond the trained ones (efforts 2-6) hold the LR by the same rule,
# the error compared in a window of GUARD_WINDOW LR pixels (model/corrector.py) around each pixel, and each is kept
# only if it lowered the crop's luma error as the HR sees it (`hr_error`; one more upscale checks
# the last): Kodak x1.5 lost 0.45 dB to a third pass without this (history.md, "Extra passes,
# held and checked").
PARTIAL_PASS_STEPS = 2
RUNAWAY = 2.0
CHECK_EXTRA_PASSES = True


def _rounded(lr: torch.Tensor) -> torch.Tensor:
    """The 8-bit LR that a file holds, without a gradient."""
    return torch.round(lr.clamp(0, 1) * 255) / 255


class MiddleImageMode(Split):
    """What the modes on a middle image share (`Naive`, `Middle`): the HR resized by bicubic to
    the *middle* image, 2^k times the LR size, k x2 core steps each passing its first 3 channels
    on (the LR out of the last); on the way up the steps inverted, then the middle back to the HR
    size: by the exact least-squares inverse along an axis where the middle is the larger (an
    upsampling) and `back` is "exact", else bicubic. Regions: the middle rows a crop covers are
    computed from the HR crop, so tiles work too. Subclasses say how many steps (`steps`) and
    what each step is told of the scale (`condition`)."""

    def steps(self, net: Core, hr_size: Size, lr_size: Size) -> int:
        """x2 core steps from the middle image to the LR."""
        raise NotImplementedError

    def condition(
        self, net: Core, level: int, grid_start: Size, grid: Size, hr_size: Size, middle: Size, lr_size: Size
    ) -> torch.Tensor:
        """The scale encoding of step `level`'s grid (cells of 2^level middle pixels)."""
        raise NotImplementedError

    def core_size(self, net: Core, hr_size: Size, lr_size: Size) -> Size:
        factor = 2 ** self.steps(net, hr_size, lr_size)
        return (factor * lr_size[0], factor * lr_size[1])

    def back_is_exact(self, net: Core, hr_length: int, middle_length: int) -> bool:
        """Whether the middle returns to the HR by the least-squares inverse along this axis."""
        return net.config.back == "exact" and middle_length >= hr_length

    def hr_span_for_lr(self, net, hr_size, lr_size, axis, out, context):
        factor = 2 ** self.steps(net, hr_size, lr_size)
        middle, context = factor * lr_size[axis], context * factor // 2
        start, stop = max(0, factor * out[0] - context), min(middle, factor * out[1] + context)
        return input_span(hr_size[axis], middle, start // factor * factor, -(-stop // factor) * factor)

    def lr_span_for_hr(self, net, hr_size, lr_size, axis, rows, context):
        factor = 2 ** self.steps(net, hr_size, lr_size)
        middle, context = factor * lr_size[axis], context * factor // 2
        if self.back_is_exact(net, hr_size[axis], middle):
            start, stop = pinv_span(hr_size[axis], middle, *rows)
        else:
            start, stop = input_span(middle, hr_size[axis], *rows)  # middle rows the HR rows read
        return max(0, (start - context) // factor), min(lr_size[axis], -(-(stop + context) // factor))

    def down(self, net, x, hr_size, lr_size, hr_start, lr_rows, lr_cols, correct=False, passes=None, check_passes=True):
        steps = self.steps(net, hr_size, lr_size)
        factor, middle = 2**steps, self.core_size(net, hr_size, lr_size)
        rows, cols = (
            _middle_span(
                hr_size[k], middle[k], hr_start[k], hr_start[k] + x.shape[-2 + k], (lr_rows, lr_cols)[k], factor
            )
            for k in range(2)
        )
        y = middle_crop = resample_crop(x, hr_start, hr_size, middle, rows, cols)
        details = []
        for level in range(1, steps + 1):
            start = (rows[0] >> level, cols[0] >> level)
            grid_size = (y.shape[-2] // 2, y.shape[-1] // 2)
            cond = self.condition(net, level, start, grid_size, hr_size, middle, lr_size)
            stage = self.stage_index(net.config, steps, level)
            y, z = self.lr_source(net.encode_step(y, stage, cond), 1, None)
            details.append(z)
        latents = [z.flatten(1) for z in details]
        top, left = rows[0] // factor, cols[0] // factor
        if correct and net.corrector is not None:  # on the crop's whole LR: its context absorbs the borders
            y = self.correct(net, y, details, cond, middle_crop, (top, left), hr_size, lr_size, passes, check_passes)
        y = y[..., lr_rows[0] - top : lr_rows[1] - top, lr_cols[0] - left : lr_cols[1] - left]
        return y, torch.cat(latents, dim=1)

    def correct(self, net, lr, details, cond, middle_crop, lr_start, hr_size, lr_size, passes=None, check=True):
        """The corrector's LR for the crop's whole LR `lr` (each pass after the first: with the
        error of the middle image that the previous pass's 8-bit LR restores, no gradient through
        that error); `passes` None: as many as the corrector was trained with; more reuse its
        feedback stack, and hold the LR where the pass before made the `local_error` RUNAWAY
        times larger (from there on); with `check`, each of them is kept for an image of the crop
        only if it lowered its `hr_error` (one more upscale checks the last); a fraction (2.4)
        makes the last pass partial (`partial_feedback`) where the LR is PARTIAL_PASS_STEPS or
        more x2 steps down, and leaves it out below."""
        corrector, steps = net.corrector, len(details)
        gain = corrector.config.detail_gain
        lr = corrector(lr, corrector_features(lr, details, cond, gain), steps)
        whole, share = split_passes(corrector.config.passes if passes is None else passes)
        if corrector.feedback is None:
            whole, share = 1, 0.0
        trained = corrector.config.passes
        check = check and CHECK_EXTRA_PASSES and whole > trained  # no extra pass: nothing to check
        checks = whole + 1 if check else whole  # the last extra one checked too
        error = energy = held = before = last_total = None
        for count in range(2, checks + 1):  # pass `count`: the same feedback stack each time
            with torch.no_grad():
                error = middle_crop - self.middle_from_lr(net, _rounded(lr), hr_size, lr_size, lr_start, None)
                previous, energy = energy, local_error(error, 2**steps)
                if check:
                    total = hr_error(error, hr_size, self.core_size(net, hr_size, lr_size))
                    if count - 1 > trained:  # `lr` from an extra pass: kept if it helped
                        worse = (total > last_total)[:, None, None, None]
                        lr, energy = torch.where(worse, before, lr), torch.where(worse, previous, energy)
                        total, held = torch.minimum(total, last_total), held | worse
                    last_total = total
            if count > whole:
                break
            with torch.no_grad():
                features = feedback_features(lr, haar_forward_levels(error, steps), cond, gain)
            corrected = corrector.feedback(lr, features, steps)
            if count > trained and previous is not None:  # a pass beyond the trained
                runaway = energy > RUNAWAY * previous  # the last pass made the error there this much larger
                held = runaway if held is None else held | runaway
                corrected = torch.where(held, lr, corrected)
            before, lr = lr, corrected
        if share > 0 and steps >= PARTIAL_PASS_STEPS:
            lr = self.partial_feedback(net, lr, error, share, cond, middle_crop, lr_start, hr_size, lr_size, steps)
        return lr

    def partial_feedback(self, net, lr, error, share, cond, middle_crop, lr_start, hr_size, lr_size, steps):
        """One more feedback pass on the `share` of the LR's blocks where the last full pass's
        middle `error` (B, 3, f h, f w) is largest, per image: each run of chosen blocks is
        upscaled with LAST_PASS_MARGIN LR pixels of context, its error fed to the feedback stack,
        and the run's own pixels taken, block by block, but for a block whose error the last
        full pass made RUNAWAY times larger; the rest of `lr` (B, 3, h, w) stays as it is."""
        factor = 2**steps
        gain, margin = net.corrector.config.detail_gain, LAST_PASS_MARGIN
        h, w = lr.shape[-2:]
        with torch.no_grad():
            energy = nn.functional.avg_pool2d(error.pow(2).sum(1, keepdim=True), factor)[:, 0]
        out = lr.clone()
        for b in range(lr.shape[0]):
            for top, bottom, left, right in worst_block_runs(energy[b], share):
                t, le = max(0, top - margin), max(0, left - margin)  # the run and its context
                rows, cols = slice(t, min(h, bottom + margin)), slice(le, min(w, right + margin))
                window = lr[b : b + 1, :, rows, cols]
                with torch.no_grad():
                    start = (lr_start[0] + t, lr_start[1] + le)
                    restored = self.middle_from_lr(net, _rounded(window), hr_size, lr_size, start, None)
                    middle_rows, middle_cols = (
                        slice(factor * rows.start, factor * rows.stop),
                        slice(factor * cols.start, factor * cols.stop),
                    )
                    local = middle_crop[b : b + 1, :, middle_rows, middle_cols] - restored
                    features = feedback_features(window, haar_forward_levels(local, steps), cond[..., rows, cols], gain)
                    after = nn.functional.avg_pool2d(local.pow(2).sum(1, keepdim=True), factor)[0, 0]
                corrected = net.corrector.feedback(window, features, steps)
                for j in range(left, right, LAST_PASS_BLOCK):
                    stop = min(right, j + LAST_PASS_BLOCK)
                    before = energy[b, top:bottom, j:stop].mean()
                    if after[top - t : bottom - t, j - le : stop - le].mean() > RUNAWAY * before:
                        continue  # the last full pass made this block worse: no more of it here
                    out[b : b + 1, :, top:bottom, j:stop] = corrected[..., top - t : bottom - t, j - le : stop - le]
        return out

    def middle_from_lr(self, net, lr, hr_size, lr_size, lr_start, noise):
        """The middle image's crop that the LR crop `lr` at `lr_start` restores (the steps inverted)."""
        steps, middle = self.steps(net, hr_size, lr_size), self.core_size(net, hr_size, lr_size)
        y = lr
        for level in range(steps, 0, -1):
            start = (lr_start[0] << (steps - level), lr_start[1] << (steps - level))
            size = (2 * y.shape[-2], 2 * y.shape[-1])
            cond = self.condition(net, level, start, tuple(y.shape[-2:]), hr_size, middle, lr_size)
            stage = self.stage_index(net.config, steps, level)
            y = net.decode_step(self.grid_from_source(y, 1, noise), stage, cond, size)
        return y

    def up(self, net, lr, hr_size, lr_size, lr_start, hr_rows, hr_cols, noise):
        steps = self.steps(net, hr_size, lr_size)
        factor, middle = 2**steps, self.core_size(net, hr_size, lr_size)
        y = self.middle_from_lr(net, lr, hr_size, lr_size, lr_start, noise)
        start = (factor * lr_start[0], factor * lr_start[1])
        matrices = [
            (pinv_matrix if self.back_is_exact(net, hr_size[k], middle[k]) else _bicubic_matrix)(
                hr_size[k], middle[k], (hr_rows, hr_cols)[k], (start[k], start[k] + y.shape[-2 + k]), y.dtype, y.device
            )
            for k in range(2)
        ]
        return apply_matrices(y, *matrices)

    # -- whole images for an exported graph (Mode.down_graph): every step count computed, the
    # one the sizes ask for selected (a graph cannot branch on sizes)

    def step_choices_graph(self, net: Core, hr_size: Size, lr_size: Size, like: torch.Tensor) -> list:
        """[(k, selected)] for each step count k the sizes may ask for: `selected` a scalar bool
        tensor, true for the k that `steps` picks (None: the only choice)."""
        return [(1, None)]

    def condition_graph(self, net, level, grid, hr_size, middle, lr_size, like) -> torch.Tensor:
        """`condition` of step `level`'s whole grid, for a graph."""
        raise NotImplementedError

    def down_graph(self, net, hr, lr_size):
        hr_size = (hr.shape[-2], hr.shape[-1])
        choices = self.step_choices_graph(net, hr_size, lr_size, hr)
        return _select([(self._down_steps_graph(net, hr, lr_size, k), selected) for k, selected in choices])

    def up_graph(self, net, lr, hr_size):
        lr_size = (lr.shape[-2], lr.shape[-1])
        choices = self.step_choices_graph(net, hr_size, lr_size, lr)
        return _select([(self._up_steps_graph(net, lr, hr_size, k), selected) for k, selected in choices])

    def _down_steps_graph(self, net, hr, lr_size, steps: int) -> torch.Tensor:
        hr_size = (hr.shape[-2], hr.shape[-1])
        middle = (2**steps * lr_size[0], 2**steps * lr_size[1])
        y = resize_graph(hr, middle)
        for level in range(1, steps + 1):
            grid = (y.shape[-2] // 2, y.shape[-1] // 2)
            cond = self.condition_graph(net, level, grid, hr_size, middle, lr_size, hr)
            y = net.encode_step(y, self.stage_index(net.config, steps, level), cond)[:, :LR_CHANNELS]
        return y

    def _up_steps_graph(self, net, lr, hr_size, steps: int) -> torch.Tensor:
        lr_size = (lr.shape[-2], lr.shape[-1])
        middle = (2**steps * lr_size[0], 2**steps * lr_size[1])
        y = lr
        for level in range(steps, 0, -1):
            cond = self.condition_graph(net, level, (y.shape[-2], y.shape[-1]), hr_size, middle, lr_size, lr)
            stage = self.stage_index(net.config, steps, level)
            y = net.decode_step(self.grid_from_source(y, 1), stage, cond, (2 * y.shape[-2], 2 * y.shape[-1]))
        matrices = []
        for k in range(2):
            bicubic = resample_matrix_graph(middle[k], hr_size[k], lr)
            if net.config.back != "exact":
                matrices.append(bicubic)
                continue
            exact = as_float64(middle[k], lr) >= as_float64(hr_size[k], lr)
            matrices.append(torch.where(exact, pinv_matrix_graph(hr_size[k], middle[k], lr), bicubic))
        return apply_matrices(y, *matrices)


def _select(choices: list) -> torch.Tensor:
    """The output of the selected choice of [(output, selected)]: one tensor, no branching."""
    out = choices[-1][0]
    for value, selected in reversed(choices[:-1]):
        out = torch.where(selected, value, out)
    return out


class Naive(MiddleImageMode):
    """The comparison baseline (docs/ablation.md): the middle image is twice the LR size (the
    HR downscaled by bicubic above x2), one fixed x2 split step on it, whose grid is the LR's
    size. Trained at scale 2 only, it is told nothing of the scale (its encoding describes the
    fixed middle -> LR x2 step)."""

    def steps(self, net: Core, hr_size: Size, lr_size: Size) -> int:
        return 1

    def condition(self, net, level, grid_start, grid, hr_size, middle, lr_size):
        return net.conds_for(middle, lr_size, grid_start, grid, level)

    def condition_graph(self, net, level, grid, hr_size, middle, lr_size, like):
        return scale_encoding_graph(net.config.encoding, grid, 2**level, middle, lr_size, like)


def _bicubic_matrix(hr_length, middle_length, out, in_range, dtype, device):
    """The bicubic resampling matrix from the middle back to the HR (pinv_matrix's arguments)."""
    return resample_matrix(middle_length, hr_length, out, in_range, dtype, device)


class Middle(MiddleImageMode):
    """The method's geometry (docs/design.md section 3): the HR *upsampled* by bicubic to the
    middle image, 2^k times the LR size with k = ceil(log2 max(s_h, s_w)) (at least 1), so the
    HR loses nothing on the way in; k x2 steps (a Haar level and the coupling blocks of stage k,
    12 channels each), each passing its first 3 channels on and dropping the rest (z) to the
    latent loss; the LR is the last step's first 3 channels, exactly (h, w). Up: z = 0 (or
    sampled) at every step, the steps inverted, and the middle back to the HR by the exact
    least-squares inverse of the upsampling (or bicubic with `back` "bicubic"). The encoding
    tells each step the real geometry (`encoding.middle_encoding`). With `step_stages`
    "per-count" each step count k has stages of its own (`stage_index`)."""

    def steps(self, net: Core, hr_size: Size, lr_size: Size) -> int:
        steps = 1  # at most one per stage: a rounded size can exceed max_scale (9 -> 2 rows at x4)
        while steps < net.levels and (2**steps * lr_size[0] < hr_size[0] or 2**steps * lr_size[1] < hr_size[1]):
            steps += 1
        return steps

    def stage_channels(self, level: int) -> int:
        return 4 * LR_CHANNELS

    def stage_levels(self, config) -> list[int]:
        if config.step_stages == "shared":
            return list(range(1, config.levels + 1))
        return [level for steps in range(1, config.levels + 1) for level in range(1, steps + 1)]

    def stage_index(self, config, steps: int, level: int) -> int:
        if config.step_stages == "shared":
            return level - 1
        return steps * (steps - 1) // 2 + level - 1  # stages of k = 1, then of k = 2, ...

    def condition(self, net, level, grid_start, grid, hr_size, middle, lr_size):
        return middle_encoding(net.config.encoding, grid_start, grid, 2**level, hr_size, middle, net.device)

    def condition_graph(self, net, level, grid, hr_size, middle, lr_size, like):
        return middle_encoding_graph(net.config.encoding, grid, 2**level, hr_size, middle, like)

    def step_choices_graph(self, net, hr_size, lr_size, like):
        fits = [  # whether k steps reach the HR along both axes, for k below the model's levels
            (2**k * as_float64(lr_size[0], like) >= as_float64(hr_size[0], like))
            & (2**k * as_float64(lr_size[1], like) >= as_float64(hr_size[1], like))
            for k in range(1, net.levels)
        ]
        choices = []
        for k in range(1, net.levels + 1):  # the first k that fits, else the last
            terms = [~fit for fit in fits[: k - 1]] + (fits[k - 1 : k] if k < net.levels else [])
            selected = terms[0] if terms else None
            for term in terms[1:]:
                selected = selected & term
            choices.append((k, selected))
        return choices


def _middle_span(
    hr_length: int, middle: int, crop_start: int, crop_stop: int, lr_span: Range, factor: int = 2
) -> Range:
    """Middle rows [a, b), multiples of `factor`, whose bicubic support lies in the HR crop: the
    most a crop can compute. ValueError when that misses LR rows `lr_span` (`factor` middle rows
    each)."""

    def support(row: int) -> Range:
        return input_span(hr_length, middle, row, row + 1)

    rows = range(middle)
    first = 0 if crop_start == 0 else bisect_left(rows, crop_start, key=lambda r: support(r)[0])
    stop = middle if crop_stop == hr_length else bisect_right(rows, crop_stop, key=lambda r: support(r)[1])
    first, stop = -(-first // factor) * factor, stop // factor * factor
    if not (first <= factor * lr_span[0] and factor * lr_span[1] <= stop):
        raise ValueError(f"the crop [{crop_start}, {crop_stop}) does not cover LR rows {lr_span}")
    return first, stop
