"""Write the weights of a training checkpoint as a weight file (to evaluate a run midway, or to
start the next leg from a step the run has passed).

    python tools/checkpoint_weights.py runs/mine/checkpoint.pt runs/mine-step.safetensors
"""

from __future__ import annotations

import argparse

from iarn.train_runtime import checkpoint_model, read_checkpoint
from iarn.weights import save_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args()
    state = read_checkpoint(args.checkpoint)
    model = checkpoint_model(state)
    save_weights(model, args.out, training={"steps": state["step"], "train_config": state["train_config"]})
    print(f"wrote {args.out}: step {state['step']}, {model.config}")


if __name__ == "__main__":
    main()
