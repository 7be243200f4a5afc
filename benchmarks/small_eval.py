"""Small data: `sslzoo eval` on a 10-class x 20-image folder (``folder:PATH`` with train/ and test/, 20
Fashion-MNIST images per class in each, written as PNG), all probes, few-shot k up to 20, baselines pixels and
random init, timed at one and at two threads side by side (``OMP_NUM_THREADS``), runs interleaved, each in a
fresh subprocess with an empty ``$SSLZOO_HOME``; the tables of the two thread counts must be identical.

    python benchmarks/small_eval.py                       # JSON to benchmarks/results/small_eval.json
    python benchmarks/small_eval.py --code OLD_CHECKOUT   # the same on another copy of the code

Floors (issue 20): <= 20 s wall on two cores, and two threads never slower than one.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, machine_info, print_machine, write_json  # noqa: E402
from main_job import cells, timed_eval  # noqa: E402


def write_folder(dest: Path, per_class: int = 20, classes: int = 10) -> Path:
    """``dest/train/<class>/*.png`` and ``dest/test/<class>/*.png``: the first ``per_class`` Fashion-MNIST
    images of each class of each split."""
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from eval.datasets import load_split

    for split in ("train", "test"):
        s = load_split("fashion-mnist", split)
        y = np.asarray(s.targets)
        for c in range(classes):
            d = dest / split / f"class{c}"
            d.mkdir(parents=True)
            for i in np.flatnonzero(y == c)[:per_class]:
                img = s.get(int(i))
                arr = img.numpy() if hasattr(img, "numpy") else np.asarray(img)
                arr = np.asarray(arr).squeeze()
                if arr.dtype != np.uint8:
                    arr = (arr * 255).round().clip(0, 255).astype(np.uint8) if arr.max() <= 1 else arr.astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", default=str(ROOT), help="the copy of the code to run (default: this checkout)")
    ap.add_argument("--shots", default="1,5,10,20")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", default=str(RESULTS / "small_eval.json"))
    args = ap.parse_args(argv)
    machine = machine_info()
    print_machine(machine)
    threads = [int(t) for t in args.threads.split(",")]
    rows, tables = [], {}
    with tempfile.TemporaryDirectory(prefix="sslzoo-small-") as tmp:
        data = write_folder(Path(tmp) / "small10x20")
        eval_args = ["--dataset", f"folder:{data}", "--shots", args.shots]
        for rep in range(args.repeats):
            for th in threads:
                r = timed_eval(Path(args.code), eval_args, threads=th, timeout=1800)
                print(f"repeat {rep} threads {th}: {r['wall_s']} s wall, exit {r['returncode']}, load "
                      f"{r['loadavg_before']}", flush=True)
                if r["returncode"] != 0:
                    print(r["stderr_tail"], file=sys.stderr)
                tables.setdefault(th, cells(r["rows"]))
                rows.append({"repeat": rep, **{k: v for k, v in r.items() if k not in ("stdout_tail",)}})
    best = {th: min(r["wall_s"] for r in rows if r["threads"] == th) for th in threads}
    summary = {"best_wall_s": best, "tables_identical_across_threads": len({tuple(sorted(t.items()))
                                                                           for t in tables.values()}) == 1}
    if 1 in best and 2 in best:
        summary["two_over_one"] = round(best[2] / best[1], 3)
        summary["floor_20s_met"] = best[2] <= 20
        summary["two_threads_not_slower"] = best[2] <= best[1]
    print(summary, flush=True)
    write_json(args.out, machine, args, [{"summary": summary}] + rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
