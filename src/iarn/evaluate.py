"""Benchmark evaluation, exactly as docs/design.md section 5 prescribes.

For every image and scale (s_h, s_w): LR size (max(1, round(H/s_h)), max(1, round(W/s_w))); the
model's 8-bit LR; its upscale rounded to 8 bits; PSNR-Y, SSIM-Y and RGB PSNR against the HR with
ceil(max(s_h, s_w)) pixels cropped from each border; LR PSNR-Y of the model's LR against the
reference bicubic LR (8-bit, no crop). The bicubic row: reference bicubic down, round, up, round.
z = 0 throughout. Grayscale images are replicated to RGB.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .codec import through_codec
from .convert import to_tensor, to_uint8
from .files import atomic_write, find_images
from .geometry import size_for_scale
from .imageio import ImageError, read_picture
from .metrics import protocol_border, psnr_rgb, psnr_y, ssim_y
from .refine import RefineConfig, as_refine_config
from .resample import resize
from .rescaler import Rescaler

DEFAULT_SCALES = ((1.5, 1.5), (2.0, 2.0), (2.5, 2.5), (3.0, 3.0), (3.5, 3.5), (4.0, 4.0))
DEFAULT_ASYMMETRIC = ((1.5, 4.0), (1.5, 3.5), (1.6, 3.05), (4.0, 2.0))
PROTOCOL_SCALES = DEFAULT_SCALES + DEFAULT_ASYMMETRIC  # what `iarn evaluate` measures by default


@dataclass
class Scores:
    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    lr_psnr_y: float | None = None  # against the bicubic LR; None for the bicubic row
    lr_bytes: int | None = None  # the LR's size in the --lr-format codec; None when lossless


LR_FORMATS = ("jpeg", "webp")  # what --lr-format may name, with a quality: "jpeg:90", "webp:80"


def parse_lr_format(text: str | None) -> tuple[str, int] | None:
    """ "jpeg:90" -> ("jpeg", 90); None or "png" -> None (lossless: the LR as written)."""
    if text is None or text.lower() == "png":
        return None
    kind, _, quality = text.lower().partition(":")
    if kind not in LR_FORMATS or not quality.isdigit() or not 1 <= int(quality) <= 100:
        raise ValueError(f"LR format {text!r}: expected png, jpeg:Q or webp:Q with Q from 1 to 100")
    return kind, int(quality)


def bicubic_roundtrip(
    hr: np.ndarray, lr_size: tuple[int, int], lr_format: tuple[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference bicubic down and up, each rounded to 8 bits, the LR through `lr_format` on the
    way (the upscale sees what the codec gives back): (LR, HR) uint8."""
    lr = to_uint8(resize((to_tensor(hr).float() / 255).double(), lr_size))
    decoded, _ = through_codec(lr, lr_format)
    up = to_uint8(resize((to_tensor(decoded).float() / 255).double(), hr.shape[:2]))
    return lr, up


def model_roundtrip(
    model: Rescaler,
    hr: np.ndarray,
    lr_size: tuple[int, int],
    tile: int | None = None,
    refine: int | RefineConfig = 0,
    progress=None,
    lr_format: tuple[str, int] | None = None,
):
    """The model's 8-bit LR (refined `refine` steps, through `lr_format` where it is lossy, as
    `iarn downscale -o x.jpg` refines) and its 8-bit upscale of the LR as it comes back from
    `lr_format` (None: as written), by the model's band for a JPEG's quality as `iarn upscale`
    would pick it (Pillow writes libjpeg's tables, so the quality read back is the one written):
    (LR, HR) uint8."""
    refine = replace(as_refine_config(refine), codec=lr_format)
    lr = to_uint8(model.downscale_pixels(to_tensor(hr), lr_size, tile, refine, progress).cpu())
    decoded, _ = through_codec(lr, lr_format)
    jpeg_quality = lr_format[1] if lr_format is not None and lr_format[0] == "jpeg" else None
    up = model.upscale_pixels(to_tensor(decoded), hr.shape[:2], tile, jpeg_quality=jpeg_quality)
    return lr, to_uint8(up.cpu())


