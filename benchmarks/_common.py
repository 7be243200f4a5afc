"""Shared helpers of the benchmark scripts: machine description, timing, JSON output."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(**extra) -> dict:
    """CPU, core count, torch threads, library versions, GPU and load average (other jobs skew timings)."""
    import numpy as np

    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_before": os.getloadavg() if hasattr(os, "getloadavg") else None}
    for mod in ("torchvision", "PIL", "lightly", "sklearn"):
        try:
            info[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):  # optional, not installed
            info[mod] = None
    info.update(extra)
    return info


def print_machine(info: dict) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)


class Timer:
    """Wall and process-CPU seconds of a block (CPU time counts all threads of this process only, so
    with other jobs on the machine it is the better estimate of the uncontended single-thread cost)."""

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0


def write_json(path, machine: dict, args, rows: list) -> Path:
    machine = dict(machine)
    machine["loadavg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "results": rows}, indent=1))
    print(f"wrote {out}", flush=True)
    return out


@contextlib.contextmanager
def counting_logreg_work():
    """Count the products every logistic-regression fit of :mod:`eval.solver` does inside the block: yields a
    dict whose ``flop`` (two ``C x D x n`` products per problem and objective evaluation: logits and weight
    gradient, 2 FLOP per multiply-add) and ``evals`` (problem evaluations) grow as fits run. The softmax, the
    L-BFGS vector work and the scoring are not counted, so ``flop / peak`` is a lower bound on their time."""
    from eval import solver

    counted = {"flop": 0, "evals": 0}
    objective = solver.logreg_objective

    def counting(X, y, onehot_t, W, *rest, **kw):
        counted["evals"] += W.shape[0]
        counted["flop"] += 4 * W.shape[0] * W.shape[1] * W.shape[2] * X.shape[-2]  # rows: [N, D] or [F, N, D]
        return objective(X, y, onehot_t, W, *rest, **kw)

    solver.logreg_objective = counting
    try:
        yield counted
    finally:
        solver.logreg_objective = objective
