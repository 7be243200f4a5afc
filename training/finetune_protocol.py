"""The fine-tuning protocol's light half: its defaults, argument parsing and ``sslzoo eval --probes finetune``
options, importable without torch so that ``sslzoo --help`` answers at once. The training itself is in
:mod:`training.finetune` (which re-exports these names); :mod:`training.cli` registers the protocol.
"""
from __future__ import annotations

import math

__all__ = ["BATCH_SIZE", "EPOCHS", "FRACTIONS", "LRS", "PROTOCOL_NOTE", "RECIPE", "VAL_FRACTION", "eval_arguments",
           "eval_prepare", "parse_fractions", "parse_lrs", "protocol_label"]

#: protocol defaults of ``sslzoo finetune`` / ``sslzoo eval --probes finetune``
FRACTIONS = (0.01, 0.1, 1.0)
LRS = (0.01, 0.03, 0.1)
EPOCHS = 30
VAL_FRACTION = 0.1
BATCH_SIZE = 256
#: what the protocol does besides its parameters; part of every stored result's parameters
RECIPE = ("SGD nesterov momentum 0.9, no weight decay, 1 warm-up epoch then cosine, zero-initialised linear head, "
          "random-resized-crop (0.25, 1) + flip, select (lr, epoch) by validation accuracy")


def protocol_label(fraction: float) -> str:
    """``finetune 1% labels``: the protocol column of the tables."""
    return f"finetune {100 * fraction:g}% labels"


def parse_fractions(spec) -> tuple:
    items = [v.strip() for v in str(spec).split(",") if v.strip()] if isinstance(spec, str) else list(spec)
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"--fractions expects comma-separated label fractions in (0, 1], got {spec!r}") from None
    if not out:
        raise ValueError("--fractions needs at least one label fraction, e.g. 0.01,0.1,1.0")
    bad = [f for f in out if not (math.isfinite(f) and 0 < f <= 1)]
    if bad:
        raise ValueError(f"label fraction {bad[0]:g} is outside (0, 1]; use e.g. 0.01 for 1% of the labels")
    return tuple(dict.fromkeys(out))


def parse_lrs(spec) -> tuple:
    items = [v.strip() for v in str(spec).split(",") if v.strip()] if isinstance(spec, str) else list(spec)
    try:
        out = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"--lrs expects comma-separated positive learning rates, got {spec!r}") from None
    if not out:
        raise ValueError("--lrs needs at least one learning rate, e.g. 0.01,0.03,0.1")
    bad = [v for v in out if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"learning rate {bad[0]:g} must be a positive number")
    return tuple(dict.fromkeys(out))


PROTOCOL_NOTE = ("finetune = encoder + zero-initialised linear head trained end to end on the stated fraction of the "
                 "train labels; (lr, epoch) chosen on a validation split carved from train, never test; test accuracy "
                 "of the selected model, mean ± std over seeds.")


# ----------------------------------------------------------------------------- `sslzoo eval --probes finetune`


def eval_arguments(p) -> None:
    p.add_argument("--fractions", default="0.01,0.1,1.0", help="finetune: label fractions of train")
    p.add_argument("--finetune-epochs", type=int, default=30, help="finetune: epochs per learning rate")
    p.add_argument("--finetune-lrs", default="0.01,0.03,0.1", help="finetune: learning-rate grid")


def eval_prepare(args) -> dict:
    fractions, lrs = parse_fractions(args.fractions), parse_lrs(args.finetune_lrs)
    if args.finetune_epochs < 1:
        raise ValueError(f"--finetune-epochs must be >= 1, got {args.finetune_epochs}")
    return {"fractions": fractions, "lrs": lrs, "epochs": args.finetune_epochs}
