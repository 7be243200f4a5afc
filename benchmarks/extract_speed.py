"""Feature extraction (``eval.features.extract``, what ``sslzoo eval`` runs) vs bare inference, side by side.

* ``bare``: the model's forward on the split already preprocessed into one float tensor, in batches,
  under ``torch.no_grad`` -- the ceiling;
* ``extract``: :func:`eval.features.extract` on the uint8 split (preprocessing per batch, progress
  bar, feature copy), with the cache off so every run computes.

Default: the bundled default model on the Fashion-MNIST test split (10000 images) in fp32 and bf16.

    python benchmarks/extract_speed.py
    python benchmarks/extract_speed.py --n 1024 --repeats 1     # smoke test
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, machine_info, print_machine, write_json
from eval.datasets import load_split
from eval.features import extract
from zoo.hub import create_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="simclr_resnet18w16_d1024_fashion_mnist")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--n", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2, help="runs per row; the best is kept")
    p.add_argument("--out", default=str(RESULTS / "extract_speed.json"))
    args = p.parse_args(argv)
    info = machine_info()
    print_machine(info)
    model = create_model(args.model).eval()
    split = load_split(args.dataset, "test")
    if args.n:
        split = dataclasses.replace(split, images=split.images[:args.n], targets=split.targets[:args.n],
                                    _fingerprint=None)
    n = len(split)
    x = model.preprocess(split.as_tensor())
    rows = []
    for prec in ("fp32", "bf16"):
        def bare():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                return torch.cat([model(x[i:i + args.batch]).float() for i in range(0, n, args.batch)])

        def ours():
            return extract(model, split, batch_size=args.batch, precision=prec, cache=False)[0]

        best = {}
        for name, fn in (("bare", bare), ("extract", ours)):
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = fn()
                ts.append(time.perf_counter() - t0)
            best[name] = min(ts)
            print(f"{prec:4s} {name:8s} {n / best[name]:8.0f} img/s ({best[name]:.2f} s for {n} images, shape {tuple(out.shape)})",
                  flush=True)
            rows.append({"row": f"{prec} {name}", "images": n, "seconds": best[name], "images_per_s": n / best[name]})
        ratio = best["bare"] / best["extract"]
        print(f"{prec:4s} extract / bare speed = {ratio:.3f}x", flush=True)
        rows.append({"row": f"{prec} ratio", "extract_over_bare": ratio})
    write_json(args.out, info, args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
