"""``sslzoo pack``: a file-backed data set -> a few large shard files of the original encoded bytes + an index.

A pack (format in ``docs/packs.md``; read by ``pack:PATH``, :func:`eval.datasets.load_pack`) holds every
image of the chosen splits byte for byte as it was on disk (no re-encoding), appended to shard files of
about ``shard_size`` bytes, and per split an index (shard, offset, length, label, sha256 of the bytes),
the file names and the class list. Reading image ``i`` is one ``os.pread``: no per-image file open,
which is what a network file system or 1.28M small files make slow.

Every file is decoded once while packing (at 1/8 scale where JPEG allows it, so it costs little):
a zero-byte, truncated, corrupt or non-image file is refused with the first few names and the count,
unless ``skip_bad``, which leaves them out and says how many. The sha256 of each file is computed from
the bytes read anyway and stored, so a pack's fingerprint (and every feature-cache key) equals the one
of the tree it came from, without hashing the shards again. The pack is written into a hidden folder
beside ``OUT`` and renamed into place at the end (:func:`zoo.base.atomic_dir`): a killed ``sslzoo pack``
leaves no ``OUT``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import re
from pathlib import Path

import numpy as np

from zoo.base import UsageError, atomic_dir, check_out_path

from .datasets import (PACK_FORMAT, PACK_INDEX_DTYPE, PACK_META, PACK_VERSION, DatasetError, ImageSplit,
                       decode_bytes, default_workers, is_unlabelled_folder, load_split, read_pack_meta)

log = logging.getLogger(__name__)

__all__ = ["PackError", "parse_size", "pack_splits", "write_pack"]

SHOWN_BAD = 3  # bad files named in the refusal; the rest are counted


class PackError(DatasetError):
    """A data set that cannot be packed as asked; one line saying what to do."""


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text) -> int:
    """``"1GB"`` -> 10**9, ``"512MiB"`` -> 512 * 2**20, ``"1000"`` -> 1000 bytes (decimal and binary units)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise UsageError(f"--shard-size {text!r} is not a size; give bytes with a unit, e.g. 1GB, 512MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def pack_splits(spec: str, root=None) -> list[str]:
    """The splits of a file-backed data set spec that ``sslzoo pack`` writes when no ``--split`` is given."""
    if spec.startswith("folder:"):
        path = Path(spec[len("folder:"):]).expanduser()
        if is_unlabelled_folder(path):
            return ["train"]
        return [s for s in ("train", "test", "val") if (path / s).is_dir()] or ["train", "test"]
    if spec.startswith("pack:"):
        return list(read_pack_meta(Path(spec[len("pack:"):]).expanduser())["splits"])
    key = spec.lower().replace("_", "-")
    if key in ("imagenet", "tinyimagenet", "tiny-imagenet"):
        return ["train", "val"]  # their test split is val (no public test labels)
    return ["train", "test"]  # anything else is refused below when it is held in memory


# ----------------------------------------------------------------------------- the per-file check (in workers)

_WORK: ImageSplit | None = None


def _init_worker(split: ImageSplit) -> None:
    global _WORK
    _WORK = split


def _read_check(i: int):
    """``(i, bytes or None, reason or None, sha256 digest)`` of image ``i`` of the worker's split."""
    split = _WORK
    name = split.describe(i)
    try:
        data = split.read_bytes(i)
    except OSError as e:
        return i, None, f"cannot be read ({e.strerror or type(e).__name__})", b""
    try:
        decode_bytes(data, name, mode=None, min_size=(1, 1))  # the whole stream, at 1/8 scale for JPEGs
    except DatasetError as e:
        reason = str(e).removeprefix(f"{name} ").removeprefix("is ").removesuffix("; replace or remove it")
        return i, None, reason, b""
    return i, data, None, hashlib.sha256(data).digest()


def _checked(split: ImageSplit, workers: int, desc: str):
    """Every image's ``_read_check`` result, in index order, with a progress bar."""
    from tqdm.auto import tqdm

    n = len(split)
    bar = tqdm(total=n, desc=desc, unit="img", leave=False, dynamic_ncols=True)
    try:
        if workers <= 0 or n < 2:
            _init_worker(split)
            for i in range(n):
                yield _read_check(i)
                bar.update(1)
            return
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(split,)) as pool:
            for r in pool.imap(_read_check, range(n), chunksize=16):
                yield r
                bar.update(1)
    finally:
        global _WORK
        _WORK = None
        bar.close()


# ----------------------------------------------------------------------------- writing


def _relative_names(split: ImageSplit) -> list[str]:
    """File names stored in the pack: relative to the data set's folder (``train/n01/x.JPEG``)."""
    if split.pack is not None:
        return list(split.paths)
    base = Path(split.source) if split.source else None
    out = []
    for p in split.paths:
        try:
            out.append(Path(p).relative_to(base).as_posix() if base else Path(p).name)
        except ValueError:
            out.append(Path(p).name)
    return out


