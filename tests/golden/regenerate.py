"""Rewrite the golden LR PNGs and expected.json from the bundled model (after shipping new weights).

    python tests/golden/regenerate.py

Only when the bundled weights change on purpose: the golden test exists to catch every other
change of the model's output.
"""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import iarn
from iarn.metrics import psnr_y

GOLDEN = Path(__file__).parent
SCALES = {"x2.7": 2.7, "1.5x3.3": (1.5, 3.3), "x1.5": 1.5}  # a middle model: two x2 steps, and one


def main() -> None:
    hr = np.asarray(Image.open(GOLDEN / "hr.png").convert("RGB"))
    model = iarn.load("default", device="cpu", precision="fp32")
    expected = {}
    for name, scale in SCALES.items():
        x = torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].float() / 255
        lr = model.downscale(x, scale=scale)
        lr8 = (lr[0].permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(lr8).save(GOLDEN / f"lr_{name}.png")
        restored = model.upscale(torch.from_numpy(lr8.copy()).permute(2, 0, 1)[None].float() / 255, hr.shape[:2])
        up8 = (restored[0].permute(1, 2, 0) * 255).round().byte().numpy()
        expected[name] = {"lr_shape": list(lr8.shape), "restored_psnr_y": round(psnr_y(up8, hr), 4)}
    (GOLDEN / "expected.json").write_text(json.dumps(expected, indent=1))
    print(json.dumps(expected))


if __name__ == "__main__":
    main()
