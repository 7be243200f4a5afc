"""Peak memory of probes on a feature store vs in memory, as the number of train rows grows 4x.

Writes a synthetic fp16 feature store (Gaussian classes, ``--dim`` features) of ``N`` and ``4 N``
train rows, then in a fresh subprocess per (mode, N) runs the linear probe (``l2`` grid of 3, at
most ``--max-iter`` L-BFGS iterations, identical settings in both modes) and kNN (k=20, T=0.07):

* ``stream``: :func:`eval.stream_probes.streaming_linear_probe` + :func:`chunked_knn_probe`, reading
  the store in chunks;
* ``memory``: the store loaded into RAM, then :func:`eval.probes.linear_probe` + :func:`knn_probe`;
* ``baseline``: the same imports, no probe (the interpreter + torch floor).

Each subprocess reports its own peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``). Printed:
peak RSS and probe working memory (peak - baseline) per mode and N, the 4N/N ratios, the store size
against the streaming working memory, and the accuracies of both modes. JSON to
``benchmarks/results/featstore_memory.json``. Not a test: run it by hand,
``python benchmarks/featstore_memory.py [--n 50000 --dim 64]``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, machine_info

GRID = (1e-4, 1e-2, 1.0)
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from eval.featstore import FeatureStore
from eval.probes import knn_probe, linear_probe
from eval.stream_probes import chunked_knn_probe, streaming_linear_probe
mode, train, test, max_iter = {mode!r}, {train!r}, {test!r}, {max_iter}
grid = {grid!r}
out = {{}}
t0 = time.time()
if mode == "stream":
    tr, te = FeatureStore(train), FeatureStore(test)
    lin = streaming_linear_probe(tr, te, l2_grid=grid, max_iter=max_iter)
    knn = chunked_knn_probe(tr, te, k=20, temperature=0.07)
    out = {{"linear": lin["accuracy"], "l2": lin["l2"], "knn": knn["accuracy"]}}
elif mode == "memory":
    xtr, ytr = FeatureStore(train).load()
    xte, yte = FeatureStore(test).load()
    lin = linear_probe(xtr, ytr, xte, yte, l2_grid=grid, max_iter=max_iter)
    knn = knn_probe(xtr, ytr, xte, yte, k=20, temperature=0.07)
    out = {{"linear": lin["accuracy"], "l2": lin["l2"], "knn": knn["accuracy"]}}
out["seconds"] = time.time() - t0
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(out))
"""


def synth_store(path: Path, n: int, dim: int, classes: int, seed: int, centres_seed: int = 0):
    import numpy as np

    from eval.featstore import store_from_chunks

    centres = np.random.default_rng(centres_seed).normal(size=(classes, dim)) * 0.35
    rng = np.random.default_rng(seed)

    def chunks(step=16384):
        for s in range(0, n, step):
            m = min(step, n - s)
            y = rng.integers(0, classes, m)
            yield (centres[y] + rng.normal(size=(m, dim))).astype(np.float16), y

    return store_from_chunks(path, n, dim, chunks(), dtype="fp16", meta={"model_sha256": "synthetic",
                                                                        "dataset": f"gaussian-{classes}"})


def run_child(mode: str, train: Path, test: Path, max_iter: int) -> dict:
    code = CHILD.format(root=str(Path(__file__).resolve().parents[1]), mode=mode, train=str(train), test=str(test),
                        max_iter=max_iter, grid=list(GRID))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not line:
        raise SystemExit(f"{mode} child failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(line[0][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="train rows of the small store (the large has 4x)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--out", default=str(RESULTS / "featstore_memory.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wt8_featstore_bench_"))
    try:
        test = work / "test"
        synth_store(test, args.n_test, args.dim, args.classes, seed=99)
        rows = []
        base = run_child("baseline", test, test, 1)
        for n in (args.n, 4 * args.n):
            train = work / f"train_{n}"
            st = synth_store(train, n, args.dim, args.classes, seed=1)
            row = {"n_train": n, "store_mb": st.nbytes / 2**20}
            for mode in ("stream", "memory"):
                r = run_child(mode, train, test, args.max_iter)
                r["working_mb"] = r["peak_rss_mb"] - base["peak_rss_mb"]
                row[mode] = r
            rows.append(row)
            shutil.rmtree(train)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = rows
    ratios = {
        "stream_peak_rss_4n_over_n": large["stream"]["peak_rss_mb"] / small["stream"]["peak_rss_mb"],
        "memory_peak_rss_4n_over_n": large["memory"]["peak_rss_mb"] / small["memory"]["peak_rss_mb"],
        "stream_working_4n_over_n": large["stream"]["working_mb"] / max(small["stream"]["working_mb"], 1e-9),
        "memory_working_4n_over_n": large["memory"]["working_mb"] / max(small["memory"]["working_mb"], 1e-9),
        "large_store_over_stream_working": large["store_mb"] / max(large["stream"]["working_mb"], 1e-9),
    }
    print(f"baseline (imports only) peak RSS {base['peak_rss_mb']:.1f} MB")
    print(f"{'N':>9} {'store MB':>9} | {'stream RSS':>10} {'work':>7} {'lin':>7} {'knn':>7} {'s':>6} | "
          f"{'memory RSS':>10} {'work':>7} {'lin':>7} {'knn':>7} {'s':>6}")
    for r in rows:
        s, m = r["stream"], r["memory"]
        print(f"{r['n_train']:>9} {r['store_mb']:>9.1f} | {s['peak_rss_mb']:>10.1f} {s['working_mb']:>7.1f} "
              f"{s['linear']:>7.4f} {s['knn']:>7.4f} {s['seconds']:>6.1f} | {m['peak_rss_mb']:>10.1f} "
              f"{m['working_mb']:>7.1f} {m['linear']:>7.4f} {m['knn']:>7.4f} {m['seconds']:>6.1f}")
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    same = all(abs(r["stream"]["linear"] - r["memory"]["linear"]) < 1e-6 and
               abs(r["stream"]["knn"] - r["memory"]["knn"]) < 1e-6 for r in rows)
    print(f"accuracy stream == memory (linear and kNN, both sizes): {same}")
    out = {"args": vars(args), "grid": list(GRID), "baseline": base, "rows": rows, "ratios": ratios,
           "accuracy_equal": same, "machine": machine_info(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
