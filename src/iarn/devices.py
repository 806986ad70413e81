"""Device and precision policy: which device `auto` means, and which dtype the subnets run in."""

from __future__ import annotations

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0, world: int = 1) -> torch.device:
    """The device for `name` (auto, cpu, cuda, cuda:N, mps) in the process with `local_rank`;
    ValueError with a one-line message when it is not there.

    `auto` is GPU `local_rank` when CUDA works, else MPS when available, else the CPU; `cuda`
    is GPU `local_rank` (so torchrun's ranks each take their own); `cuda:N` a given GPU, for a
    single process only (`world` 1).
    """
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("mps") if torch.backends.mps.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name} was asked for, but this torch build or machine has no usable CUDA")
        if device.index is not None and world > 1:
            raise ValueError(
                f"under torchrun give --device cuda or auto (each rank takes its LOCAL_RANK GPU), not {name}"
            )
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device} was asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device mps was asked for, but MPS is not available")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AMX or AVX-512 BF16), so fast;
    elsewhere oneDNN emulates them, slower than float32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and check() for check in checks)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The subnets' dtype for `precision`: fp32, bf16, fp16, or `auto`.

    `auto` is bf16 on a CPU with native bf16 (Set5 PSNR-Y within 0.002 dB of fp32 and about
    2x faster) and on CUDA GPUs of compute capability 8 or newer (within 0.001 dB, 1.2-1.9x
    faster on an H200; docs/performance.md); fp32 everywhere else (not measured there).
    """
    if precision == "auto":
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
            return torch.bfloat16
        return torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]
