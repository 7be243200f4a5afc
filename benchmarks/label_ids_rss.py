"""Peak RSS of ``sslzoo eval`` on an npz whose labels are huge ids (up to 10^12) vs the same data with
labels 0..9 (issue 17: labels {0, 10^9} grew one process to 22.6 GB before the kernel killed it).

Each evaluation runs in a fresh ``python -m training eval`` process (its own empty ``$SSLZOO_HOME``, so
nothing is cached) and its peak RSS is read from ``os.wait4``'s rusage (``ru_maxrss``, KiB on Linux).
The two data sets hold the same images; only the label ids differ (class ``c`` -> id ``c * 10^11 + 7``
for classes 0..8, 10^12 - 1 for class 9), so both have 10 classes.

    python benchmarks/label_ids_rss.py                        # 6000 train / 1000 test images
    python benchmarks/label_ids_rss.py --train 600 --test 100  # smoke test
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, ROOT, machine_info, print_machine, write_json

MODEL = "simclr_resnet18w16_fashion_mnist"  # bundled: no download


# A fresh parent per measurement whose only child is the evaluation: RUSAGE_CHILDREN's ru_maxrss is
# then exactly that child's peak RSS (KiB on Linux).
_WRAPPER = ("import json, resource, subprocess, sys; argv = json.loads(sys.argv[1]); "
            "r = subprocess.run(argv, capture_output=True, text=True); "
            "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode, "
            "(r.stdout + r.stderr)[-2000:]]))")


def peak_rss_kib(argv, env) -> tuple[int, int, str]:
    import json

    out = subprocess.run([sys.executable, "-c", _WRAPPER, json.dumps(argv)], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    rss, rc, tail = json.loads(out.strip().splitlines()[-1])
    return int(rss), int(rc), tail


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--out", default=str(RESULTS / "label_ids_rss.json"))
    args = ap.parse_args()
    info = machine_info()
    print_machine(info)
    rng = np.random.default_rng(0)
    n = args.train + args.test
    y = np.arange(n) % 10
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    big = y.astype(np.int64) * 10 ** 11 + 7
    big[y == 9] = 10 ** 12 - 1  # the last class at the bound
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, labels in (("ids 0..9", y), ("ids up to 10^12", big)):
            f = tmp / f"{'small' if labels is y else 'big'}.npz"
            np.savez(f, train_image=x[:args.train], train_label=labels[:args.train], test_image=x[args.train:],
                     test_label=labels[args.train:])
            home = tmp / f"home-{f.stem}"
            env = dict(os.environ, SSLZOO_HOME=str(home), PYTHONPATH=str(ROOT))
            argv = [sys.executable, "-m", "training", "eval", "--model", MODEL, "--dataset", f"npz:{f}", "--probes",
                    "knn", "--baselines", "none", "--out", str(tmp / f"{f.stem}-table")]
            rss, rc, tail = peak_rss_kib(argv, env)
            if rc != 0:
                raise SystemExit(f"{name}: exit {rc}: {tail}")
            classes = len(np.unique(labels))
            rows.append({"labels": name, "max_label": int(labels.max()), "classes": classes,
                         "peak_rss_mib": round(rss / 1024, 1)})
            print(f"{name:>16}: max label {int(labels.max()):>15,}, {classes} classes, peak RSS {rss / 1024:8.1f} MiB",
                  flush=True)
    ratio = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    rows.append({"ratio_big_over_small": round(ratio, 4)})
    print(f"ratio (ids up to 10^12 / ids 0..9): {ratio:.4f}")
    write_json(args.out, info, args, rows)


if __name__ == "__main__":
    main()
