"""The benchmark scripts still run (tiny sizes; their numbers are not checked here)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_infer_speed_memory_and_cli_modes(weights_file):
    script = str(BENCHMARKS / "infer.py")
    common = ["--weights", str(weights_file), "--megapixels", "0.02"]
    speed = run_script(script, *common, "--repeats", "1", "--variants", "fp32", "bf16+tile-64", "untiled")
    assert speed.count("| downscale |") == 3 and speed.count("| upscale |") == 3
    memory = run_script(script, *common, "--memory", "--variants", "fp32")
    assert '"peak_rss_mb"' in memory
    cli = run_script(script, "--weights", str(weights_file), "--cli-memory", "0.02")
    assert "| iarn downscale | 0 |" in cli and "| iarn upscale | 0 |" in cli


def test_quality_gate_runs_on_a_folder(tmp_path, weights_file, photo):
    Image.fromarray(photo).save(tmp_path / "a.png")
    script = str(BENCHMARKS / "quality_gate.py")
    out = run_script(script, "--weights", str(weights_file), "--data", str(tmp_path), "--variants", "bf16")
    verdict = [line for line in out.splitlines() if "max abs delta HR" in line]
    assert len(verdict) == 1 and ("passes the 0.05 dB gate" in verdict[0] or "FAILS" in verdict[0])
    assert out.count("| bf16 |") == 11
    assert np.isfinite([float(line.split("|")[5]) for line in out.splitlines() if line.startswith("| bf16 | x")]).all()
