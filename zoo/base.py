"""The base layer: plumbing every package of ssl-zoo shares, written once.

* :class:`SSLZooError`: every error ssl-zoo raises for bad input or an unusable file derives from it;
  its message is one line saying what is wrong and what to do, and the ``sslzoo`` command prints it
  with :func:`error_line` (one handler for every sub-command).
* :func:`home`: ``$SSLZOO_HOME`` (default ``~/.cache/sslzoo``), where downloads, converted weights,
  the feature cache, feature stores, the results store and the compiled augmentation kernel live.
* :func:`suggest` / :func:`did_you_mean`: "did you mean" for every unknown name.
* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_path` / :func:`replace_dir`:
  a file or folder is written under a temporary name beside its destination and renamed into place,
  so a reader never sees a half-written result and an interrupted write leaves nothing behind.
* :func:`parse_int_list` / :func:`check_out_path`: command-line values every sub-command parses.

This module imports nothing heavier than the standard library, so ``sslzoo --help`` stays cheap.
"""
from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

__all__ = ["SSLZooError", "home", "suggest", "did_you_mean", "one_line", "error_line", "atomic_path",
           "atomic_write_bytes", "atomic_write_text", "atomic_dir", "replace_dir", "current_umask", "fsync_dir", "parse_int_list",
           "check_out_path", "UsageError"]


class SSLZooError(Exception):
    """Base of every ssl-zoo error about bad input or an unusable file. The message is one line
    saying what is wrong and what to do; the subclasses also derive from the built-in type callers
    already catch (ValueError, KeyError, RuntimeError)."""


# ----------------------------------------------------------------------------- messages


def one_line(text: str) -> str:
    """``text`` with control characters (a newline that came in with a path or spec) shown escaped,
    so a message stays one line whatever the input was."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def error_line(command: str, exc: BaseException) -> str:
    """The line ``sslzoo COMMAND`` prints for a failed command: ``sslzoo COMMAND: error: MESSAGE``."""
    return f"sslzoo {command}: error: {one_line(str(exc))}"


def suggest(name, options, n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The names in ``options`` closest to ``name`` (difflib ratio >= ``cutoff``), best first."""
    return difflib.get_close_matches(str(name), [str(o) for o in options], n=n, cutoff=cutoff)


def did_you_mean(name, options, n: int = 3, cutoff: float = 0.6, quote: bool = False, otherwise: str = "") -> str:
    """``"; did you mean a, b?"`` for the closest ``options`` (``'a'`` when ``quote``), else ``otherwise``."""
    close = suggest(name, options, n=n, cutoff=cutoff)
    if not close:
        return otherwise
    return f"; did you mean {', '.join(repr(c) if quote else c for c in close)}?"


# ----------------------------------------------------------------------------- places


def home() -> Path:
    """``$SSLZOO_HOME`` (default ``~/.cache/sslzoo``). Set but empty (``SSLZOO_HOME=``) counts as unset,
    so the cache and store never land in the current directory."""
    return Path(os.environ.get("SSLZOO_HOME") or Path.home() / ".cache" / "sslzoo").expanduser()


# ----------------------------------------------------------------------------- atomic writes


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp", fsync: bool = True, mode: int = 0o666):
    """Yield a temporary path beside ``path``; when the block ends without an exception the file is
    fsynced, given the usual permissions (``mode`` minus the umask) and renamed onto ``path``;
    otherwise it is removed.

        with atomic_path(out) as tmp:
            save_file(tensors, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, mode & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(tmp: str | Path, dest: str | Path) -> None:
    """Move the finished temporary folder ``tmp`` onto ``dest``. An existing ``dest`` is first renamed
    aside and removed only after the new folder is in place, so ``dest`` is always whole; callers
    decide beforehand whether replacing ``dest`` is allowed."""
    tmp, dest = Path(tmp), Path(dest)
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


@contextlib.contextmanager
def atomic_dir(dest: str | Path, place=None):
    """Yield a temporary folder beside ``dest`` to fill; when the block ends without an exception it is
    given the usual permissions and moved onto ``dest`` by ``place(tmp, dest)`` (default
    :func:`replace_dir`); whatever happens, nothing temporary is left behind."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        (place or replace_dir)(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- command-line values


class UsageError(SSLZooError, ValueError):
    """A command-line value that cannot be used."""


def parse_int_list(s: str, what: str = "value") -> tuple:
    """``"0,1,2"`` -> ``(0, 1, 2)``; one line naming the option otherwise."""
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} expects comma-separated integers, got {s!r}") from None


def check_out_path(path, what: str = "--out") -> Path:
    """Refuse, before any work, an output path that cannot be written: its folder must exist and
    be writable, and the path itself may not be a folder."""
    p = Path(path).expanduser()
    parent = p.parent
    if not parent.exists():
        raise UsageError(f"{what} {path}: folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise UsageError(f"{what} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: folder {parent} is not writable")
    if p.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file path")
    return p
