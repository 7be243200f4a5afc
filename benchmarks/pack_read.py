"""File-backed evaluation data, side by side in one run (issue 18, eval side):

* ``pack``: ``sslzoo pack`` (eval.packed.write_pack) of a generated ImageNet-like JPEG tree, images/s;
* ``read``: ``read_bytes`` of every image in a random order, folder (one open per image) vs pack
  (one ``os.pread`` on a kept-open shard), images/s (page cache warm for both: the pack avoids file
  opens, which a local warm cache makes cheap; on a network file system the gap is larger);
* ``extract``: :func:`eval.features.extract` of the folder with 0 and ``--workers`` decode workers
  (the bundled default model, its 28 px preprocessing: decoding dominates), images/s, features equal.

    python benchmarks/pack_read.py                    # 2000 images, 60-500 px, quality 90
    python benchmarks/pack_read.py --n 200 --repeats 1   # smoke test
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, Timer, machine_info, print_machine, write_json
from eval.datasets import load_split
from eval.features import extract
from eval.packed import write_pack
from eval.synthetic import write_jpeg_tree
from zoo.hub import create_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images (4 classes; the test split adds half as many)")
    ap.add_argument("--sizes", default="60,500")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "pack_read.json"))
    args = ap.parse_args(argv)
    info = machine_info()
    print_machine(info)
    lo, hi = (int(v) for v in args.sizes.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="pack_read_"))
    rows = []
    try:
        write_jpeg_tree(tmp / "tree", classes=4, per_class=args.n // 4, sizes=(lo, hi), layout="folder")
        spec = f"folder:{tmp / 'tree'}"
        folder = load_split(spec, "train")
        nbytes = sum(Path(p).stat().st_size for p in folder.paths)
        print(f"{len(folder)} train images, {nbytes / 1e6:.1f} MB of JPEG", flush=True)
        with Timer() as t:
            write_pack(spec, tmp / "pack", splits=["train"], workers=args.workers)
        rows.append({"what": "pack (decode check + sha256 + write)", "workers": args.workers, "images": len(folder),
                     "seconds": t.wall, "images_per_s": len(folder) / t.wall})
        print(rows[-1], flush=True)
        packed = load_split(f"pack:{tmp / 'pack'}", "train")
        order = np.random.default_rng(0).permutation(len(folder))
        for name, split in (("folder", folder), ("pack", packed)):
            best = None
            for _ in range(args.repeats):
                with Timer() as t:
                    total = sum(len(split.read_bytes(int(i))) for i in order)
                best = t.wall if best is None else min(best, t.wall)
            assert total == nbytes
            rows.append({"what": f"read_bytes, random order, {name}", "images": len(split), "seconds": best,
                         "images_per_s": len(split) / best})
            print(rows[-1], flush=True)
        torch.manual_seed(0)
        model = create_model("simclr_resnet18w16_d1024_fashion_mnist", pretrained=True)
        feats = {}
        for w in (0, args.workers):
            best = None
            for _ in range(args.repeats):
                with Timer() as t:
                    feats[w], _ = extract(model, folder, batch_size=128, cache=False, workers=w)
                best = t.wall if best is None else min(best, t.wall)
            rows.append({"what": "extract (decode + preprocess + forward), folder", "workers": w, "images": len(folder),
                         "seconds": best, "images_per_s": len(folder) / best})
            print(rows[-1], flush=True)
        rows.append({"what": "features identical for 0 and N workers", "equal": bool(torch.equal(feats[0], feats[args.workers]))})
        print(rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(args.out, info, args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
