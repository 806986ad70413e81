"""Weight files: safetensors carrying their own config, and the bundled models.

A weight file holds the model's tensors and, as safetensors metadata, `format` ("iarn"),
`format_version`, `config` (the ModelConfig as JSON) and optionally `training` (free-form JSON
describing how the weights were made). Loading needs nothing else.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .model import IARN, ModelConfig

FORMAT = "iarn"
FORMAT_VERSION = "1"
BUNDLED = ("default", "tiny")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class WeightsError(ValueError):
    """A weight file that is missing, unreadable, or does not fit this version of iarn."""


def save_weights(model: IARN, path: str | os.PathLike, training: dict | None = None) -> None:
    """Write `model`'s weights and config to `path` atomically (temp file, then rename)."""
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_json()}
    if training is not None:
        metadata["training"] = json.dumps(training, sort_keys=True)
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in model.state_dict().items()}
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"{path}: not a readable safetensors file ({error})") from None


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> IARN:
    """Build the model a weight file describes and load its tensors; refuse misfits clearly."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weight file")
    metadata = read_metadata(path)
    if metadata.get("format") != FORMAT:
        raise WeightsError(f"{path}: not an iarn weight file (no 'format: {FORMAT}' metadata)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{path}: weight format version {metadata.get('format_version')!r}, "
            f"this iarn reads version {FORMAT_VERSION}"
        )
    try:
        config = ModelConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as error:
        raise WeightsError(f"{path}: its config does not fit this iarn: {error}") from None
    model = IARN(config)
    tensors = load_file(str(path))
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or extra or wrong:
        raise WeightsError(
            f"{path}: tensors do not fit its config ({len(missing)} missing, {len(extra)} unexpected, "
            f"{len(wrong)} of the wrong shape, e.g. {(missing + extra + wrong)[:3]})"
        )
    model.load_state_dict(tensors)
    return model.to(device).eval()


def bundled_path(name: str) -> Path | None:
    """Path of a bundled weight file, or None when this install has none of that name."""
    path = Path(str(resources.files("iarn") / "bundled" / f"{name}.safetensors"))
    return path if path.is_file() else None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) != "auto":
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device cuda was asked for, but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("device mps was asked for, but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AMX or AVX-512 BF16), so fast;
    elsewhere oneDNN emulates them, slower than float32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and check() for check in checks)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The subnets' dtype for `precision`: fp32, bf16, fp16, or `auto`.

    `auto` is bf16 on a CPU with native bf16 (Set5 PSNR-Y within 0.002 dB of fp32 and about
    2x faster, docs/performance.md) and fp32 everywhere else (not measured there).
    """
    if precision == "auto":
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def load(
    path_or_name: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
) -> IARN:
    """A ready model (eval mode) from a weight file path or a bundled name (`default`, `tiny`).

    `precision` (fp32, bf16, fp16 or auto, see `resolve_precision`) is the dtype the subnets run
    in; images and the invertible arithmetic stay float32 (`IARN.state_dtype`). fp32 is exact
    and reproducible; bf16 is faster on CPUs where `cpu_has_native_bf16`. Raises WeightsError
    when the weights are missing or do not fit; never falls back to random weights.
    """
    name = "default" if path_or_name is None else str(path_or_name)
    if name in BUNDLED and not Path(name).exists():
        path = bundled_path(name)
        if path is None:
            raise WeightsError(
                f"this iarn install has no bundled '{name}' weights; pass a weight file path "
                "(train one with `iarn train`)"
            )
    else:
        path = Path(name)
    device = resolve_device(device)
    return load_weights(path, device).to(resolve_precision(precision, device))
