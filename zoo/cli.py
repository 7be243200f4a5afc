"""The zoo's sub-commands (``list``, ``info``, ``convert``, ``publish``; also ``python -m zoo``)
and :func:`run_cli`, the one runner every package's command line goes through: one parser, one error
handler (:class:`zoo.base.SSLZooError` -> one line, exit 2), library log lines shown to the user.

Each package offers its sub-commands as ``add_parsers(sub)`` and never imports a package above it; the
``sslzoo`` console script (:mod:`training.cli`, the only package that sees all three) assembles them.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import os
import sys

from .base import SSLZooError, UsageError, error_line

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
    add_zoo_parsers(sub)
    add_convert_parser(sub)
    add_publish_parser(sub)


def lazy_command(module: str, name: str):
    """A sub-command's ``func`` that imports ``module`` (and with it torch) only when the command runs, so
    that building the parser -- ``sslzoo --help``, ``sslzoo eval --help`` -- imports no heavy library."""
    def run(args):
        return getattr(importlib.import_module(module), name)(args)

    run.__name__ = name
    return run


def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="upstream checkpoint -> zoo folder (model.safetensors + config.json + card)")
    p.add_argument("name", help="registry name, or a new name together with --format")
    p.add_argument("--checkpoint", required=True, help="upstream checkpoint: a file path or an http(s) URL")
    p.add_argument("--out", required=True, help="output folder: model.safetensors, config.json, README.md "
                                                "(heads.safetensors) are written into it; nothing else there is touched")
    p.add_argument("--overwrite", action="store_true",
                   help="replace those files when --out already holds them (refused otherwise)")
    p.add_argument("--format", dest="fmt", default=None,
                   help="checkpoint format (default: the registry record's; `sslzoo convert` names the formats "
                        "when this one is unknown)")
    p.add_argument("--preprocess", default=None, help="JSON (or JSON file): resize, crop, mean, std[, interpolation]")
    p.add_argument("--arch", default=None, help="JSON: build_resnet keyword arguments (default: registry / inferred)")
    p.add_argument("--sha256", default=None, help="refuse the checkpoint unless its sha256 is this")
    p.set_defaults(func=lazy_command("zoo.convert", "run_convert"))


def add_publish_parser(sub) -> None:
    p = sub.add_parser("publish", help="upload a zoo folder as an HF model repo; prints the commit to pin")
    p.add_argument("folder", help="zoo folder (model.safetensors + config.json [+ heads.safetensors, README.md])")
    p.add_argument("--repo-id", required=True, help="ORG/NAME on the HF Hub (or HF_ENDPOINT)")
    p.add_argument("--local-git", default=None, metavar="PATH",
                   help="instead of uploading, commit the repo to this local git repository (branch main), "
                        "e.g. MIRRORS/models/ORG/NAME for a mirror server")
    p.add_argument("--revision-out", default=None, metavar="FILE", help="also write the pin (repo, commit, sha256) "
                                                                        "to FILE as JSON")
    p.add_argument("--private", action="store_true", help="create the HF repo as private")
    p.add_argument("--message", default=None, help="commit message")
    p.set_defaults(func=lazy_command("zoo.publish", "run_publish"))


def add_zoo_parsers(sub) -> None:
    p = sub.add_parser("list", help="every zoo model, one row each")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run_list)
    p = sub.add_parser("info", help="one model's record, card and where its weights resolve from")
    p.add_argument("name")
    p.set_defaults(func=run_info)


def run_list(args) -> int:
    from .registry import REGISTRY

    if args.format == "json":
        print(json.dumps([r.to_dict() for r in sorted(REGISTRY.values(), key=lambda r: r.name)], indent=1))
    else:
        from .cards import render_zoo_table

        print(render_zoo_table(), end="")
    return 0


def run_info(args) -> int:
    from .cards import card_path
    from .hub import BUNDLED_DIR
    from .registry import get_record

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
