"""Everything one lent GPU session measures and trains, in one command of at most 9 minutes.

Here, once (copies what the GPU needs into `device/`, which git ignores; 64 MiB travel in all):

    python benchmarks/gpu_session.py --prepare

On the device machine (`run` with carry ["device"], timeout_s 600):

    PYTHONUNBUFFERED=1 python benchmarks/gpu_session.py --out $OUT [--phases infer profile gate ablation]

and on this CPU, the same path at tiny sizes in about a minute (tests/test_benchmarks.py runs it):

    python benchmarks/gpu_session.py --smoke --out /tmp/session

Phases (`--phases`, in this order; default: all but `corrector`, `train` and `ablation`), each a
subprocess with its own time limit, so one failure loses nothing else:

- `throughput`: benchmarks/train_throughput.py for the model being trained (eager, batch 16
  and 32 of 144 px), which picks the batch of `train` (throughput.md);
- `infer`: benchmarks/infer.py at 8.3 MP (4K), default-size model, eager variants (infer.md);
- `profile`: the heaviest operators of one 8.3 MP down- and upscale (profile.md);
- `gate`: benchmarks/quality_gate.py on Set5, the fast variants against fp32 (infer.md);
- `effort`: benchmarks/effort.py on the GPU: the 1 MP downscale's seconds at each effort level
  and Set5's dB at x2, x3, x4 and (1.5, 4) (the GPU column of docs/performance.md, "Effort";
  effort.md);
- `refine`: `iarn evaluate --refine N` of the bundled model on Set5 and Set14 at the ten
  protocol scales, N = 0, 10 and 30, then (if `--prepare --large-sets` carried them, at the cost
  of 41 MB of training images) on B100 and Kodak with N = 0 and 10 (the refinement
  tables of docs/history.md, and their seconds per N on the GPU; its tables are in session.md);
- `jpeg`: `iarn train` with config/jpeg.json from the bundled `jpeg` model (issue 39: JPEG
  between the two directions), on the GPU for half the time left (jpeg_log.jsonl,
  jpeg.safetensors), then benchmarks/lossy_table.py on Set5 at JPEG quality 90 and 75, x2 and
  x4, against bicubic through the same JPEG (in session.md);
- `corrector` (opt-in): `iarn train-corrector` with config/corrector.json and `--per-count`
  from the bundled corrector (`--init-from`), every scale, on the GPU for a share of the time
  left (corrector_log.jsonl, corrector.safetensors), then its Set5 table at effort 1
  (corrector.md);
- `train` (opt-in): `iarn train --init-from WEIGHTS` (default: the bundled model) with the recipe of
  `TRAIN_RECIPE`, compiled, its cosine schedule fitted to the minutes left (`--fit-steps`);
  eager again if compiling fails (train_log.jsonl, model.safetensors);
- `infer-compiled`: the compiled untiled bf16 variant at 8.3 MP, with what is left (infer.md);
- `evaluate`: `iarn evaluate` of the trained model on Set5 (evaluate.json);
- `ablation`: benchmarks/ablation.py arms `ABLATION_ARMS` side by side on the GPU for
  `--ablation-steps` steps each, evaluated on Set5 and Set14 (ablation.md).

The default phases write 7 files into `--out` (the device tool brings back at most 8), among them
session.md: the settings, each phase's time and exit status, and its printed output. The opt-in
phases write 3 each: name them in place of others.
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
BUNDLED_JPEG = BUNDLED.with_name("jpeg.safetensors")
# the recipe of the training phase: that of the CPU legs E and F which the bundled default's
# stages come from (docs/history.md): half the old learning rate on converged weights, and the
# LR held near 42 dB on training crops (the benchmarks' LR stays above 46 dB, the bar is 44)
TRAIN_RECIPE = ["--learning-rate", "5e-5", "--scale-power", "1", "--integer-share", "0.3"]
TRAIN_RECIPE += ["--lr-psnr-target", "42", "--lr-shortfall-power", "2"]
RESERVE_S = 85  # left after training: compiled inference (about 60 s) and the Set5 evaluation
BIG_BATCH_GAIN = 1.5  # batch 32 is chosen when its MP/s is at least this many times batch 16's
PHASES = (
    "throughput",
    "infer",
    "profile",
    "gate",
    "effort",
    "refine",
    "jpeg",
    "corrector",
    "train",
    "infer-compiled",
    "evaluate",
    "ablation",
)
OPT_IN = ("corrector", "train", "ablation")  # default: every phase but these (the JPEG model is what trains now)
# the open design question of docs/ablation.md: the middle mode from scratch against naive x2 at GPU budgets
ABLATION_ARMS = ["middle", "naive-x2"]
# fast inference variants measured against the plain bf16 path and the fp32 tiles
INFER_VARIANTS = [
    "fp32",
    "untiled+bf16+unaligned",
    "untiled+bf16",
    "untiled+bf16+cudnn_benchmark",
    "untiled+bf16+channels_last",
    "untiled+bf16+channels_last+cudnn_benchmark",
    "untiled+fp16+channels_last",
]
GATE_VARIANTS = ["bf16", "bf16+channels_last", "fp16+channels_last"]


def prepare(budget_mb: float, large_sets: bool) -> None:
    """Copy training images (up to `budget_mb`), Set5 and Set14 (`large_sets`: B100 and Kodak too,
    41 MB, taken from the training images' budget) into device/."""
    sets = ("Set5", "Set14", *(("B100", "Kodak") if large_sets else ()))
    if large_sets:
        folders = [SHARED / "data" / "benchmark" / name for name in sets[2:]]
        budget_mb -= sum(p.stat().st_size for folder in folders for p in folder.iterdir()) / 1e6
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
    for name in sets:
        shutil.copytree(SHARED / "data" / "benchmark" / name, DEVICE / "data" / "benchmark" / name)
    total = sum(p.stat().st_size for p in DEVICE.rglob("*") if p.is_file())
    count = len(list(target.iterdir()))
    print(f"device/: {count} training images, {', '.join(sets)}; {total / 1e6:.1f} MB")


class Session:
    """Runs the phases against one deadline and records them in session.md."""

    def __init__(self, out: Path, budget_s: float, slack: float = 1.0) -> None:
        self.out, self.slack = out, slack  # slack: phase limits stretched (a smoke run on a busy CPU)
        self.deadline = time.monotonic() + budget_s
        self.report = [f"# GPU session, {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def phase(self, name: str, command: list[str], limit_s: float, output: Path | None = None) -> str:
        limit_s = max(10.0, min(limit_s * self.slack, self.left()))
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
    parser.add_argument("--prepare-mb", type=float, default=52.0, help="MB of training images and B100/Kodak")
    parser.add_argument("--large-sets", action="store_true", help="--prepare: B100 and Kodak too (refine phase)")
    parser.add_argument("--smoke", action="store_true", help="the same path on the CPU at tiny sizes")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=[p for p in PHASES if p not in OPT_IN])
    parser.add_argument(
        "--budget-minutes", type=float, help="the whole session's wall time (default 9; 20 with --smoke, for busy CPUs)"
    )
    parser.add_argument("--data", type=Path, default=DEVICE / "data" / "train")
    parser.add_argument("--benchmark", type=Path, default=DEVICE / "data" / "benchmark", help="holds Set5, Set14")
    parser.add_argument("--init-from", type=Path, default=BUNDLED, help="weights to train on (default: bundled)")
    parser.add_argument("--ablation-steps", type=int, default=5000)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare_mb, args.large_sets)
        return
    if args.out is None:
        parser.error("--out is required")
    args.out.mkdir(parents=True, exist_ok=True)
    session = Session(args.out, 60 * (args.budget_minutes or (20.0 if args.smoke else 9.0)), 5.0 if args.smoke else 1.0)
    scratch = Path(tempfile.mkdtemp(prefix="iarn-session-"))
    plan = Plan(args, scratch)
    session.report += [f"device {plan.device}; data {args.data} ({len(list(args.data.iterdir()))} files)", ""]
    for name in PHASES:
        if name in args.phases:
            getattr(plan, name.replace("-", "_"))(session)
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"session report: {args.out / 'session.md'}")


