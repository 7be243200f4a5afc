"""Generated JPEG trees for the benchmarks and the GPU check, written once into a cache folder.

``cached_jpeg_tree(name, **kw)`` returns ``$SSLZOO_HOME/cache/bench-jpeg/<name>-<key>``, a tree written by
:func:`eval.synthetic.write_jpeg_tree` with the keyword arguments ``kw`` (the key is a hash of them,
so other arguments never reuse a stale tree). The tree is written into a temporary folder beside its
destination and moved into place when complete, so an interrupted run leaves nothing half-written.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.base import atomic_dir, home  # noqa: E402

__all__ = ["cached_jpeg_tree", "count_files"]


def count_files(root: Path) -> int:
    return sum(1 for p in Path(root).rglob("*") if p.is_file())


def cached_jpeg_tree(name: str, cache: str | Path | None = None, **kw) -> Path:
    """The folder of a generated JPEG tree (``eval.synthetic.write_jpeg_tree(folder, **kw)``), written on
    first use and reused afterwards. ``cache``: parent folder (default ``$SSLZOO_HOME/cache/bench-jpeg``)."""
    from eval.synthetic import write_jpeg_tree

    key = hashlib.sha256(json.dumps(kw, sort_keys=True, default=list).encode()).hexdigest()[:12]
    dest = Path(cache).expanduser() if cache else home() / "cache" / "bench-jpeg"
    dest = dest / f"{name}-{key}"
    if dest.is_dir():
        return dest
    t0 = time.perf_counter()
    print(f"writing the generated JPEG tree {dest} ({kw}) once ...", flush=True)
    with atomic_dir(dest) as tmp:
        n = len(write_jpeg_tree(tmp, **kw))
    print(f"  {n} files in {time.perf_counter() - t0:.1f} s", flush=True)
    return dest
