"""Result tables: one row per (model, weights, dataset, protocol) evaluation.

Rows are dicts with at least the :data:`REQUIRED` columns (accuracies in percent,
``accuracy_std`` NaN for a single run) plus any optional parameters. :func:`make_table` builds a
sorted :class:`pandas.DataFrame`, :func:`render` formats it as Markdown (human-readable, rounded),
CSV or JSON (machine-readable, full precision), and :func:`write_table` writes it atomically.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from zoo.base import UsageError, check_out_path
from zoo.io import atomic_write_text

from .stats import format_mean_std, is_missing

__all__ = ["REQUIRED", "FORMATS", "make_table", "render", "render_summary", "write_table", "table_out_paths", "reported_metric",
           "attach_reported", "render_leaderboard", "protocol_matches"]

#: Columns every row must provide, in display order.
REQUIRED: tuple[str, ...] = ("model", "weights_sha256", "dataset", "protocol", "accuracy_mean", "accuracy_std",
                             "seeds", "n")
#: Output formats and the file suffix that selects each.
FORMATS: dict[str, str] = {".md": "md", ".csv": "csv", ".json": "json"}
_SORT_KEYS = ("dataset", "protocol", "model")


def _natural_key(value) -> tuple:
    """Sort key where digit runs compare as numbers: ``few-shot k=5`` < ``few-shot k=10``."""
    parts = re.split(r"(\d+(?:\.\d+)?)", "" if value is None else str(value))
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)


def _seeds_str(seeds) -> str:
    if isinstance(seeds, str):
        return seeds.replace(" ", "")
    if isinstance(seeds, (int, np.integer)):
        return str(int(seeds))
    return ",".join(str(int(s)) for s in seeds)


def _float_or_nan(v) -> float:
    return float("nan") if v is None else float(v)


def make_table(rows: list[dict]) -> pd.DataFrame:
    """Build the result table.

    Each row needs ``model``, ``weights_sha256``, ``dataset``, ``protocol``, ``accuracy_mean``
    (percent), ``accuracy_std`` (percent; ``None``/NaN for a single run), ``seeds`` (``"0,1,2"`` or a
    list of ints) and ``n`` (number of seeds); any other keys become extra columns (after the
    required ones, in first-seen order; missing values are NaN).

    Rows are sorted stably by ``dataset``, ``protocol``, ``model`` using natural order (numbers inside
    the strings compare numerically); rows with equal keys keep their input order.
    """
    rows = list(rows)
    extras: list[str] = []
    clean = []
    for i, row in enumerate(rows):
        missing = [c for c in REQUIRED if c not in row]
        if missing:
            raise ValueError(f"row {i} is missing {', '.join(missing)}; required columns are {', '.join(REQUIRED)}")
        r = dict(row)
        r["accuracy_mean"] = _float_or_nan(r["accuracy_mean"])
        r["accuracy_std"] = _float_or_nan(r["accuracy_std"])
        r["seeds"] = _seeds_str(r["seeds"])
        r["n"] = int(r["n"])
        for k in r:
            if k not in REQUIRED and k not in extras:
                extras.append(k)
        clean.append(r)
    clean.sort(key=lambda r: tuple(_natural_key(r[k]) for k in _SORT_KEYS))  # list.sort is stable
    df = pd.DataFrame(clean, columns=list(REQUIRED) + extras)
    for c in extras:  # integer parameters with gaps stay integers (nullable Int64), not 5.0
        vals = [r[c] for r in clean if c in r and not is_missing(r[c])]
        if vals and len(vals) < len(clean) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                   for v in vals):
            df[c] = df[c].astype("Int64")
    df["accuracy_mean"] = df["accuracy_mean"].astype("float64")
    df["accuracy_std"] = df["accuracy_std"].astype("float64")
    df["n"] = df["n"].astype("int64")
    for c in ("model", "weights_sha256", "dataset", "protocol", "seeds"):
        df[c] = df[c].astype(object)
    return df.reset_index(drop=True)


def _cell(v) -> str:
    if is_missing(v):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return str(v)


def _render_md(df: pd.DataFrame) -> str:
    cols = [c for c in df.columns if c not in ("accuracy_mean", "accuracy_std")]
    pos = cols.index("protocol") + 1 if "protocol" in cols else len(cols)
    cols.insert(pos, "accuracy")
    body = []
    for rec in df.to_dict(orient="records"):
        rec["accuracy"] = format_mean_std(rec["accuracy_mean"], rec["accuracy_std"])
        for c in cols:  # weights_sha256 and any other hash column (e.g. dataset_sha256)
            if c.endswith("sha256") and not is_missing(rec[c]):
                rec[c] = str(rec[c])[:12]
        body.append([rec["accuracy"] if c == "accuracy" else _cell(rec[c]) for c in cols])
    headers = ["sha256" if c == "weights_sha256" else c for c in cols]
    # disable_numparse: keep sha prefixes, seeds etc. verbatim (no "1e+11" for an all-digit hash).
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n"


def _json_default(v):
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return None if math.isnan(v) else float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"cannot serialise {type(v).__name__} to JSON")


def _nan_to_none(v):
    return None if is_missing(v) else v


def render(df: pd.DataFrame, fmt: str) -> str:
    """Format a table from :func:`make_table`.

    * ``"md"``: GitHub Markdown via tabulate; accuracy as ``89.12 ± 0.31`` (``89.12`` when the std is
      NaN), ``*sha256`` columns shortened to 12 characters, extra columns shown as text.
    * ``"csv"``: all columns, full float precision (shortest round-trip repr), full sha; NaN -> empty.
    * ``"json"``: list of records, full precision, full sha; NaN -> ``null``.
    """
    if fmt == "md":
        return _render_md(df)
    if fmt == "csv":
        return df.to_csv(index=False, lineterminator="\n")
    if fmt == "json":
        records = [{k: _nan_to_none(v) for k, v in rec.items()} for rec in df.to_dict(orient="records")]
        return json.dumps(records, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n"
    raise ValueError(f"unknown table format {fmt!r}; use one of: md, csv, json")


def write_table(df: pd.DataFrame, path) -> Path:
    """Write ``df`` to ``path`` in the format given by its suffix (``.md``, ``.csv``, ``.json``).

    The text goes to a temporary file in the same directory which then replaces ``path`` with
    :func:`os.replace`, so readers never see a partial file; the temporary file is removed on error.
    Missing parent directories are created. Returns the path.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the table format from {path.name!r}; use a .md, .csv or .json suffix")
    atomic_write_text(path, render(df, fmt))
    return path


