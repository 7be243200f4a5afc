"""A run folder (``sslzoo train --out DIR``) is never destroyed by accident and never shared.

* :func:`check_run_folder`: an existing run (any of :data:`RUN_FILES`) is refused unless the caller
  resumes it (``--resume``) or says ``--overwrite`` (which then removes the run's own files, and
  nothing else: files the run did not write are never touched). ``--out`` that is a file is refused.
* :class:`RunLock`: ``DIR/train.lock`` holds the pid of the process training in ``DIR``; a second
  process is refused with one line naming that pid. The lock is an ``flock`` on the file, so the
  kernel releases it when its holder dies (SIGKILL included): a stale lock file left by a dead
  process is simply taken over. Under torchrun rank 0 owns the folder and takes the lock.
* :func:`check_same_recipe`: ``--resume`` continues a run only with the recipe it was started with
  (the fields of :data:`RESUME_MAY_CHANGE` excepted); resuming a SimCLR run with the DCL recipe is
  refused, naming both.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
from pathlib import Path

from zoo.base import SSLZooError

__all__ = ["RUN_FILES", "LOCK_NAME", "RESUME_MAY_CHANGE", "RunFolderError", "RunLock", "check_run_folder",
           "remove_run_files", "check_same_recipe"]

#: what ``sslzoo train`` writes into its folder (a folder holding any of them holds a run)
RUN_FILES = ("checkpoint.pt", "config.yaml", "log.csv", "monitor.csv", "export", "tensorboard")
LOCK_NAME = "train.lock"
#: recipe fields a resumed run may change: how it is stopped, logged, checkpointed, executed (not its arithmetic)
#: and where data is read from
RESUME_MAY_CHANGE = (("train", "stop_at_step"), ("train", "threads"), ("train", "checkpoint_minutes"),
                     ("train", "log_every"), ("train", "tensorboard"), ("train", "compile"),
                     ("train", "reuse_freed_memory"), ("data", "root"), ("data", "download"), ("data", "workers"))


class RunFolderError(SSLZooError, ValueError):
    """A run folder that cannot be used as asked (it holds a run, it is locked, it is a file)."""


def existing_run_files(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def check_run_folder(out: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, to start a run in ``out`` that would replace another."""
    out = Path(out)
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in --out and --overwrite replaces it; give one of them")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file; give a folder (it will hold checkpoint.pt, log.csv, export/)")
    if out.is_dir() and not resume and not overwrite:
        found = existing_run_files(out)
        if found:
            raise RunFolderError(f"--out {out} already holds a run ({', '.join(found)}); continue it with --resume, "
                                 f"replace it with --overwrite, or choose another --out")


def remove_run_files(out: Path) -> None:
    """``--overwrite``: remove the previous run's own files (never anything else in the folder)."""
    for name in RUN_FILES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


class RunLock:
    """``with RunLock(out):`` -- exclusive use of the run folder ``out`` (created if missing)."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.fd = None
        self.created = False

    def acquire(self) -> "RunLock":
        import fcntl

        self.created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                self._undo_mkdir()
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise RunFolderError(f"--out {self.out} is in use by another training process "
                                     f"({self._holder()}); wait for it to end or choose another --out") from None
            try:  # the file we locked may have been unlinked by a holder that just released it: retry
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n").encode())
        self.fd = fd
        return self

    def _undo_mkdir(self) -> None:
        if self.created:
            try:
                self.out.rmdir()
            except OSError:
                pass

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
            return f"pid {info['pid']} on {info['host']}, see {self.path}"
        except (OSError, ValueError, KeyError, TypeError):
            return f"see {self.path}"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)  # closing releases the flock
        self.fd = None
        if self.created:  # a run that failed before writing anything leaves no empty folder behind
            try:
                self.out.rmdir()
            except OSError:
                pass  # not empty: the run's files

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


#: recipe fields added after runs were written, with the value such a run had: a run saved before the
#: field existed resumes with the default (data.source: issue 18, the file-backed training source)
ADDED_LATER = (("data", "source", "auto"), ("data", "workers", None))


def _strip(cfg: dict) -> dict:
    cfg = json.loads(json.dumps(cfg))
    for sec, key, default in ADDED_LATER:
        if isinstance(cfg.get(sec), dict):
            cfg[sec].setdefault(key, default)
    for sec, key in RESUME_MAY_CHANGE:
        if isinstance(cfg.get(sec), dict):
            cfg[sec].pop(key, None)
    return cfg


def _differences(a, b, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _differences(a.get(k), b.get(k), f"{where}{k}.") if k in a and k in b else [f"{where}{k}"]
        return out
    return [] if a == b else [where.rstrip(".")]


def check_same_recipe(saved: dict, cfg: dict, out: Path) -> None:
    """Refuse to resume the run in ``out`` (recipe ``saved``) with another recipe ``cfg``."""
    diff = _differences(_strip(saved), _strip(cfg))
    if not diff:
        return
    what = ", ".join(f"{d}: run {_get(saved, d)!r} vs now {_get(cfg, d)!r}" for d in diff[:3])
    more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
    run = f"recipe {saved.get('name')!r} (method {_get(saved, 'method.name')})"
    now = f"recipe {cfg.get('name')!r} (method {_get(cfg, 'method.name')})"
    started = f"was started with {run}, not {now}" if run != now else f"was started with other settings of {run}"
    raise RunFolderError(f"--resume: the run in {out} {started}; they differ in {what}{more}; resume with the "
                         f"run's own recipe ({out / 'config.yaml'}) or train into another --out")


def _get(cfg: dict, dotted: str):
    cur = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur
