"""The results store: every probe result, one row per seed, in an embedded SQLite database.

The database is ``$SSLZOO_HOME/results.sqlite3`` (default ``~/.cache/sslzoo``), in WAL mode so
readers never block the writer; every write is one ``BEGIN IMMEDIATE`` transaction, and SQLite's
busy timeout makes concurrent writers queue instead of failing, so two processes evaluating at the
same time never lose a row.

A result is identified by its *key*: the sha256 of the canonical JSON of

    model name, weights sha256, dataset name, dataset fingerprint (pixels + labels of train and
    test), probe, protocol label, protocol parameters (canonical JSON: sorted keys, no spaces),
    seed (``None`` for deterministic protocols such as kNN) and code version (package version +
    git commit, ``.dirty`` when the work tree has uncommitted changes).

Writing a result whose key is already stored replaces its accuracy (``replace=True``, what
``sslzoo eval --force`` does) or keeps the old one; a key is never stored twice. The accuracy, the
per-result extras (chosen L2, validation accuracy, ...) and the time are payload, not identity.

:func:`aggregate` turns per-seed results into table rows (mean ± std over seeds), the form
``eval/tables.py`` renders. Results written by the earlier JSON store (``$SSLZOO_HOME/results/*.json``)
are imported once, the first time the database is opened.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import math
import sqlite3
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zoo.base import SSLZooError, home

from .stats import mean_std

__all__ = ["Result", "ResultStore", "StoreError", "aggregate", "canonical_json", "code_version", "default_path"]

DB_NAME = "results.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL,
    dataset TEXT NOT NULL,
    dataset_sha256 TEXT NOT NULL,
    probe TEXT NOT NULL,
    protocol TEXT NOT NULL,
    params TEXT NOT NULL,
    seed INTEGER,
    code_version TEXT NOT NULL,
    accuracy REAL NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_group ON results (model, weights_sha256, dataset, dataset_sha256, protocol);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(SSLZooError, ValueError):
    """The results store cannot be opened or read; one line saying which file and what to do."""


def default_path() -> Path:
    return home() / DB_NAME


def _plain(v):
    """JSON-ready plain Python values (numpy scalars / arrays, tuples, paths); NaN/inf refused."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):  # numpy / torch scalars and arrays
        return _plain(v.tolist())
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"non-finite number {v} cannot be part of a result's parameters")
    return v


def canonical_json(obj) -> str:
    """Canonical JSON: sorted keys, no whitespace, tuples as lists, numpy values as Python values.

    Equal parameters give equal text whatever their key order, so they give equal result keys."""
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+g<git short sha>[.dirty]`` (``+nogit`` outside a git checkout)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            pkg = version("ssl-zoo")
        except PackageNotFoundError:
            pkg = "unknown"
    except Exception:
        pkg = "unknown"
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10).stdout.split()
        # only our own checkout counts (an installed copy may sit inside some other repository)
        if len(out) != 2 or (Path(out[0]) / "eval" / "store.py").resolve() != Path(__file__).resolve():
            return f"{pkg}+nogit"
        sha = out[1][:12]
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return f"{pkg}+g{sha}" + (".dirty" if dirty else "")
    except Exception:
        return f"{pkg}+nogit"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


@dataclass
class Result:
    """One probe result: a model x dataset x protocol (+ parameters) x seed, accuracy in percent."""

    model: str
    weights_sha256: str
    dataset: str
    dataset_sha256: str
    probe: str  # linear | knn | fewshot
    protocol: str  # display label: "linear", "knn k=20 T=0.07", "few-shot k=5"
    params: dict
    seed: int | None
    accuracy: float  # percent
    code_version: str = field(default_factory=code_version)
    extra: dict = field(default_factory=dict)
    created: str = field(default_factory=_now)

    def identity(self) -> dict:
        return {"model": self.model, "weights_sha256": self.weights_sha256, "dataset": self.dataset,
                "dataset_sha256": self.dataset_sha256, "probe": self.probe, "protocol": self.protocol,
                "params": _plain(self.params), "seed": None if self.seed is None else int(self.seed),
                "code_version": self.code_version}

    @property
    def key(self) -> str:
        return hashlib.sha256(canonical_json(self.identity()).encode()).hexdigest()

    def to_dict(self) -> dict:
        return asdict(self)


_COLUMNS = ("key", "model", "weights_sha256", "dataset", "dataset_sha256", "probe", "protocol", "params", "seed",
            "code_version", "accuracy", "extra", "created")


def _row(r: Result) -> tuple:
    acc = float(r.accuracy)
    if not math.isfinite(acc):
        raise ValueError(f"accuracy {acc} of {r.model} / {r.protocol} is not a number; refusing to store it")
    return (r.key, r.model, r.weights_sha256 or "-", r.dataset, r.dataset_sha256, r.probe, r.protocol,
            canonical_json(r.params), None if r.seed is None else int(r.seed), r.code_version, acc,
            canonical_json(r.extra), r.created)


