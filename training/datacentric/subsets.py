"""Subset datasets and subset index files (the data side of SAS, Joshi & Mirzasoleiman, ICML 2023).

Datasets, with the names and behaviour of the upstream ``sas.subset_dataset`` module:

* :class:`RandomSubsetDataset` -- ``floor(N * f)`` random examples, or with a ``partition``
  (``{class: [indices]}``) ``floor(|class| * f)`` per class (class-balanced);
* :class:`CustomSubsetDataset` -- given indices (e.g. a released subset file);
* :class:`~training.datacentric.sas.SASSubsetDataset` -- the SAS selection (in :mod:`training.datacentric.sas`).

Differences from upstream, on purpose: a seed instead of the global ``random`` state (same seed ->
same subset, bit for bit); ``len()`` is the number of kept indices (upstream returns
``int(N * f)``, which differs from the per-class sum); ``floor`` is taken with a 1e-9 slack so
``0.29 * 100`` keeps 29, not 28.

Index files: ``.pkl`` holds a plain list of ints (protocol 4), the format of the released
``*-sas-subset-indices.pkl`` files; ``.json`` holds the indices with metadata (dataset, fraction,
method, seed, parameters). :func:`read_subset_file` reads both, plus upstream's
``{'indices': ranking}`` dicts (``final_subsets/*-cl-core-idx.pkl``). Pickles are read with an
unpickler that resolves no global at all except the builtins ``list``/``int``/``dict``/``tuple``,
so a pickle that would build any other object (numpy arrays, ``os.system``) is refused, never run.
"""
from __future__ import annotations

import io
import json
import logging
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zoo.base import SSLZooError

from zoo.io import atomic_write_bytes

log = logging.getLogger(__name__)

SUBSET_FORMAT = "sslzoo.subset"
SUBSET_VERSION = 1


class SubsetError(SSLZooError, ValueError):
    """A subset file or request that cannot be used; one line saying what to do."""

    def __init__(self, message="", *args):
        if isinstance(message, str):
            message = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in message)
        super().__init__(message, *args)


def class_budget(n: int, fraction: float) -> int:
    """``floor(n * fraction)`` with a 1e-9 slack against float error (``0.29 * 100`` -> 29)."""
    return int(math.floor(n * fraction + 1e-9))


def check_fraction(fraction) -> float:
    f = float(fraction)
    if not 0.0 < f <= 1.0 or math.isnan(f):
        raise SubsetError(f"subset fraction must be in (0, 1], got {fraction!r}")
    return f


