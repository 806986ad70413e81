"""Everything one lent GPU session measures and trains, in one command of at most 9 minutes.

Here, once (copies what the GPU needs into `device/`, which git ignores; 64 MiB travel in all):

    python benchmarks/gpu_session.py --prepare

On the device machine (`run` with carry ["device"], timeout_s 600):

    PYTHONUNBUFFERED=1 python benchmarks/gpu_session.py --out $OUT

and on this CPU, the same path at tiny sizes in about a minute (tests/test_benchmarks.py runs it):

    python benchmarks/gpu_session.py --smoke --out /tmp/session

Phases, each a subprocess with its own time limit, so one failure loses nothing else:

1. `throughput`: benchmarks/train_throughput.py for the model being trained (eager, batch 16
   and 32 of 144 px), which picks the batch of phase 5 (throughput.md);
2. `infer`: benchmarks/infer.py at 8.3 MP (4K), default-size model, eager variants (infer.md);
3. `profile`: the heaviest operators of one 8.3 MP down- and upscale, untiled bf16 (profile.md);
4. `quality gate`: benchmarks/quality_gate.py on Set5, bf16 and fp16 against fp32 (infer.md);
5. `train`: `iarn train --init-from WEIGHTS` (default: the bundled model) with the recipe of
   `TRAIN_RECIPE`, compiled, its cosine schedule fitted to the minutes left (`--fit-steps`);
   eager again if compiling fails (train_log.jsonl, model.safetensors);
6. `infer compiled`: the compiled untiled bf16 variant at 8.3 MP, with what is left (infer.md);
7. `evaluate`: `iarn evaluate` of the trained model on Set5 (evaluate.json).

At most 7 files go into `--out`, among them session.md: the settings, each phase's time and exit
status, and its printed output.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the device machine runs the tree without installing it

from train_throughput import synthetic_images  # noqa: E402  (beside this script)

DEVICE = ROOT / "device"
SHARED = ROOT.parent / "shared"
BUNDLED = ROOT / "src" / "iarn" / "bundled" / "default.safetensors"
# the recipe of the training phase: the ablation's lead (docs/ablation.md) and the bundled model's scales
TRAIN_RECIPE = ["--lr", "5e-4", "--scale-power", "-1"]
RESERVE_S = 85  # left after training: compiled inference (about 60 s) and the Set5 evaluation
BIG_BATCH_GAIN = 1.5  # batch 32 is chosen when its MP/s is at least this many times batch 16's


def prepare(budget_mb: float) -> None:
    """Copy training images (up to `budget_mb`) and Set5 into device/."""
    images = sorted((SHARED / "data" / "train_small").iterdir())
    target = DEVICE / "data" / "train"
    if DEVICE.exists():
        shutil.rmtree(DEVICE)
    target.mkdir(parents=True)
    used = 0
    for path in images:
        if used + path.stat().st_size > budget_mb * 1e6:
            break
        shutil.copy2(path, target / path.name)
        used += path.stat().st_size
    shutil.copytree(SHARED / "data" / "benchmark" / "Set5", DEVICE / "data" / "Set5")
    total = sum(p.stat().st_size for p in DEVICE.rglob("*") if p.is_file())
    count = len(list(target.iterdir()))
    print(f"device/: {count} training images and Set5; {total / 1e6:.1f} MB")


class Session:
    """Runs the phases against one deadline and records them in session.md."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        self.deadline = time.monotonic() + budget_s
        self.report = [f"# GPU session, {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def phase(self, name: str, command: list[str], limit_s: float, output: Path | None = None) -> str:
        limit_s = max(10.0, min(limit_s, self.left()))
        started = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "src")}
        print(f"== {name} (limit {limit_s:.0f} s): {' '.join(command)}", flush=True)
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=limit_s, env=env, cwd=ROOT)
            status, text = f"exit {result.returncode}", result.stdout + result.stderr[-3000:]
        except subprocess.TimeoutExpired as expired:
            status = "timed out"
            text = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        seconds = time.monotonic() - started
        print(text, flush=True)
        if output is not None:
            output.write_text(text)
        self.report += [f"## {name}: {status}, {seconds:.0f} s", "", "    " + " ".join(command), "", text, ""]
        self.save()
        return text

    def save(self) -> None:
        (self.out / "session.md").write_text("\n".join(self.report) + "\n")


def mp_per_s(table: str, lever: str) -> float | None:
    """MP/s of a lever's row in a throughput table."""
    match = re.search(rf"^\| {re.escape(lever)} \| [\d.]+ \| ([\d.]+) \|", table, re.MULTILINE)
    return float(match.group(1)) if match else None


