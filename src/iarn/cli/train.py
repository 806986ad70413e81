"""`iarn train` (a model) and `iarn train-corrector` (an LR corrector for a frozen model).

Their flags come from the config dataclasses, whose import brings torch: they are built only
when the command is `train` or `train-corrector` (main.build_parser's `train_flags`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .args import finite_float, positive_float, positive_int
from .errors import CliError


def add_parsers(commands, train_flags: bool) -> None:
    train = commands.add_parser("train", help="train a model on a folder of images")
    corrector = commands.add_parser("train-corrector", help="train an LR corrector for a model, its upscaler frozen")
    if train_flags:
        train_arguments(train)
        corrector_arguments(corrector)


def train_arguments(parser: argparse.ArgumentParser) -> None:
    from ..model import ModelConfig
    from ..train_config import TrainConfig

    parser.add_argument("--config", metavar="FILE", help="YAML or JSON with TrainConfig fields (flags override)")
    parser.add_argument("--resume", metavar="auto|PATH", help="continue a run: auto = OUT/checkpoint.pt if present")
    parser.add_argument("--init-from", metavar="WEIGHTS", help="start from these weights (fine-tuning)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--stop-at", type=positive_int, metavar="STEP", help="end this invocation at STEP (resumable)")
    parser.add_argument(
        "--max-minutes", type=positive_float, metavar="M", help="end this invocation after M minutes (resumable)"
    )
    parser.add_argument(
        "--fit-steps",
        action="store_true",
        help="size the schedule to --max-minutes from the measured step rate (--steps: the most)",
    )
    parser.add_argument("--lr", type=finite_float, action=RenamedFlag, dest="learning_rate", help=argparse.SUPPRESS)
    field_flags(parser, [f for cls in (TrainConfig, ModelConfig) for f in dataclasses.fields(cls) if f.name != "model"])


def field_flags(parser: argparse.ArgumentParser, fields: list[dataclasses.Field]) -> None:
    """One flag per config field (`--field-name`), None unless given: flags override a --config."""
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        if f.name == "data":
            parser.add_argument(flag, nargs="+", metavar="DIR", default=None, help="folders of HR images")
        elif f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": finite_float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=None, help=f"(default {f.default})")


def run(args) -> int:
    from ..model import ModelConfig
    from ..train import train
    from ..train_config import TrainConfig, merge_config, read_config_file, resume_config
    from ..train_runtime import resolve_resume

    given: dict = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name != "model" and getattr(args, f.name, None) is not None:
            given[f.name] = tuple(args.data) if f.name == "data" else getattr(args, f.name)
    model_given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(ModelConfig) if getattr(args, f.name) is not None
    }
    if model_given:
        given["model"] = model_given
    if args.config:
        base = read_config_file(args.config)
        model = {**(base.pop("model", None) or {}), **given.get("model", {})}
        given = {**base, **given, **({"model": model} if model else {})}
    if args.init_from and given.get("model"):
        check_init_from(args.init_from, given["model"])
    resume, checkpoint = resolve_resume(given.get("out", TrainConfig.out), args.resume)
    cfg = resume_config(checkpoint["train_config"], given) if checkpoint else merge_config({}, given)
    final = train(
        cfg,
        resume=resume,
        init_from=args.init_from,
        progress=not args.no_progress,
        stop_at=args.stop_at,
        max_minutes=args.max_minutes,
        fit_steps=args.fit_steps,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {final}")
    return 0


def check_init_from(path: str, asked: dict) -> None:
    """Refuse model flags (or a --config model) that differ from the --init-from weights': the
    run would otherwise silently train the weights' architecture instead."""
    from ..model import ModelConfig
    from ..weights import read_metadata, resolve_weights

    metadata = read_metadata(resolve_weights(path))
    if "config" not in metadata:
        return  # not an iarn weight file: loading it says so
    weights = ModelConfig.from_stored(json.loads(metadata["config"]))
    differ = {k: v for k, v in asked.items() if getattr(weights, k) != v}
    conflicts = [f"{k} {v!r} (the weights: {getattr(weights, k)!r})" for k, v in differ.items()]
    if conflicts:
        raise CliError(
            f"--init-from {path} fine-tunes its own architecture, but the run asks for {', '.join(conflicts)}; "
            "drop those model settings, or start a new model without --init-from"
        )


class RenamedFlag(argparse.Action):
    """A flag's old spelling: sets the new one's value, and says so on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        new = "--" + self.dest.replace("_", "-")
        print(f"iarn: warning: {option_string} is now {new}; read as {new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def corrector_arguments(parser: argparse.ArgumentParser) -> None:
    from ..corrector_train import CorrectorTrainConfig
    from ..model.corrector import CorrectorConfig

    frozen_run_flags(parser, "CorrectorTrainConfig", "corrector-checkpoint.pt", "start from this file's corrector")
    fields = [f for f in dataclasses.fields(CorrectorTrainConfig) if f.name != "corrector"]
    fields += [f for f in dataclasses.fields(CorrectorConfig) if f.name != "steps"]  # steps: the model's levels
    field_flags(parser, fields)


def frozen_run_flags(parser: argparse.ArgumentParser, config: str, checkpoint: str, init_help: str) -> None:
    """The flags of a run that trains a part beside a frozen network (frozen_train.py)."""
    parser.add_argument("--config", metavar="FILE", help=f"JSON with {config} fields (flags override)")
    parser.add_argument("--resume", action="store_true", help=f"continue from OUT/{checkpoint} if present")
    parser.add_argument("--init-from", metavar="WEIGHTS", help=init_help)
    parser.add_argument(
        "--max-minutes", type=positive_float, metavar="M", help="end this invocation after M minutes (resumable)"
    )


def run_corrector(args) -> int:
    from ..corrector_train import CorrectorTrainConfig, train_corrector
    from ..model.corrector import CorrectorConfig
    from ..train_config import read_config_file

    values = read_config_file(args.config) if args.config else {}
    corrector = dict(values.pop("corrector", None) or {})
    for f in dataclasses.fields(CorrectorConfig):
        if f.name != "steps" and getattr(args, f.name, None) is not None:
            corrector[f.name] = getattr(args, f.name)
    for f in dataclasses.fields(CorrectorTrainConfig):
        if f.name != "corrector" and getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return run_frozen(train_corrector, CorrectorTrainConfig.from_dict({**values, "corrector": corrector}), args)


def run_frozen(train_run, cfg, args) -> int:
    """Run `train_run` (a trainer of frozen_train.py's kind) on `cfg` with the run flags."""
    if not cfg.data:
        raise CliError("no training data: pass --data DIR (or data: in --config)")
    final = train_run(cfg, resume=args.resume, init_from=args.init_from, max_minutes=args.max_minutes)
    if final is None:
        raise CliError("the run ended before its first step (--max-minutes): no model written")
    print(f"wrote {final}")
    return 0
