"""Equal-budget recipe and design comparison on the CPU proxy (docs/ablation.md).

    python benchmarks/ablation.py --out runs/ablation --workers 2          # run every arm
    python benchmarks/ablation.py --out runs/ablation --report docs/x.md   # table of what finished
    python benchmarks/ablation.py --out runs/gpu --arms baseline naive-x2 --steps 6000 --device cuda --workers 2

Every arm trains the small configuration (4 blocks, growth 16) with the same data, seed, batch,
crop and number of steps, differing only in its own flags, then runs `iarn evaluate` on Set5 and
Set14 at x1.5, x2, x3, x4 and (1.5, 4). Arms are claimed from a queue by `--workers` processes of
one thread each; an interrupted arm resumes from its checkpoint (`--resume auto`) and finished
arms are skipped, so the command can simply be run again (one invocation per `--out` at a
time). `--report` prints (or writes) the table from the evaluation JSONs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SCALES = ["1.5", "2", "3", "4", "1.5,4"]
LABELS = ("x1.5", "x2", "x3", "x4", "(1.5, 4)")
COMMON = ["--blocks-per-level", "4", "--growth", "16", "--batch-size", "8", "--crop", "64", "--seed", "0"]

# name -> the flags that make the arm differ from the baseline (the TrainConfig/ModelConfig defaults)
ARMS: dict[str, list[str]] = {
    "baseline": [],
    "baseline-seed1": ["--seed", "1"],
    "lambda-adaptive-45": ["--lr-psnr-target", "45"],
    "lr-1e-3": ["--learning-rate", "1e-3"],
    "split": ["--mode", "split"],
    "encoding-scale-only": ["--encoding", "scale"],
    "lambda-2": ["--lambda-lr", "2"],
    "lr-5e-4": ["--learning-rate", "5e-4"],
    "lr-5e-4-seed1": ["--learning-rate", "5e-4", "--seed", "1"],  # the lead of the first sitting, confirmed or not
    "encoding-off": ["--encoding", "off"],
    "encoding-sincos": ["--encoding", "sincos"],
    "scale-log-uniform": ["--scale-power", "-1"],
    "naive-x2": ["--mode", "naive", "--scale-min", "2", "--scale-max", "2"],
    "batch-2-crop-128": ["--batch-size", "2", "--crop", "128"],
    "batch-32-crop-32": ["--batch-size", "32", "--crop", "32"],
    "middle": ["--mode", "middle", "--levels", "2"],  # the method's geometry (model/modes/), from scratch
}


def run_arm(name: str, args) -> None:
    out, steps, threads = args.out, args.steps, args.threads
    run = out / name
    result = run / "evaluation.json"
    if result.exists():
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    python = [sys.executable, "-m", "iarn"]
    train = python + ["train", "--data", str(args.data), "--out", str(run), "--steps", str(steps), *COMMON, *ARMS[name]]
    train += ["--threads", str(threads), "--resume", "auto", "--no-progress", "--log-every", "50"]
    train += ["--device", args.device] + (["--max-minutes", str(args.max_minutes)] if args.max_minutes else [])
    started = time.perf_counter()
    subprocess.run(train, env=env, check=True, stdout=subprocess.DEVNULL)
    minutes = (time.perf_counter() - started) / 60
    sets = [str(args.benchmark / "Set5"), str(args.benchmark / "Set14")]
    evaluate = python + ["evaluate", "--data", *sets, "--scales", *SCALES, "--device", args.device]
    evaluate += ["--weights", str(run / "model.safetensors"), "--json", str(run / ".evaluation.json")]
    subprocess.run(evaluate, env=env, check=True, stdout=subprocess.DEVNULL)
    results = json.loads((run / ".evaluation.json").read_text())
    results["_run"] = {"flags": ARMS[name], "train_minutes": round(minutes, 1), "steps": steps}
    (run / ".evaluation.json").write_text(json.dumps(results, indent=1))
    os.replace(run / ".evaluation.json", result)


def worker(args) -> None:
    for name in args.arms:
        claim = args.out / name / ".claimed"
        try:
            claim.parent.mkdir(parents=True, exist_ok=True)
            claim.mkdir()
        except FileExistsError:
            continue
        print(f"arm {name}: started {time.strftime('%H:%M:%S')}", flush=True)
        run_arm(name, args)
        print(f"arm {name}: done {time.strftime('%H:%M:%S')}", flush=True)


def report(out: Path) -> str:
    """Markdown: per arm, HR PSNR-Y per scale and set, their mean, and the lowest LR PSNR-Y."""
    rows = []
    for name in ARMS:
        path = out / name / "evaluation.json"
        if not path.exists():
            continue
        results = json.loads(path.read_text())
        run = results.pop("_run")
        hr = {s: [results[s][label]["iarn"]["psnr_y"] for label in LABELS] for s in results}
        lr = [results[s][label]["iarn"]["lr_psnr_y"] for s in results for label in LABELS]
        mean = sum(sum(v) for v in hr.values()) / sum(len(v) for v in hr.values())
        rows.append((name, run, hr, mean, min(lr), max(lr)))
    bicubic = None
    if rows:
        results = json.loads((out / rows[0][0] / "evaluation.json").read_text())
        results.pop("_run")
        bicubic = {s: [results[s][label]["bicubic"]["psnr_y"] for label in LABELS] for s in results}
    head = "| arm | " + " | ".join(f"Set5 {x}" for x in LABELS) + " | " + " | ".join(f"Set14 {x}" for x in LABELS)
    lines = [head + " | mean HR | LR min-max | train min |", "|---" * (2 * len(LABELS) + 4) + "|"]
    for name, run, hr, mean, lr_min, lr_max in rows:
        cells = " | ".join(f"{v:.2f}" for s in ("Set5", "Set14") for v in hr[s])
        lines.append(f"| {name} | {cells} | {mean:.3f} | {lr_min:.1f}-{lr_max:.1f} | {run['train_minutes']} |")
    if bicubic:
        cells = " | ".join(f"{v:.2f}" for s in ("Set5", "Set14") for v in bicubic[s])
        mean = sum(sum(v) for v in bicubic.values()) / sum(len(v) for v in bicubic.values())
        lines.append(f"| bicubic | {cells} | {mean:.3f} | - | - |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--data", type=Path, default=SHARED / "train")
    parser.add_argument("--benchmark", type=Path, default=SHARED / "benchmark")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1, help="processes, one arm at a time each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="default: all")
    parser.add_argument("--device", default="cpu", help="for training and evaluation (default cpu: the proxy)")
    parser.add_argument("--max-minutes", type=float, help="cut each arm's training here (it resumes on a rerun)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", nargs="?", const="-", metavar="FILE", help="write the table (- prints it)")
    args = parser.parse_args()
    if args.report:
        table = report(args.out)
        print(table, end="") if args.report == "-" else Path(args.report).write_text(table)
        return
    if args.worker:
        worker(args)
        return
    for name in ARMS:  # claims left by an interrupted invocation
        claim = args.out / name / ".claimed"
        if claim.is_dir() and not (args.out / name / "evaluation.json").exists():
            claim.rmdir()
    if args.workers == 1:
        worker(args)
        return
    command = [sys.executable, __file__, "--worker", "--out", str(args.out), "--data", str(args.data)]
    command += ["--benchmark", str(args.benchmark), "--steps", str(args.steps), "--threads", str(args.threads)]
    command += ["--device", args.device, "--arms", *args.arms]
    command += ["--max-minutes", str(args.max_minutes)] if args.max_minutes else []
    processes = [subprocess.Popen(command) for _ in range(args.workers)]
    sys.exit(max(p.wait() for p in processes))


if __name__ == "__main__":
    main()
