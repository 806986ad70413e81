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


def load(path_or_name: str | os.PathLike | None = None, device: str | torch.device = "auto") -> IARN:
    """A ready model (eval mode) from a weight file path or a bundled name (`default`, `tiny`).

    Raises WeightsError when the weights are missing or do not fit; never falls back to
    random weights.
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
    return load_weights(path, resolve_device(device))
