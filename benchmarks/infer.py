"""Inference speed and memory of iarn, each row against Pillow's bicubic in the same process.

    python benchmarks/infer.py                                   # 1 MP, bundled default, fp32 vs bf16
    python benchmarks/infer.py --megapixels 1 8 24 --variants fp32 bf16 tile-768+bf16
    python benchmarks/infer.py --device cuda --megapixels 8 --variants fp32 bf16 fp16 compile+bf16
    python benchmarks/infer.py --device cuda --megapixels 8.3 --profile untiled+bf16   # top operators
    python benchmarks/infer.py --cli-memory 50 --cli-flags "--precision fp32"   # `iarn` on a 50 MP PNG

Speed: per image size, downscale (x`--scale`) and upscale of one image (batch 1) for every
variant, interleaved over `--repeats` rounds after a warm-up, all in one process; printed as
median seconds, HR MP/s, speed-up against the first variant and ratio to Pillow's BICUBIC resize
of the same image in the same round. A variant joins options with `+`:

    fp32, bf16, fp16     dtype of the subnets' weights (images and the invertible arithmetic stay fp32)
    tile-N               force tiles with N-pixel cores (default: the runner's policy)
    untiled              never tile
    channels_last, nchw  the subnets' memory format (default: the runner's, devices.py)
    unaligned            no channel padding in the subnets (DenseBlock.channel_align = 1)
    cudnn_benchmark      let cuDNN time its algorithms per shape (first call per shape is slow)
    system-malloc        glibc's default allocator settings: freed large tensors go back to the
                         system (default: kept for reuse, as the CLI does, `keep_freed_memory`)
    compile              torch.compile the subnets (slow first call: compile time is reported)
    onnxruntime          the exported ONNX graphs (`iarn export`) in onnxruntime, fp32, whole images

Memory: on CUDA, the peak allocated memory of each row; `--memory` runs each size and variant in
a fresh process and reports its peak RSS (CPU). `--cli-memory MP` writes an MP-megapixel PNG and
runs `iarn downscale` and `iarn upscale` on it, each in a fresh process, reporting wall time and
peak RSS.
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import iarn
from iarn import IARN, ModelConfig, Rescaler
from iarn.api import downscale_picture, upscale_picture
from iarn.devices import PRECISIONS, keep_freed_memory
from iarn.geometry import size_for_scale
from iarn.imageio import Picture
from iarn.weights import load_weights, resolve_weights


class OnnxModel:
    """The exported graphs of a model in onnxruntime sessions (CPU, or CUDA when asked)."""

    def __init__(self, model: IARN, device: str) -> None:
        import onnxruntime as ort

        from iarn.export import export_onnx

        self.folder = tempfile.TemporaryDirectory()
        down, up = Path(self.folder.name) / "down.onnx", Path(self.folder.name) / "up.onnx"
        export_onnx(model, down, up)
        providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        self.down, self.up = (ort.InferenceSession(str(p), providers=providers) for p in (down, up))

    @staticmethod
    def _to_float(rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32) / 255

    @staticmethod
    def _to_uint8(x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(x[0].transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)

    def downscale(self, picture: Picture, size: tuple[int, int]) -> Picture:
        (lr,) = self.down.run(None, {"hr": self._to_float(picture.rgb), "lr_shape": np.zeros(size, np.uint8)})
        return Picture(rgb=self._to_uint8(lr))

    def upscale(self, picture: Picture, size: tuple[int, int]) -> Picture:
        (hr,) = self.up.run(None, {"lr": self._to_float(picture.rgb), "hr_shape": np.zeros(size, np.uint8)})
        return Picture(rgb=self._to_uint8(hr))


def build_model(weights: str, variant: str, device: str) -> tuple[Rescaler | OnnxModel, int | None]:
    """The model for a variant, and the tile argument it implies."""
    if weights == "random":
        torch.manual_seed(0)
        network = IARN(ModelConfig())  # speed does not depend on the weights' values
    else:
        network = load_weights(resolve_weights(weights))
    options = variant.split("+")
    if options == ["onnxruntime"]:
        return OnnxModel(network, device), None
    model = Rescaler(network, device, next((o for o in options if o in PRECISIONS), "fp32"))
    tile: int | None = None
    for option in options:
        if option in PRECISIONS or option in ("cudnn_benchmark", "system-malloc"):  # see `cudnn_flags`
            continue
        if option.startswith("tile-"):
            tile = int(option.removeprefix("tile-"))
        elif option == "untiled":
            tile = None
            model.whole_image = lambda hr_size, tile, lr_size=None: True
        elif option in ("channels_last", "nchw"):
            layout = torch.channels_last if option == "channels_last" else torch.contiguous_format
            model.network.to(memory_format=layout)
        elif option == "unaligned":
            for module in model.network.modules():
                if hasattr(module, "channel_align"):
                    module.channel_align = 1
        elif option == "compile":
            for module in model.network.modules():
                if type(module).__name__ == "DenseBlock":
                    module.forward = torch.compile(module.forward, dynamic=True)
        else:
            raise SystemExit(f"unknown variant option {option!r}")
    return model, tile


def image_of(megapixels: float) -> np.ndarray:
    """A 3:2 uint8 image: smooth gradients plus noise (content does not change the speed)."""
    width = int(round((megapixels * 1e6 * 1.5) ** 0.5))
    height = int(round(megapixels * 1e6 / width))
    y, x = np.ogrid[0:height, 0:width]
    image = np.random.default_rng(0).integers(0, 56, (height, width, 3), dtype=np.uint8)
    image[..., 0] += (x * 200 // width).astype(np.uint8)
    image[..., 1] += (y * 200 // height).astype(np.uint8)
    image[..., 2] += (100 + 100 * np.sin(x / 37 + y / 23)).astype(np.uint8)
    return image


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def cudnn_flags(variant: str):
    """cuDNN's flags for a variant's calls: benchmark mode only where the variant asks; and the
    allocator's setting, the process's, so set before each of the variant's calls."""
    keep_freed_memory("system-malloc" not in variant.split("+"))
    return torch.backends.cudnn.flags(enabled=True, benchmark="cudnn_benchmark" in variant.split("+"))


