"""One evaluation: a model (registry name or zoo folder) x a dataset x probes -> result rows.

Rows carry model, weights sha256, dataset (+ its fingerprint), protocol and its parameters, seeds
and the accuracy (percent). They are appended to the results store
(``$SSLZOO_HOME/results/*.json``, one atomically written file per evaluation) that ``sslzoo
leaderboard`` reads.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path

import torch

from zoo.hub import create_model
from zoo.io import atomic_write_text

from .datasets import DatasetError, load_split
from .features import Pixels, extract, model_fingerprint, sslzoo_home
from .probes import fewshot_probe, knn_probe, linear_probe

PROBES = ("linear", "fewshot", "knn")
KNN_SETTINGS = ((20, 0.07), (200, 0.1))  # DINO and InstDisc settings
BASELINES = ("pixels", "random-init")


def code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def parse_probes(spec: str) -> list[str]:
    items = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in items if p not in PROBES]
    if bad or not items:
        raise ValueError(f"unknown probe(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(PROBES)}")
    return items


def _label(model_spec: str) -> str:
    p = Path(model_spec)
    return p.name if p.exists() else model_spec


def _check_classes(train, test) -> None:
    tr, te = set(int(v) for v in train.targets if v >= 0), set(int(v) for v in test.targets)
    extra = te - tr
    if extra:
        raise DatasetError(f"{test.name}: test has classes {sorted(extra)[:5]} that train lacks; probes cannot "
                           f"predict them")


def evaluate_features(name: str, sha: str, dataset: str, data_fp: str, tr, te, probes, shots, seeds) -> list[dict]:
    (trx, try_), (tex, tey) = tr, te
    labelled = try_ >= 0
    trx, try_ = trx[labelled], try_[labelled]
    base = {"model": name, "weights_sha256": sha, "dataset": dataset, "dataset_sha256": data_fp}
    rows = []
    if "linear" in probes:
        r = linear_probe(trx, try_, tex, tey, seed=0)
        rows.append(dict(base, protocol="linear", accuracy_mean=100 * r["accuracy"], accuracy_std=None, seeds="0",
                         n=1, params=json.dumps({"l2": r["l2"], "val_accuracy": r["val_accuracy"],
                                                 "val_fraction": 0.1})))
    if "knn" in probes:
        for k, t in KNN_SETTINGS:
            r = knn_probe(trx, try_, tex, tey, k=k, temperature=t)
            rows.append(dict(base, protocol=f"knn k={k} T={t}", accuracy_mean=100 * r["accuracy"], accuracy_std=None,
                             seeds="-", n=1, params=json.dumps({"k": k, "T": t})))
    if "fewshot" in probes:
        for r in fewshot_probe(trx, try_, tex, tey, shots=shots, seeds=seeds):
            std = r["std"]
            rows.append(dict(base, protocol=f"few-shot k={r['shots']}", accuracy_mean=100 * r["mean"],
                             accuracy_std=None if std != std else 100 * std, seeds=",".join(map(str, r["seeds"])),
                             n=len(r["seeds"]), params=json.dumps({"per_seed": r["per_seed"],
                                                                   "l2": r.get("per_seed_l2")})))
    return rows


def evaluate(model_spec: str, dataset: str, *, probes=PROBES, shots=(1, 5, 10, 20, 50, 100), seeds=(0, 1, 2),
             baselines=(), root: str | None = None, download: bool = False, precision: str = "fp32",
             batch_size: int = 512, cache: bool = True, save: bool = True) -> list[dict]:
    """Evaluate ``model_spec`` (+ optional baselines) on ``dataset``; returns table rows."""
    train = load_split(dataset, "train", root=root, download=download)
    test = load_split(dataset, "test", root=root, download=download)
    if len(train) == 0 or len(test) == 0:
        raise DatasetError(f"{dataset}: empty split (train {len(train)}, test {len(test)} images)")
    _check_classes(train, test)
    model = create_model(model_spec, pretrained=True)
    ds_name = dataset if not dataset.startswith(("folder:", "npz:")) else dataset.split(":", 1)[0] + ":" + Path(
        dataset.split(":", 1)[1]).name
    data_fp = train.fingerprint()[:16] + "/" + test.fingerprint()[:16]
    candidates = [(_label(model_spec), model)]
    for b in baselines:
        if b == "pixels":
            candidates.append(("pixels", Pixels(model.preprocess)))
        elif b == "random-init":
            torch.manual_seed(0)
            rnd = create_model(model_spec, pretrained=False)
            rnd.weights_sha256 = None
            candidates.append((f"{_label(model_spec)} (random init, seed 0)", rnd))
        else:
            raise ValueError(f"unknown baseline {b!r}; choose from {', '.join(BASELINES)}")
    rows = []
    for name, m in candidates:
        tr = extract(m, train, batch_size=batch_size, precision=precision, cache=cache, desc=f"{name}: train")
        te = extract(m, test, batch_size=batch_size, precision=precision, cache=cache, desc=f"{name}: test")
        sha = "-" if name == "pixels" else model_fingerprint(m)
        rows += evaluate_features(name, sha, ds_name, data_fp, tr, te, probes, shots, seeds)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    for r in rows:
        r.update(precision=precision, code_version=code_version(), time=now)
    if save:
        save_rows(rows)
    return rows


def results_dir() -> Path:
    return sslzoo_home() / "results"


def save_rows(rows: list[dict]) -> Path:
    d = results_dir()
    d.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    path = d / f"{stamp}-{os.getpid()}.json"
    atomic_write_text(path, json.dumps(rows, indent=1, default=float) + "\n")
    return path


def load_rows() -> list[dict]:
    rows = []
    for p in sorted(results_dir().glob("*.json")):
        try:
            rows += json.loads(p.read_text())
        except (json.JSONDecodeError, OSError):
            continue
    return rows
