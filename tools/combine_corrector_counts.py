"""Write a weight file whose per-count corrector takes each step count from a different run.

    python tools/combine_corrector_counts.py --take 1=runs/k1/model.safetensors \
        --take 2=runs/k2/model.safetensors -o runs/combined.safetensors

A corrector with `"per_count": true` has its own convolutions for each step count (count 1: the
x(1, 2] path; count 2: the x(2, 4] path), in both passes, and a `train-corrector` run on part of
the scale range changes only the counts of that part. Each `--take COUNTS=FILE` copies those
counts' convolutions from FILE (a weight file). Every count must be taken exactly once; the
sources must share one corrector config and the network's tensors bit for bit (the corrector's
runs freeze it), so LRs made by any of them upscale with the result unchanged
(`same_upscaler_as` is recorded).
"""

from __future__ import annotations

import argparse
import json

import torch

from combine_stages import parse_take
from iarn.model import IARN
from iarn.model.corrector import ConvStack
from iarn.weights import load_weights, read_metadata, save_weights


def count_stacks(model: IARN) -> list[ConvStack]:
    """The corrector's stacks: the first pass, then the feedback pass where there is one."""
    corrector = model.corrector
    if corrector is None or not corrector.config.per_count:
        raise ValueError("every source needs a per-count corrector")
    return [corrector] if corrector.feedback is None else [corrector, corrector.feedback]


def network_state(model: IARN) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("corrector.")}


def combine(takes: list[tuple[list[int], IARN]]) -> IARN:
    """The first source with step count k's convolutions (every pass) from the source that lists k."""
    model = takes[0][1]
    targets = count_stacks(model)
    config, network = model.corrector.config, network_state(model)
    taken: list[int] = []
    for counts, source in takes:
        if source.corrector is None or source.corrector.config != config or source.config != model.config:
            raise ValueError("sources differ in config")
        theirs = network_state(source)
        if theirs.keys() != network.keys() or any(not torch.equal(theirs[k], network[k]) for k in network):
            raise ValueError("sources differ in the network's tensors: their LRs would not upscale alike")
        for k in counts:
            if not 1 <= k <= config.steps:
                raise ValueError(f"step count {k} does not exist (the corrector has 1..{config.steps})")
            for target, stack in zip(targets, count_stacks(source), strict=True):
                target.first[k - 1].load_state_dict(stack.first[k - 1].state_dict())
                target.hidden[k - 1].load_state_dict(stack.hidden[k - 1].state_dict())
                target.last[k - 1].load_state_dict(stack.last[k - 1].state_dict())
            taken.append(k)
    if sorted(taken) != list(range(1, config.steps + 1)):
        raise ValueError(f"every step count must be taken once; got {sorted(taken)} of 1..{config.steps}")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--take", type=parse_take, action="append", required=True, metavar="COUNTS=FILE")
    parser.add_argument("-o", "--out", required=True)
    parser.add_argument("--summary", default=None, help="the training summary to record (default: the sources)")
    args = parser.parse_args()
    try:
        model = combine([(counts, load_weights(path)) for counts, path in args.take])
    except ValueError as error:  # also a source that is not a weight file (WeightsError)
        parser.error(str(error))
    origin = "; ".join(f"step counts {','.join(map(str, c))} of {path}" for c, path in args.take)
    runs = {
        ",".join(map(str, counts)): json.loads(read_metadata(path).get("training", "{}")) for counts, path in args.take
    }
    training = {"corrector_counts": runs, "summary": args.summary or origin}
    save_weights(model, args.out, training=training, same_upscaler_as=args.take[0][1])
    print(f"wrote {args.out}: {json.dumps(origin)}")


if __name__ == "__main__":
    main()
