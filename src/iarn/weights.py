"""Weight files: safetensors carrying their own config, and the bundled models.

A weight file holds the model's tensors and, as safetensors metadata, `format` ("iarn"),
`format_version`, `config` (the ModelConfig as JSON) and optionally `training` (free-form JSON
describing how the weights were made). Loading needs nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .files import atomic_write
from .model import IARN, ModelConfig
from .model.bands import bands_from_json, bands_to_json
from .model.corrector import CorrectorConfig

FORMAT = "iarn"
FORMAT_VERSION = "1"
BUNDLED = ("default", "jpeg", "naive-x2")
LOSSY_MODEL = "jpeg"  # the bundled model trained with JPEG between its two directions (docs/results.md)
BAND_DTYPE = torch.float16  # upscaler bands (model/bands.py) are stored so: half the bytes of float32
SAME_UPSCALER_KEY = "same_upscaler_as"  # JSON list of the HASHes of files with this file's upscaler


class WeightsError(ValueError):
    """A weight file that is missing, unreadable, or does not fit this version of iarn."""


def save_weights(
    model: IARN,
    path: str | os.PathLike,
    training: dict | None = None,
    same_upscaler_as: str | os.PathLike | None = None,
) -> None:
    """Write `model`'s weights and config (and its corrector's) to `path` atomically (temp file,
    then rename). `same_upscaler_as`: a weight file whose upscaler this one's is, bit for bit
    (a corrector added): LRs recorded as made by it (or by the files it names so) upscale with
    this one without a warning."""
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_json()}
    if model.corrector is not None:
        metadata["corrector"] = model.corrector.config.to_json()
    if model.bands:
        metadata["bands"] = bands_to_json(model.bands)
    if training is not None:
        metadata["training"] = json.dumps(training, sort_keys=True)
    if same_upscaler_as is not None:
        metadata[SAME_UPSCALER_KEY] = json.dumps(sorted(_upscaler_set(Path(same_upscaler_as).resolve())))
    tensors = {
        name: t.detach().to("cpu", BAND_DTYPE if name.startswith("band_networks.") else torch.float32).contiguous()
        for name, t in model.state_dict().items()
    }
    check_finite(tensors, path)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def check_finite(tensors: dict, path: str | os.PathLike) -> None:
    """WeightsError when a floating tensor of `tensors` (nested dicts and lists too, as in an
    optimiser's state) holds a NaN or an infinity: such a file is never written."""
    stack = [("", tensors)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{name}.{k}" if name else str(k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            stack += [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(value.isfinite().all()):
            raise WeightsError(f"{path}: not written, {name} holds non-finite values (NaN or infinity)")


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
        config = ModelConfig.from_stored(json.loads(metadata["config"]))
        corrector = metadata.get("corrector")
        corrector = CorrectorConfig.from_dict(json.loads(corrector)) if corrector is not None else None
        bands = bands_from_json(metadata.get("bands", "[]"))
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as error:
        raise WeightsError(f"{path}: its config does not fit this iarn: {error}") from None
    with torch.device("meta"):  # shapes only: nothing is allocated before the file is known to fit
        expected = {name: tuple(t.shape) for name, t in IARN(config, corrector, bands).state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        stored = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    missing, extra = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    wrong = [k for k in expected if k in stored and stored[k] != expected[k]]
    if missing or extra or wrong:
        raise WeightsError(
            f"{path}: tensors do not fit its config ({len(missing)} missing, {len(extra)} unexpected, "
            f"{len(wrong)} of the wrong shape, e.g. {(missing + extra + wrong)[:3]})"
        )
    tensors = load_file(str(path))
    broken = [name for name, t in tensors.items() if not torch.isfinite(t).all()]
    if broken:
        raise WeightsError(f"{path}: {len(broken)} tensor(s) hold NaN or infinite values, e.g. {broken[0]}")
    model = IARN(config, corrector, bands)
    model.load_state_dict(tensors)
    return model.to(device).eval()


def bundled_path(name: str) -> Path | None:
    """Path of a bundled weight file, or None when this install has none of that name."""
    path = Path(str(resources.files("iarn") / "bundled" / f"{name}.safetensors"))
    return path if path.is_file() else None


def resolve_weights(path_or_name: str | os.PathLike | None = None) -> Path:
    """The weight file for a path or a bundled name (`BUNDLED`; None: default). WeightsError
    when it names neither."""
    name = "default" if path_or_name is None else str(path_or_name)
    if name in BUNDLED and not Path(name).exists():
        path = bundled_path(name)
        if path is None:
            raise WeightsError(
                f"this iarn install has no bundled '{name}' weights; pass a weight file path "
                "(train one with `iarn train`)"
            )
        return path
    path = Path(name)
    if not path.exists() and path.suffix != ".safetensors" and not any(sep in name for sep in "/\\"):
        raise WeightsError(f"no bundled model named {name!r} (bundled: {', '.join(BUNDLED)}) and no such file")
    return path


def weights_id(path: str | os.PathLike) -> str:
    """NAME@HASH of a weight file: its bundled name (or file stem) and the first 12 hex digits of
    the SHA-256 of its bytes. An LR file records it (`iarn:model`), so `upscale` can use the
    model that made it."""
    path = Path(path)
    name = next((n for n in BUNDLED if bundled_path(n) == path), path.stem)
    return f"{name}@{_file_hash(path.resolve())}"


@lru_cache(maxsize=16)
def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def trained_codec(path: str | os.PathLike | None) -> str | None:
    """The lossy codec ("jpeg", "webp") the weights at `path` were trained through, as their
    `training` metadata records it; None for a lossless model, an unrecorded one, or no path.
    Asked once per image by `upscale`: the header is read once per file."""
    return None if path is None else _trained_codec(Path(path).resolve())


@lru_cache(maxsize=16)
def _trained_codec(path: Path) -> str | None:
    try:
        training = json.loads(read_metadata(path).get("training", "{}"))
    except (WeightsError, json.JSONDecodeError):
        return None
    codec = (training.get("train_config") or {}).get("codec") if isinstance(training, dict) else None
    return codec if codec in ("jpeg", "webp") else None


def lossy_model_name() -> str | None:
    """LOSSY_MODEL when this install bundles it, else None (lossy LRs then use `default`)."""
    return LOSSY_MODEL if bundled_path(LOSSY_MODEL) is not None else None


def bundled_by_id(model_id: str) -> str | None:
    """The bundled model whose upscaler is that of `model_id` (NAME@HASH): its weights have that
    HASH, or are recorded as having the upscaler of a file that had it. None if none is."""
    digest = model_id.rpartition("@")[2]
    for name in BUNDLED:
        path = bundled_path(name)
        if path is not None and digest in _upscaler_set(path.resolve()):
            return name
    return None


def upscaler_hashes(model_id: str, path: str | os.PathLike | None = None) -> set[str]:
    """The HASHes whose LRs the weights of `model_id` (at `path`, or a bundled one) upscale as
    their makers did: its own and those its metadata records."""
    digest = model_id.rpartition("@")[2]
    if path is None:
        name = bundled_by_id(model_id)
        path = bundled_path(name) if name is not None else None
    return {digest} | (set(_upscaler_set(Path(path).resolve())) if path is not None else set())


def same_upscaler(recorded: str, model_id: str, path: str | os.PathLike | None) -> bool:
    """Whether an LR recorded as made by `recorded` (NAME@HASH) upscales with the weights
    `model_id` at `path` exactly as with the ones that made it."""
    return recorded.rpartition("@")[2] in upscaler_hashes(model_id, path)


@lru_cache(maxsize=16)
def _upscaler_set(path: Path) -> frozenset[str]:
    try:
        earlier = json.loads(read_metadata(path).get(SAME_UPSCALER_KEY, "[]"))
    except (WeightsError, json.JSONDecodeError):
        earlier = []
    return frozenset([_file_hash(path), *(h for h in earlier if isinstance(h, str))])
