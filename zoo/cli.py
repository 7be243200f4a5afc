"""The zoo's sub-commands (``list``, ``info``, ``convert``, ``publish``; also ``python -m zoo``)
and :func:`run_cli`, the one runner every package's command line goes through: one parser, one error
handler (:class:`zoo.base.SSLZooError` -> one line, exit 2), library log lines shown to the user.

Each package offers its sub-commands as ``add_parsers(sub)`` and never imports a package above it; the
``sslzoo`` console script (:mod:`training.cli`, the only package that sees all three) assembles them.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .base import SSLZooError, error_line
from .registry import REGISTRY, get_record

PACKAGE_LOGGERS = ("zoo", "eval", "training")


class _UserHandler(logging.Handler):
    """The message alone: INFO on stdout, warnings and errors on stderr (whatever ``sys.stdout`` /
    ``sys.stderr`` are when the record is emitted), written past an active tqdm bar."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)
        except Exception:
            self.handleError(record)


def show_library_logs(level=logging.INFO) -> None:
    """Library code logs through ``logging`` (one logger per package); a command-line user sees INFO
    and above of those loggers as plain lines (warnings on stderr). Idempotent."""
    for name in PACKAGE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _UserHandler) for h in logger.handlers):
            logger.addHandler(_UserHandler())
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)


def run_cli(adders, argv=None, prog: str = "sslzoo") -> int:
    """Build one parser from ``adders`` (each ``add_parsers(sub)``), run the chosen sub-command and turn
    every ssl-zoo error (and ValueError from argument checks) into ``sslzoo CMD: error: ...``, exit 2."""
    parser = argparse.ArgumentParser(prog=prog, description="self-supervised encoders: zoo, probes, training")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in adders:
        add(sub)
    args = parser.parse_args(argv)
    show_library_logs()
    try:
        return args.func(args)
    except (SSLZooError, ValueError) as e:
        print(error_line(args.command, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sslzoo {args.command}: interrupted", file=sys.stderr)
        return 130


def add_parsers(sub) -> None:
    """``list``, ``info``, ``convert``, ``publish``."""
    from .convert import add_parser as add_convert
    from .publish import add_parser as add_publish

    add_zoo_parsers(sub)
    add_convert(sub)
    add_publish(sub)


def add_zoo_parsers(sub) -> None:
    p = sub.add_parser("list", help="every zoo model, one row each")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run_list)
    p = sub.add_parser("info", help="one model's record, card and where its weights resolve from")
    p.add_argument("name")
    p.set_defaults(func=run_info)


def run_list(args) -> int:
    if args.format == "json":
        print(json.dumps([r.to_dict() for r in sorted(REGISTRY.values(), key=lambda r: r.name)], indent=1))
    else:
        from .cards import render_zoo_table

        print(render_zoo_table(), end="")
    return 0


def run_info(args) -> int:
    from .cards import card_path
    from .hub import BUNDLED_DIR

    r = get_record(args.name)
    print(json.dumps(r.to_dict(), indent=1))
    w = r.weights
    print("\nweights resolve from, in order:")
    if w.bundled:
        print(f"  1. bundled: {BUNDLED_DIR / w.bundled / 'model.safetensors'}")
    print(f"  2. HF Hub: {w.hf_repo}@{w.hf_revision}" if w.hf_repo else "  2. HF Hub: no mirror registered")
    print(f"  3. upstream: {w.upstream_url} ({w.upstream_format})" if w.upstream_url else "  3. upstream: none")
    print(f"  sha256 pinned: {w.sha256}" if w.verified else
          "  sha256 pinned: none (unverified: pretrained=True converts the upstream file and warns; pin it with "
          f"`sslzoo convert {r.name} --checkpoint URL --out DIR` + `sslzoo publish DIR --repo-id ORG/NAME`)")
    if w.upstream_note:
        print(f"  note: {w.upstream_note}")
    print(f"\nmodel card: {card_path(r.name)}")
    return 0


def main(argv=None) -> int:
    """``python -m zoo``: the zoo's sub-commands (``sslzoo`` has every sub-command)."""
    return run_cli([add_parsers], argv)


if __name__ == "__main__":
    sys.exit(main())