class Plan:
    """The phases, with the sizes of a GPU session or of a CPU smoke run."""

    def __init__(self, args, scratch: Path) -> None:
        self.args, self.out, self.scratch, self.python = args, args.out, scratch, sys.executable
        self.bench = ROOT / "benchmarks"
        model = load_config(args.init_from)
        self.model_flags = ["--blocks-per-level", str(model["blocks_per_level"]), "--growth", str(model["growth"])]
        self.infer_text = ""
        if args.smoke:
            self.device, self.batch, self.big_batch, self.crop = "cpu", 2, 4, "32"
            self.timing = ["--warmup", "1", "--steps", "2", "--windows", "1"]
            self.infer_size = ["--megapixels", "0.02", "--repeats", "1"]
            self.variants = ["fp32", "untiled+bf16", "untiled+bf16+channels_last+unaligned"]
            self.gate_flags = ["--variants", "bf16+channels_last"]
            args.data = synthetic_images(scratch / "train", 4, 96)
            for name in ("Set5", "Set14"):
                synthetic_images(scratch / "benchmark" / name, 2, 64)
            args.benchmark = scratch / "benchmark"
            self.train_minutes: float | None = 0.3  # the fitted schedule's probe needs 50 steps
            args.ablation_steps = min(args.ablation_steps, 4)
        else:
            self.device, self.batch, self.big_batch, self.crop = "cuda", 16, 32, "144"
            self.timing = ["--warmup", "3", "--steps", "10", "--windows", "2"]
            self.infer_size = ["--megapixels", "8.3", "--repeats", "5"]
            self.variants = INFER_VARIANTS
            self.gate_flags = ["--variants", *GATE_VARIANTS]
            self.train_minutes = None  # what is left but RESERVE_S
        self.set5 = args.benchmark / "Set5"
        self.run = scratch / "run"

    def throughput(self, session: Session) -> None:
        """The training step of the model to train: batch 16 against 32 (synthetic images: speed only)."""
        sizes = ["--batch-size", str(self.batch), "--big-batch", str(self.big_batch), "--crop", self.crop]
        table = session.phase(
            "throughput",
            [self.python, str(self.bench / "train_throughput.py"), "--device", self.device, *self.model_flags]
            + [*sizes, *self.timing, "--levers", "device-crops", "batch"],
            limit_s=60,
            output=self.out / "throughput.md",
        )
        self.batch = chosen_batch(table, self.batch, self.big_batch)

    def _infer_command(self) -> list[str]:
        return [self.python, str(self.bench / "infer.py"), "--device", self.device, "--weights", "random"]

    def infer(self, session: Session) -> None:
        """Inference at 4K (default-size model)."""
        command = [*self._infer_command(), *self.infer_size, "--variants", *self.variants]
        self.infer_text += session.phase("infer", command, limit_s=100)
        (self.out / "infer.md").write_text(self.infer_text)

    def profile(self, session: Session) -> None:
        variant = "untiled+bf16+channels_last"
        command = [*self._infer_command(), *self.infer_size[:2], "--profile", variant, "--profile-rows", "25"]
        session.phase("profile", command, limit_s=40, output=self.out / "profile.md")

    def gate(self, session: Session) -> None:
        """The quality gate (bundled model) of the fast variants."""
        command = [self.python, str(self.bench / "quality_gate.py"), "--device", self.device]
        self.infer_text += session.phase("gate", [*command, "--data", str(self.set5), *self.gate_flags], limit_s=60)
        (self.out / "infer.md").write_text(self.infer_text)

    def refine(self, session: Session) -> None:
        """Encode-time refinement (`--refine N`) of the bundled model on Set5 and Set14, timed per N."""
        smoke = self.args.smoke
        protocol = ["1.5", "2", "2.5", "3", "3.5", "4", "1.5,4", "1.5,3.5", "1.6,3.05", "4,2"]
        scales = ["2", "1.5,4"] if smoke else protocol
        sets = [str(self.set5)] if smoke else [str(self.set5), str(self.args.benchmark / "Set14")]
        for steps in [2] if smoke else [0, 10, 30]:  # smoke: N = 0 is the same path
            command = [self.python, "-m", "iarn", "evaluate", "--data", *sets, "--device", self.device]
            command += ["--weights", str(BUNDLED), "--scales", *scales, "--refine", str(steps)]
            session.phase(f"refine {steps}", command, limit_s=30 if smoke else 30 + 4 * steps)
        if smoke:
            return
        larger = [str(self.args.benchmark / name) for name in ("B100", "Kodak")]  # issue 24's other cells
        if not all(map(os.path.isdir, larger)):
            session.report += ["## refine B100+Kodak: skipped (not carried: --prepare --large-sets)", ""]
            return
        for steps in [0, 10]:
            command = [self.python, "-m", "iarn", "evaluate", "--data", *larger, "--device", self.device]
            command += ["--weights", str(BUNDLED), "--scales", *protocol, "--refine", str(steps)]
            session.phase(f"refine {steps} B100+Kodak", command, limit_s=60 + 18 * steps)

    def effort(self, session: Session) -> None:
        """dB against seconds per effort level on this device (the GPU column of the effort table)."""
        smoke = self.args.smoke
        command = [self.python, str(self.bench / "effort.py"), "--device", self.device, "--data", str(self.set5)]
        command += ["--scales", "2", "1.5,4"] if smoke else ["--scales", "2", "3", "4", "1.5,4"]
        command += ["--efforts", "0", "1", "3"] if smoke else ["--efforts", "0", "1", "2", "3", "4", "5"]
        command += ["--timing-size", "96x64", "--repeats", "1"] if smoke else ["--repeats", "5"]
        session.phase("effort", command, limit_s=60 if smoke else 150, output=self.out / "effort.md")

    def jpeg(self, session: Session) -> None:
        """The JPEG model's fine-tuning on this device, from the bundled one, then Set5 through JPEG."""
        run = self.scratch / "jpeg"
        minutes = self.train_minutes or max(0.5, 0.5 * (session.left() - RESERVE_S) / 60)
        command = [self.python, "-m", "iarn", "train", "--config", str(ROOT / "config" / "jpeg.json")]
        command += ["--data", str(self.args.data), "--out", str(run), "--device", self.device]
        command += ["--init-from", str(BUNDLED_JPEG), "--batch-size", str(self.batch), "--crop", self.crop]
        command += ["--steps", "1000000", "--fit-steps", "--max-minutes", f"{minutes:.2f}", "--no-progress"]
        session.phase("jpeg", command, limit_s=60 * minutes + 45)
        for name, target in (("log.jsonl", "jpeg_log.jsonl"), ("model.safetensors", "jpeg.safetensors")):
            if (run / name).exists():
                shutil.copy2(run / name, self.out / target)
        if (self.out / "jpeg.safetensors").exists():
            table = [self.python, str(self.bench / "lossy_table.py"), "--data", str(self.set5), "--scales", "2", "4"]
            table += ["--formats", "jpeg:90", "jpeg:75", "--models", str(self.out / "jpeg.safetensors"), "jpeg"]
            table += ["--device", self.device]
            session.phase("jpeg evaluate", table, limit_s=60 if self.args.smoke else 90)

    def corrector(self, session: Session) -> None:
        """The LR corrector's training on this device, from the bundled one, then Set5 at effort 1."""
        run = self.scratch / "corrector"
        minutes = 0.3 if self.args.smoke else max(0.5, 0.5 * (session.left() - RESERVE_S) / 60)
        command = [self.python, "-m", "iarn", "train-corrector", "--config", str(ROOT / "config" / "corrector.json")]
        command += ["--data", str(self.args.data), "--out", str(run), "--device", self.device]
        command += ["--init-from", str(BUNDLED), "--max-minutes", f"{minutes:.2f}", "--steps", "1000000"]
        command += ["--per-count"]  # the bundled corrector's stacks are per step count: continue them, every scale
        if self.args.smoke:
            command += ["--crop", "32", "--batch-size", "2"]
        session.phase("corrector", command, limit_s=60 * minutes + 60)
        for name, target in (
            ("corrector-log.jsonl", "corrector_log.jsonl"),
            ("model.safetensors", "corrector.safetensors"),
        ):
            if (run / name).exists():
                shutil.copy2(run / name, self.out / target)
        if (self.out / "corrector.safetensors").exists():
            evaluate = [self.python, "-m", "iarn", "evaluate", "--data", str(self.set5), "--device", self.device]
            evaluate += ["--weights", str(self.out / "corrector.safetensors"), "--scales", "2", "3", "4", "1.5,4"]
            session.phase("corrector evaluate", evaluate, limit_s=60, output=self.out / "corrector.md")

    def train(self, session: Session) -> None:
        """Training of the given weights, compiled, its schedule fitted to the time left."""
        args, run = self.args, self.run
        minutes = self.train_minutes or max(0.3, (session.left() - RESERVE_S) / 60)
        train = [self.python, "-m", "iarn", "train", "--data", str(args.data), "--out", str(run)]
        train += ["--device", self.device, "--init-from", str(args.init_from), *TRAIN_RECIPE, "--crop", self.crop]
        train += ["--batch-size", str(self.batch), "--steps", "1000000", "--fit-steps"]
        train += ["--checkpoint-every", "100000", "--log-every", "100", "--no-progress"]
        session.report += [f"batch {self.batch}; training {minutes:.1f} min: {' '.join(train)}", ""]
        compiled = [] if args.smoke else ["--compile"]  # compiling on the CPU would take most of a smoke run
        session.phase("train", [*train, *compiled, "--max-minutes", f"{minutes:.2f}"], limit_s=60 * minutes + 45)
        if not (run / "model.safetensors").exists():
            minutes = min(minutes, (session.left() - RESERVE_S) / 60)
            if minutes > 0.25:
                shutil.rmtree(run, ignore_errors=True)
                session.phase("train eager", [*train, "--max-minutes", f"{minutes:.2f}"], limit_s=60 * minutes + 30)
        for name, target in (("log.jsonl", "train_log.jsonl"), ("model.safetensors", "model.safetensors")):
            if (run / name).exists():
                shutil.copy2(run / name, self.out / target)

    def infer_compiled(self, session: Session) -> None:
        """Compiled inference with what is left, less the evaluation."""
        if self.args.smoke or session.left() <= 40:
            return
        command = [*self._infer_command(), *self.infer_size[:2], "--repeats", "3"]
        command += ["--variants", "untiled+bf16", "untiled+bf16+compile"]
        self.infer_text += session.phase("infer compiled", command, limit_s=session.left() - 20)
        (self.out / "infer.md").write_text(self.infer_text)

    def evaluate(self, session: Session) -> None:
        """The trained model on Set5."""
        if not (self.out / "model.safetensors").exists():
            return
        evaluate = [self.python, "-m", "iarn", "evaluate", "--data", str(self.set5), "--device", self.device]
        evaluate += ["--weights", str(self.out / "model.safetensors"), "--json", str(self.out / "evaluate.json")]
        session.phase("evaluate", evaluate, limit_s=session.left())

    def ablation(self, session: Session) -> None:
        """Arms of benchmarks/ablation.py side by side on this device, then their table."""
        args, runs = self.args, self.scratch / "ablation"
        command = [self.python, str(self.bench / "ablation.py"), "--out", str(runs), "--data", str(args.data)]
        command += ["--benchmark", str(args.benchmark), "--steps", str(args.ablation_steps), "--device", self.device]
        command += ["--workers", str(len(ABLATION_ARMS)), "--threads", "2", "--arms", *ABLATION_ARMS]
        minutes = (session.left() - 90) / 60  # training stops in time for the evaluations
        command += ["--max-minutes", f"{max(0.5, minutes):.2f}"]
        session.phase("ablation", command, limit_s=session.left() - 15)
        report = [self.python, str(self.bench / "ablation.py"), "--out", str(runs), "--report", "-"]
        session.phase("ablation report", report, limit_s=15, output=self.out / "ablation.md")
        for arm in ABLATION_ARMS:
            if (runs / arm / "log.jsonl").exists():
                shutil.copy2(runs / arm / "log.jsonl", self.out / f"ablation_{arm}_log.jsonl")


def load_config(weights: Path) -> dict:
    """The model config stored in a weight file's metadata (without importing iarn)."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as handle:
        return json.loads(handle.metadata()["config"])


if __name__ == "__main__":
    main()
