"""The benchmark scripts still run (tiny sizes; their numbers are not checked here)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TOOLS = Path(__file__).resolve().parents[1] / "tools"  # the scripts that edit weight files


def run_script(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_infer_speed_memory_and_cli_modes(weights_file):
    script = str(BENCHMARKS / "infer.py")
    common = ["--weights", str(weights_file), "--megapixels", "0.02"]
    speed = run_script(script, *common, "--repeats", "1", "--variants", "fp32", "bf16+tile-64", "untiled+system-malloc")
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


def test_train_throughput_levers_run(tmp_path, photo):
    for k in range(2):
        Image.fromarray(np.tile(photo, (2, 2, 1))).save(tmp_path / f"{k}.png")
    script = str(BENCHMARKS / "train_throughput.py")
    sizes = ["--blocks-per-level", "1", "--growth", "4", "--batch-size", "2", "--crop", "32", "--big-batch", "4"]
    timing = ["--warmup", "1", "--steps", "1", "--windows", "1", "--device", "cpu", "--data", str(tmp_path)]
    out = run_script(script, *sizes, *timing, "--levers", "rebuilt", "cached", "device-crops", "batch")
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "x |" in line]
    assert rows == ["rebuilt", "cached", "device-crops", "batch-4"]


def test_gpu_session_smoke_writes_its_files(tmp_path):
    """The device-session script on the CPU at tiny sizes: the same phases (and the opt-in
    training), the default phases' files at most the 8 the device tool brings back."""
    phases = ["throughput", "infer", "profile", "gate", "effort", "refine", "jpeg", "corrector", "train", "evaluate"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_session.py"), "--smoke", "--out", str(tmp_path / "out")]
        + ["--phases", *phases],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    expected = ["evaluate.json", "infer.md", "model.safetensors", "profile.md", "session.md", "throughput.md"]
    expected += ["train_log.jsonl", "effort.md", "corrector_log.jsonl", "corrector.safetensors", "corrector.md"]
    expected += ["jpeg_log.jsonl", "jpeg.safetensors"]
    assert set(expected) <= set(files), (files, result.stdout[-3000:])
    opt_in = {"corrector_log.jsonl", "corrector.safetensors", "corrector.md", "train_log.jsonl", "model.safetensors"}
    assert len(set(files) - opt_in - {"evaluate.json"}) <= 8, files
    report = (tmp_path / "out" / "session.md").read_text()
    statuses = [line for line in report.splitlines() if line.startswith("## ")]
    assert len(statuses) == 12 and all(": exit 0," in line for line in statuses), statuses
    assert "| jpeg:90 |" in report and "gain over bicubic" in report  # the JPEG table
    assert any(line.startswith("## refine 2") for line in statuses), statuses
    assert "; training " in report and "--fit-steps" in report


def test_middle_from_naive_starts_as_the_naive_core(tmp_path):
    """tools/middle_init.py: at x2 (the middle is the HR) the new model's LR and restored HR
    are the naive model's, away from the borders where folding the encoding is not exact; the
    per-count layout takes its x(2, 4] stages from a shared model."""
    import importlib.util

    import torch

    from iarn import IARN

    from .conftest import first_config, randomize

    spec = importlib.util.spec_from_file_location("middle_init", TOOLS / "middle_init.py")
    middle_init = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(middle_init)
    naive = randomize(IARN(first_config(mode="naive", blocks_per_level=2, growth=8)), std=0.03)
    middle = middle_init.middle_from_naive(naive).eval()
    assert middle.config.mode == "middle" and len(middle.stages) == 2
    x = torch.rand(1, 3, 128, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lr_naive, _ = naive.down_region(x, (128, 112), (64, 56))
        lr_middle, _ = middle.down_region(x, (128, 112), (64, 56))
        inner = (slice(None), slice(None), slice(24, -24), slice(24, -24))  # the subnets' reach from the border
        assert (lr_naive - lr_middle)[inner].abs().max() < 1e-5
        assert (lr_naive - lr_middle).abs().max() > 0  # the borders: folding is not exact there
        up = naive.up_region(lr_naive, (128, 112), (64, 56)), middle.up_region(lr_naive, (128, 112), (64, 56))
        assert (up[0] - up[1])[inner].abs().max() < 1e-5
    shared = randomize(IARN(first_config(mode="middle", levels=2, blocks_per_level=2, growth=8)), seed=1)
    per_count = middle_init.middle_from_naive(naive, per_count=True, steps_from=shared)
    assert len(per_count.stages) == 3
    for ours, theirs in ((1, 0), (2, 1)):
        for a, b in zip(per_count.stages[ours].state_dict().values(), shared.stages[theirs].state_dict().values()):
            assert torch.equal(a, b)


def test_checkpoint_weights_writes_a_loadable_file(tmp_path, photo):
    from iarn import load_weights
    from iarn.train import train
    from iarn.train_config import TrainConfig

    from .conftest import first_config

    Image.fromarray(np.tile(photo, (2, 2, 1))).save(tmp_path / "a.png")
    model = first_config(mode="middle", levels=2, blocks_per_level=1, growth=4)
    cfg = TrainConfig(data=(str(tmp_path),), out=str(tmp_path / "run"), model=model, steps=2, batch_size=2, crop=32)
    train(cfg, progress=False)
    script = str(TOOLS / "checkpoint_weights.py")
    out = run_script(script, str(tmp_path / "run" / "checkpoint.pt"), str(tmp_path / "w"))
    assert "step 2" in out and load_weights(tmp_path / "w").config == model


def test_combine_stages_takes_each_stage_from_its_source(tmp_path):
    import torch

    from iarn import IARN, load_weights, save_weights

    from .conftest import first_config, randomize

    config = first_config(mode="middle", levels=2, step_stages="per-count", blocks_per_level=1, growth=4)
    a, b = randomize(IARN(config), seed=1), randomize(IARN(config), seed=2)
    save_weights(a, tmp_path / "a.safetensors")
    save_weights(b, tmp_path / "b.safetensors")
    script = str(TOOLS / "combine_stages.py")
    out = tmp_path / "c.safetensors"
    run_script(
        script,
        "--take",
        f"0={tmp_path / 'a.safetensors'}",
        "--take",
        f"1,2={tmp_path / 'b.safetensors'}",
        "-o",
        str(out),
    )
    combined = load_weights(out)
    assert combined.config == config
    for index, source in ((0, a), (1, b), (2, b)):
        for mine, theirs in zip(
            combined.stages[index].state_dict().values(), source.stages[index].state_dict().values()
        ):
            assert torch.equal(mine, theirs)
    missing = subprocess.run(
        [sys.executable, script, "--take", f"0,1={tmp_path / 'a.safetensors'}", "-o", str(tmp_path / "d")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "every stage must be taken once" in missing.stderr
    assert not (tmp_path / "d").exists()


def test_combine_corrector_counts_takes_each_count_from_its_source(tmp_path):
    import torch

    from iarn import Rescaler, load_weights, save_weights
    from iarn.weights import read_metadata, same_upscaler, weights_id

    from .test_corrector import corrected_network

    a, b = corrected_network(seed=1, passes=2, per_count=True), corrected_network(seed=1, passes=2, per_count=True)
    with torch.no_grad():  # b: the same network, another corrector
        for p in b.corrector.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_weights(a, tmp_path / "a.safetensors")
    save_weights(b, tmp_path / "b.safetensors")
    script, out = str(TOOLS / "combine_corrector_counts.py"), tmp_path / "c.safetensors"
    run_script(
        script, "--take", f"1={tmp_path / 'a.safetensors'}", "--take", f"2={tmp_path / 'b.safetensors'}", "-o", str(out)
    )
    combined = load_weights(out)
    x = torch.rand(1, 3, 41, 37)
    for scale, source in ((1.7, a), (2.0, a), (3.3, b), ((1.5, 4.0), b)):
        mine = Rescaler(combined, device="cpu").downscale(x, scale=scale)
        assert torch.equal(mine, Rescaler(source, device="cpu").downscale(x, scale=scale)), scale
    assert same_upscaler(weights_id(tmp_path / "a.safetensors"), weights_id(out), out)
    assert json.loads(read_metadata(out)["training"])["corrector_counts"].keys() == {"1", "2"}

    other = corrected_network(seed=3, passes=2, per_count=True)  # another network: refused
    save_weights(other, tmp_path / "o.safetensors")
    for takes, message in (
        ([f"1={tmp_path / 'a.safetensors'}", f"2={tmp_path / 'o.safetensors'}"], "network's tensors"),
        ([f"1={tmp_path / 'a.safetensors'}"], "every step count must be taken once"),
    ):
        flags = [f for take in takes for f in ("--take", take)]
        failed = subprocess.run(
            [sys.executable, script, *flags, "-o", str(tmp_path / "d")], capture_output=True, text=True
        )
        assert failed.returncode != 0 and message in failed.stderr and "Traceback" not in failed.stderr
        assert not (tmp_path / "d").exists()


def test_refine_curve_measures_merges_and_plots(tmp_path, weights_file, photo):
    folder = tmp_path / "Tiny"
    folder.mkdir()
    Image.fromarray(photo).save(folder / "a.png")
    script, saved, png = str(BENCHMARKS / "refine_curve.py"), tmp_path / "curve.json", tmp_path / "curve.png"
    common = ["--weights", str(weights_file), "--data", str(folder), "--json", str(saved)]
    run_script(script, *common, "--scales", "2", "--steps", "0", "2")
    settings = ["--step-size", "0.5", "--momentum", "0.6", "--rounding", "progressive"]
    out = run_script(script, *common, "--scales", "3", "--steps", "0", "1", *settings)
    rows = [line for line in out.splitlines() if line.startswith("| Tiny |")]
    assert len(rows) == 4 and rows[0].split("|")[5].strip() == "+0.00"  # x2 N=0,2 kept, x3 N=0,1 added
    plot = ["--plot", str(png)] if importlib.util.find_spec("matplotlib") else []  # iarn[plot]
    again = run_script(script, "--from-json", str(saved), *plot)
    assert again.count("| Tiny |") == 4
    assert not plot or png.stat().st_size > 0


def test_effort_table_runs(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "a.png")
    script = str(BENCHMARKS / "effort.py")
    args = ["--data", str(tmp_path), "--scales", "2", "1.5,4", "--efforts", "0", "1", "0+2", "--repeats", "1"]
    out = run_script(script, *args, "--timing-size", "96x64", "--json", str(tmp_path / "e.json"))
    assert "| x2 |" in out and "| (1.5, 4) |" in out and "(1.00x)" in out
    assert (tmp_path / "e.json").exists()
    coded = run_script(
        script,
        "--time-only",
        "--efforts",
        "0",
        "1+2",
        "--repeats",
        "2",
        "--timing-size",
        "96x64",
        "--timing-scales",
        "4",
        "--codec",
        "jpeg:90",
        "--json",
        str(tmp_path / "c.json"),
    )
    results = json.loads((tmp_path / "c.json").read_text())
    assert "(1.00x)" in coded and results["codec"] == ["jpeg", 90]
    assert list(results["timing"]) == ["x4"]  # the scales asked for; each effort's time per round
    assert all(len(row["times_s"]) == 2 for row in results["timing"]["x4"].values())
    assert results["timing"]["x4"]["0"]["ratio"] == 1.0


def test_lossy_table_runs_a_row_per_effort(tmp_path, photo, weights_file):
    Image.fromarray(photo).save(tmp_path / "a.png")
    script = str(BENCHMARKS / "lossy_table.py")
    common = ["--data", str(tmp_path), "--formats", "jpeg:90", "--scales", "2", "--models", str(weights_file)]
    out = run_script(script, *common, "--efforts", "0", "1", "0+1", "--json", str(tmp_path / "l.json"))
    rows = json.loads((tmp_path / "l.json").read_text())[tmp_path.name]
    name = str(weights_file)
    assert list(rows) == [name, f"{name}, effort 1", f"{name}, effort 0+1"]
    assert rows[name]["jpeg:90"]["x2"]["images"] == 1 and "| bicubic | jpeg:90 |" in out
