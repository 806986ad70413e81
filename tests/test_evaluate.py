"""The evaluation protocol against the published bicubic rows (needs ../shared; skipped without)."""

import pytest

from iarn.evaluate import PROTOCOL_SCALES, evaluate, markdown_table, scale_label

from .conftest import BENCHMARK

# ../shared/docs/reference-bicubic.md
REFERENCE = {
    "Set5": [36.84, 33.68, 31.80, 30.41, 29.33, 28.43, 30.05, 30.91, 31.75, 30.33],
    "Set14": [33.13, 30.35, 28.78, 27.64, 26.77, 26.09, 27.93, 28.58, 29.17, 27.45],
}
SCALES = list(PROTOCOL_SCALES)


@pytest.mark.skipif(not (BENCHMARK / "Set5").is_dir(), reason="../shared/data/benchmark not present")
@pytest.mark.parametrize("dataset", sorted(REFERENCE))
def test_bicubic_row_reproduces_reference(dataset):
    results = evaluate(None, [BENCHMARK / dataset], SCALES, progress=False)[dataset]
    for scale, expected in zip(SCALES, REFERENCE[dataset]):
        assert results[scale_label(scale)]["bicubic"]["psnr_y"] == pytest.approx(expected, abs=0.006), scale
    if dataset == "Set5":  # the published ranges of the issue
        assert 33.66 <= round(results["x2"]["bicubic"]["psnr_y"], 2) <= 33.68
        assert 28.42 <= round(results["x4"]["bicubic"]["psnr_y"], 2) <= 28.43
    assert "| bicubic |" in markdown_table({dataset: results})


def test_lr_format_sends_both_lrs_through_the_codec(tmp_path, capsys, photo, weights_file):
    import json

    from PIL import Image

    from iarn.cli import main

    Image.fromarray(photo).save(tmp_path / "a.png")
    out = tmp_path / "r.json"
    args = ["evaluate", "--data", str(tmp_path), "--scales", "2", "--weights", str(weights_file), "--json", str(out)]
    assert main(args + ["--lr-format", "jpeg:75"]) == 0
    cell = json.loads(out.read_text())[tmp_path.name]["x2"]
    assert cell["lr_format"] == "jpeg:75" and cell["iarn"]["lr_bytes"] > 0 and cell["bicubic"]["lr_bytes"] > 0
    assert "LR bytes iarn / bicubic" in capsys.readouterr().out
    assert main(args + ["--lr-format", "png", "--force"]) == 0
    lossless = json.loads(out.read_text())[tmp_path.name]["x2"]
    assert lossless["iarn"]["lr_bytes"] is None and lossless["bicubic"]["psnr_y"] > cell["bicubic"]["psnr_y"]
    with pytest.raises(SystemExit):
        main(args + ["--lr-format", "jpeg:0"])
