"""Peak memory of training from the file-backed source vs the in-memory tensor, at two data-set sizes
(issue 18: the file-backed source must be flat in the number of images, the in-memory path grows).

The data: two generated ``folder:`` trees of JPEGs of one size (``--size`` px, so the in-memory path,
which needs one image size, can hold them), ``--small`` and ``--large`` images (10 classes), written once
into ``$SSLZOO_HOME/cache/bench-jpeg/`` (:mod:`benchmarks.jpeg_cache`).

Each case is a fresh ``python -m training train`` process (the SimCLR CPU recipe with 3 channels,
``augment.version=2``, ``--steps`` steps of batch ``--batch``, no kNN monitor, no TensorBoard) with
``data.source=files`` (``data.workers=--workers`` DataLoader workers) or ``data.source=memory``. Two
peaks are recorded:

* ``maxrss_mib``: ``ru_maxrss`` of the largest single process among the training process and its
  workers (``RUSAGE_CHILDREN`` of a fresh parent whose only child is the training process);
* ``pss_tree_mib``: the largest sum over the process tree of the proportional set size (``Pss`` of
  ``/proc/PID/smaps_rollup``, shared pages split between the processes that share them, so forked
  workers are not counted twice), sampled every ``--interval`` seconds.

The ratio large / small of each source is printed; the floor is "file-backed within 10%".

    python benchmarks/train_rss.py                               # 2,000 vs 20,000 images
    python benchmarks/train_rss.py --small 200 --large 400 --steps 2   # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, ROOT, machine_info, print_machine, write_json  # noqa: E402
from benchmarks.jpeg_cache import cached_jpeg_tree  # noqa: E402

RECIPE = "simclr_fashion_mnist_cpu"


def recipe_sets(root: Path, source: str, workers: int, size: int, batch: int, steps: int) -> list[str]:
    """The overrides of every case: only ``data.source`` / ``data.workers`` differ between sources."""
    sets = [f"data.dataset=folder:{root}", "model.in_chans=3", "augment.version=2", f"augment.size={size}",
            "augment.mean=[0.5,0.5,0.5]", "augment.std=[0.5,0.5,0.5]", f"optim.batch_size={batch}",
            f"train.max_steps={steps}", "train.monitor_every_epochs=0", "train.tensorboard=false",
            "train.log_every=1", f"data.source={source}"]
    if source == "files":
        sets.append(f"data.workers={workers}")
    return sets


def tree_pss_kib(pid: int) -> int:
    """Sum of ``Pss`` (KiB) over ``pid`` and its descendants, 0 for processes that have gone."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


# A fresh parent per measurement whose only child is the training process: RUSAGE_CHILDREN's ru_maxrss is
# then the peak of the largest process of that tree (KiB on Linux); the parent samples the tree's Pss.
_WRAPPER = """
import json, resource, subprocess, sys, time
sys.path.insert(0, sys.argv[3])
from benchmarks.train_rss import tree_pss_kib
argv, interval = json.loads(sys.argv[1]), float(sys.argv[2])
p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
import threading
out = []
t = threading.Thread(target=lambda: out.append(p.stdout.read()), daemon=True)
t.start()
peak = 0
while p.poll() is None:
    peak = max(peak, tree_pss_kib(p.pid))
    time.sleep(interval)
t.join()
print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, peak, p.returncode, (out[0] if out else "")[-3000:]]))
"""


def measure(argv, env, interval: float) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _WRAPPER, json.dumps(argv), str(interval), str(ROOT)], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    rss, pss, rc, tail = json.loads(out.strip().splitlines()[-1])
    return {"maxrss_mib": round(rss / 1024, 1), "pss_tree_mib": round(pss / 1024, 1), "returncode": rc,
            "wall_s": round(time.perf_counter() - t0, 1), "tail": tail}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=2000, help="images of the small data set (default 2000)")
    ap.add_argument("--large", type=int, default=20000, help="images of the large data set (default 20000)")
    ap.add_argument("--size", type=int, default=64, help="side of the generated JPEGs (default 64)")
    ap.add_argument("--crop", type=int, default=32, help="augment.size (default 32)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2, help="data.workers of the file-backed cases (default 2)")
    ap.add_argument("--sources", default="files,memory")
    ap.add_argument("--interval", type=float, default=0.05, help="Pss sampling interval in seconds")
    ap.add_argument("--cache", default=None, help="folder of the generated trees (default $SSLZOO_HOME/cache/bench-jpeg)")
    ap.add_argument("--out", default=str(RESULTS / "train_rss.json"))
    args = ap.parse_args(argv)
    info = machine_info(cases="fresh `python -m training train` process per case")
    print_machine(info)
    trees = {n: cached_jpeg_tree(f"rss{n}", cache=args.cache, processes=0, classes=10, per_class=n // 10,
                                 sizes=(args.size, args.size), layout="folder", eval_per_class=1, seed=0)
             for n in (args.small, args.large)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, SSLZOO_HOME=os.environ.get("SSLZOO_HOME", str(Path(tmp) / "home")),
                   PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        for source in args.sources.split(","):
            for n, root in trees.items():
                run = Path(tmp) / f"run-{source}-{n}"
                cmd = [sys.executable, "-m", "training", "train", RECIPE, "--out", str(run), "--device", "cpu"]
                for s in recipe_sets(root, source, args.workers, args.crop, args.batch, args.steps):
                    cmd += ["--set", s]
                r = measure(cmd, env, args.interval)
                if r["returncode"] != 0:
                    raise SystemExit(f"{source} / {n} images failed (exit {r['returncode']}):\n{r['tail']}")
                del r["tail"]
                row = {"source": source, "images": n, "workers": args.workers if source == "files" else 0, **r}
                rows.append(row)
                print(f"{source:7s} {n:6d} images: peak RSS (largest process) {row['maxrss_mib']:8.1f} MiB, "
                      f"peak Pss of the tree {row['pss_tree_mib']:8.1f} MiB ({row['wall_s']} s)", flush=True)
    for source in args.sources.split(","):
        got = {r["images"]: r for r in rows if r["source"] == source}
        if args.small in got and args.large in got:
            a, b = got[args.small], got[args.large]
            ratio = {k: round(b[k] / a[k], 3) for k in ("maxrss_mib", "pss_tree_mib")}
            rows.append({"source": source, "ratio_large_over_small": ratio})
            print(f"{source}: {args.large} / {args.small} images: RSS x{ratio['maxrss_mib']}, tree Pss "
                  f"x{ratio['pss_tree_mib']}" + ("  (floor: within 10%)" if source == "files" else ""), flush=True)
    write_json(args.out, info, args, rows)


if __name__ == "__main__":
    main()
