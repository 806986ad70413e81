"""Everything one lent GPU session measures, in one command of at most 9 minutes.

Here, once (copies what the GPU needs into `device/`, which git ignores; 64 MiB travel in all):

    python benchmarks/gpu_session.py --prepare

On the device machine (`run` with carry ["device"], timeout_s 600):

    PYTHONUNBUFFERED=1 python benchmarks/gpu_session.py --out $OUT

and on this CPU, the same path at tiny sizes in about a minute (tests/test_benchmarks.py runs it):

    python benchmarks/gpu_session.py --smoke --out /tmp/session

Phases, each a subprocess with its own time limit, so one failure loses nothing else:

1. `throughput`: benchmarks/train_throughput.py, every lever in one process (throughput.md);
2. `infer`: benchmarks/infer.py at 8.3 MP (4K) and benchmarks/quality_gate.py on Set5 (infer.md);
3. `train`: `iarn train --init-from WEIGHTS` (default: the newest full-size weights under
   device/weights/) with the fastest batch-16 settings of phase 1, for what is left of the
   budget less the evaluation (train_log.jsonl, model.safetensors);
4. `evaluate`: `iarn evaluate` on Set5 (evaluate.md, evaluate.json).

It writes at most 7 files into `--out`, among them session.md: the settings, each phase's time
and exit status, and its printed output.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_throughput import synthetic_images  # beside this script

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "device"
SHARED = ROOT.parent / "shared"
LEVER_FLAGS = {  # train flags for the fastest lever of the throughput table
    "rebuilt": [],
    "cached": [],
    "device-crops": [],
    "bf16": ["--amp", "bf16"],
    "compile": ["--amp", "bf16", "--compile"],
    "cudagraphs": ["--amp", "bf16", "--compile", "--compile-mode", "reduce-overhead"],
}


def prepare(budget_mb: float) -> None:
    """Copy training images (up to `budget_mb`), Set5 and the newest full-size weights into device/."""
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
    (DEVICE / "weights").mkdir()
    weights = newest_weights(SHARED / "weights")
    if weights:
        shutil.copy2(weights, DEVICE / "weights" / weights.name)
    total = sum(p.stat().st_size for p in DEVICE.rglob("*") if p.is_file())
    count = len(list(target.iterdir()))
    print(f"device/: {count} training images, Set5, {weights and weights.name}; {total / 1e6:.1f} MB")


def newest_weights(folder: Path) -> Path | None:
    found = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return found[-1] if found else None


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


def fastest_lever(table: str) -> str:
    """The batch-16 lever with the most MP/s in a throughput table ("cached" if none parsed)."""
    best, best_rate = "cached", -1.0
    for match in re.finditer(r"^\| ([\w-]+) \| [\d.]+ \| ([\d.]+) \|", table, re.MULTILINE):
        lever, rate = match.group(1), float(match.group(2))
        if lever in LEVER_FLAGS and rate > best_rate:
            best, best_rate = lever, rate
    return best


def lever_row(table: str, lever: str) -> tuple[float, float] | None:
    """(steps/s, warm-up seconds) of a lever's row in a throughput table."""
    pattern = rf"^\| {re.escape(lever)} \| ([\d.]+) \| [\d.]+ \| [\d.]+x \| ([\d.]+) \|"
    match = re.search(pattern, table, re.MULTILINE)
    return (float(match.group(1)), float(match.group(2))) if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output folder (on the device machine: $OUT)")
    parser.add_argument("--prepare", action="store_true", help="fill device/ from ../shared, then stop")
    parser.add_argument("--prepare-mb", type=float, default=48.0, help="MB of training images to carry")
    parser.add_argument("--smoke", action="store_true", help="the same path on the CPU at tiny sizes")
    parser.add_argument(
        "--budget-minutes", type=float, help="the whole session's wall time (default 9; 20 with --smoke, for busy CPUs)"
    )
    parser.add_argument("--data", type=Path, default=DEVICE / "data" / "train")
    parser.add_argument("--set5", type=Path, default=DEVICE / "data" / "Set5")
    parser.add_argument("--init-from", help="weights to continue (default: newest in device/weights)")
    parser.add_argument("--train-minutes", type=float, default=0, help="0: whatever the budget leaves")
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
    if args.smoke:
        device, model_flags = "cpu", ["--blocks-per-level", "1", "--growth", "4"]
        sizes = ["--batch-size", "2", "--crop", "32", "--big-batch", "4", "--warmup", "1", "--steps", "2"]
        throughput = [*model_flags, *sizes, "--windows", "1", "--levers", "rebuilt", "cached", "device-crops"]
        infer = ["--megapixels", "0.02", "--repeats", "1", "--variants", "fp32", "bf16"]
        gate = ["--variants", "bf16"]
        train_size = [*model_flags, "--batch-size", "2", "--crop", "32", "--steps", "3"]
        if not args.data.is_dir():
            args.data = synthetic_images(scratch / "train", 4, 96)
        if not args.set5.is_dir():
            args.set5 = synthetic_images(scratch / "set5", 2, 64)
        init_from = None
    else:
        device, throughput = "cuda", []
        # compile+bf16 is left out: infer.py compiles during its warm-up, before any row is printed
        infer = ["--megapixels", "8.3", "--repeats", "5", "--variants", "fp32", "bf16", "untiled+bf16", "untiled+fp16"]
        gate = ["--variants", "bf16", "fp16"]
        train_size = []
        init_from = args.init_from or newest_weights(DEVICE / "weights")
    session.report += [
        f"device {device}; data {args.data} ({len(list(args.data.iterdir()))} files); init from {init_from}",
        "",
    ]

    # 1. training throughput, lever by lever
    bench = ROOT / "benchmarks"
    table = session.phase(
        "throughput",
        [python, str(bench / "train_throughput.py"), "--device", device, "--data", str(args.data), *throughput],
        limit_s=0.4 * session.left(),  # compiling (3 rows) dominates; rows print as they finish
        output=args.out / "throughput.md",
    )

    # 2. inference at 4K and the quality gate
    weights = [] if init_from is None else ["--weights", str(init_from)]
    text = session.phase(
        "infer", [python, str(bench / "infer.py"), "--device", device, *weights, *infer], limit_s=0.2 * session.left()
    )
    text += session.phase(
        "quality gate",
        [python, str(bench / "quality_gate.py"), "--device", device, "--data", str(args.set5), *weights, *gate],
        limit_s=0.15 * session.left(),
    )
    (args.out / "infer.md").write_text(text)

    # 3. training from the given weights with the fastest settings
    lever = fastest_lever(table)
    minutes = args.train_minutes or max(0.2, (session.left() - 75) / 60)
    row = lever_row(table, lever)
    rate = row[0] if row else None
    if row and not args.smoke:  # the cosine schedule should end with the time, compile time left out
        steps = ["--steps", str(max(10, int(row[0] * (minutes * 60 - row[1]))))]
    else:
        steps = []
    run = scratch / "run"
    train = [python, "-m", "iarn", "train", "--data", str(args.data), "--out", str(run), "--device", device]
    train += [*train_size, *steps, *LEVER_FLAGS.get(lever, []), "--max-minutes", f"{minutes:.2f}", "--no-progress"]
    train += ["--checkpoint-every", "100000", "--log-every", "100"]
    train += [] if init_from is None else ["--init-from", str(init_from)]
    session.report += [f"fastest lever: {lever} ({rate} steps/s); training {minutes:.1f} min", ""]
    session.phase("train", train, limit_s=60 * minutes + 60)
    for name, target in (("log.jsonl", "train_log.jsonl"), ("model.safetensors", "model.safetensors")):
        if (run / name).exists():
            shutil.copy2(run / name, args.out / target)

    # 4. evaluation on Set5
    if (args.out / "model.safetensors").exists():
        evaluate = [python, "-m", "iarn", "evaluate", "--data", str(args.set5), "--device", device]
        evaluate += ["--weights", str(args.out / "model.safetensors"), "--json", str(args.out / "evaluate.json")]
        session.phase("evaluate", evaluate, limit_s=session.left(), output=args.out / "evaluate.md")
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"session report: {args.out / 'session.md'}")


if __name__ == "__main__":
    main()