def check_partition(partition: dict, n: int) -> dict:
    """``{class: [indices]}`` with int keys, disjoint in-range int indices; returned with sorted keys."""
    if not isinstance(partition, dict) or not partition:
        raise SubsetError("partition must be a non-empty dict {class: [dataset indices]}")
    out, seen = {}, np.zeros(n, dtype=bool)
    for c in sorted(partition, key=lambda k: (str(type(k)), k)):
        idx = np.asarray(partition[c], dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise SubsetError(f"partition class {c!r} holds index {int(idx.max() if idx.max() >= n else idx.min())}, "
                              f"outside 0..{n - 1}")
        if seen[idx].any() or len(np.unique(idx)) != len(idx):
            raise SubsetError(f"partition class {c!r} repeats an index that is already in a class; classes must be "
                              f"disjoint")
        seen[idx] = True
        out[c] = idx.tolist()
    return out


# ----------------------------------------------------------------------------- index files

class _PlainUnpickler(pickle.Unpickler):
    """Resolves only the builtins list / int / dict / tuple; any other global is refused."""

    _ALLOWED = {("builtins", "list"): list, ("builtins", "int"): int, ("builtins", "dict"): dict,
                ("builtins", "tuple"): tuple, ("__builtin__", "list"): list, ("__builtin__", "int"): int,
                ("__builtin__", "dict"): dict, ("__builtin__", "tuple"): tuple}

    def find_class(self, module, name):
        obj = self._ALLOWED.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return obj


@dataclass
class SubsetFile:
    indices: list
    meta: dict = field(default_factory=dict)


def _as_index_list(obj, path) -> list:
    if isinstance(obj, dict):
        if "indices" not in obj:
            keys = ", ".join(map(str, list(obj)[:5]))
            raise SubsetError(f"{path}: a dict without 'indices' (keys: {keys}); expected a list of ints or "
                              f"{{'indices': [...]}}")
        obj = obj["indices"]
    if isinstance(obj, tuple):
        obj = list(obj)
    if not isinstance(obj, list):
        raise SubsetError(f"{path} holds a {type(obj).__name__}, expected a list of dataset indices")
    for i, v in enumerate(obj):
        if type(v) is not int:  # bool is refused too
            raise SubsetError(f"{path}: entry {i} is {v!r} ({type(v).__name__}), expected an int dataset index")
        if v < 0:
            raise SubsetError(f"{path}: entry {i} is {v}, a negative index; indices count from 0")
    if len(set(obj)) != len(obj):
        dup = next(v for v, c in zip(*np.unique(np.asarray(obj), return_counts=True)) if c > 1)
        raise SubsetError(f"{path}: index {int(dup)} appears more than once; a subset lists each example once")
    return obj


def read_subset_file(path) -> SubsetFile:
    """Indices (and metadata, for our JSON files) from a ``.pkl`` or ``.json`` subset file.

    The format is recognised from the content (a JSON file starts with ``{`` or ``[``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SubsetError(f"subset file {p} not found (write one with `sslzoo subset ... --out {p.name}`)")
    raw = p.read_bytes()
    head = raw.lstrip()[:1]
    if head in (b"{", b"["):
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SubsetError(f"{p} is not valid JSON ({str(e).splitlines()[0]})") from None
        meta = {}
        if isinstance(obj, dict) and "indices" in obj:
            meta = {k: v for k, v in obj.items() if k != "indices"}
        return SubsetFile(_as_index_list(obj, p), meta)
    try:
        obj = _PlainUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as e:
        what = str(e).splitlines()[0] if str(e) else "?"
        if "." in what and " " not in what:
            raise SubsetError(f"{p} pickles a {what} object; only plain lists/dicts of ints are read (re-save it "
                              f"with pickle.dump([int(i) for i in idx], f))") from None
        raise SubsetError(f"{p} is not a readable pickle ({what})") from None
    except Exception as e:  # truncated / not a pickle at all
        raise SubsetError(f"{p} is neither JSON nor a readable pickle ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:120]})") from None
    return SubsetFile(_as_index_list(obj, p), {})


def write_subset_file(path, indices, meta: dict | None = None) -> Path:
    """Write atomically: ``.pkl`` -> the plain pickled list (upstream format), ``.json`` -> indices +
    metadata. Any other suffix is refused."""
    p = Path(path).expanduser()
    idx = [int(i) for i in indices]
    _as_index_list(idx, p)
    if p.suffix == ".pkl":
        data = pickle.dumps(idx, protocol=4)
    elif p.suffix == ".json":
        doc = {"format": SUBSET_FORMAT, "version": SUBSET_VERSION, **(meta or {}), "size": len(idx), "indices": idx}
        data = (json.dumps(doc, indent=None, separators=(",", ":")) + "\n").encode()
    else:
        raise SubsetError(f"subset file {p} must end in .pkl (upstream list) or .json (indices + metadata)")
    atomic_write_bytes(p, data)
    return p


def write_subset_files(prefix, indices, meta: dict | None = None) -> tuple[Path, Path]:
    """``PREFIX.pkl`` and ``PREFIX.json`` (a prefix that already ends in .pkl/.json is stripped)."""
    p = Path(prefix)
    if p.suffix in (".pkl", ".json"):
        p = p.with_suffix("")
    return (write_subset_file(p.with_name(p.name + ".pkl"), indices, meta),
            write_subset_file(p.with_name(p.name + ".json"), indices, meta))


def check_indices(indices, n: int, where: str = "subset", what: str = "the data set") -> torch.Tensor:
    """The indices as an int64 tensor, refusing any outside ``0 .. n-1`` in one line."""
    idx = torch.as_tensor(list(indices), dtype=torch.int64)
    if idx.numel() == 0:
        raise SubsetError(f"{where} is empty; a subset needs at least one index")
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.numel():
        raise SubsetError(f"{where}: index {int(bad[0])} is out of range for {what} ({n} images, indices 0..{n - 1}); "
                          f"{bad.numel()} of {idx.numel()} indices are outside it -- was it made for another data set?")
    if torch.unique(idx).numel() != idx.numel():
        raise SubsetError(f"{where} repeats indices; a subset lists each example once")
    return idx


# ----------------------------------------------------------------------------- datasets

class BaseSubsetDataset(torch.utils.data.Dataset):
    """``dataset[subset_indices[i]]``; ``save_to_file`` writes the index list (``.pkl`` or ``.json``)."""

    def __init__(self, dataset, subset_fraction: float, verbose: bool = False):
        self.dataset = dataset
        self.subset_fraction = subset_fraction
        self.verbose = verbose
        self.subset_indices: list = []
        self.meta: dict = {}

    def initialization_complete(self):
        self.subset_indices = [int(i) for i in self.subset_indices]
        check_indices(self.subset_indices, len(self.dataset), type(self).__name__)
        if self.verbose:
            log.info("%s: %d of %d examples", type(self).__name__, len(self.subset_indices), len(self.dataset))

    def __len__(self) -> int:
        return len(self.subset_indices)

    def __getitem__(self, i):
        return self.dataset[self.subset_indices[i]]

    def save_to_file(self, filename, meta: dict | None = None) -> Path:
        return write_subset_file(filename, self.subset_indices, {**self.meta, **(meta or {})})


def random_subset_indices(n: int, fraction: float, partition: dict | None = None, seed: int = 0) -> list:
    """Random subset with ``numpy.random.default_rng(seed)``: ``floor(n f)`` indices, or per class
    ``floor(|c| f)`` (classes in sorted order, each drawn from the same generator)."""
    f = check_fraction(fraction)
    rng = np.random.default_rng(seed)
    if partition is None:
        return rng.permutation(n)[:class_budget(n, f)].tolist()
    out = []
    for c, idx in check_partition(partition, n).items():
        idx = np.asarray(idx, dtype=np.int64)
        out += idx[rng.permutation(len(idx))[:class_budget(len(idx), f)]].tolist()
    return out


class RandomSubsetDataset(BaseSubsetDataset):
    """Random subset; class-balanced when ``partition`` (``{class: [indices]}``) is given."""

    def __init__(self, dataset, subset_fraction: float, partition: dict | None = None, seed: int = 0,
                 verbose: bool = False):
        super().__init__(dataset, check_fraction(subset_fraction), verbose)
        self.subset_indices = random_subset_indices(len(dataset), subset_fraction, partition, seed)
        self.meta = {"method": "random-balanced" if partition is not None else "random", "fraction": subset_fraction,
                     "seed": seed, "dataset_size": len(dataset)}
        self.initialization_complete()


class CustomSubsetDataset(BaseSubsetDataset):
    """A subset given by its indices (a list, or a path to a ``.pkl`` / ``.json`` subset file)."""

    def __init__(self, dataset, subset_indices, verbose: bool = False):
        if isinstance(subset_indices, (str, Path)):
            subset_indices = read_subset_file(subset_indices).indices
        idx = [int(i) for i in subset_indices]
        super().__init__(dataset, len(idx) / max(1, len(dataset)), verbose)
        self.subset_indices = idx
        self.meta = {"method": "custom", "fraction": self.subset_fraction, "dataset_size": len(dataset)}
        self.initialization_complete()