def run_downscale(model: Rescaler | OnnxModel, tile: int | None, picture: Picture, size: tuple[int, int]) -> Picture:
    if isinstance(model, OnnxModel):
        return model.downscale(picture, size)
    return downscale_picture(model, picture, size=size, tile=tile)


def run_upscale(model: Rescaler | OnnxModel, tile: int | None, picture: Picture, size: tuple[int, int]) -> Picture:
    if isinstance(model, OnnxModel):
        return model.upscale(picture, size)
    return upscale_picture(model, picture, size, tile=tile)


def speed(args) -> None:
    print(
        f"weights {args.weights}, device {args.device}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, scale {args.scale}, {args.repeats} rounds"
    )
    print(
        "| image | op | variant | median s | HR MP/s | speed-up vs "
        f"{args.variants[0]} | Pillow bicubic s | ratio to Pillow | peak memory MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    models = {variant: build_model(args.weights, variant, args.device) for variant in args.variants}
    for mp in args.megapixels:
        rgb = image_of(mp)
        hr_size = rgb.shape[:2]
        lr_size = size_for_scale(hr_size, args.scale)
        picture = Picture(rgb=rgb)
        lr = run_downscale(*models[args.variants[0]], picture, lr_size)
        pil_hr, pil_lr = Image.fromarray(rgb), Image.fromarray(lr.rgb)
        ops = {
            "downscale": (
                partial(run_downscale, picture=picture, size=lr_size),
                partial(pil_hr.resize, (lr_size[1], lr_size[0]), Image.BICUBIC),
            ),
            "upscale": (
                partial(run_upscale, picture=lr, size=hr_size),
                partial(pil_lr.resize, (hr_size[1], hr_size[0]), Image.BICUBIC),
            ),
        }
        for op, (ours, pillow) in ops.items():
            times: dict[str, list[float]] = {v: [] for v in args.variants}
            pillow_times, peaks, first = [], {}, {}
            for variant, (model, tile) in models.items():  # warm-up; compile happens here
                if args.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                with cudnn_flags(variant):
                    first[variant] = timed(partial(ours, model, tile), args.device)
                if args.device.startswith("cuda"):
                    peaks[variant] = torch.cuda.max_memory_allocated() / 2**20
            for _ in range(args.repeats):
                pillow_times.append(timed(pillow, "cpu"))
                for variant, (model, tile) in models.items():
                    with cudnn_flags(variant):
                        times[variant].append(timed(partial(ours, model, tile), args.device))
            base = statistics.median(times[args.variants[0]])
            reference = statistics.median(pillow_times)
            for variant in args.variants:
                median = statistics.median(times[variant])
                slow_first = "compile" in variant or "cudnn_benchmark" in variant
                note = f" (first call {first[variant]:.1f} s)" if slow_first else ""
                peak = f"{peaks[variant]:.0f}" if variant in peaks else "-"
                print(
                    f"| {hr_size[1]}x{hr_size[0]} ({mp:g} MP) | {op} | {variant}{note} | {median:.3f} "
                    f"| {mp / median:.2f} | {base / median:.2f}x | {reference:.4f} | {median / reference:.0f}x "
                    f"| {peak} |"
                )


def profile(args) -> None:
    """The heaviest operators of one downscale and one upscale with variant `args.profile`."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    keep_freed_memory("system-malloc" not in args.profile.split("+"))
    model, tile = build_model(args.weights, args.profile, args.device)
    picture = Picture(rgb=image_of(args.megapixels[-1]))
    lr_size = size_for_scale(picture.size, args.scale)
    lr = run_downscale(model, tile, picture, lr_size)  # warm-up
    run_upscale(model, tile, lr, picture.size)
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for op, call in (
        ("downscale", partial(run_downscale, model, tile, picture, lr_size)),
        ("upscale", partial(run_upscale, model, tile, lr, picture.size)),
    ):
        with profiler(activities=activities) as prof:
            seconds = timed(call, args.device)
        print(f"\n{op}, {args.profile}, {picture.size[1]}x{picture.size[0]}: {seconds:.3f} s")
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile_rows, max_name_column_width=48))


def memory_child(args) -> None:
    """One size and variant in this fresh process: down + up, then the peak RSS."""
    keep_freed_memory("system-malloc" not in args.variants[0].split("+"))
    model, tile = build_model(args.weights, args.variants[0], args.device)
    rgb = image_of(args.megapixels[0])
    picture = Picture(rgb=rgb)
    loaded = peak_rss_mb("VmRSS")
    start = time.perf_counter()
    lr = downscale_picture(model, picture, scale=args.scale, tile=tile)
    middle = time.perf_counter()
    upscale_picture(model, lr, picture.size, tile=tile)
    end = time.perf_counter()
    peak = peak_rss_mb()
    print(
        json.dumps(
            {
                "image": f"{rgb.shape[1]}x{rgb.shape[0]}",
                "variant": args.variants[0],
                "rss_before_mb": round(loaded),
                "peak_rss_mb": round(peak),
                "downscale_s": round(middle - start, 2),
                "upscale_s": round(end - middle, 2),
            }
        )
    )


def run_child(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return result.stdout


def memory(args) -> None:
    for mp in args.megapixels:
        for variant in args.variants:
            command = [sys.executable, __file__, "--child", "--megapixels", str(mp), "--variants", variant]
            command += ["--weights", args.weights, "--scale", str(args.scale), "--device", args.device]
            print(run_child(command).strip())


def peak_rss_mb(field: str = "VmHWM") -> float:
    """This process's peak resident memory (`VmRSS`: the current one). Linux's VmHWM, unlike
    ru_maxrss, does not inherit the peak of the parent that forked it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PEAK_RSS_SNIPPET = f"""
import resource, sys, time
from pathlib import Path
from iarn.cli import main
{inspect.getsource(peak_rss_mb)}
start = time.perf_counter()
code = main(sys.argv[1:])
print(code, round(time.perf_counter() - start, 1), round(peak_rss_mb()))
"""


def cli_memory(args) -> None:
    """`iarn downscale` then `iarn upscale` of an MP-megapixel PNG, each in a fresh process."""
    rgb = image_of(args.cli_memory)
    extra = ["--device", args.device, "--model" if args.weights in iarn.weights.BUNDLED else "--weights", args.weights]
    extra += shlex.split(args.cli_flags)
    with tempfile.TemporaryDirectory() as folder:
        hr, lr, up = (str(Path(folder) / name) for name in ("hr.png", "lr.png", "up.png"))
        Image.fromarray(rgb).save(hr, compress_level=1)
        del rgb
        print(f"{args.cli_memory:g} MP PNG ({Path(hr).stat().st_size / 1e6:.0f} MB); extra flags {extra}")
        print("| command | exit | wall s | peak RSS MB |")
        print("|---|---|---|---|")
        for name, command in (
            ("downscale", ["downscale", hr, "-o", lr, "--scale", str(args.scale)]),
            ("upscale", ["upscale", lr, "-o", up]),
        ):
            code, seconds, peak = run_child([sys.executable, "-c", PEAK_RSS_SNIPPET, *command, *extra]).split()
            print(f"| iarn {name} | {code} | {seconds} | {peak} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1.0])
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--scale", type=float, default=2.7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weights", default="default", help="weight file, bundled name, or 'random' (default config)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", action="store_true", help="peak RSS per size and variant, fresh processes")
    parser.add_argument("--cli-memory", type=float, metavar="MP", help="peak RSS of the CLI on an MP-megapixel PNG")
    parser.add_argument("--cli-flags", default="", help="more flags for the CLI runs, e.g. '--precision fp32'")
    parser.add_argument("--profile", metavar="VARIANT", help="operator profile of one call of VARIANT, largest size")
    parser.add_argument("--profile-rows", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(args)
    elif args.cli_memory:
        cli_memory(args)
    elif args.memory:
        memory(args)
    elif args.profile:
        profile(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
