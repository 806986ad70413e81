"""What a training run stands on besides its loop (train.py): the processes and device
(`Runtime`), the state a checkpoint holds (`TrainState`, read and written here), the run's log
(`RunLog`), the signals that stop it, and its time budget (`TimeBudget`)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.distributed as dist

from .devices import resolve_device
from .files import atomic_write
from .model import IARN, ModelConfig
from .train_config import TrainConfig
from .weights import check_finite, load_weights

# -- processes and devices -------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: its device and its place among torchrun's processes."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device, set CUDA flags and threads, and join torchrun's process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.device, local_rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=_device_id(device))
    return Runtime(device, rank, local_rank, world)


def _device_id(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


# -- model, optimiser and checkpoints -------------------------------------------------------


@dataclass
class TrainState:
    """What a checkpoint holds besides the config: the weights, Adam's moments, the step, and
    the adaptive LR-loss weight (ln lambda_lr, a device scalar)."""

    model: IARN
    optimizer: torch.optim.Optimizer
    step: int
    log_lambda_lr: torch.Tensor
    skipped: int = 0  # steps whose loss or gradient was not finite (not applied), this invocation
    skipped_in_a_row: int = 0


@lru_cache(maxsize=1)
def _read_checkpoint_once(path: str, mtime_ns: int) -> dict:
    return read_checkpoint(path)


def resolve_resume(out: str | os.PathLike, resume: str | None) -> tuple[str | None, dict | None]:
    """(checkpoint path, its contents) that `--resume` names: "auto" is OUT/checkpoint.pt when
    it exists; (None, None) for a new run. The file is read once, however often it is asked for
    (the command line reads the recipe from it before the run does)."""
    if resume == "auto":
        path = Path(out) / "checkpoint.pt"
        resume = str(path) if path.exists() else None
    if not resume:
        return None, None
    try:
        stamp = Path(resume).stat().st_mtime_ns
    except OSError:
        return resume, read_checkpoint(resume)  # says what is wrong with it
    return resume, _read_checkpoint_once(str(resume), stamp)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint as a dict; ValueError (one line) when it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint") from None
    except Exception as error:  # torch.load raises many kinds for a file that is not a checkpoint
        raise ValueError(f"{path}: not an iarn training checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "train_config"} <= set(state):
        raise ValueError(f"{path}: not an iarn training checkpoint")
    return state


def checkpoint_model(state: dict) -> IARN:
    """The model of a checkpoint read by `read_checkpoint`, on the CPU, its config from the run's."""
    model = IARN(ModelConfig.from_stored(state["train_config"]["model"]))
    model.load_state_dict(state["model"])
    return model


def build_state(cfg: TrainConfig, device: torch.device, checkpoint: dict | None, init_from: str | None) -> TrainState:
    """A fresh, fine-tuned (`init_from`) or resumed (`checkpoint`) model with its optimiser."""
    if checkpoint is None and init_from:
        model = load_weights(init_from)
        if model.config != cfg.model:
            raise ValueError(f"{init_from}: its model config {model.config} differs from the run's {cfg.model}")
        model.corrector = None  # it was trained against the upscaler this run changes
        model.set_bands({})  # and JPEG upscaler bands against the downscaler it changes
    else:
        torch.manual_seed(cfg.seed)
        model = IARN(cfg.model)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.999))
    state = TrainState(model, optimizer, 0, torch.tensor(math.log(cfg.lambda_lr), device=device))
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state.step = int(checkpoint["step"])
        state.log_lambda_lr.fill_(checkpoint.get("log_lambda_lr", math.log(cfg.lambda_lr)))
    return state


def save_checkpoint(state: TrainState, cfg: TrainConfig, path: Path) -> None:
    payload = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "step": state.step,
        "log_lambda_lr": float(state.log_lambda_lr),
        "train_config": cfg.to_dict(),
    }
    check_finite(payload, path)
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except RuntimeError as error:  # torch's zip writer on a full disk: "[enforce fail ...] unexpected pos"
        if "unexpected pos" in str(error) or shutil.disk_usage(path.parent).free < len(str(error)) + (64 << 20):
            raise OSError(errno.ENOSPC, "no space left on the device for the checkpoint", str(path)) from None
        raise


# -- logging ----------------------------------------------------------------------------------


class RunLog:
    """Rank 0's record of a run: JSONL lines, TensorBoard scalars (when installed) and a
    progress bar. Files are opened at the first record, so a run that fails early leaves none."""

    def __init__(self, out: Path, total: int, start: int, progress: bool) -> None:
        self.out = out
        self.start = start
        self.file = None
        self.writer = None
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def record(self, step: int, values: dict) -> None:
        if self.file is None:
            _drop_lines_after(self.out / "log.jsonl", self.start)
            self.file = open(self.out / "log.jsonl", "a")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                pass
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key in ("loss", "rec", "lr_fit", "latent", "lambda_lr", "steps_per_s"):
                self.writer.add_scalar(f"train/{key}", values[key], step)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{values['loss']:.4f}", rec=f"{values['rec']:.4f}", sps=f"{values['steps_per_s']:.2f}"
            )

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        for thing in (self.bar, self.file, self.writer):
            if thing is not None:
                thing.close()


