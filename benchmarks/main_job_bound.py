"""A lower bound on the main job's wall time under its protocols, from measured quantities: how much
arithmetic the probes need, divided by the fastest rate this machine does arithmetic at.

* the fp32 matmul peak of all cores (``hardware_peak.matmul_peak``: best of 5 square 2048 products);
* the feature extraction of the two models that need it (default model, random init), timed (fp32, all
  threads, no cache) -- the random-init network is the same architecture, so the default model is timed
  once and counted twice;
* the linear probe's work on the three feature sets of the main job (default model, random init, pixels):
  every objective evaluation of every candidate, counted by wrapping ``eval.solver.logreg_objective``
  (two products of ``C x D x n`` per problem and evaluation; the softmax and the L-BFGS vector work
  are left out, so the bound is low);
* kNN: one ``10,000 x 60,000 x D`` similarity product per model (both settings share it);
* few-shot, k = 1 ... 100 x seeds 0, 1, 2: its fits' objective products, counted the same way.

Scoring on test, the softmax, the L-BFGS vector work and everything else are left out. The bound = extraction wall +
(linear + kNN FLOPs) / peak: the main job cannot finish faster under these protocols on this machine, even
if every product ran at the peak on every core with nothing else to do.

    python benchmarks/main_job_bound.py            # JSON to benchmarks/results/main_job_bound.json

The features come from ``$SSLZOO_HOME``'s cache when present (the counts do not depend on timing; extraction is
timed with the cache off).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, counting_logreg_work, machine_info, print_machine, write_json  # noqa: E402

sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(RESULTS / "main_job_bound.json"))
    args = ap.parse_args(argv)
    info = machine_info()
    print_machine(info)

    from eval import probes
    from eval.datasets import load_split
    from eval.features import Pixels, extract
    from hardware_peak import matmul_peak
    from zoo.hub import create_model

    peak = matmul_peak(torch.float32, sizes=(2048,))["flops_per_s"]
    print(f"fp32 matmul peak, {torch.get_num_threads()} threads: {peak / 1e9:.0f} GFLOP/s", flush=True)
    model = create_model("simclr_resnet18w16_d1024_fashion_mnist", pretrained=True)
    train, test = load_split("fashion-mnist", "train"), load_split("fashion-mnist", "test")
    t0 = time.perf_counter()
    extract(model, train, cache=False)
    extract(model, test, cache=False)
    extraction = time.perf_counter() - t0
    print(f"extraction fp32, 60,000 + 10,000 images: {extraction:.1f} s wall", flush=True)

    torch.manual_seed(0)
    rnd = create_model("simclr_resnet18w16_d1024_fashion_mnist", pretrained=False)
    rnd.weights_sha256 = None
    rows = []
    with counting_logreg_work() as counted:
        for name, m in (("default model", model), ("random init", rnd), ("pixels", Pixels(model.preprocess))):
            (xtr, ytr), (xte, yte) = extract(m, train), extract(m, test)
            counted.update(flop=0, evals=0)
            t0 = time.perf_counter()
            r = probes.linear_probe(xtr, ytr, xte, yte)
            knn_flop = 2 * xte.shape[0] * xtr.shape[0] * xtr.shape[1]
            row = {"features": name, "dim": int(xtr.shape[1]), "linear_accuracy": round(100 * r["accuracy"], 2),
                   "l2": r["l2"], "linear_problem_evaluations": counted["evals"],
                   "linear_gflop": round(counted["flop"] / 1e9, 1), "linear_wall_s_one_thread": round(
                       time.perf_counter() - t0, 1), "knn_gflop": round(knn_flop / 1e9, 1)}
            counted.update(flop=0, evals=0)
            t0 = time.perf_counter()
            probes.fewshot_probe(xtr, ytr, xte, yte, shots=(1, 5, 10, 20, 50, 100), seeds=(0, 1, 2))
            row.update(fewshot_problem_evaluations=counted["evals"], fewshot_gflop=round(counted["flop"] / 1e9, 1),
                       fewshot_wall_s_one_thread=round(time.perf_counter() - t0, 1))
            rows.append(row)
            print(rows[-1], flush=True)
    flop = sum(r["linear_gflop"] + r["knn_gflop"] + r["fewshot_gflop"] for r in rows) * 1e9
    bound = 2 * extraction + flop / peak
    summary = {"peak_gflop_s": round(peak / 1e9, 1), "extraction_wall_s": round(extraction, 1),
               "probe_gflop": round(flop / 1e9), "probe_seconds_at_peak": round(flop / peak, 1),
               "bound_s": round(bound, 1), "floor_s": 120, "floor_reachable_under_these_protocols": bound <= 120}
    print(f"lower bound: 2 x {extraction:.1f} s extraction + {flop / 1e9:.0f} GFLOP (linear, kNN, few-shot) / "
          f"{peak / 1e9:.0f} GFLOP/s = "
          f"{bound:.1f} s (floor 120 s)")
    write_json(args.out, info, args, rows + [summary])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
