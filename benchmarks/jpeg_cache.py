"""Generated JPEG trees for the benchmarks and the GPU check, written once into a cache folder.

``cached_jpeg_tree(name, **kw)`` returns ``$SSLZOO_HOME/cache/bench-jpeg/<name>-<key>``, a tree written by
:func:`eval.synthetic.write_jpeg_tree` with the keyword arguments ``kw`` (the key is a hash of them,
so other arguments never reuse a stale tree). With ``processes > 1`` (``imagenet`` / ``folder``
layouts) each class is written by its own call of ``write_jpeg_tree(classes=1, seed=seed + class)``
in a process pool and moved into place: the same layout and sizes, other bytes (the key says so).
The tree is written into a temporary folder beside its
destination and moved into place when complete, so an interrupted run leaves nothing half-written.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.base import atomic_dir, home  # noqa: E402

__all__ = ["cached_jpeg_tree", "count_files"]


def count_files(root: Path) -> int:
    return sum(1 for p in Path(root).rglob("*") if p.is_file())


def _one_class(args) -> int:
    from eval.synthetic import write_jpeg_tree

    folder, kw = args
    return len(write_jpeg_tree(folder, **kw))


def _class_name(layout: str, c: int) -> str:
    return f"n{1000000 + c:08d}" if layout == "imagenet" else f"class{c}"  # eval.synthetic's names


def write_parallel(root: Path, processes: int, **kw) -> int:
    """``write_jpeg_tree(root, **kw)``'s layout with one class per task in ``processes`` processes."""
    classes, layout, seed = int(kw.get("classes", 4)), kw.get("layout", "imagenet"), int(kw.get("seed", 0))
    parts = [(root / f".part{c}", {**kw, "classes": 1, "seed": seed + c}) for c in range(classes)]
    with ProcessPoolExecutor(processes) as pool:
        n = sum(pool.map(_one_class, parts))
    for c, (part, _) in enumerate(parts):
        for split in sorted(q for q in part.iterdir() if q.is_dir()):
            (root / split.name).mkdir(exist_ok=True)
            (split / _class_name(layout, 0)).rename(root / split.name / _class_name(layout, c))
            split.rmdir()
        part.rmdir()
    return n


def cached_jpeg_tree(name: str, cache: str | Path | None = None, processes: int = 1, **kw) -> Path:
    """The folder of a generated JPEG tree (``eval.synthetic.write_jpeg_tree(folder, **kw)``), written on
    first use and reused afterwards. ``cache``: parent folder (default ``$SSLZOO_HOME/cache/bench-jpeg``);
    ``processes``: write the classes in parallel (see the module docstring; 0 = one per CPU)."""
    from eval.synthetic import write_jpeg_tree

    processes = processes or os.cpu_count() or 1
    parallel = processes > 1 and kw.get("layout", "imagenet") in ("imagenet", "folder") and kw.get("classes", 4) > 1
    ident = dict(kw, parallel=True) if parallel else kw
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=list).encode()).hexdigest()[:12]
    dest = Path(cache).expanduser() if cache else home() / "cache" / "bench-jpeg"
    dest = dest / f"{name}-{key}"
    if dest.is_dir():
        return dest
    t0 = time.perf_counter()
    print(f"writing the generated JPEG tree {dest} ({kw}) once ...", flush=True)
    with atomic_dir(dest) as tmp:
        n = write_parallel(tmp, processes, **kw) if parallel else len(write_jpeg_tree(tmp, **kw))
    print(f"  {n} files in {time.perf_counter() - t0:.1f} s", flush=True)
    return dest