def _drop_lines_after(path: Path, step: int) -> None:
    """Keep the log lines of steps <= `step`: a run resumed from step S redoes the steps after S
    (their lines were written before the interruption; the checkpoint is older than them)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _logged_step(line) <= step]
    if len(kept) < len(lines):
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept)))


def _logged_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf  # a line cut by the interruption goes too


def remove_stale_temporaries(out: Path) -> int:
    """Remove the hidden temporary files a killed run left in `out` (atomic_write's
    `.checkpoint.pt.*.tmp`, `.model.safetensors.*.tmp`, `.log.jsonl.*.tmp`); returns how many."""
    count = 0
    for name in ("checkpoint.pt", "model.safetensors", "log.jsonl"):
        for stale in out.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
            count += 1
    return count


# -- signals and time ----------------------------------------------------------------------


@contextlib.contextmanager
def stop_signals():
    """An Event that SIGINT and SIGTERM set while the block runs (the main thread only; elsewhere
    nothing is caught); a second signal goes to the handler that was there before (the CLI's
    ends the process; Python's raises KeyboardInterrupt), or raises KeyboardInterrupt."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_signal(signum, frame):
        if not interrupted.is_set():
            interrupted.signum = signum  # type: ignore[attr-defined]
            interrupted.set()
        elif callable(previous[signum]):
            previous[signum](signum, frame)
        else:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupted
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


FIT_SETTLE, FIT_PROBE = 10, 40  # steps left out of (compilation, first allocations), steps timed
# --fit-steps sizes the schedule again when these shares of --max-minutes are gone, each time from
# the rate of the window since the last fit; none after half the time, where the cosine is steepest
REFIT_SHARES = (0.1, 0.2, 0.3, 0.4, 0.5)


def _synced_clock(runtime: Runtime, clock: Callable[[], float] = time.perf_counter) -> float:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)
    return clock()


class TimeBudget:
    """`--max-minutes` and `--fit-steps`: when a run is out of time, and the schedule sized to it.

    With `fit_steps`, the step rate is timed from FIT_SETTLE steps after the start (after any
    compilation), first over FIT_PROBE steps, then again over each window up to the next share
    of the time in REFIT_SHARES (the machine's load may change), and each measurement sets
    `steps` so that the cosine ends when the time is up (at most `cap`). `clock` is in seconds
    (a test passes its own); under DDP every rank agrees on every decision."""

    def __init__(
        self,
        max_minutes: float | None,
        fit_steps: bool,
        cap: int,
        step: int,
        runtime: Runtime,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.max_minutes, self.cap, self.runtime, self.clock = max_minutes, cap, runtime, clock
        self.started = clock()
        self.refits = list(REFIT_SHARES) if fit_steps else []
        self.timed_from = step + FIT_SETTLE if fit_steps else None
        self.timed_clock, self.fitted = 0.0, False

    def elapsed(self) -> float:
        return self.clock() - self.started

    def out_of_time(self) -> bool:
        return _out_of_time(self.elapsed(), self.max_minutes, self.runtime)

    def refit(self, cfg: TrainConfig, step: int) -> TrainConfig | None:
        """`cfg` with a new `steps` when a measurement of the rate ends at this step, else None."""
        if self.timed_from is None or step < self.timed_from:
            return None
        if step == self.timed_from:
            self.timed_clock = _synced_clock(self.runtime, self.clock)
            return None
        probe_done = not self.fitted and step - self.timed_from == FIT_PROBE
        window_done = self.fitted and on_any_rank(
            self.elapsed() >= 60 * self.max_minutes * self.refits[0], self.runtime
        )
        if not (probe_done or window_done):
            return None
        now = _synced_clock(self.runtime, self.clock)
        rate = (step - self.timed_from) / max(now - self.timed_clock, 1e-9)
        elapsed = self.elapsed()
        fitted = _fit_schedule(cfg, self.cap, step, rate, elapsed, self.max_minutes, self.runtime)
        while self.refits and on_any_rank(elapsed >= 60 * self.max_minutes * self.refits[0], self.runtime):
            self.refits.pop(0)  # shares of the time already gone (the first probe may take long)
        self.timed_from, self.timed_clock, self.fitted = (step if self.refits else None), now, True
        return fitted


def _fit_schedule(
    cfg: TrainConfig, cap: int, step: int, rate: float, elapsed: float, max_minutes: float, runtime: Runtime
) -> TrainConfig:
    """`cfg` with `steps` such that the schedule ends when `max_minutes` are up (2 % kept for the
    final save; `elapsed` seconds are gone) at `rate` steps/s, at most `cap`; every rank takes the
    smallest estimate."""
    left = 60 * max_minutes * 0.98 - elapsed
    steps = torch.tensor(float(min(cap, max(step + 1, step + int(rate * left)))))
    if runtime.ddp:
        steps = steps.to(runtime.device)
        dist.all_reduce(steps, op=dist.ReduceOp.MIN)
    fitted = dataclasses.replace(cfg, steps=int(steps.item()))
    if runtime.master:
        print(f"{rate:.2f} steps/s: the schedule now ends at step {fitted.steps}", flush=True)
    return fitted


def _out_of_time(elapsed: float, max_minutes: float | None, runtime: Runtime) -> bool:
    if max_minutes is None:  # nothing to agree on: no collective, no host sync per step
        return False
    return on_any_rank(elapsed > 60 * max_minutes, runtime)


def on_any_rank(flag: bool, runtime: Runtime) -> bool:
    """Whether `flag` holds on any rank: every rank must agree to stop at the same step."""
    if not runtime.ddp:
        return flag
    value = torch.tensor(float(flag), device=runtime.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
