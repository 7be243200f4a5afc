"""Method comparison on Fashion-MNIST at one training budget: ``python -m training.experiments.compare``.

Every named method trains from its CPU recipe (``training/recipes/<method>_fashion_mnist_cpu.yaml``:
its own loss, heads, optimiser and augmentation) with three things made equal by ``--set``
overrides, so the table compares methods and not budgets:

* the architecture: the model section of ``simclr_d1024_fashion_mnist_cpu`` (ResNet-18 width 16,
  3x3 stem with max-pool, DISSL expansion block 128 -> 1024), the bundled default model's;
* the budget: ``--steps`` optimisation steps at batch size ``--batch-size`` (``train.max_steps``; the
  schedule is a linear warm-up over ``--warmup-fraction`` of the steps, then cosine to 0 at the last
  step);
* the data: the train split of ``--dataset`` (no labels used).

Each run (method x training seed) has its own folder ``OUT/runs/<method>_s<seed>``; a finished run
(``compare.json`` with ``"status": "done"``) is skipped, an interrupted one continues from its
checkpoint (``Trainer.fit(resume=True)``). The measured wall seconds of each training run are
recorded. Each export is then evaluated with the harness (:func:`eval.run.evaluate`, results in the
results store, reused on re-runs): linear (L2 on a validation split of train), kNN k=20 T=0.07 and
10-shot (seeds 0, 1, 2, averaged per run). The table (``OUT/compare.md`` + ``.csv``, mean ± std over
training seeds, with budget, seeds and protocols in its header), a per-run table (``OUT/runs.csv``)
and a bar plot (``OUT/compare.png``) are written atomically.

Default: simclr, dcl (tau_plus 0.05), dcl (tau_plus 0.1), cissl, seeds 0,1,2; ``--methods all`` adds
every other registered method (:data:`training.methods.METHODS`: mocov2, byol, simsiam, barlow, dino,
dissl) with ``--extra-seeds`` (default 0).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from eval.stats import format_mean_std, is_missing, mean_std
from zoo.base import SSLZooError, atomic_write_bytes, atomic_write_text, one_line
from zoo.cli import show_library_logs

from ..config import load_recipe
from ..methods import METHODS
from . import harness

__all__ = ["VARIANTS", "DEFAULT_METHODS", "EXTRA_METHODS", "Run", "plan_runs", "main"]

#: method keys that are not a registered method as such: DCL at two class priors tau+ (instead of plain ``dcl``)
#: -> (method, overrides, label in the table)
DCL_VARIANTS: dict = {
    "dcl_tau0.05": ("dcl", ["method.tau_plus=0.05"], "DCL tau+ 0.05"),
    "dcl_tau0.1": ("dcl", ["method.tau_plus=0.1"], "DCL tau+ 0.1"),
}


def _variants() -> dict:
    """Every registered method with its CPU recipe, in ``METHODS`` order, ``dcl`` replaced by its tau+ variants."""
    out: dict = {}
    for name, cls in METHODS.items():
        if name == "dcl":
            for key, (m, own, label) in DCL_VARIANTS.items():
                out[key] = (METHODS[m].cpu_recipe, list(own), label)
        else:
            out[name] = (cls.cpu_recipe, [], cls.display_name)
    return out


#: method key -> (recipe, overrides, label in the table)
VARIANTS: dict = _variants()
DEFAULT_METHODS = ("simclr", "dcl_tau0.05", "dcl_tau0.1", "cissl")
EXTRA_METHODS = tuple(m for m in VARIANTS if m not in DEFAULT_METHODS)
ARCH_RECIPE = "simclr_d1024_fashion_mnist_cpu"
DEFAULT_STEPS = 2340  # 20 epochs of Fashion-MNIST train (117 steps of 512)
FEWSHOT_K = 10
FEWSHOT_SEEDS = (0, 1, 2)
#: (column, store protocol label, table header)
PROTOCOLS = (("linear", "linear", "linear"), ("knn20", "knn k=20 T=0.07", "kNN k=20"),
             ("fewshot10", f"few-shot k={FEWSHOT_K}", f"{FEWSHOT_K}-shot"))


@dataclass
class Run:
    method: str
    seed: int
    recipe: str
    overrides: list
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.method}_s{self.seed}"


def _ints(spec: str, what: str) -> list:
    try:
        out = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} expects comma-separated integers, got {spec!r}") from None
    if not out:
        raise ValueError(f"{what} needs at least one seed, e.g. 0,1,2")
    return list(dict.fromkeys(out))


def parse_methods(spec: str) -> list:
    if spec == "default":
        return list(DEFAULT_METHODS)
    if spec == "all":
        return list(DEFAULT_METHODS + EXTRA_METHODS)
    items = list(dict.fromkeys(m.strip() for m in spec.split(",") if m.strip()))
    bad = [m for m in items if m not in VARIANTS]
    if bad or not items:
        raise ValueError(f"unknown method {bad[0] if bad else '(none given)'!r}; choose from default, all or "
                         f"{', '.join(VARIANTS)}")
    return items


def arch_overrides() -> list:
    """The model section of the d1024 recipe as ``--set`` overrides (one architecture for all)."""
    model = load_recipe(ARCH_RECIPE)["model"]
    return [f"model.{k}={json.dumps(v)}" for k, v in model.items()]


def plan_runs(methods, seeds, extra_seeds, out: Path, budget: list) -> list:
    runs = []
    for m in methods:
        recipe, own, _ = VARIANTS[m]
        for s in (extra_seeds if m in EXTRA_METHODS else seeds):
            runs.append(Run(m, s, recipe, own + budget + [f"train.seed={s}", f"name=compare_{m}_s{s}"],
                            out / "runs" / f"{m}_s{s}"))
    return runs


def train_run(run: Run, extra_sets: list, device: str | None) -> dict:
    """Train ``run`` through the harness (:func:`training.experiments.harness.train_run`); its record is
    ``compare.json`` in the run folder."""
    return harness.train_run(run.folder, run.recipe, run.overrides + extra_sets, device,
                             meta={"method": run.method, "seed": run.seed})


def _run_accs(rows) -> dict:
    """Aggregated result rows (:func:`eval.store.aggregate`) -> ``{column: accuracy}`` for
    :data:`PROTOCOLS` plus ``_code_versions`` (every code version that computed them)."""
    by = {r["protocol"]: r for r in rows}
    out = {col: by[lab]["accuracy_mean"] for col, lab, _ in PROTOCOLS}
    out["_code_versions"] = sorted({v for _, lab, _ in PROTOCOLS for v in by[lab]["code_version"].split(",")})
    return out


def _stored_accs(store, label: str, weights_sha256: str):
    """The run's accuracies (:func:`_run_accs`) from results already in the store for these exact
    weights, whatever code version wrote them (a commit between two invocations must not re-run every
    probe); ``None`` unless every protocol is there with all its seeds. (The data set need not be
    matched: a run folder trained on other data is refused before its evaluation.)"""
    from eval.store import aggregate

    rows = aggregate([r for r in store.all() if r.model == label and r.weights_sha256 == weights_sha256])
    n_by = {r["protocol"]: r["n"] for r in rows}
    if any(n_by.get(lab, 0) < (len(FEWSHOT_SEEDS) if col.startswith("fewshot") else 1) for col, lab, _ in PROTOCOLS):
        return None
    return _run_accs(rows)


def evaluate_run(run: Run, dataset: str, root, store, batch_size: int, reevaluate: bool = False) -> dict:
    """Linear / kNN20 / 10-shot accuracies (percent) of the run's export, via the results store.

    Results of the same weights stored by an earlier code version are reused unless ``reevaluate``;
    the code versions that produced the accuracies are kept in ``_code_versions``."""
    from eval.run import evaluate
    from zoo.io import sha256_file

    label = f"compare/{run.name}"
    if not reevaluate:
        hit = _stored_accs(store, label, sha256_file(run.folder / "export" / "model.safetensors"))
        if hit is not None:
            return hit
    return _run_accs(evaluate(str(run.folder / "export"), dataset, probes=["linear", "knn", "fewshot"],
                              shots=[FEWSHOT_K], seeds=list(FEWSHOT_SEEDS), root=root, store=store, label=label,
                              batch_size=batch_size, force=reevaluate))


# ----------------------------------------------------------------------------- table + plot

def _mean_std(vals):
    return mean_std([v for v in vals if not is_missing(v)])


def _fmt(m, sd):
    return format_mean_std(m, sd, missing="-")


def summarise(runs, records, accs) -> list:
    rows = []
    for m in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == m and r.name in accs]
        if not mine:
            continue
        row = {"method": m, "label": VARIANTS[m][2], "recipe": VARIANTS[m][0], "method_overrides": " ".join(VARIANTS[m][1]),
               "seeds": ",".join(str(r.seed) for r in mine), "n_runs": len(mine)}
        for col, _, _ in PROTOCOLS:
            vals = [accs[r.name][col] for r in mine]
            row[f"{col}_mean"], row[f"{col}_std"] = _mean_std(vals)
            row[f"{col}_per_seed"] = ",".join(f"{v:.4f}" for v in vals)
        walls = [records[r.name].get("wall_s") for r in mine]
        row["wall_s_mean"], row["wall_s_std"] = _mean_std(walls)
        row["wall_complete"] = all(records[r.name].get("wall_complete", False) for r in mine)
        rows.append(row)
    return rows


def render_md(rows, header: list, failed=()) -> str:
    from tabulate import tabulate

    body = []
    for r in rows:
        wall = "-" if r["wall_s_mean"] is None else f"{r['wall_s_mean']:.0f}" + ("" if r["wall_complete"] else " †")
        body.append([r["label"], r["seeds"]] + [_fmt(r[f"{c}_mean"], r[f"{c}_std"]) for c, _, _ in PROTOCOLS] + [wall])
    table = tabulate(body, headers=["method", "training seeds"] + [f"{h} (%)" for _, _, h in PROTOCOLS]
                     + ["train wall s / run"], tablefmt="github", disable_numparse=True)
    notes = "\n".join(header)
    tail = ("\n\n† a training segment was killed without recording its time: the wall time is a lower bound."
            if any(not r["wall_complete"] for r in rows) else "")
    if failed:
        tail += "\n\nFailed runs (no export, not in the table):\n" + "\n".join(f"- {f}" for f in failed)
    return f"{notes}\n\n{table}{tail}\n"


def render_csv(rows, budget: dict) -> str:
    import csv

    cols = ["method", "label", "recipe", "method_overrides", "seeds", "n_runs"]
    for c, _, _ in PROTOCOLS:
        cols += [f"{c}_mean", f"{c}_std", f"{c}_per_seed"]
    cols += ["wall_s_mean", "wall_s_std", "wall_complete"] + list(budget)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in {**r, **budget}.items()})
    return buf.getvalue()


def plot(rows, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(PROTOCOLS)
    lo = min((r[f"{c}_mean"] for r in rows for c, _, _ in PROTOCOLS if r[f"{c}_mean"] is not None), default=0)
    for i, (c, _, h) in enumerate(PROTOCOLS):
        xs = [j + (i - (len(PROTOCOLS) - 1) / 2) * width for j in range(len(rows))]
        ys = [r[f"{c}_mean"] or 0.0 for r in rows]
        es = [r[f"{c}_std"] or 0.0 for r in rows]
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=h)
    ax.set_xticks(range(len(rows)), [f"{r['label']}\n(n={r['n_runs']})" for r in rows], fontsize="small")
    ax.set_ylim(max(0.0, lo - 10), 100)
    ax.set_ylabel("test accuracy (%), mean ± std over training seeds")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.experiments.compare",
                                description="train several methods at one budget and compare them with the harness")
    p.add_argument("--methods", default="default",
                   help=f"default ({', '.join(DEFAULT_METHODS)}), all (+ {', '.join(EXTRA_METHODS)}) or a comma list")
    p.add_argument("--seeds", default="0,1,2", help="training seeds of the default methods")
    p.add_argument("--extra-seeds", default="0", help="training seeds of the methods --methods all adds")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimisation steps per run (default {DEFAULT_STEPS})")
    p.add_argument("--batch-size", type=int, default=512, help="images per step (default 512)")
    p.add_argument("--warmup-fraction", type=float, default=0.05, help="linear warm-up share of the steps")
    p.add_argument("--dataset", default="fashion-mnist", help="catalogue name, folder:PATH or npz:PATH")
    p.add_argument("--root", default=None, help="dataset folder (default $SSLZOO_DATA/<name>)")
    p.add_argument("--out", default="runs/compare", help="output folder (runs/, compare.md/.csv/.png, runs.csv)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra recipe override for every run (repeatable)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--no-eval", action="store_true", help="train only")
    p.add_argument("--reevaluate", action="store_true",
                   help="run the probes again even where this code or an earlier version stored them")
    return p


def run(args) -> int:
    from tqdm.auto import tqdm

    from eval.datasets import load_split
    from eval.store import ResultStore, code_version

    methods = parse_methods(args.methods)
    seeds, extra_seeds = _ints(args.seeds, "--seeds"), _ints(args.extra_seeds, "--extra-seeds")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 2:
        raise ValueError(f"--batch-size must be >= 2 (contrastive losses need negatives), got {args.batch_size}")
    if not 0 <= args.warmup_fraction < 1:
        raise ValueError(f"--warmup-fraction must be in [0, 1), got {args.warmup_fraction}")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder")
    n = len(load_split(args.dataset, "train", root=args.root))
    spe = n // args.batch_size
    if spe == 0:
        raise ValueError(f"--batch-size {args.batch_size} is larger than {args.dataset} train ({n} images)")
    epochs = math.ceil(args.steps / spe)
    warmup = round(args.warmup_fraction * args.steps)
    budget = [f"train.max_steps={args.steps}", f"optim.batch_size={args.batch_size}", f"optim.epochs={epochs}",
              f"optim.warmup_steps={warmup}", f"data.dataset={args.dataset}",
              "train.monitor_every_epochs=0", "train.tensorboard=false", "train.log_every=10"]
    if args.root:
        budget.append(f"data.root={args.root}")
    budget = arch_overrides() + budget
    runs = plan_runs(methods, seeds, extra_seeds, out, budget)
    for r in runs:  # every recipe + override is checked before anything trains
        load_recipe(r.recipe, r.overrides + args.overrides)
    out.mkdir(parents=True, exist_ok=True)
    records, accs, failed = {}, {}, []
    store = None if args.no_eval else ResultStore()
    try:
        bar = tqdm(runs, desc="compare", unit="run", dynamic_ncols=True)
        for r in bar:
            bar.set_postfix(run=r.name)
            rec = harness.read_json(r.folder / harness.RECORD) or {}
            if rec.get("status") == "done":
                tqdm.write(f"{r.name}: finished before, skipped")
            rec = train_run(r, args.overrides, args.device)
            records[r.name] = rec
            if rec["status"] == "failed":
                failed.append(f"{VARIANTS[r.method][2]} (seed {r.seed}): {rec['error']}")
                tqdm.write(f"{r.name}: failed: {rec['error']}")
                continue
            if rec["status"] != "done":
                tqdm.write(f"{r.name}: stopped at step {rec['segments'][-1]['end_step']} of {args.steps}; "
                           f"run the same command again to resume")
                continue
            if store is not None:
                accs[r.name] = evaluate_run(r, args.dataset, args.root, store, args.eval_batch_size, args.reevaluate)
    finally:
        if store is not None:
            store.close()
    done = [r for r in runs if r.name in accs]
    if not done:
        print("no evaluated run yet (training only, or every run stopped early)")
        return 0
    rows = summarise(runs, records, accs)
    threads = os.environ.get("OMP_NUM_THREADS") or "default"
    probe_versions = sorted({v for a in accs.values() for v in a.get("_code_versions", [])})
    header = [
        f"# Method comparison on {args.dataset}: one training budget for every method",
        "",
        (f"- budget per run: {args.steps} optimisation steps x batch {args.batch_size} = "
         f"{args.steps * args.batch_size:,} images ({args.steps / spe:.1f} epochs of {n:,} train images, labels "
         f"unused); linear warm-up over {warmup} steps, then cosine to 0 at step {args.steps}"),
        f"- architecture (all methods): the model of `{ARCH_RECIPE}` (ResNet-18 width 16, 3x3 stem + max-pool, "
        f"expansion block 128 -> 1024, 1024-d feature); each method's own recipe "
        f"(`training/recipes/<method>_fashion_mnist_cpu.yaml`) for loss, heads, optimiser, augmentation"
        + (f"; extra overrides: {' '.join(args.overrides)}" if args.overrides else ""),
        f"- training seeds: {','.join(map(str, seeds))}"
        + (f" (added methods: {','.join(map(str, extra_seeds))})" if any(m in EXTRA_METHODS for m in methods) else "")
        + "; cells are mean ± sample std over training seeds",
        (f"- protocols (eval harness, test split, frozen exported backbone, fp32 features): linear = logistic "
         f"regression, L2 chosen on a 10% validation split of train, refit on all train; kNN k=20 = cosine, "
         f"T=0.07 weighted votes; {FEWSHOT_K}-shot = {FEWSHOT_K} labelled images per class, seeds "
         f"{','.join(map(str, FEWSHOT_SEEDS))} averaged per run"),
        (f"- wall: measured seconds of each run's training (data load + steps + export), mean over seeds; "
         f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, OMP threads {threads}"),
        f"- code {code_version()} (probes of the runs by: {', '.join(probe_versions) or 'this version'}); "
        f"command: `{' '.join(['python -m training.experiments.compare', *args.argv])}`",
    ]
    budget_cols = {"steps": args.steps, "batch_size": args.batch_size, "warmup_steps": warmup,
                   "dataset": args.dataset, "arch": ARCH_RECIPE, "fewshot_seeds": ",".join(map(str, FEWSHOT_SEEDS))}
    atomic_write_text(out / "compare.md", render_md(rows, header, failed))
    atomic_write_text(out / "compare.csv", render_csv(rows, budget_cols))
    per_run = ["method,seed," + ",".join(c for c, _, _ in PROTOCOLS) + ",wall_s,wall_complete,code_versions"]
    for r in done:
        rec = records[r.name]
        per_run.append(f"{r.method},{r.seed}," + ",".join(f"{accs[r.name][c]:.4f}" for c, _, _ in PROTOCOLS)
                       + f",{rec.get('wall_s', '')},{rec.get('wall_complete', '')},"
                       + " ".join(accs[r.name].get("_code_versions", [])))
    atomic_write_text(out / "runs.csv", "\n".join(per_run) + "\n")
    plot(rows, out / "compare.png", f"{args.dataset}: {args.steps} steps x batch {args.batch_size} per run")
    print(render_md(rows, header, failed))
    print(f"wrote {out / 'compare.md'}, compare.csv, runs.csv, compare.png")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    show_library_logs()
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (SSLZooError, ValueError) as e:
        print(f"training.experiments.compare: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("training.experiments.compare: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