def score_image(
    model: Rescaler | None,
    hr: np.ndarray,
    scale: tuple[float, float],
    tile: int | None = None,
    refine: int | RefineConfig = 0,
    lr_format: tuple[str, int] | None = None,
) -> tuple[Scores | None, Scores]:
    """(model scores or None without a model, bicubic scores) for one HR image and scale; with
    `lr_format`, both LRs go through that codec before their upscale."""
    lr_size = size_for_scale(hr.shape[:2], scale)
    border = protocol_border(scale)
    bic_lr, bic_up = bicubic_roundtrip(hr, lr_size, lr_format)
    bicubic = Scores(
        psnr_y(bic_up, hr, border),
        ssim_y(bic_up, hr, border),
        psnr_rgb(bic_up, hr, border),
        lr_bytes=through_codec(bic_lr, lr_format)[1],
    )
    if model is None:
        return None, bicubic
    lr, up = model_roundtrip(model, hr, lr_size, tile, refine, lr_format=lr_format)
    ours = Scores(
        psnr_y(up, hr, border),
        ssim_y(up, hr, border),
        psnr_rgb(up, hr, border),
        psnr_y(lr, bic_lr),
        lr_bytes=through_codec(lr, lr_format)[1],
    )
    return ours, bicubic


PSNR_CAP = 100.0  # dB: an image restored exactly (a constant one) counts as this in a mean, not infinity


def _mean(scores: list[Scores]) -> Scores:
    """Means over images; PSNRs capped at PSNR_CAP first, so one exact image cannot make a set's
    mean infinite."""
    fields = asdict(scores[0])

    def mean(name: str) -> float | None:
        if fields[name] is None:
            return None
        values = [getattr(s, name) for s in scores]
        if name.startswith("psnr") or name == "lr_psnr_y":
            values = [min(v, PSNR_CAP) for v in values]
        return float(np.mean(values))

    return Scores(**{name: mean(name) for name in fields})


def evaluate(
    model: Rescaler | None,
    datasets: list[str | Path],
    scales: list[tuple[float, float]],
    progress: bool = True,
    tile: int | None = None,
    allow_huge: bool = False,
    refine: int | RefineConfig = 0,
    on_bad_image: Callable[[ImageError], None] | None = None,
    lr_format: tuple[str, int] | None = None,
) -> dict:
    """{dataset: {scale label: {"iarn": scores, "bicubic": scores, "images": n, ...}}}, means over images.

    Images too small for the protocol at a scale (under 11 pixels left after the border crop)
    are skipped there and counted. An image that cannot be read raises ImageError, or, with
    `on_bad_image`, is passed to it and left out (counted as `unreadable`). `tile` and `refine`
    (the LR's refinement) as in `Rescaler.downscale`; `lr_format` (`parse_lr_format`): both LRs
    go through that lossy codec before their upscale, and their bytes are recorded (`lr_bytes`).
    """
    results: dict = {}
    for folder in map(Path, datasets):
        images = find_images([folder])
        if not images:
            raise ValueError(f"{folder}: no images")
        per_scale: dict = {scale: ([], []) for scale in scales}
        skipped = {scale: 0 for scale in scales}
        iterator = images
        if progress:
            from tqdm import tqdm

            iterator = tqdm(images, desc=folder.name, unit="img", leave=False)
        unreadable = 0
        for path in iterator:
            try:
                hr = read_picture(path, allow_huge=allow_huge).rgb
            except ImageError as error:
                if on_bad_image is None:
                    raise
                on_bad_image(error)
                unreadable += 1
                continue
            for scale in scales:
                if min(hr.shape[:2]) - 2 * protocol_border(scale) < 11:  # no room for an SSIM window
                    skipped[scale] += 1
                    continue
                ours, bicubic = score_image(model, hr, scale, tile, refine, lr_format)
                if ours is not None:
                    per_scale[scale][0].append(ours)
                per_scale[scale][1].append(bicubic)
        if unreadable == len(images):
            raise ValueError(f"{folder}: none of its {len(images)} images could be read")
        empty = [scale_label(scale) for scale, (_, bicubic) in per_scale.items() if not bicubic]
        if empty:
            raise ValueError(f"{folder}: no image is large enough for the protocol at {', '.join(empty)}")
        results[folder.name] = {
            scale_label(scale): {
                **({"iarn": asdict(_mean(ours))} if ours else {}),
                "bicubic": asdict(_mean(bicubic)),
                "images": len(bicubic),
                "skipped_too_small": skipped[scale],
                "unreadable": unreadable,
                **({"lr_format": f"{lr_format[0]}:{lr_format[1]}"} if lr_format else {}),
            }
            for scale, (ours, bicubic) in per_scale.items()
        }
    return results


