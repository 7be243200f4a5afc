"""``sslzoo train`` and the ``sslzoo`` dispatcher (also ``python -m training``); ``convert`` / ``publish``
live in zoo/convert.py and zoo/publish.py."""
from __future__ import annotations

import argparse
import sys


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train an encoder from a recipe; resumable; exports a zoo folder")
    p.add_argument("recipe", help="recipe name in training/recipes/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set optim.lr=0.3 (repeatable)")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, log.csv, export/)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    """Single process, or one rank of a torchrun job (``docs/distributed.md``): the process group is
    joined from torchrun's environment and left at the end."""
    from eval import distributed as D

    from .config import load_recipe
    from .trainer import Trainer

    cfg = load_recipe(args.recipe, args.overrides)
    D.init_from_env(args.device)
    try:
        path = Trainer(cfg, args.out, device=args.device).fit(resume=args.resume)
        if D.is_main():
            if path.name == "checkpoint.pt":
                print(f"checkpoint {path} (continue with --resume)")
            else:
                print(f"exported {path.parent} (model.safetensors + config.json)")
    finally:
        D.shutdown()
    return 0


def main(argv=None) -> int:
    """The ``sslzoo`` console script: every subcommand, one error line on bad input."""
    from eval.cli import add_parsers as add_eval
    from eval.datasets import DatasetError
    from zoo.cli import add_parsers as add_zoo
    from zoo.convert import add_parser as add_convert
    from zoo.io import WeightsError
    from zoo.publish import add_parser as add_publish
    from zoo.registry import UnknownModel

    from .adainf import InflationError
    from .config import ConfigError
    from .data_cli import add_adainf_parser, add_subset_parser
    from .subsets import SubsetError
    from .trainer import TrainingError

    parser = argparse.ArgumentParser(prog="sslzoo", description="self-supervised encoders: zoo, probes, training")
    sub = parser.add_subparsers(dest="command", required=True)
    add_zoo(sub)
    add_convert(sub)
    add_publish(sub)
    add_eval(sub)
    add_train_parser(sub)
    add_subset_parser(sub)
    add_adainf_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, WeightsError, UnknownModel, ConfigError, TrainingError, SubsetError, InflationError,
            ValueError) as e:
        print(f"sslzoo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sslzoo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
