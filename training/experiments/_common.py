"""Shared pieces of the data-centric experiments: a resumable results file, one training run under a
fixed step budget (through :mod:`training.experiments.harness`, as the method comparison) followed by the probes, mean ± std summaries, a markdown table, a plot.

Every cell (one training run + probes) is a key in ``OUT/results.json``, rewritten atomically after
each cell, so an interrupted experiment resumes by skipping finished cells (a half-trained cell
resumes from its own checkpoint in ``OUT/runs/KEY``). Each cell's probe results also go to the
results store (:class:`eval.store.ResultStore`, model ``EXPERIMENT/KEY``), like the method
comparison's, so ``sslzoo leaderboard`` shows them beside every other evaluation.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from eval import stats
from eval.features import extract
from eval.probes import knn_probe, linear_probe
from eval.run import LINEAR_VAL_FRACTION, data_fingerprint
from eval.store import Result, ResultStore
from zoo.hub import create_model
from zoo.io import WEIGHTS_NAME, atomic_write_text, sha256_file

from ..augmentation.presets import AUGMENT_PRESETS
from ..config import load_recipe
from ..trainer import Trainer, TrainingError
from . import harness

RECIPE = "simclr_fashion_mnist_cpu"


class Results:
    """``OUT/results.json``: ``{"settings": {...}, "cells": {key: record}}``."""

    def __init__(self, out: Path, settings: dict):
        self.path = Path(out) / "results.json"
        self.settings = settings
        self.cells: dict = {}
        if self.path.is_file():
            doc = json.loads(self.path.read_text())
            if doc.get("settings") != settings:
                diff = sorted(k for k in set(settings) | set(doc.get("settings", {}))
                              if settings.get(k) != doc.get("settings", {}).get(k))
                raise SystemExit(f"{self.path} was written with other settings ({', '.join(diff)}); "
                                 f"use another --out or the same settings to resume")
            self.cells = doc.get("cells", {})

    def done(self, key: str) -> bool:
        return key in self.cells

    def put(self, key: str, record: dict) -> None:
        self.cells[key] = record
        atomic_write_text(self.path, json.dumps({"settings": self.settings, "cells": self.cells}, indent=1) + "\n")


def budget_overrides(budget_steps: int, seed: int, batch_size: int) -> list:
    """A fixed compute budget: exactly ``budget_steps`` steps of ``batch_size`` images whatever the
    data size, a warm-up of 5% of it, no online monitor (the probes come after)."""
    return ["optim.epochs=null", f"train.max_steps={budget_steps}", f"optim.warmup_steps={max(1, budget_steps // 20)}",
            f"optim.batch_size={batch_size}", f"train.seed={seed}", "train.monitor_every_epochs=0",
            "train.tensorboard=false", "train.checkpoint_minutes=2"]


def preset_overrides(name: str) -> list:
    """The fields of an AdaInf augmentation preset as explicit ``--set`` overrides (so they win over
    the recipe's own augment fields)."""
    out = []
    for k, v in AUGMENT_PRESETS[name].items():
        out.append(f"augment.{k}={json.dumps(v) if v is not None else 'null'}")
    return out


def train_and_probe(out_dir: Path, overrides: list, probe_data, *, probe_train: int | None = None) -> dict:
    """Train ``RECIPE`` with ``overrides`` through the harness (:func:`training.experiments.harness.train_run`,
    resumable in ``out_dir``), then the linear probe (L2 chosen on a split of train) and kNN (k=20,
    T=0.07) on frozen features of Fashion-MNIST."""
    cfg = load_recipe(RECIPE, overrides)
    t0 = time.time()
    rec = harness.train_run(out_dir, RECIPE, overrides, "cpu")
    if rec["status"] == "failed":
        raise TrainingError(rec["error"])
    if rec["status"] != "done":
        raise SystemExit(f"{out_dir}: training stopped at step {rec['segments'][-1]['end_step']}; run again to resume")
    train_s = time.time() - t0
    model = create_model(out_dir / "export")
    tr, te = probe_data
    t1 = time.time()
    ftr, ytr = extract(model, tr, cache=False, desc="probe features train")
    fte, yte = extract(model, te, cache=False, desc="probe features test")
    if probe_train and probe_train < len(ytr):
        keep = torch.as_tensor(np.random.default_rng(0).permutation(len(ytr))[:probe_train])
        ftr, ytr = ftr[keep], ytr[keep]
    lin = linear_probe(ftr, ytr, fte, yte, val_fraction=LINEAR_VAL_FRACTION)
    knn = knn_probe(ftr, ytr, fte, yte, k=20, temperature=0.07)
    store_results(out_dir, model, (tr, te), lin, knn, probe_train)
    trainer = Trainer(cfg, out_dir, device="cpu")
    return {"linear": 100 * lin["accuracy"], "linear_l2": lin["l2"], "knn20": 100 * knn["accuracy"],
            "steps": int(cfg["train"]["max_steps"]), "train_images": trainer.epoch_size(trainer.load_data()[0]),
            "train_s": round(train_s, 1), "probe_s": round(time.time() - t1, 1)}


def store_results(out_dir: Path, model, probe_data, lin: dict, knn: dict, probe_train: int | None) -> None:
    """One cell's linear and kNN results into the results store: model ``EXPERIMENT/KEY`` (the
    experiment's output folder / the cell), weights by the exported file's sha256, protocols as
    ``sslzoo eval`` names them, the probe-train subsample (if any) among the parameters."""
    out_dir = Path(out_dir)
    base = dict(model=f"{out_dir.parent.parent.name}/{out_dir.name}",
                weights_sha256=sha256_file(out_dir / "export" / WEIGHTS_NAME), dataset=probe_data[0].name,
                dataset_sha256=data_fingerprint(*probe_data))
    common = {"precision": "fp32", "preprocess": model.preprocess.to_dict(), "probe_train": probe_train}
    with ResultStore() as store:
        store.put([Result(probe="linear", protocol="linear", seed=0, accuracy=100 * lin["accuracy"],
                          params=dict(common, val_fraction=LINEAR_VAL_FRACTION), extra={"l2": lin["l2"]}, **base),
                   Result(probe="knn", protocol="knn k=20 T=0.07", seed=None, accuracy=100 * knn["accuracy"],
                          params=dict(common, k=20, T=0.07), **base)])


def mean_std(values) -> tuple[float, float]:
    return stats.mean_std([float(x) for x in values], missing=math.nan)


def fmt(m: float, s: float) -> str:
    return stats.format_mean_std(m, s, missing="–")


def write_outputs(out: Path, stem: str, table_md: str, rows: list) -> None:
    """``OUT/STEM.md`` and ``OUT/STEM.csv`` (atomic)."""
    import csv
    import io

    atomic_write_text(out / f"{stem}.md", table_md)
    if rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(out / f"{stem}.csv", buf.getvalue())


def save_plot(fig, path: Path) -> None:
    import io

    from zoo.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def fashion_mnist_probe_data(root=None):
    from eval.datasets import load_split

    return load_split("fashion-mnist", "train", root=root), load_split("fashion-mnist", "test", root=root)


def add_common_args(p) -> None:
    """The arguments every experiment script takes: budget, batch, seeds, probe subsample, threads, output."""
    p.add_argument("--budget-steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--probe-train", type=int, default=None, help="subsample train for the probes (smoke runs)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0 = torch's default; 1 on a shared, busy machine)")
    p.add_argument("--out", type=Path, required=True)


def open_results(args) -> tuple[Path, Results]:
    """Apply ``--threads``, create ``--out`` and open its results file keyed by the run's settings
    (every argument but ``out`` and ``threads``, which do not change the results)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "threads")}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    return out, Results(out, settings)
