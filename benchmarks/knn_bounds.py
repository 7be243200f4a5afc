"""Lower bounds for the kNN probe at 10k queries x 60k x 512: what the similarity matmul and the
top-k cost on this machine by themselves, in fp32 (what ``eval.probes.knn_probe`` computes), bf16
and int8 (``torch._int_mm``; neither is exact, so either could only screen candidates for an fp32
re-rank), measured side by side with the probe itself in one run.

A kNN probe of 10k queries cannot be faster than its similarity matmul plus the per-query top-k over
60k scores, whatever the implementation; the rows show how much of the probe's time those two take.

    python benchmarks/knn_bounds.py                 # 10k x 60k x 512, JSON in benchmarks/results/
    python benchmarks/knn_bounds.py --n 4000 --queries 512 --repeats 1   # smoke test
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, Timer, machine_info, print_machine, write_json


def best_wall(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        with Timer() as t:
            fn()
        best = min(best, t.wall)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=60000, help="train (memory bank) size")
    p.add_argument("--queries", type=int, default=10000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=1024, help="queries per block (knn_probe's default)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per row; the best is kept")
    p.add_argument("--out", default=str(RESULTS / "knn_bounds.json"))
    args = p.parse_args(argv)
    machine = machine_info()
    print_machine(machine)
    from eval.probes import knn_probe

    g = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(args.n, args.dim, generator=g), dim=1)
    queries = F.normalize(torch.randn(args.queries, args.dim, generator=g), dim=1)
    ty = torch.randint(0, 10, (args.n,), generator=g)
    qy = torch.randint(0, 10, (args.queries,), generator=g)
    c = min(args.chunk, args.queries)
    blocks = list(range(0, args.queries, c))

    def per_block(fn):
        def run():
            for s in blocks:
                fn(s)
        return run

    scores = queries[:c] @ train.t()
    out32 = torch.empty_like(scores)  # preallocated outputs: a bound should not pay for fresh pages
    out16 = torch.empty(c, args.n, dtype=torch.bfloat16)
    tb, qb = train.bfloat16(), queries.bfloat16()

    def quant(x):
        return (x * (127.0 / x.abs().amax(1, keepdim=True))).round().to(torch.int8)

    t8, q8 = quant(train).t().contiguous(), quant(queries)
    rows = {
        "knn_probe k=20 (fp32, exact)": lambda: knn_probe(train, ty, queries, qy, k=20, chunk=c),
        "matmul fp32": per_block(lambda s: torch.mm(queries[s:s + c], train.t(), out=out32[:len(queries[s:s + c])])),
        "matmul bf16": per_block(lambda s: torch.mm(qb[s:s + c], tb.t(), out=out16[:len(qb[s:s + c])])),
        "matmul int8 (torch._int_mm)": per_block(lambda s: torch._int_mm(q8[s:s + c], t8)),
        "top-k k=20 of fp32 scores": per_block(lambda s: scores.topk(20, dim=1)),
        "top-k k=200 of fp32 scores": per_block(lambda s: scores.topk(200, dim=1)),
    }
    results = []
    for name, fn in rows.items():
        fn()  # warm-up
        wall = best_wall(args.repeats, fn)
        results.append({"row": name, "seconds": wall})
        print(f"{name:<32} {wall:7.2f} s", flush=True)
    t = {r["row"]: r["seconds"] for r in results}
    bounds = {f"{m} + top-k k=20": t[f"matmul {m}"] + t["top-k k=20 of fp32 scores"]
              for m in ("fp32", "bf16", "int8 (torch._int_mm)")}
    for name, v in bounds.items():
        print(f"lower bound {name:<30} {v:7.2f} s", flush=True)
        results.append({"row": f"lower bound {name}", "seconds": v})
    write_json(args.out, machine, args, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
