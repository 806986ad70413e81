"""`iarn info` (version, devices, bundled models) and `iarn export` (ONNX graphs)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .args import force_flag, weights_flags
from .errors import CliError


def add_parsers(commands) -> None:
    commands.add_parser("info", help="version, devices and bundled models")
    export = commands.add_parser("export", help="ONNX graphs of a model's downscale and upscale (any image size)")
    export.add_argument(
        "--onnx", required=True, metavar="NAME", help="writes NAME-downscale.onnx and NAME-upscale.onnx"
    )
    force_flag(export, "existing files")
    weights_flags(export)


def run_info(args) -> int:
    import torch

    from .. import __version__
    from ..devices import cpu_has_amx
    from ..weights import BUNDLED, bundled_path, read_metadata

    print(f"iarn {__version__}, torch {torch.__version__}, Python {sys.version.split()[0]}")
    cuda = torch.cuda.is_available()
    bf16 = "AMX, --precision auto = bf16" if cpu_has_amx() else "no AMX, --precision auto = fp32"
    print(
        f"devices: cpu ({torch.get_num_threads()} threads, {bf16})"
        + (f", cuda ({torch.cuda.get_device_name(0)})" if cuda else "")
        + (", mps" if torch.backends.mps.is_available() else "")
    )
    for name in BUNDLED:
        path = bundled_path(name)
        if path is None:
            print(f"model {name}: not bundled in this install")
            continue
        meta = read_metadata(path)
        training = json.loads(meta.get("training", "{}"))
        print(f"model {name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
        print(f"  config {meta.get('config')}")
        if meta.get("corrector"):
            print(f"  LR corrector {meta['corrector']}")
        for band in json.loads(meta.get("bands", "[]")):
            print(f"  upscaler for JPEGs of quality {band['low']}-{band['high']} (trained at {band['quality']})")
        if training.get("summary"):
            print(f"  {training['summary']}")
        elif training.get("steps") is not None:
            print(f"  trained {training['steps']} steps")
    return 0


def run_export(args) -> int:
    from ..export import export_onnx, onnx_paths
    from ..weights import load_weights, resolve_weights

    name = args.onnx
    stem = Path(name[: -len(".onnx")] if name.lower().endswith(".onnx") else name)
    if not stem.name or stem.name in (".", "..") or name.endswith(("/", os.sep)) or stem.is_dir():
        raise CliError(f"--onnx {name!r}: give a name for the files (NAME -> NAME-downscale.onnx), not a folder")
    down, up = onnx_paths(name)
    for path in (down, up):
        if path.is_dir():
            raise CliError(f"{path}: is a folder")
        if path.exists() and not args.force:
            raise CliError(f"{path} exists (use --force to overwrite)")
        folder = path.resolve().parent
        if folder.is_dir() and not os.access(folder, os.W_OK):  # checked before a 26 s export, not after
            raise CliError(f"{path}: its folder is not writable")
    print("exporting the downscale and upscale graphs (a few minutes on a CPU) ...", file=sys.stderr, flush=True)
    network = load_weights(resolve_weights(args.weights or args.model))
    if network.corrector is not None:
        print(
            "iarn: note: the downscale graph is the network's forward pass, without its LR corrector "
            "(its LRs restore like `iarn downscale --effort 0`)",
            file=sys.stderr,
        )
    if network.bands:
        print(
            "iarn: note: the upscale graph is the network's own inverse, without its upscalers for JPEG LRs "
            "(a JPEG LR restores like `iarn upscale` of a PNG of its pixels)",
            file=sys.stderr,
        )
    export_onnx(network, down, up)
    print(f"wrote {down} (hr, lr_shape -> lr) and {up} (lr, hr_shape -> hr)")
    return 0
