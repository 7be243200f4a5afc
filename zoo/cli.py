"""The zoo's sub-commands (``list``, ``info``, ``convert``, ``publish``; also ``python -m zoo``)
and :func:`run_cli`, the one runner every package's command line goes through: one parser, one error
handler (:class:`zoo.base.SSLZooError` -> one line, exit 2), library log lines shown to the user.

Each package offers its sub-commands as ``add_parsers(sub)`` and never imports a package above it; the
``sslzoo`` console script (:mod:`training.cli`, the only package that sees all three) assembles them.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys

from .base import SSLZooError, UsageError, error_line
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
    every error a user can cause into one line ``sslzoo CMD: error: ...`` on stderr:

    * ssl-zoo errors and ValueError from argument checks: exit 2;
    * OSError (disk full, permission denied, read-only folder, a path that is a file): exit 1, naming
      the file and what to do;
    * a ``--device`` this machine does not have (``cuda`` without a GPU): exit 2, before any work;
    * a closed stdout (``sslzoo list | head``): no message, exit 141 (128 + SIGPIPE), like other tools;
    * Ctrl-C: ``interrupted``, exit 130.
    """
    parser = argparse.ArgumentParser(prog=prog, description="self-supervised encoders: zoo, probes, training")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in adders:
        add(sub)
    args = parser.parse_args(argv)
    show_library_logs()
    try:
        if getattr(args, "device", None):
            check_device(args.device)
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return rc
    except (SSLZooError, ValueError) as e:
        print(error_line(args.command, e), file=sys.stderr)
        return 2
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except OSError as e:
        print(error_line(args.command, os_error_message(e)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sslzoo {args.command}: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so Python's exit-time flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


_OS_HINTS = {errno.ENOSPC: "free some space or write elsewhere (--out, $SSLZOO_HOME)",
             errno.EDQUOT: "free some space or write elsewhere (--out, $SSLZOO_HOME)",
             errno.EACCES: "choose a folder you can write to (--out, $SSLZOO_HOME)",
             errno.EPERM: "choose a folder you can write to (--out, $SSLZOO_HOME)",
             errno.EROFS: "the file system is read-only; write elsewhere (--out, $SSLZOO_HOME)",
             errno.ENOTDIR: "a path component is a file, not a folder; choose another path",
             errno.EISDIR: "the path is a folder; give a file path",
             errno.ENOENT: "check the path"}


def os_error_message(e: OSError) -> str:
    """One line for an OSError: what failed, on which file, and what to do."""
    what = e.strerror or str(e) or type(e).__name__
    files = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    hint = _OS_HINTS.get(e.errno, "")
    return f"{what}{f': {files}' if files else ''}{f'; {hint}' if hint else ''}"


def check_device(device: str) -> None:
    """Refuse a ``--device`` this machine cannot use, in one line, before any work."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a device; use cpu or cuda (cuda:N for GPU N)") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UsageError(f"--device {device}: no CUDA GPU is available on this machine (torch "
                             f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu")
        if d.index is not None and d.index >= n:
            raise UsageError(f"--device {device}: this machine has {n} GPU(s) (cuda:0..cuda:{n - 1})")
    elif d.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {device}: unsupported device type {d.type!r}; use cpu or cuda")


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