def chosen_batch(table: str, small: int, big: int) -> int:
    """`big` when the throughput table shows it at least BIG_BATCH_GAIN times the MP/s of `small`."""
    rate_small, rate_big = mp_per_s(table, "device-crops"), mp_per_s(table, f"batch-{big}")
    return big if rate_small and rate_big and rate_big >= BIG_BATCH_GAIN * rate_small else small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output folder (on the device machine: $OUT)")
    parser.add_argument("--prepare", action="store_true", help="fill device/ from ../shared, then stop")
    parser.add_argument("--prepare-mb", type=float, default=52.0, help="MB of training images to carry")
    parser.add_argument("--smoke", action="store_true", help="the same path on the CPU at tiny sizes")
    parser.add_argument(
        "--budget-minutes", type=float, help="the whole session's wall time (default 9; 20 with --smoke, for busy CPUs)"
    )
    parser.add_argument("--data", type=Path, default=DEVICE / "data" / "train")
    parser.add_argument("--set5", type=Path, default=DEVICE / "data" / "Set5")
    parser.add_argument("--init-from", type=Path, default=BUNDLED, help="weights to train on (default: bundled)")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare_mb)
        return
    if args.out is None:
        parser.error("--out is required")
    args.out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    session = Session(args.out, 60 * (args.budget_minutes or (20.0 if args.smoke else 9.0)))
    scratch = Path(tempfile.mkdtemp(prefix="iarn-session-"))
    model = load_config(args.init_from)
    model_flags = ["--blocks-per-level", str(model["blocks_per_level"]), "--growth", str(model["growth"])]
    if args.smoke:
        device, batch, big_batch, crop = "cpu", 2, 4, "32"
        timing = ["--warmup", "1", "--steps", "2", "--windows", "1"]
        infer = ["--megapixels", "0.02", "--repeats", "1"]
        variants = ["fp32", "untiled+bf16"]
        gate = ["--variants", "bf16"]
        args.data = synthetic_images(scratch / "train", 4, 96)
        args.set5 = synthetic_images(scratch / "set5", 2, 64)
        train_minutes = 0.3  # the fitted schedule's probe needs 50 steps
    else:
        device, batch, big_batch, crop = "cuda", 16, 32, "144"
        timing = ["--warmup", "3", "--steps", "10", "--windows", "2"]
        infer = ["--megapixels", "8.3", "--repeats", "5"]
        variants = ["fp32", "bf16", "untiled+bf16", "untiled+bf16+channels_last", "untiled+fp16"]
        gate = ["--variants", "bf16", "fp16"]
        train_minutes = None  # what is left but RESERVE_S
    session.report += [f"device {device}; data {args.data} ({len(list(args.data.iterdir()))} files)", ""]
    bench = ROOT / "benchmarks"

    # 1. the training step of the model to train: batch 16 against 32 (synthetic images: speed only)
    sizes = ["--batch-size", str(batch), "--big-batch", str(big_batch), "--crop", crop]
    table = session.phase(
        "throughput",
        [python, str(bench / "train_throughput.py"), "--device", device, *model_flags, *sizes, *timing]
        + ["--levers", "device-crops", "batch"],
        limit_s=60,
        output=args.out / "throughput.md",
    )
    batch = chosen_batch(table, batch, big_batch)

    # 2-4. inference at 4K (default-size model), its profile, the quality gate (bundled model)
    text = session.phase(
        "infer",
        [python, str(bench / "infer.py"), "--device", device, "--weights", "random", *infer, "--variants", *variants],
        limit_s=75,
    )
    session.phase(
        "profile",
        [python, str(bench / "infer.py"), "--device", device, "--weights", "random", *infer[:2]]
        + ["--profile", "untiled+bf16", "--profile-rows", "25"],
        limit_s=40,
        output=args.out / "profile.md",
    )
    text += session.phase(
        "quality gate",
        [python, str(bench / "quality_gate.py"), "--device", device, "--data", str(args.set5), *gate],
        limit_s=40,
    )
    (args.out / "infer.md").write_text(text)

    # 5. training, compiled, its schedule fitted to the time left
    run = scratch / "run"
    minutes = train_minutes or max(0.3, (session.left() - RESERVE_S) / 60)
    train = [python, "-m", "iarn", "train", "--data", str(args.data), "--out", str(run), "--device", device]
    train += ["--init-from", str(args.init_from), *TRAIN_RECIPE, "--crop", crop, "--batch-size", str(batch)]
    train += ["--steps", "1000000", "--fit-steps", "--checkpoint-every", "100000", "--log-every", "100"]
    train += ["--no-progress"]
    session.report += [f"batch {batch}; training {minutes:.1f} min: {' '.join(train)}", ""]
    compiled = [] if args.smoke else ["--compile"]  # compiling on the CPU would take most of a smoke run
    session.phase("train", [*train, *compiled, "--max-minutes", f"{minutes:.2f}"], limit_s=60 * minutes + 45)
    if not (run / "model.safetensors").exists():
        minutes = min(minutes, (session.left() - RESERVE_S) / 60)
        if minutes > 0.25:
            shutil.rmtree(run, ignore_errors=True)
            session.phase("train eager", [*train, "--max-minutes", f"{minutes:.2f}"], limit_s=60 * minutes + 30)
    for name, target in (("log.jsonl", "train_log.jsonl"), ("model.safetensors", "model.safetensors")):
        if (run / name).exists():
            shutil.copy2(run / name, args.out / target)

    # 6. compiled inference with what is left, less the evaluation
    if not args.smoke and session.left() > 40:
        text += session.phase(
            "infer compiled",
            [python, str(bench / "infer.py"), "--device", device, "--weights", "random", *infer[:2]]
            + ["--repeats", "3", "--variants", "untiled+bf16", "untiled+bf16+compile"],
            limit_s=session.left() - 20,
        )
        (args.out / "infer.md").write_text(text)

    # 7. evaluation on Set5
    if (args.out / "model.safetensors").exists():
        evaluate = [python, "-m", "iarn", "evaluate", "--data", str(args.set5), "--device", device]
        evaluate += ["--weights", str(args.out / "model.safetensors"), "--json", str(args.out / "evaluate.json")]
        session.phase("evaluate", evaluate, limit_s=session.left())
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"session report: {args.out / 'session.md'}")


def load_config(weights: Path) -> dict:
    """The model config stored in a weight file's metadata (without importing iarn)."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as handle:
        return json.loads(handle.metadata()["config"])


if __name__ == "__main__":
    main()
