"""Device policy: which device `auto` means, which dtype the subnets run in, which memory layout,
and how the process's memory allocator treats freed memory.

The runner (`iarn.Rescaler`) applies these; the numbers behind them are in docs/performance.md.
"""

from __future__ import annotations

import ctypes
import sys

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


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, where oneDNN runs bfloat16 convolutions on matrix units.
    AVX-512 BF16 alone is not enough: measured on this project's 2-core CPU (AVX-512 BF16, no
    AMX), bf16 is no faster than fp32 and 1.35-1.5x slower than fp32 channels-last."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return check is not None and check()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The subnets' dtype for `precision`: fp32, bf16, fp16, or `auto`.

    `auto` is bf16 on CUDA GPUs of compute capability 8 or newer (Set5 PSNR-Y within 0.005 dB
    of fp32, 1.3-1.9x faster on an H100 and an H200); fp32 everywhere else. On CPUs that
    includes those with AMX: there bf16 cost 0.49 dB on the README's main job (40.86 against
    41.35 dB, over the 0.05 dB the precision gate allows) and was no faster; on CPUs without AMX
    fp32 is also the fastest (with `resolve_memory_format`'s channels-last layout).
    """
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
            return torch.bfloat16
        return torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def resolve_memory_format(device: torch.device, dtype: torch.dtype) -> torch.memory_format:
    """The subnets' memory layout: channels-last for fp32 on CPUs (oneDNN's direct NHWC kernels:
    1.35-1.5x faster for 1 MP on this project's CPU), the default NCHW elsewhere (on an H100,
    channels-last bf16 was 0.8x: cuDNN picks a slow NHWC kernel for the 3- and 18-channel output
    convolutions)."""
    if device.type == "cpu" and dtype == torch.float32:
        return torch.channels_last
    return torch.contiguous_format


# glibc's mallopt parameters (malloc.h) and the settings of `keep_freed_memory`
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEPT_MMAP_THRESHOLD = 1 << 30  # allocations above 1 GiB still get pages of their own
KEPT_TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes a C int
GLIBC_DEFAULT_THRESHOLD = 128 * 1024  # both parameters' values when a process starts


def keep_freed_memory(keep: bool = True) -> bool:
    """Let glibc's malloc keep freed memory for reuse (`keep`), or go back to its defaults.

    By default glibc gives every allocation over 32 MB pages of its own (mmap) and returns them
    to the system when freed, so each of the tens of large feature maps a 1 MP image allocates
    per pass is paged in afresh: 0.7 M page faults and 25-40 % of a CPU downscale
    (docs/performance.md). Kept, they come from the heap and are reused. Memory freed is not
    returned to the system until the process ends, so the peak stays resident. The CLI calls this
    at start; a Python program that rescales large images on the CPU may call it too (it is the
    process's setting, not the library's). Returns whether it applied (glibc on Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc, not musl: the parameters are glibc's)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mmap, trim = (KEPT_MMAP_THRESHOLD, KEPT_TRIM_THRESHOLD) if keep else (GLIBC_DEFAULT_THRESHOLD,) * 2
    return bool(mallopt(M_MMAP_THRESHOLD, mmap)) and bool(mallopt(M_TRIM_THRESHOLD, trim))