def _write_split(split: ImageSplit, tmp: Path, name: str, shard_size: int, workers: int, skip_bad: bool,
                 spec: str) -> tuple[dict, list]:
    """Shards, index and names of one split into ``tmp``; returns (its pack.json entry, bad files)."""
    names = _relative_names(split)
    index = np.zeros(len(split), dtype=PACK_INDEX_DTYPE)
    shards: list[str] = []
    bad: list = []
    kept: list[int] = []
    f = None
    size = 0
    try:
        for i, data, reason, digest in _checked(split, workers, f"pack {spec} {name}"):
            if data is None:
                bad.append((split.describe(i), reason))
                continue
            if bad and not skip_bad:
                continue  # keep checking to count every bad file; nothing more is written
            if f is None or (size and size + len(data) > shard_size):
                if f is not None:
                    f.close()
                shards.append(f"{name}-{len(shards):05d}.shard")
                f = open(tmp / shards[-1], "wb")
                size = 0
            row = index[len(kept)]
            row["shard"], row["offset"], row["length"] = len(shards) - 1, size, len(data)
            row["label"], row["sha256"] = int(split.targets[i]), digest
            f.write(data)
            size += len(data)
            kept.append(i)
    finally:
        if f is not None:
            f.close()
    index = index[:len(kept)]
    np.save(tmp / f"{name}.index.npy", index, allow_pickle=False)
    (tmp / f"{name}.names.json").write_text(json.dumps([names[i] for i in kept]))
    entry = {"count": len(kept), "bytes": int(index["length"].sum()) if len(kept) else 0, "mode": split.mode,
             "shards": shards, "index": f"{name}.index.npy", "names": f"{name}.names.json",
             "left_out": len(bad) if skip_bad else 0}
    return entry, bad


def write_pack(spec: str, out, *, splits=None, root=None, shard_size: int = 10**9, skip_bad: bool = False,
               overwrite: bool = False, workers: int | None = None) -> dict:
    """Pack the file-backed data set ``spec`` (``folder:PATH``, ``imagenet``, ``tinyimagenet``,
    ``pack:PATH``) into the folder ``out``; returns the written ``pack.json`` content.

    ``splits``: the splits to pack (default :func:`pack_splits`). ``workers``: decode-check processes
    (default :func:`default_workers`; 0 checks in this process). Bad files: refused (one
    :class:`PackError` line naming the first few and the count) unless ``skip_bad``."""
    out = Path(out).expanduser()
    if out.exists():
        if not overwrite:
            raise UsageError(f"OUT {out} already exists; pass --overwrite to replace it, or choose another OUT")
        if not (out / PACK_META).is_file():
            raise UsageError(f"OUT {out} exists and is not a pack (no {PACK_META}); --overwrite replaces packs only, "
                             f"choose another OUT")
    check_out_path(out.with_name(f".{out.name}.new"), "OUT")  # its folder exists and is writable
    if int(shard_size) < 1:
        raise UsageError(f"--shard-size must be at least 1 byte, got {shard_size}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise UsageError(f"--workers must be >= 0 (0: in this process), got {workers}")
    names = list(splits) if splits else pack_splits(spec, root)
    loaded = {}
    for name in names:  # every split is read and checked for being file-backed before anything is written
        s = load_split(spec, name, root=root)
        if s.paths is None:
            raise PackError(f"{spec} is held in memory (decoded arrays, not image files); `sslzoo pack` packs "
                            f"file-backed data sets: folder:PATH, imagenet, tinyimagenet, pack:PATH")
        loaded[name] = s
    first = next(iter(loaded.values()))
    meta = {"format": PACK_FORMAT, "version": PACK_VERSION, "name": first.name, "source": spec,
            "classes": list(first.classes), "splits": {}}
    with atomic_dir(out) as tmp:
        all_bad = []
        for name, s in loaded.items():
            entry, bad = _write_split(s, tmp, name, int(shard_size), workers, skip_bad, spec)
            meta["splits"][name] = entry
            all_bad += bad
        if all_bad and not skip_bad:
            shown = "; ".join(f"{n}: {r}" for n, r in all_bad[:SHOWN_BAD])
            more = f" (and {len(all_bad) - SHOWN_BAD} more)" if len(all_bad) > SHOWN_BAD else ""
            raise PackError(f"{len(all_bad)} file(s) of {spec} cannot be decoded: {shown}{more}; fix or remove them, "
                            f"or pass --skip-bad to leave them out of the pack")
        if all_bad:
            log.warning("left %d undecodable file(s) out of the pack (first: %s: %s)", len(all_bad), *all_bad[0])
        (tmp / PACK_META).write_text(json.dumps(meta, indent=1))
    return meta
