"""Write a `middle`-mode weight file whose every x2 step starts as a trained `naive` x2 core.

    python tools/middle_init.py --from naive-x2 -o runs/middle-init.safetensors
    python tools/middle_init.py --from naive-x2 --per-count --steps-from runs/m.safetensors -o runs/pc.safetensors

`--per-count` writes the layout with a stage set per step count (`step_stages`), its x(1, 2]
stage from the naive model and its x(2, 4] stages from `--steps-from` (a `shared` middle model's
stages 1 and 2, say one already trained) or from the naive model too.

The `middle` mode (model/modes/) runs k x2 steps of 12 channels, one stage of coupling blocks
each; a `naive` model is one such stage, trained at scale 2. Copying it into every stage gives a
model that is the naive core applied k times from step 0 (docs/ablation.md), which training
then adapts end to end on all scales (`iarn train --init-from`).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from iarn.model import IARN
from iarn.weights import load_weights, resolve_weights, save_weights

NAIVE_ENCODING = (0.5, 0.5, 0.0, 0.0)  # what a naive x2 model's encoding always is (constant maps)


def fold_encoding(model: IARN) -> None:
    """Make every subnet ignore the encoding as it was trained with the constant naive maps: their
    contribution goes into the biases (exact away from the zero-padded borders), their weights to 0,
    so the new encoding starts with no effect and training learns what to do with it."""
    constant = torch.tensor(NAIVE_ENCODING, dtype=torch.float64)
    for stage in model.stages:
        for block in stage:
            for subnet in (block.f, block.gs):
                features = subnet.convs[0].in_channels
                for conv in [*subnet.convs, subnet.out]:
                    weights = conv.weight[:, features - len(constant) : features]
                    conv.bias += (weights.double().sum((2, 3)) @ constant).to(conv.bias.dtype)
                    weights.zero_()


def middle_from_naive(
    naive: IARN, levels: int = 2, fold: bool = True, per_count: bool = False, steps_from: IARN | None = None
) -> IARN:
    """A `middle` model (2^levels >= its max_scale) with naive's one stage in each of its stages;
    `fold`: the encoding starts with no effect (`fold_encoding`). `per_count`: a stage set per
    step count, those of more than one step from `steps_from` (a shared middle model) if given."""
    if naive.config.mode != "naive":
        raise ValueError(f"expected a naive model, got mode {naive.config.mode!r}")
    layout = "per-count" if per_count else "shared"
    config = dataclasses.replace(naive.config, mode="middle", levels=levels, step_stages=layout)
    model = IARN(config)
    with torch.no_grad():
        for stage in model.stages:
            stage.load_state_dict(naive.stages[0].state_dict())
        if fold:
            fold_encoding(model)
        if steps_from is not None:
            if not per_count or steps_from.config.step_stages != "shared":
                raise ValueError("--steps-from needs --per-count and a middle model with shared stages")
            for steps in range(2, levels + 1):
                for level in range(1, steps + 1):
                    index = model.mode.stage_index(config, steps, level)
                    model.stages[index].load_state_dict(steps_from.stages[level - 1].state_dict())
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", default="naive-x2", help="naive weights: a path or a bundled name")
    parser.add_argument("-o", "--out", required=True)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--keep-encoding", action="store_true", help="keep the encoding weights as trained")
    parser.add_argument("--per-count", action="store_true", help="a stage set per step count (step_stages)")
    parser.add_argument("--steps-from", help="a shared middle model whose stages start the multi-step paths")
    args = parser.parse_args()
    steps_from = load_weights(args.steps_from) if args.steps_from else None
    naive = load_weights(resolve_weights(args.source))
    model = middle_from_naive(naive, args.levels, not args.keep_encoding, args.per_count, steps_from)
    origin = f"every stage from {args.source}" + (f", those of 2+ steps from {args.steps_from}" if steps_from else "")
    save_weights(model, args.out, training={"steps": 0, "summary": origin})
    print(f"wrote {args.out}: {model.config}")


if __name__ == "__main__":
    main()
