"""The ``sslzoo`` console script (also ``python -m training``): every sub-command of zoo, eval and training.

training is the only package that sees all three layers, so the one dispatcher lives here: zoo and eval
offer their sub-commands (``add_parsers``), training adds ``train``, ``finetune``, ``subset`` and
``adainf``, registers the fine-tuning protocol with eval (``sslzoo eval --probes finetune``), and
:func:`zoo.cli.run_cli` runs the chosen one with the one error handler.
"""
from __future__ import annotations

import sys

from eval.cli import DEFAULT_DATASET, DEFAULT_MODEL
from eval.cli import add_parsers as add_eval
from zoo.base import parse_int_list
from zoo.cli import add_parsers as add_zoo
from zoo.cli import run_cli

from eval.protocols import TrainedProtocol, register_protocol

from . import finetune_protocol as ft


def evaluate_finetune(*args, **kwargs):
    """:func:`training.finetune.evaluate_finetune`, imported when a fine-tuning really runs (it needs torch;
    ``sslzoo --help`` does not)."""
    from .finetune import evaluate_finetune as run

    return run(*args, **kwargs)


register_protocol(TrainedProtocol(name="finetune", add_arguments=ft.eval_arguments, prepare=ft.eval_prepare,
                                  evaluate=evaluate_finetune, note=ft.PROTOCOL_NOTE))


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train an encoder from a recipe; resumable; exports a zoo folder")
    p.add_argument("recipe", help="recipe name in training/recipes/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set optim.lr=0.3 (repeatable)")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, log.csv, export/)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/checkpoint.pt (with "
                                                         "the run's own recipe)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in OUT (its checkpoint, logs and export are deleted); without it "
                        "an existing run is refused")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run_train)


def add_finetune_parser(sub) -> None:
    from .finetune_protocol import BATCH_SIZE, EPOCHS, VAL_FRACTION

    p = sub.add_parser("finetune", help="fine-tune an encoder end to end with a linear head on a fraction of the "
                                        "labels; results saved with the probes")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name or zoo folder (default {DEFAULT_MODEL})")
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help="catalogue name, folder:PATH or npz:PATH (default fashion-mnist)")
    p.add_argument("--fractions", default="0.01,0.1,1.0", help="label fractions of train (default 0.01,0.1,1.0)")
    p.add_argument("--seeds", default="0", help="seeds (label subset, validation split, head init, augmentation)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs per learning rate (default {EPOCHS})")
    p.add_argument("--lrs", default="0.01,0.03,0.1", help="learning-rate grid, selected on validation")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                   help=f"validation split carved from train for model selection (default {VAL_FRACTION})")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16", help="bf16 autocast (default) or fp32")
    p.add_argument("--root", default=None, help="dataset folder (default $SSLZOO_DATA/<name>)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--force", action="store_true", help="recompute results the results store already has")
    p.add_argument("--out", default=None, help="also write the table to OUT (.md, .csv or .json: that file only; "
                                                "no such suffix: OUT.md, OUT.csv and OUT.json)")
    p.add_argument("--overwrite", action="store_true", help="replace --out files that exist (refused otherwise)")
    p.add_argument("--format", choices=("md", "csv", "json"), default="md")
    p.set_defaults(func=run_finetune)


def run_finetune(args) -> int:
    from eval.tables import make_table, render, render_summary, table_out_paths, write_table

    from .finetune_protocol import PROTOCOL_NOTE, parse_fractions, parse_lrs

    outs = table_out_paths(args.out, args.overwrite) if args.out else []
    info: dict = {}
    rows = evaluate_finetune(args.model, args.dataset, fractions=parse_fractions(args.fractions),
                             seeds=parse_int_list(args.seeds, "--seeds"), lrs=parse_lrs(args.lrs), epochs=args.epochs,
                             batch_size=args.batch_size, val_fraction=args.val_fraction, precision=args.precision,
                             root=args.root, download=args.download, device=args.device, force=args.force, info=info)
    df = make_table(rows)
    for path in outs:
        write_table(df, path)
    print(render_summary(df) if args.format == "md" else render(df, args.format))
    if args.format == "md":
        print(PROTOCOL_NOTE)
        if info.get("reused"):
            print(f"{info['reused']} of {info['reused'] + info['computed']} results came from the results store; "
                  f"--force recomputes them.")
    return 0


def run_train(args) -> int:
    """Single process, or one rank of a torchrun job (``docs/distributed.md``): the process group is
    joined from torchrun's environment and left at the end."""
    from eval import distributed as D

    from .config import load_recipe
    from .trainer import Trainer

    cfg = load_recipe(args.recipe, args.overrides)
    D.init_from_env(args.device)
    try:
        path = Trainer(cfg, args.out, device=args.device).fit(resume=args.resume, overwrite=args.overwrite)
        if D.is_main():
            if path.name == "checkpoint.pt":
                print(f"checkpoint {path} (continue with --resume)")
            else:
                print(f"exported {path.parent} (model.safetensors + config.json)")
    finally:
        D.shutdown()
    return 0


def add_cards_parser(sub) -> None:
    p = sub.add_parser("cards", help="regenerate model_cards/ and the README's zoo and method tables")
    p.add_argument("--check", action="store_true", help="exit 1 if a card or table is stale instead of writing")
    p.set_defaults(func=run_cards)


def generated_readme_sections() -> dict:
    """The README's generated tables, by marker name."""
    from zoo.cards import render_zoo_table

    from .methods import methods_markdown

    return {"zoo-table": render_zoo_table(), "method-table": methods_markdown() + "\n"}


def run_cards(args) -> int:
    from zoo.cards import update_readme, write_cards

    stale = write_cards(check=args.check)
    stale_tables = update_readme(generated_readme_sections(), check=args.check)
    if args.check and (stale or stale_tables):
        what = [f"model cards: {', '.join(stale)}"] if stale else []
        what += [f"README tables: {', '.join(stale_tables)}"] if stale_tables else []
        print(f"stale {'; '.join(what)}; run `sslzoo cards`", file=sys.stderr)
        return 1
    print(f"{len(stale)} card(s) and {len(stale_tables)} README table(s) {'stale' if args.check else 'written'}")
    return 0


def add_parsers(sub) -> None:
    """``cards``, ``train``, ``subset``, ``adainf``, ``finetune``."""
    from .datacentric.cli import add_adainf_parser, add_subset_parser

    add_cards_parser(sub)
    add_train_parser(sub)
    add_subset_parser(sub)
    add_adainf_parser(sub)
    add_finetune_parser(sub)


def main(argv=None) -> int:
    """The ``sslzoo`` console script: every sub-command, one error line on bad input."""
    return run_cli([add_zoo, add_eval, add_parsers], argv)


if __name__ == "__main__":
    sys.exit(main())