def table_out_paths(out, overwrite: bool = False, what: str = "--out") -> list[Path]:
    """The files ``--out OUT`` writes: ``OUT`` alone when its suffix is ``.md``, ``.csv`` or ``.json``,
    else ``OUT.md``, ``OUT.csv`` and ``OUT.json``. Checked before any work: each must be writable, and
    an existing one is refused unless ``overwrite`` (a table never silently replaces a user's file)."""
    p = check_out_path(out, what)
    paths = [p] if p.suffix.lower() in FORMATS else [p.with_name(p.name + s) for s in FORMATS]
    for q in paths:
        check_out_path(q, what)
    existing = [str(q) for q in paths if q.exists()]
    if existing and not overwrite:
        raise UsageError(f"{what} {out}: {', '.join(existing)} already exists; pass --overwrite to replace it, or "
                         f"choose another {what}")
    return paths


def render_summary(df: pd.DataFrame) -> str:
    """One row per (model, weights, dataset), one column per protocol: the table people read.

    Cells are ``mean ± std`` in percent; protocols keep natural order (linear, kNN, few-shot by k)."""
    protos = sorted(df["protocol"].unique(), key=lambda p: (not str(p).startswith("linear"),
                                                            not str(p).startswith("knn"), _natural_key(p)))
    rows = []
    for (model, sha, dataset), g in df.groupby(["model", "weights_sha256", "dataset"], sort=False):
        cells = {r["protocol"]: format_mean_std(r["accuracy_mean"], r["accuracy_std"])
                 for r in g.to_dict(orient="records")}
        rows.append([model, str(sha)[:12], dataset] + [cells.get(p, "") for p in protos])
    return tabulate(rows, headers=["model", "sha256", "dataset", *protos], tablefmt="github",
                    disable_numparse=True) + "\n"


# ----------------------------------------------------------------------------- leaderboard


def protocol_matches(measured: str, reported: str) -> bool:
    """``"linear"`` matches ``"linear (L2 chosen on ...)"``; ``"few-shot k=1"`` does not match
    ``"few-shot k=10 ..."``: the reported protocol is the measured label, optionally followed by a
    space or parenthesised details."""
    measured, reported = measured.strip(), reported.strip()
    return reported == measured or reported.startswith(measured + " ") or reported.startswith(measured + "(")


def reported_metric(model: str, dataset: str, protocol: str):
    """The number the registry reports for ``model`` on ``dataset`` under ``protocol``
    (:class:`zoo.registry.Metric`), or ``None``."""
    from zoo.registry import REGISTRY

    rec = REGISTRY.get(model)
    if rec is None:
        return None
    for m in rec.metrics:
        if m.dataset == dataset and protocol_matches(protocol, m.protocol):
            return m
    return None


def attach_reported(rows: list[dict]) -> list[dict]:
    """Add ``reported`` (percent, or ``None``), ``reported_protocol`` and ``reported_source`` from
    the registry's metrics of each row's model, so a table shows both numbers and both protocols."""
    out = []
    for r in rows:
        m = reported_metric(r["model"], r["dataset"], r["protocol"])
        out.append(dict(r, reported=None if m is None else float(m.value),
                        reported_protocol=None if m is None else f"{m.protocol} ({m.split})",
                        reported_source=None if m is None else m.source))
    return out


def render_leaderboard(df: pd.DataFrame) -> str:
    """The leaderboard in Markdown: one row per model x dataset x protocol, ``mean ± std`` over the
    seeds, the registry's reported number and its protocol beside it."""
    body = []
    for rec in df.to_dict(orient="records"):
        rep = rec.get("reported")
        protocol = rec["protocol"]
        try:  # say so when the features were not fp32 (the same protocol at another precision is another row)
            precision = json.loads(rec.get("params") or "{}").get("precision", "fp32")
        except (TypeError, ValueError, AttributeError):
            precision = "fp32"
        if precision != "fp32":
            protocol += f" [{precision}]"
        body.append([rec["model"], str(rec["weights_sha256"])[:12], rec["dataset"], protocol,
                     format_mean_std(rec["accuracy_mean"], rec["accuracy_std"]), _cell(rec["seeds"]),
                     "" if is_missing(rep) else f"{float(rep):.2f}", _cell(rec.get("reported_protocol")),
                     _cell(rec.get("code_version"))])
    headers = ["model", "sha256", "dataset", "protocol", "accuracy (%)", "seeds", "reported (%)",
               "reported protocol", "code"]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n"