def scale_label(scale: tuple[float, float]) -> str:
    return f"x{scale[0]:g}" if scale[0] == scale[1] else f"({scale[0]:g}, {scale[1]:g})"


def markdown_table(results: dict) -> str:
    """One table of PSNR-Y (dB) per dataset and scale, iarn over bicubic; then per-dataset detail."""
    lines = []
    labels = list(next(iter(results.values())).keys())
    lines.append("| set | method | " + " | ".join(labels) + " |")
    lines.append("|---|---|" + "---|" * len(labels))
    for name, by_scale in results.items():
        for method in ("iarn", "bicubic"):
            if method not in by_scale[labels[0]]:
                continue
            cells = [f"{by_scale[label][method]['psnr_y']:.2f}" for label in labels]
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "PSNR-Y in dB (BT.601, 8-bit outputs, ceil(max scale) border cropped; an exact image counts as "
        f"{PSNR_CAP:g} dB in a mean); z = 0."
    )
    codec = next(iter(next(iter(results.values())).values())).get("lr_format")
    if codec:
        lines.append(f"Both LRs went through {codec} (Pillow) before their upscale; bytes are each LR's mean size.")
    for name, by_scale in results.items():
        lines.append("")
        lines.append(f"**{name}** ({by_scale[labels[0]]['images']} images)")
        lines.append("")
        bytes_column = (" LR bytes iarn / bicubic |", "---|") if codec else ("", "")
        lines.append(
            "| scale | PSNR-Y | SSIM-Y | PSNR-RGB | LR PSNR-Y | bicubic PSNR-Y | bicubic SSIM-Y | bicubic PSNR-RGB |"
            + bytes_column[0]
        )
        lines.append("|---|---|---|---|---|---|---|---|" + bytes_column[1])
        for label in labels:
            row = by_scale[label]
            bic = row["bicubic"]
            if "iarn" in row:
                ours = row["iarn"]
                head = f"{ours['psnr_y']:.2f} | {ours['ssim_y']:.4f} | {ours['psnr_rgb']:.2f} | {ours['lr_psnr_y']:.2f}"
            else:
                head = "- | - | - | -"
            tail = f"{bic['psnr_y']:.2f} | {bic['ssim_y']:.4f} | {bic['psnr_rgb']:.2f}"
            if codec:
                ours_bytes = f"{row['iarn']['lr_bytes']:.0f}" if "iarn" in row else "-"
                tail += f" | {ours_bytes} / {bic['lr_bytes']:.0f}"
            lines.append(f"| {label} | {head} | {tail} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str | Path, replace: bool = True) -> None:
    """PSNR-Y against (symmetric) scale per dataset, iarn solid and bicubic dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'iarn[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for index, (name, by_scale) in enumerate(results.items()):
        points = [(float(k[1:]), v) for k, v in by_scale.items() if k.startswith("x")]
        if not points:
            continue
        xs = [p[0] for p in points]
        color = f"C{index}"
        if "iarn" in points[0][1]:
            ax.plot(xs, [p[1]["iarn"]["psnr_y"] for p in points], "-o", color=color, label=f"{name} iarn")
        ax.plot(xs, [p[1]["bicubic"]["psnr_y"] for p in points], "--", color=color, label=f"{name} bicubic")
    ax.set_xlabel("scale")
    ax.set_ylabel("PSNR-Y (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"), replace=replace)
    finally:
        plt.close(fig)


def write_json(results: dict, path: str | Path, replace: bool = True) -> None:
    """Standard JSON (no NaN or Infinity tokens: a non-finite number is written as null)."""
    text = json.dumps(_finite(results), indent=2, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text), replace=replace)


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
