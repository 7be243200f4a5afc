"""Feature stores: frozen features on disk, written by one or many processes, read in chunks.

A store is a folder::

    features.npy    [N, D] float16 or float32, a plain ``.npy`` file (``numpy.load(..., mmap_mode="r")``
                    opens it as a memory map)
    labels.npy      [N] int64
    manifest.json   format, model sha256, dataset (+ fingerprint), split, transform, precision,
                    dtype, shape, world size that wrote it

The folder is built under a temporary name beside its destination and renamed into place when
every row and the manifest are on disk, so a reader sees a complete store or none. Under
``torchrun`` every rank extracts a contiguous run of whole batches (:func:`shard_batches`) and
writes its rows into the one pre-sized file (the folder must be on a filesystem every rank sees);
because batch boundaries are those of single-process extraction, the features are bit-identical
to it.

Reading (:meth:`FeatureStore.iter_rows`, :meth:`FeatureStore.read_rows`) goes through ``readinto``
into a buffer of one chunk, not through the memory map: pages of a mapped file count in the
reader's resident set, chunk reads do not, so a probe's memory depends on the chunk, not on ``N``.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from zoo.base import SSLZooError, atomic_write_text, fsync_dir, replace_dir

from . import distributed as D
from .features import iter_batches, model_fingerprint

FORMAT = 1
DTYPES = {"fp16": np.float16, "fp32": np.float32}

__all__ = ["FeatureStore", "StoreFormatError", "extract_to_store", "shard_batches", "store_from_chunks"]


class StoreFormatError(SSLZooError, ValueError):
    """A folder that is not a complete feature store; one line saying what is wrong."""


def _npy_header(shape, dtype) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                "fortran_order": False, "shape": tuple(int(s) for s in shape)})
    return buf.getvalue()


def _create_npy(path: Path, shape, dtype) -> int:
    """A zero-filled ``.npy`` of ``shape`` (sparse where the filesystem allows); returns the data offset."""
    header = _npy_header(shape, dtype)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return len(header)


def _npy_offset(path: Path) -> tuple[int, tuple, np.dtype]:
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except ValueError as e:
            raise StoreFormatError(f"{path} is not a .npy file ({e}); delete the store and extract again") from None
        if fortran:
            raise StoreFormatError(f"{path}: Fortran-ordered arrays are not feature stores")
        return f.tell(), tuple(shape), dtype


def write_rows(path: Path, offset: int, start: int, rows: np.ndarray) -> None:
    """Write ``rows`` (C-contiguous) at row ``start`` of the ``.npy`` whose data begins at ``offset``."""
    rows = np.ascontiguousarray(rows)
    row_bytes = rows.itemsize * (rows.shape[1] if rows.ndim > 1 else 1)
    with open(path, "r+b") as f:
        f.seek(offset + start * row_bytes)
        f.write(rows.tobytes())
        f.flush()
        os.fsync(f.fileno())


class FeatureStore:
    """A complete feature store (see module docstring); ``len``, ``dim``, ``manifest``, chunked reads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.is_file():
            raise StoreFormatError(f"{self.path} is not a feature store (no manifest.json); extract features into it "
                                   f"first")
        try:
            self.manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise StoreFormatError(f"{mf} is not valid JSON ({e.msg}); delete {self.path} and extract again") from None
        if self.manifest.get("format") != FORMAT:
            raise StoreFormatError(f"{self.path}: store format {self.manifest.get('format')!r}, this code reads "
                                   f"{FORMAT}; extract again")
        self._feat = self.path / "features.npy"
        self._lab = self.path / "labels.npy"
        for p in (self._feat, self._lab):
            if not p.is_file():
                raise StoreFormatError(f"{self.path}: {p.name} is missing; delete the folder and extract again")
        self._off, shape, self.dtype = _npy_offset(self._feat)
        self._loff, lshape, self._ldtype = _npy_offset(self._lab)
        want = tuple(self.manifest["shape"])
        if shape != want or lshape != (want[0],):
            raise StoreFormatError(f"{self.path}: features {shape} / labels {lshape} do not match the manifest's "
                                   f"shape {list(want)}; delete the folder and extract again")
        size = self._off + int(np.prod(shape)) * self.dtype.itemsize
        if self._feat.stat().st_size != size:
            raise StoreFormatError(f"{self._feat}: {self._feat.stat().st_size} bytes, expected {size} (truncated?)")
        self.shape = shape

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        return self.shape[1]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def memmap(self) -> np.memmap:
        """The features as a read-only ``numpy.memmap`` (pages touched stay resident: prefer chunked reads)."""
        return np.load(self._feat, mmap_mode="r")

    def labels(self) -> np.ndarray:
        """All labels (int64, 8 bytes a row)."""
        return self._read(self._lab, self._loff, self._ldtype, 1, 0, len(self)).reshape(-1)

    @staticmethod
    def _read(path, offset, dtype, width, start, stop, out=None) -> np.ndarray:
        n = max(0, stop - start)
        if out is None:
            out = np.empty((n, width), dtype=dtype)
        with open(path, "rb", buffering=0) as f:
            f.seek(offset + start * width * dtype.itemsize)
            view = memoryview(out.reshape(-1).view(np.uint8))
            got = 0
            while got < len(view):
                k = f.readinto(view[got:])
                if not k:
                    raise StoreFormatError(f"{path}: unexpected end of file (rows {start}:{stop})")
                got += k
        return out

    def read_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Features ``[stop - start, D]`` (store dtype) and labels of rows ``start:stop``."""
        stop = min(stop, len(self))
        x = self._read(self._feat, self._off, self.dtype, self.dim, start, stop)
        y = self._read(self._lab, self._loff, self._ldtype, 1, start, stop).reshape(-1)
        return x, y

    def read_index(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``idx`` (sorted, increasing): one contiguous read spanning them, then a selection."""
        if len(idx) == 0:
            return np.empty((0, self.dim), self.dtype), np.empty(0, np.int64)
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        x, y = self.read_rows(lo, hi)
        sel = np.asarray(idx) - lo
        return x[sel], y[sel]

    def iter_rows(self, chunk_rows: int, index: np.ndarray | None = None):
        """``(start, features float32 torch [n, D], labels int64 torch [n])`` for consecutive chunks of
        ``chunk_rows`` rows (of ``index`` when given: positions are into ``index``)."""
        n = len(self) if index is None else len(index)
        for s in range(0, n, chunk_rows):
            if index is None:
                x, y = self.read_rows(s, s + chunk_rows)
            else:
                x, y = self.read_index(index[s:s + chunk_rows])
            yield s, torch.from_numpy(x.astype(np.float32, copy=False)), torch.from_numpy(y.astype(np.int64))

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything in memory as float32 features and int64 labels (only for stores that fit)."""
        x, y = self.read_rows(0, len(self))
        return torch.from_numpy(x.astype(np.float32, copy=False)), torch.from_numpy(y.astype(np.int64))


# ----------------------------------------------------------------------------- writing

def shard_batches(n: int, batch_size: int, world: int, rank: int) -> range:
    """The batch indices rank ``rank`` of ``world`` extracts: a contiguous run of whole batches of the
    single-process batch grid (``numpy.array_split`` of the batch indices)."""
    n_batches = -(-n // batch_size)
    part = np.array_split(np.arange(n_batches), world)[rank]
    return range(int(part[0]), int(part[-1]) + 1) if len(part) else range(0)


def _batch(split, preprocess, i: int, batch_size: int) -> torch.Tensor:
    n = len(split)
    return split.batch(i * batch_size, min(n, (i + 1) * batch_size), preprocess)


def new_tmp_dir(dest: Path) -> Path:
    """A temporary folder beside ``dest``, the same on every rank (name chosen by rank 0)."""
    token = D.broadcast_object(uuid.uuid4().hex[:12] if D.is_main() else None)
    return dest.parent / f".{dest.name}.tmp-{token}"


def publish_dir(tmp: Path, dest: Path) -> None:
    """Move a finished temporary folder into place (replacing an older store of the same name)."""
    replace_dir(tmp, dest)
    fsync_dir(dest.parent)


@torch.no_grad()
def extract_to_store(model: torch.nn.Module, split, dest: str | Path, *, preprocess=None, batch_size: int = 512,
                     precision: str = "fp32", dtype: str = "fp32", device: str | None = None,
                     meta: dict | None = None, desc: str | None = None, workers: int | None = None) -> FeatureStore:
    """Extract the features of ``split`` under ``model`` into a feature store at ``dest``.

    Run by every rank under torchrun (each extracts :func:`shard_batches` of the batch grid) or by a
    single process. ``precision``: ``fp32`` or ``bf16`` autocast; ``dtype``: ``fp32`` or ``fp16`` on
    disk. ``meta`` (model sha256, dataset, transform, ...) goes into the manifest. Returns the store
    (on every rank, once rank 0 has published it). File-backed splits are decoded in ``workers``
    DataLoader processes per rank (:func:`eval.features.iter_batches`), in the same batch order."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
    if dtype not in DTYPES:
        raise ValueError(f"feature store dtype must be fp16 or fp32, not {dtype!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    dest = Path(dest)
    preprocess = preprocess or model.preprocess
    dev = D.device_for_rank(device)
    model = model.to(dev).eval()
    n = len(split)
    if n == 0:
        raise ValueError(f"{split.name}/{split.split} is empty; nothing to extract")
    # the feature dim: one image through the model (deterministic, identical on every rank)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        dim = int(model(_batch(split, preprocess, 0, 1).to(dev)).reshape(1, -1).shape[1])
    np_dtype = DTYPES[dtype]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_tmp_dir(dest)
    feat = tmp / "features.npy"
    if D.is_main():
        tmp.mkdir()
        offset = _create_npy(feat, (n, dim), np_dtype)
    D.barrier()
    offset = len(_npy_header((n, dim), np_dtype))
    batches = shard_batches(n, batch_size, D.world_size(), D.rank())
    total = sum(min(n, (i + 1) * batch_size) - i * batch_size for i in batches)
    try:
        with tqdm(total=total, desc=desc or f"features {split.name}/{split.split}", unit="img", dynamic_ncols=True,
                  leave=False, disable=not D.is_main()) as bar:
            for i, xb in iter_batches(split, preprocess, batch_size, workers=workers, batches=batches):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    f = model(xb.to(dev))
                rows = f.float().cpu().reshape(len(xb), -1).numpy().astype(np_dtype, copy=False)
                write_rows(feat, offset, i * batch_size, rows)
                bar.update(len(xb))
        D.barrier()
        if D.is_main():
            labels = np.asarray(split.targets, dtype=np.int64)
            loff = _create_npy(tmp / "labels.npy", (n,), np.int64)
            write_rows(tmp / "labels.npy", loff, 0, labels[:, None])
            manifest = {"format": FORMAT, "shape": [n, dim], "dtype": dtype, "precision": precision,
                        "model_sha256": model_fingerprint(model),
                        "transform": preprocess.to_dict() if hasattr(preprocess, "to_dict") else repr(preprocess),
                        "dataset": split.name, "split": split.split, "dataset_sha256": split.fingerprint(),
                        "world_size": D.world_size(), "batch_size": int(batch_size), **(meta or {})}
            atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            publish_dir(tmp, dest)
        D.barrier()
    except BaseException:
        if D.is_main() and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FeatureStore(dest)


def store_from_chunks(dest: str | Path, n: int, dim: int, chunks, *, dtype: str = "fp32",
                      meta: dict | None = None) -> FeatureStore:
    """Write a store from ``chunks``, an iterable of ``(features [m, dim], labels [m])`` in row order
    totalling ``n`` rows (single process; e.g. synthetic features or features computed elsewhere)."""
    if dtype not in DTYPES:
        raise ValueError(f"feature store dtype must be fp16 or fp32, not {dtype!r}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        off = _create_npy(tmp / "features.npy", (n, dim), DTYPES[dtype])
        loff = _create_npy(tmp / "labels.npy", (n,), np.int64)
        row = 0
        for x, y in chunks:
            x = np.asarray(x, dtype=DTYPES[dtype])
            if x.ndim != 2 or x.shape[1] != dim or len(y) != len(x) or row + len(x) > n:
                raise ValueError(f"chunk of shape {x.shape} with {len(y)} labels does not fit rows {row}.. of "
                                 f"a [{n}, {dim}] store")
            write_rows(tmp / "features.npy", off, row, x)
            write_rows(tmp / "labels.npy", loff, row, np.asarray(y, dtype=np.int64)[:, None])
            row += len(x)
        if row != n:
            raise ValueError(f"chunks gave {row} rows, the store has {n}")
        manifest = {"format": FORMAT, "shape": [n, dim], "dtype": dtype, "world_size": 1, **(meta or {})}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        publish_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FeatureStore(dest)
