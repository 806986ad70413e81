"""Write a weight file whose coupling stages come from different runs of one architecture.

    python tools/combine_stages.py --take 0=runs/a.safetensors --take 1,2=runs/b.safetensors \
        -o runs/combined.safetensors

A `per-count` middle model has one stage set per step count (stage 0: the x(1, 2] path; 1 and
2: the x(2, 4] path), and a run trained on part of the scale range changes only the stages of
that part. Each `--take INDEXES=FILE` copies those stages from FILE (a weight file or a training
checkpoint); every stage must be taken exactly once and every source must have the same config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from iarn.model import IARN
from iarn.train_runtime import checkpoint_model, read_checkpoint
from iarn.weights import load_weights, save_weights


def load_any(path: str) -> IARN:
    """The model of a weight file or of a training checkpoint (`checkpoint.pt`)."""
    if Path(path).suffix == ".pt":
        return checkpoint_model(read_checkpoint(path))
    return load_weights(path)


def parse_take(text: str) -> tuple[list[int], str]:
    indexes, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected INDEXES=FILE, got {text!r}")
    try:
        return [int(i) for i in indexes.split(",")], path
    except ValueError:
        raise argparse.ArgumentTypeError(f"indexes must be whole numbers, got {indexes!r}") from None


def combine(takes: list[tuple[list[int], IARN]]) -> IARN:
    """A model with stage i of the source that lists i; one config, every stage once."""
    config = takes[0][1].config
    model = IARN(config)
    taken: list[int] = []
    for indexes, source in takes:
        if source.config != config:
            raise ValueError(f"sources differ in config: {source.config} vs {config}")
        for i in indexes:
            if not 0 <= i < len(model.stages):
                raise ValueError(f"stage {i} does not exist (the model has {len(model.stages)})")
            model.stages[i].load_state_dict(source.stages[i].state_dict())
            taken.append(i)
    if sorted(taken) != list(range(len(model.stages))):
        raise ValueError(f"every stage must be taken once; got {sorted(taken)} of {len(model.stages)}")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--take", type=parse_take, action="append", required=True, metavar="INDEXES=FILE")
    parser.add_argument("-o", "--out", required=True)
    args = parser.parse_args()
    try:
        model = combine([(indexes, load_any(path)) for indexes, path in args.take])
    except ValueError as error:  # also a source that is not weights or a checkpoint (WeightsError)
        parser.error(str(error))
    origin = "; ".join(f"stages {','.join(map(str, i))} of {path}" for i, path in args.take)
    save_weights(model, args.out, training={"summary": origin})
    print(f"wrote {args.out}: {json.dumps(origin)}")


if __name__ == "__main__":
    main()