def _from_row(row: sqlite3.Row) -> Result:
    return Result(model=row["model"], weights_sha256=row["weights_sha256"], dataset=row["dataset"],
                  dataset_sha256=row["dataset_sha256"], probe=row["probe"], protocol=row["protocol"],
                  params=json.loads(row["params"]), seed=row["seed"], accuracy=row["accuracy"],
                  code_version=row["code_version"], extra=json.loads(row["extra"]), created=row["created"])


class ResultStore:
    """``ResultStore(path=None)``: open (creating if needed) the results database.

    Use as a context manager or call :meth:`close`. One instance per process (SQLite connections are
    not shared across ``fork``)."""

    def __init__(self, path: str | Path | None = None, *, import_json: bool = True):
        self.path = Path(path) if path is not None else default_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the results store folder {self.path.parent} ({e.strerror or e}); "
                             f"set SSLZOO_HOME to a writable folder") from None
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"results store {self.path} is not a file; move it away or set SSLZOO_HOME")
        try:
            # isolation_level=None: no implicit transactions; every write is an explicit BEGIN IMMEDIATE.
            self.con = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the results store {self.path} ({e}); set SSLZOO_HOME to a writable "
                             f"folder") from None
        self.con.row_factory = sqlite3.Row
        try:
            self.con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            mode = self._set_wal()
            if str(mode).lower() != "wal":
                raise StoreError(f"results store {self.path}: SQLite refused WAL mode (got {mode!r}); "
                                 f"is it on a network file system? set SSLZOO_HOME to a local folder")
            self.con.execute("PRAGMA synchronous = FULL")
            with self._transaction():
                # statement by statement: executescript() would COMMIT the open transaction
                for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    self.con.execute(stmt)
                got = self.con.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
                if got is None:
                    self.con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(got[0]) > SCHEMA_VERSION:
                    raise StoreError(f"results store {self.path} has schema {got[0]}, newer than this ssl-zoo "
                                     f"({SCHEMA_VERSION}); upgrade ssl-zoo")
        except sqlite3.DatabaseError as e:
            self.con.close()
            raise StoreError(f"results store {self.path} is unreadable ({e}); move it away to start a new "
                             f"one") from None
        except BaseException:
            self.con.close()
            raise
        if import_json:
            self.import_json_dir(self.path.parent / "results")

    # ------------------------------------------------------------------ plumbing
    def _set_wal(self) -> str:
        """Switch to WAL (persistent, so a no-op once done). The switch needs an exclusive lock, which
        the busy timeout does not always wait for when several processes open a new store at once."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                return self.con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    class _Tx:
        def __init__(self, con):
            self.con = con

        def __enter__(self):
            self.con.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
            return self.con

        def __exit__(self, exc_type, exc, tb):
            if exc_type is None:
                self.con.execute("COMMIT")
            elif self.con.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
                self.con.execute("ROLLBACK")
            return False

    def _transaction(self):
        return self._Tx(self.con)

    def _wrap(self, fn, *args):
        try:
            return fn(*args)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"results store {self.path}: {e}") from None

    # ------------------------------------------------------------------ writing
    def put(self, results, *, replace: bool = True) -> int:
        """Store ``results`` in one transaction; returns how many rows were inserted or replaced.

        A result whose key is stored already replaces the stored accuracy, extras and time when
        ``replace`` (the row keeps its id), and is ignored otherwise."""
        rows = [_row(r) for r in results]
        if not rows:
            return 0
        conflict = ("DO UPDATE SET accuracy = excluded.accuracy, extra = excluded.extra, created = excluded.created"
                    if replace else "DO NOTHING")
        sql = (f"INSERT INTO results ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
               f"ON CONFLICT (key) {conflict}")

        def run():
            with self._transaction() as con:
                before = con.total_changes
                con.executemany(sql, rows)
                return con.total_changes - before

        return self._wrap(run)

    # ------------------------------------------------------------------ reading
    def get_many(self, keys) -> dict:
        """``{key: Result}`` for the stored ones among ``keys``."""
        keys = list(dict.fromkeys(keys))
        out = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            sql = f"SELECT * FROM results WHERE key IN ({', '.join('?' * len(chunk))})"
            rows = self._wrap(lambda q, args: self.con.execute(q, args).fetchall(), sql, chunk)
            out.update((row["key"], _from_row(row)) for row in rows)
        return out

    def get(self, key: str) -> Result | None:
        return self.get_many([key]).get(key)

    def all(self) -> list[Result]:
        rows = self._wrap(lambda: self.con.execute("SELECT * FROM results ORDER BY id").fetchall())
        return [_from_row(r) for r in rows]

    def count(self) -> int:
        return self._wrap(lambda: self.con.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def integrity_check(self) -> str:
        return self._wrap(lambda: self.con.execute("PRAGMA integrity_check").fetchone()[0])

    # ------------------------------------------------------------------ legacy JSON results
    def import_json_dir(self, folder: Path) -> int:
        """Import the earlier JSON results (``folder/*.json``, lists of aggregated rows) once.

        Few-shot rows become one result per seed (their ``params.per_seed``), the rest one result;
        the code version and time recorded in the file are kept. Returns the number of rows added."""
        folder = Path(folder)
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if not files:
            return 0

        def run():
            with self._transaction() as con:
                if con.execute("SELECT 1 FROM meta WHERE name = 'json_imported'").fetchone():
                    return 0
                results = []
                for p in files:
                    try:
                        data = json.loads(p.read_text())
                    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                        continue
                    for row in data if isinstance(data, list) else []:
                        try:
                            results += _legacy_results(row)
                        except (KeyError, TypeError, ValueError):
                            continue
                before = con.total_changes
                con.executemany(f"INSERT INTO results ({', '.join(_COLUMNS)}) VALUES "
                                f"({', '.join('?' * len(_COLUMNS))}) ON CONFLICT (key) DO NOTHING",
                                [_row(r) for r in results])
                added = con.total_changes - before
                con.execute("INSERT INTO meta VALUES ('json_imported', ?)", (f"{len(files)} files, {added} rows",))
                return added

        return self._wrap(run)


def _legacy_results(row: dict) -> list[Result]:
    params = json.loads(row.get("params") or "{}")
    proto = row["protocol"]
    common = dict(model=row["model"], weights_sha256=row.get("weights_sha256") or "-", dataset=row["dataset"],
                  dataset_sha256=row.get("dataset_sha256") or "-", protocol=proto,
                  code_version=row.get("code_version") or "unknown", created=row.get("time") or _now())
    precision = row.get("precision", "fp32")
    if proto.startswith("few-shot k="):
        k = int(proto.split("=", 1)[1])
        seeds = [int(s) for s in str(row["seeds"]).split(",")]
        accs = params.get("per_seed") or []
        l2s = params.get("l2") or [None] * len(accs)
        if len(accs) != len(seeds):
            raise ValueError("per-seed accuracies do not match the seeds")
        return [Result(probe="fewshot", params={"shots": k, "precision": precision}, seed=s, accuracy=100 * a,
                       extra={"l2": l2, "imported_from": "json"}, **common) for s, a, l2 in zip(seeds, accs, l2s)]
    if proto.startswith("knn"):
        p = {"k": params["k"], "T": params["T"], "precision": precision}
        return [Result(probe="knn", params=p, seed=None, accuracy=float(row["accuracy_mean"]),
                       extra={"imported_from": "json"}, **common)]
    if proto == "linear":
        p = {"val_fraction": params.get("val_fraction", 0.1), "precision": precision}
        extra = {k: params[k] for k in ("l2", "val_accuracy") if k in params}
        return [Result(probe="linear", params=p, seed=0, accuracy=float(row["accuracy_mean"]),
                       extra=dict(extra, imported_from="json"), **common)]
    raise ValueError(f"unknown protocol {proto!r}")


# ----------------------------------------------------------------------------- aggregation

def aggregate(results) -> list[dict]:
    """Per-seed results -> one row per (model, weights, dataset + fingerprint, protocol, parameters).

    Within a group the latest result per seed counts (by time, then insertion order), so a result
    recomputed with ``--force`` or by a newer code version supersedes the older one. Rows carry
    ``accuracy_mean`` and ``accuracy_std`` (sample std over seeds, ddof=1; ``None`` for one seed), in
    percent; ``seeds`` (``"0,1,2"``, ``"-"`` for a deterministic protocol), ``n``, ``per_seed``
    (accuracies in seed order), ``params`` (canonical JSON), ``code_version`` (every version that
    contributed), ``time`` (latest) and ``probe``. Row order follows first appearance."""
    groups: dict = {}
    for i, r in enumerate(results):
        gk = (r.model, r.weights_sha256, r.dataset, r.dataset_sha256, r.protocol, canonical_json(r.params))
        per_seed = groups.setdefault(gk, {})
        seed = r.seed
        old = per_seed.get(seed)
        if old is None or (r.created, i) >= (old[0].created, old[1]):
            per_seed[seed] = (r, i)
    rows = []
    for (model, sha, dataset, dsha, protocol, params), per_seed in groups.items():
        seeds = sorted(per_seed, key=lambda s: (s is None, s if s is not None else 0))
        chosen = [per_seed[s][0] for s in seeds]
        accs = [float(r.accuracy) for r in chosen]
        mean, std = mean_std(accs)
        rows.append({"model": model, "weights_sha256": sha, "dataset": dataset, "protocol": protocol,
                     "accuracy_mean": mean, "accuracy_std": std,
                     "seeds": "-" if seeds == [None] else ",".join(str(s) for s in seeds if s is not None),
                     "n": len(accs), "dataset_sha256": dsha, "probe": chosen[0].probe, "params": params,
                     "per_seed": ",".join(repr(a) for a in accs),
                     "code_version": ",".join(sorted({r.code_version for r in chosen})),
                     "time": max(r.created for r in chosen)})
    return rows
