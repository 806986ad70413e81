"""Rewrite the golden LR PNGs and expected.json from the bundled models (after shipping new weights).

    python tests/golden/regenerate.py            # every case
    python tests/golden/regenerate.py jpeg       # only the cases of the models named

Only when the bundled weights change on purpose: the golden test exists to catch every other
change of the model's output.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import iarn
from iarn.metrics import psnr_y

GOLDEN = Path(__file__).parent
# case: (bundled model, scale); a middle model: two x2 steps, and one
CASES = {
    "x2.7": ("default", 2.7),
    "1.5x3.3": ("default", (1.5, 3.3)),
    "x1.5": ("default", 1.5),
    "jpeg_x2.7": ("jpeg", 2.7),
    "jpeg_1.5x3.3": ("jpeg", (1.5, 3.3)),
}


def main(models: list[str]) -> None:
    hr = np.asarray(Image.open(GOLDEN / "hr.png").convert("RGB"))
    path = GOLDEN / "expected.json"
    expected = json.loads(path.read_text()) if path.exists() else {}
    for name, (model_name, scale) in CASES.items():
        if models and model_name not in models:
            continue
        model = iarn.load(model_name, device="cpu", precision="fp32")
        x = torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].float() / 255
        lr = model.downscale(x, scale=scale)
        lr8 = (lr[0].permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(lr8).save(GOLDEN / f"lr_{name}.png")
        restored = model.upscale(torch.from_numpy(lr8.copy()).permute(2, 0, 1)[None].float() / 255, hr.shape[:2])
        up8 = (restored[0].permute(1, 2, 0) * 255).round().byte().numpy()
        expected[name] = {
            "model": model_name,
            "scale": list(scale) if isinstance(scale, tuple) else [scale, scale],
            "lr_shape": list(lr8.shape),
            "restored_psnr_y": round(psnr_y(up8, hr), 4),
        }
    path.write_text(json.dumps(expected, indent=1))
    print(json.dumps(expected))


if __name__ == "__main__":
    main(sys.argv[1:])
