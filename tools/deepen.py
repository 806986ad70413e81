"""Write a deeper copy of a weight file: more coupling blocks per stage, the same function.

    python tools/deepen.py src/iarn/bundled/default.safetensors --blocks 8 -o runs/deep.safetensors

The source's blocks keep their weights and come first in each stage; the added blocks are new
`CouplingBlock`s, whose last convolutions are zero-initialised, so each starts as the identity
and the deeper model computes exactly what the source does (checked before writing). That makes
an equal-budget comparison of capacity against steps start from the same point.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from iarn.model import IARN
from iarn.weights import load_weights, save_weights


def deepen(source: IARN, blocks: int) -> IARN:
    """`source` with `blocks` coupling blocks per stage (at least its own), identity-initialised."""
    have = source.config.blocks_per_level
    if blocks < have:
        raise ValueError(f"--blocks {blocks} is fewer than the source's {have}")
    model = IARN(dataclasses.replace(source.config, blocks_per_level=blocks))
    for old, new in zip(source.stages, model.stages):
        for i, block in enumerate(old):
            new[i].load_state_dict(block.state_dict())
    return model


def same_function(a: IARN, b: IARN) -> float:
    """Largest LR difference of the two models on a random image at x3."""
    torch.manual_seed(0)
    hr = torch.rand(1, 3, 48, 40)
    with torch.no_grad():
        la, _ = a.down_region(hr, (48, 40), (16, 13))
        lb, _ = b.down_region(hr, (48, 40), (16, 13))
    return float((la - lb).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights")
    parser.add_argument("--blocks", type=int, required=True, help="coupling blocks per stage")
    parser.add_argument("-o", "--out", required=True)
    args = parser.parse_args()
    source = load_weights(args.weights)
    try:
        model = deepen(source, args.blocks)
    except ValueError as error:
        parser.error(str(error))
    gap = same_function(source, model)
    if gap > 1e-5:
        raise SystemExit(f"deepened model differs from its source by {gap:.3g}")
    summary = f"{args.weights} deepened to {args.blocks} blocks per stage (added blocks are identities)"
    save_weights(model, args.out, training={"summary": summary})
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {params / 1e6:.2f} M parameters, max LR difference {gap:.2g}")


if __name__ == "__main__":
    main()
