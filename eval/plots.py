"""Plots of stored results: few-shot accuracy against labelled images per class.

One panel per dataset, one line per model (mean over seeds, shaded ± one std), k on a log axis,
in the style of the SimCLR tutorial's figure. Drawn with matplotlib's object API on an Agg canvas
(no pyplot, no global backend switch) and written atomically.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

from zoo.io import atomic_write_bytes

from .stats import is_missing

__all__ = ["fewshot_points", "fewshot_png", "plot_fewshot"]


def _shots(protocol: str):
    if isinstance(protocol, str) and protocol.startswith("few-shot k="):
        try:
            return int(protocol.split("=", 1)[1].split()[0])
        except ValueError:
            return None
    return None


def _variant(params) -> str:
    """The protocol parameters that are not the shot count, e.g. ``precision=bf16``."""
    try:
        p = json.loads(params) if isinstance(params, str) else dict(params or {})
    except (TypeError, ValueError):
        return ""
    p.pop("shots", None)
    p.pop("preprocess", None)
    return ", ".join(f"{k}={v}" for k, v in sorted(p.items()))


def fewshot_points(df: pd.DataFrame) -> dict:
    """``{dataset: {line label: [(k, mean, std), ...] sorted by k}}`` from a results table."""
    out: dict = {}
    lines: dict = {}
    for rec in df.to_dict(orient="records"):
        k = _shots(rec["protocol"])
        if k is None:
            continue
        key = (rec["dataset"], rec["model"], str(rec["weights_sha256"]), _variant(rec.get("params")))
        std = rec["accuracy_std"]
        std = 0.0 if is_missing(std) else float(std)
        lines.setdefault(key, []).append((k, float(rec["accuracy_mean"]), std))
    variants: dict = {}
    for ds, model, sha, var in lines:
        variants.setdefault((ds, model), set()).add((sha, var))
    for (ds, model, sha, var), pts in lines.items():
        label = model
        if len(variants[(ds, model)]) > 1:  # the same name with other weights / parameters: say which
            label += f" ({sha[:8]}{', ' + var if var else ''})"
        out.setdefault(ds, {})[label] = sorted(pts)
    return out


def plot_fewshot(df: pd.DataFrame, path, *, title: str | None = None) -> Path:
    """Write the few-shot curves of ``df`` (rows from :func:`eval.store.aggregate`) to ``path`` (PNG)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"the plot is a PNG image; give a path ending in .png, not {path.name!r}")
    atomic_write_bytes(path, fewshot_png(df, title=title))
    return path


def fewshot_png(df: pd.DataFrame, *, title: str | None = None) -> bytes:
    """The few-shot curves of ``df`` as PNG bytes (what :func:`plot_fewshot` writes; the HTML
    leaderboard inlines them)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    data = fewshot_points(df)
    if not data:
        raise ValueError("no few-shot results to plot; run `sslzoo eval --probes fewshot` first")
    n = len(data)
    fig = Figure(figsize=(5.5 * n, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (ds, lines) in zip(axes, sorted(data.items())):
        ks = sorted({k for pts in lines.values() for k, _, _ in pts})
        for label, pts in sorted(lines.items()):
            x = [k for k, _, _ in pts]
            y = [m for _, m, _ in pts]
            s = [sd for _, _, sd in pts]
            (line,) = ax.plot(x, y, marker="o", label=label)
            ax.fill_between(x, [a - b for a, b in zip(y, s)], [a + b for a, b in zip(y, s)],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        if len(ks) > 1:
            ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("labelled images per class (k)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"few-shot linear probe: {ds}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
