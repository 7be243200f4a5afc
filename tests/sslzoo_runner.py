"""Run ``sslzoo`` command lines in separate processes, quickly, for the end-to-end tests.

Every command runs in a process of its own, with its own exit status, stdout and stderr, exactly
like ``python -m training ARGS`` (the ``sslzoo`` console script). Starting Python and importing
torch costs seconds on a free CPU and up to a minute on a busy two-core machine, so by default a
*driver* process imports the package once and forks one child per command: the fork happens after
the imports and before any computation (no thread pool or open database is inherited), and the
child then behaves like the interpreter running ``sslzoo``: an uncaught exception prints its
traceback and exits 1, ``SystemExit`` exits with its code. Set ``SSLZOO_TEST_FRESH_PROCESS=1`` to
start a fresh ``python -m training`` for every command instead (slower, same assertions).

    r = runner().run("eval", "--model", "nope", env={"SSLZOO_HOME": ...})
    r.returncode, r.stdout, r.stderr
    p = runner().start("train", ...); p.pid; runner().kill(p); runner().wait(p)
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str
    args: tuple


@dataclass
class Proc:
    pid: int
    args: tuple
    out: Path
    err: Path
    popen: subprocess.Popen | None = None


def _env(extra: dict | None) -> dict:
    env = dict(os.environ, **BASE_ENV)
    env.update(extra or {})
    return {k: str(v) for k, v in env.items()}


class Runner:
    def __init__(self, fresh: bool | None = None):
        self.fresh = os.environ.get("SSLZOO_TEST_FRESH_PROCESS") == "1" if fresh is None else fresh
        self.tmp = Path(tempfile.mkdtemp(prefix="sslzoo-runner-"))
        self.lock = threading.Lock()
        self.driver = None
        self.n = 0
        if not self.fresh:
            self.driver = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, env=_env(None), cwd=ROOT, text=True)
            ready = self.driver.stdout.readline()
            if json.loads(ready or "{}").get("ready") is not True:
                raise RuntimeError(f"sslzoo test driver did not start: {ready!r}")

    def _ask(self, req: dict) -> dict:
        with self.lock:
            self.driver.stdin.write(json.dumps(req) + "\n")
            self.driver.stdin.flush()
            line = self.driver.stdout.readline()
        if not line:
            raise RuntimeError("sslzoo test driver died")
        return json.loads(line)

    def start(self, *args, env: dict | None = None, cwd: str | Path | None = None) -> Proc:
        self.n += 1
        out, err = self.tmp / f"{self.n}.out", self.tmp / f"{self.n}.err"
        args = tuple(str(a) for a in args)
        if self.fresh:
            with open(out, "wb") as fo, open(err, "wb") as fe:
                p = subprocess.Popen([sys.executable, "-m", "training", *args], stdout=fo, stderr=fe,
                                     stdin=subprocess.DEVNULL, env=_env(env), cwd=cwd or ROOT)
            return Proc(p.pid, args, out, err, popen=p)
        pid = self._ask({"op": "start", "argv": list(args), "env": _env(env), "cwd": str(cwd or ROOT),
                         "stdout": str(out), "stderr": str(err)})["pid"]
        return Proc(pid, args, out, err)

    def poll(self, p: Proc) -> int | None:
        if p.popen is not None:
            return p.popen.poll()
        return self._ask({"op": "poll", "pid": p.pid})["rc"]

    def kill(self, p: Proc, sig: int = signal.SIGKILL) -> None:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, p: Proc, timeout: float = 600) -> Done:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while (rc := self.poll(p)) is None:
            if time.monotonic() > deadline:
                self.kill(p)
                self.wait(p, timeout=60)
                raise TimeoutError(f"sslzoo {' '.join(p.args)} ran longer than {timeout} s")
            time.sleep(delay)
            delay = min(0.1, delay * 1.5)
        return Done(rc, p.out.read_text(errors="replace"), p.err.read_text(errors="replace"), p.args)

    def run(self, *args, env: dict | None = None, cwd=None, timeout: float = 600) -> Done:
        return self.wait(self.start(*args, env=env, cwd=cwd), timeout=timeout)

    def close(self) -> None:
        if self.driver is not None and self.driver.poll() is None:
            try:
                self.driver.stdin.close()
                self.driver.wait(timeout=30)
            except Exception:
                self.driver.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


_RUNNER: Runner | None = None


def runner() -> Runner:
    """The process-wide runner (one driver shared by every test module)."""
    global _RUNNER
    if _RUNNER is None:
        _RUNNER = Runner()
        atexit.register(_RUNNER.close)
    return _RUNNER


# ----------------------------------------------------------------------------- the driver


def _child(req: dict) -> None:
    code = 1
    try:
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (null, out, err):
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.argv = ["sslzoo", *req["argv"]]
        from training.cli import main

        code = main(req["argv"])
    except SystemExit as e:  # what the interpreter does with SystemExit
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # an uncaught exception: traceback on stderr, status 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(int(code or 0) & 0xFF)


def _serve() -> None:
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401  (the expensive imports, once)

    import eval.cli  # noqa: F401
    import eval.run  # noqa: F401
    import training.cli  # noqa: F401
    import training.trainer  # noqa: F401

    reply = sys.stdout
    print(json.dumps({"ready": True}), file=reply, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "start":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(req)
            print(json.dumps({"pid": pid}), file=reply, flush=True)
        elif req["op"] == "poll":
            pid, status = os.waitpid(req["pid"], os.WNOHANG)
            rc = None if pid == 0 else os.waitstatus_to_exitcode(status)
            print(json.dumps({"rc": rc}), file=reply, flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
