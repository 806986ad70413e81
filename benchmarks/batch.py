"""Folder throughput of the CLI: images/s of `iarn downscale` and `iarn upscale` over a folder.

    python benchmarks/batch.py --images 24                       # this tree
    python benchmarks/batch.py --images 24 --before HEAD~3       # and a git revision, same images
    python benchmarks/batch.py --png-levels                      # PNG encoding time and size per zlib level

Writes `--images` photo-like PNGs of `--megapixels` each into a temporary folder, then times
`python -m iarn downscale FOLDER -o LR/ --scale S` and `python -m iarn upscale LR/ -o HR/` for
each source tree (this one, and `--before REV` checked out into a temporary worktree), in fresh
processes, alternating trees over `--rounds` rounds. Reported: median wall seconds, images/s
(model load and imports included, as a user sees them) and the output bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def photo_like(rng: np.random.Generator, megapixels: float) -> np.ndarray:
    """A 3:2 image with smooth shapes, edges and mild noise, so PNG sizes are realistic."""
    width = int(round((megapixels * 1e6 * 1.5) ** 0.5))
    height = int(round(megapixels * 1e6 / width))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    for channel in range(3):
        for _ in range(6):
            fx, fy, phase = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6.3)]
            image[..., channel] += np.sin(fx * x + fy * y + phase) * rng.uniform(10, 40)
    image += (x // 64 + y // 48)[..., None] % 2 * 30  # edges
    image += rng.normal(0, 4, image.shape)
    return np.clip(image + 110, 0, 255).astype(np.uint8)


def run(src: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "iarn", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"iarn {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def png_levels(megapixels: float) -> None:
    """Encoding time (median of 3) and size per zlib level: the bundled sample, enlarged 2x
    with Pillow's bicubic (an upscale's output), and a photo-like image."""
    import io

    sample = Image.open(ROOT / "src" / "iarn" / "samples" / "kodim23.png").convert("RGB")
    images = {
        "kodim23 x2 bicubic": sample.resize((sample.width * 2, sample.height * 2), Image.BICUBIC),
        f"photo-like {megapixels:g} MP": Image.fromarray(photo_like(np.random.default_rng(0), megapixels)),
    }
    print("| image | zlib level | encode s | MB |")
    print("|---|---|---|---|")
    for name, image in images.items():
        for level in (0, 1, 3, 6, 9):
            seconds = []
            for _ in range(3):
                buffer = io.BytesIO()
                start = time.perf_counter()
                image.save(buffer, format="PNG", compress_level=level)
                seconds.append(time.perf_counter() - start)
            print(f"| {name} | {level} | {statistics.median(seconds):.3f} | {buffer.tell() / 1e6:.2f} |")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--megapixels", type=float, default=1.0)
    parser.add_argument("--scale", default="2")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--before", metavar="REV", help="also time this git revision, checked out aside")
    parser.add_argument("--png-levels", action="store_true", help="only the PNG level table")
    parser.add_argument("--flags", default="", help="more flags for both commands, e.g. '--device cuda'")
    args = parser.parse_args()
    if args.png_levels:
        png_levels(args.megapixels)
        return
    work = Path(tempfile.mkdtemp(prefix="iarn-batch-"))
    trees = {"this tree": ROOT / "src"}
    try:
        if args.before:
            checkout = ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(work / "before")]
            subprocess.run([*checkout, args.before], check=True)
            trees[args.before] = work / "before" / "src"
        folder = work / "hr"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for k in range(args.images):
            Image.fromarray(photo_like(rng, args.megapixels)).save(folder / f"{k:03d}.png", compress_level=1)
        extra = args.flags.split()
        times: dict[tuple[str, str], list[float]] = {}
        sizes: dict[tuple[str, str], int] = {}
        for _ in range(args.rounds):
            for name, src in trees.items():
                lr, hr = work / "lr", work / "up"
                shutil.rmtree(lr, ignore_errors=True)
                shutil.rmtree(hr, ignore_errors=True)
                down = run(src, ["downscale", str(folder), "-o", f"{lr}/", "--scale", args.scale, *extra])
                up = run(src, ["upscale", str(lr), "-o", f"{hr}/", *extra])
                times.setdefault((name, "downscale"), []).append(down)
                times.setdefault((name, "upscale"), []).append(up)
                sizes[(name, "downscale")], sizes[(name, "upscale")] = folder_bytes(lr), folder_bytes(hr)
        print(f"{args.images} images of {args.megapixels:g} MP, scale {args.scale}, {args.rounds} round(s)")
        print("| tree | command | median s | images/s | output MB |")
        print("|---|---|---|---|---|")
        for (name, op), values in times.items():
            median = statistics.median(values)
            print(f"| {name} | {op} | {median:.1f} | {args.images / median:.2f} | {sizes[(name, op)] / 1e6:.1f} |")
    finally:
        if args.before:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "before")])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
