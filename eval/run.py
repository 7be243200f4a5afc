"""One evaluation: a model (registry name or zoo folder) x a dataset x probes -> result rows.

Every probe result (one per seed) goes into the results store (:mod:`eval.store`, SQLite), keyed
by model, weights sha256, dataset + fingerprint, protocol + parameters, seed and code version.
Results already stored under the same key are reused, so re-running an evaluation costs nothing
(``force=True`` recomputes them; ``cache=False`` also recomputes the features). Every input is
checked before any feature is computed or anything is written.
"""
from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from zoo.base import home
from zoo.external import external_label, is_external, is_random_init
from zoo.hub import create_model

from . import distributed as D
from .datasets import DatasetError, load_split
from .features import Pixels, cache_key, extract, model_fingerprint
from .probes import fewshot_probe, knn_probes, linear_probe
from .protocols import PROTOCOLS
from .solver import one_thread
from .store import Result, ResultStore, aggregate, code_version

log = logging.getLogger(__name__)

__all__ = ["PROBES", "cli_probes", "KNN_SETTINGS", "BASELINES", "LINEAR_VAL_FRACTION", "code_version", "parse_probes",
           "evaluate", "check_inputs", "probe_workers", "PARALLEL_MIN_VALUES", "run_tasks", "model_label", "dataset_label", "data_fingerprint"]

logger = logging.getLogger(__name__)

PROBES = ("linear", "fewshot", "knn")  # frozen-feature probes, run here; protocols that train the encoder
# (finetune) register in eval.protocols and share the store and tables

KNN_SETTINGS = ((20, 0.07), (200, 0.1))  # DINO and InstDisc settings
BASELINES = ("pixels", "random-init")
LINEAR_VAL_FRACTION = 0.1  # eval.probes.linear_probe's default, recorded with every linear result


def cli_probes() -> tuple:
    """What ``--probes`` accepts: the frozen probes, then the registered protocols (:mod:`eval.protocols`)."""
    return PROBES + tuple(PROTOCOLS)


def parse_probes(spec: str) -> list[str]:
    items = [p.strip() for p in spec.split(",") if p.strip()]
    choices = cli_probes()
    bad = [p for p in items if p not in choices]
    if bad or not items:
        raise ValueError(f"unknown probe(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(choices)}")
    return list(dict.fromkeys(items))


def model_label(model_spec, weights=None) -> str:
    """The name a model gets in the store and tables: a folder's name, else the registry name; an external
    spec (``timm:`` / ``hf-hub:`` / ``hf:`` / ``torchvision:``) with its weights file's name or its random
    init said (:func:`zoo.external.external_label`)."""
    if is_external(model_spec):
        return external_label(model_spec, weights)
    p = Path(model_spec)
    return p.name if p.exists() else str(model_spec)


_label = model_label


def _check_classes(train, test) -> None:
    tr, te = set(int(v) for v in train.targets if v >= 0), set(int(v) for v in test.targets)
    extra = te - tr
    if extra:
        names = ", ".join(_class_id(test, c) for c in sorted(extra)[:5])
        raise DatasetError(f"{test.name}: test has classes [{names}] that train lacks; probes cannot "
                           f"predict them")
    absent = sorted(tr - te)
    if absent:  # the same answer for every format (a folder data set refuses it while loading)
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise DatasetError(f"{test.name}: train class {_class_name(train, absent[0])}{more} has no test images; "
                           f"every train class needs test images (add some, or drop the class from train)")


def _class_id(split, c: int) -> str:
    """Class ``c`` by its name (an npz data set's names are its label ids)."""
    try:
        return str(split.classes[c])
    except (IndexError, TypeError):
        return str(c)


def _class_name(split, c: int) -> str:
    try:
        return repr(split.classes[c])
    except (IndexError, TypeError):
        return str(c)


def check_inputs(train, test, probes, shots, seeds) -> None:
    """Everything about the data and the protocol that can be wrong, checked before any compute."""
    if len(train) == 0 or len(test) == 0:
        raise DatasetError(f"{train.name}: empty split (train {len(train)}, test {len(test)} images)")
    y = np.asarray(train.targets)
    y = y[y >= 0]
    if y.size == 0:
        raise DatasetError(f"{train.name}: train has no labelled images (every label is < 0); probes need labels")
    _check_classes(train, test)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise DatasetError(f"{train.name}: train has a single class ({_class_name(train, int(classes[0]))}); "
                           f"probes need at least 2")
    if "fewshot" in probes:
        if not shots:
            raise ValueError("few-shot needs at least one k (--shots 1,5,10)")
        if not seeds:
            raise ValueError("few-shot needs at least one seed (--seeds 0,1,2)")
        bad = [k for k in shots if k < 1]
        if bad:
            raise ValueError(f"few-shot k must be >= 1, got {bad[0]}")
        small = int(np.argmin(counts))
        n_min = int(counts[small])
        too_big = [k for k in shots if k > n_min]
        if too_big:
            raise ValueError(f"few-shot k={max(too_big)} exceeds the smallest train class "
                             f"({_class_name(train, int(classes[small]))} has {n_min} labelled images); "
                             f"use --shots with every k <= {n_min}")


def dataset_label(dataset: str, split) -> str:
    """The dataset name stored with a result (``folder:NAME`` / ``npz:NAME`` / catalogue name)."""
    if dataset.startswith(("folder:", "npz:")):
        kind, path = dataset.split(":", 1)
        return f"{kind}:{Path(path).name}"
    return split.name  # the catalogue's canonical name (fmnist -> fashion-mnist)


_dataset_label = dataset_label


def data_fingerprint(train, test) -> str:
    """sha256 over both splits' fingerprints: a result's data identity."""
    return hashlib.sha256(f"{train.fingerprint()}/{test.fingerprint()}".encode()).hexdigest()


def _plan(name, sha, ds_name, data_fp, probes, shots, seeds, common: dict, n_train: int | None = None) -> list[Result]:
    """The results this evaluation needs, accuracy not yet known (NaN). A kNN setting whose ``k`` exceeds
    the ``n_train`` labelled train images runs (and is labelled and keyed) with ``k = n_train``, the k it
    really uses."""
    base = dict(model=name, weights_sha256=sha, dataset=ds_name, dataset_sha256=data_fp, accuracy=float("nan"))
    jobs = []
    if "linear" in probes:
        jobs.append(Result(probe="linear", protocol="linear", seed=0,
                           params=dict(common, val_fraction=LINEAR_VAL_FRACTION), **base))
    if "knn" in probes:
        for k, t in KNN_SETTINGS:
            k = k if n_train is None else max(1, min(k, int(n_train)))
            jobs.append(Result(probe="knn", protocol=f"knn k={k} T={t}", seed=None, params=dict(common, k=k, T=t),
                               **base))
    if "fewshot" in probes:
        for k in shots:
            for s in seeds:
                jobs.append(Result(probe="fewshot", protocol=f"few-shot k={k}", seed=s, params=dict(common, shots=k),
                                   **base))
    return jobs


#: Below this many feature values (train rows x dims, largest model) probe tasks on *threads* run one at a
#: time: their fits are tiny tensors whose time goes to per-operation Python overhead, so two tasks on two
#: threads of one process take turns holding the GIL. Measured (``benchmarks/small_eval.py``, 10 classes x 20
#: images, 1024-d, 2 x 10^5 values, commit 590de69): 72.7 s with one thread, 112.1 s with two tasks on two
#: threads. Worker processes (the default, :func:`run_tasks`) have no such limit: 34.7 s with two there.
PARALLEL_MIN_VALUES = 2_000_000


def probe_workers(n_tasks: int | None = None, values: int | None = None, processes: bool = True) -> int:
    """How many probe tasks run at once: the caller's ``torch.get_num_threads()`` (capped by the number of
    tasks); on threads (``processes=False``) 1 when the largest feature matrix holds fewer than
    :data:`PARALLEL_MIN_VALUES` ``values``. Each task runs with one intra-op thread, so a task's arithmetic is
    the same sequence of operations whatever this number is and its result is bit-identical at any thread
    count (see :func:`eval.solver.one_thread`); only the wall time changes."""
    n = max(1, torch.get_num_threads())
    if not processes and values is not None and int(values) < PARALLEL_MIN_VALUES:
        n = 1
    return n if n_tasks is None else max(1, min(n, int(n_tasks)))


def _probe_tasks(jobs: list[Result], tr, te) -> list[tuple[float, callable]]:
    """``jobs`` as independent tasks ``(cost, fn)``: the linear probe, all kNN settings together, each few-shot
    (k, seed) draw (a draw depends on k and its seed only). ``fn()`` returns ``[(job, accuracy, extra)]``
    (``job`` its index in ``jobs``; picklable, so a task can run in another process); :func:`_apply` writes
    them into the jobs. ``cost`` is a rough relative work estimate (for the order and the progress bar),
    never part of a result."""
    (trx, try_), (tex, tey) = tr, te
    labelled = try_ >= 0
    trx, try_ = trx[labelled], try_[labelled]
    n, d = int(trx.shape[0]), int(trx.shape[1]) if trx.ndim == 2 else 1
    tasks = []
    knn = [i for i, j in enumerate(jobs) if j.probe == "knn"]
    if knn:  # every kNN setting from one pass over the similarities (one product, one top-k)
        settings = [(jobs[i].params["k"], jobs[i].params["T"]) for i in knn]

        def fn(knn=knn, settings=settings):
            rs = knn_probes(trx, try_, tex, tey, settings=settings)
            return [(i, 100 * r["accuracy"], None) for i, r in zip(knn, rs)]
        tasks.append((5.0 * n * int(tex.shape[0]) * d / 6e11 + 0.1 * len(knn), fn))
    for i, j in enumerate(jobs):
        if j.probe == "linear":
            def fn(i=i, seed=j.seed, val_fraction=j.params["val_fraction"]):
                r = linear_probe(trx, try_, tex, tey, seed=seed, val_fraction=val_fraction)
                return [(i, 100 * r["accuracy"], {"l2": r["l2"], "val_accuracy": r["val_accuracy"]})]
            tasks.append((40.0 * n * d / 6e7 + 1.0, fn))
        elif j.probe == "fewshot":
            def fn(i=i, shots=j.params["shots"], seed=j.seed):
                (r,) = fewshot_probe(trx, try_, tex, tey, shots=[shots], seeds=[seed])
                l2s = r.get("per_seed_l2") or [None]
                return [(i, 100 * r["per_seed"][0], {"l2": l2s[0]})]
            tasks.append((0.3 + j.params["shots"] / 100.0 * d / 1024, fn))
    return tasks


def _apply(jobs: list[Result], outputs) -> None:
    for out in outputs:
        for i, acc, extra in out:
            jobs[i].accuracy = acc
            if extra is not None:
                jobs[i].extra = extra


_FORKED_TASKS: list = []  # the task list a forked worker process runs from (inherited at fork, never pickled)


def _forked_task(i: int):
    return _FORKED_TASKS[i][1]()


def _can_fork() -> bool:
    """Worker processes by ``fork`` (they inherit the features without a copy): Linux (macOS offers fork but its
    system libraries are not fork-safe), and no CUDA context in this process."""
    import multiprocessing as mp
    import sys

    return (sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()
            and not (torch.cuda.is_available() and torch.cuda.is_initialized()))


def run_tasks(tasks: list[tuple[float, callable]], desc: str = "probes", workers: int | None = None,
              values: int | None = None, processes: bool | None = None) -> list:
    """Run independent probe tasks ``(cost, fn)``, costliest first, ``workers`` at a time (default
    :func:`probe_workers` for feature matrices of ``values`` numbers), each on one intra-op thread; returns
    the ``fn()`` results in task order. The progress bar advances by each finished task's cost and shows
    the time left. The caller's thread count is restored afterwards.

    With several workers the tasks run in forked worker processes (``processes``, default: where fork is
    available and CUDA is not initialised; the results must then be picklable), not threads: a fit on small
    tensors spends most of its time in Python between operations, and two such fits on two threads of one
    process take turns holding the GIL (measured: slower than one thread). A task computes the same
    operations in any worker, so its result is the same bits at any worker count."""
    global _FORKED_TASKS
    if not tasks:
        return []
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i][0])
    if processes is None:
        processes = _can_fork()
    workers = probe_workers(len(tasks), values, processes) if workers is None else max(1, int(workers))
    n_threads = torch.get_num_threads()
    results = [None] * len(tasks)
    bar = tqdm(total=sum(c for c, _ in tasks), desc=desc, unit="work", dynamic_ncols=True, leave=False,
               bar_format="{l_bar}{bar}| [{elapsed}<{remaining}]")
    left = len(tasks)

    def advance(i):  # by task i's cost; the last task lands on the total exactly (float costs summed in another
        nonlocal left  # order can overshoot it by a rounding error: tqdm warns and shows a negative time left)
        left -= 1
        bar.update(tasks[i][0] if left else bar.total - bar.n)
    try:
        if workers == 1:
            torch.set_num_threads(1)  # nested groups (the linear grid's, eval.solver.run_parallel) in turn too
            with one_thread():
                for i in order:
                    results[i] = tasks[i][1]()
                    advance(i)
            return results
        if processes:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            _FORKED_TASKS = tasks
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"),
                                       initializer=torch.set_num_threads, initargs=(1,))
            submit = lambda i: pool.submit(_forked_task, i)  # noqa: E731
        else:
            pool = ThreadPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(1,))
            submit = lambda i: pool.submit(tasks[i][1])  # noqa: E731
        with pool:
            futures = {submit(i): i for i in order}
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()  # re-raises a task's error here
                advance(i)
        return results
    finally:
        _FORKED_TASKS = []
        torch.set_num_threads(n_threads)  # the BLAS thread count may be shared with the workers'
        bar.close()


def _run_jobs(jobs: list[Result], tr, te, desc: str = "probes") -> None:
    """Fill in the accuracy (percent) and extras of ``jobs`` from features ``tr``, ``te``, the probes
    run as parallel single-threaded tasks (:func:`run_tasks`)."""
    _apply(jobs, run_tasks(_probe_tasks(jobs, tr, te), desc=desc, values=tr[0].numel()))


def _run_store_jobs(jobs: list[Result], tr, te) -> None:
    """:func:`_run_jobs` on feature stores: linear and kNN stream the stores in chunks; few-shot
    reads the stores into memory (its support sets are small, but it scores on all of test)."""
    from .stream_probes import chunked_knn_probe, streaming_linear_probe

    for j in jobs:
        if j.probe == "linear":
            r = streaming_linear_probe(tr, te, seed=j.seed, val_fraction=j.params["val_fraction"])
            j.accuracy = 100 * r["accuracy"]
            j.extra = {"l2": r["l2"], "val_accuracy": r["val_accuracy"], "features": "store"}
        elif j.probe == "knn":
            r = chunked_knn_probe(tr, te, k=j.params["k"], temperature=j.params["T"])
            j.accuracy, j.extra = 100 * r["accuracy"], {"features": "store"}
    few = [j for j in jobs if j.probe == "fewshot"]
    if few:
        _run_jobs(few, tr.load(), te.load())


def _store_features(m, split, *, name, precision, batch_size, cache, dtype, workers=None):
    """The feature store of ``split`` under ``m`` in ``$SSLZOO_HOME/featstores``: reused when complete
    (and ``cache``), else extracted -- sharded over the ranks under torchrun."""
    from .featstore import FeatureStore, StoreFormatError, extract_to_store

    key = cache_key(model_fingerprint(m), split, m.preprocess, precision)
    dest = home() / "featstores" / f"{key}-{dtype}"
    reuse = False
    if D.is_main() and cache:
        try:
            reuse = len(FeatureStore(dest)) == len(split)
        except StoreFormatError:
            reuse = False
    if D.broadcast_object(reuse):
        return FeatureStore(dest)
    return extract_to_store(m, split, dest, batch_size=batch_size, precision=precision, dtype=dtype,
                            desc=f"{name}: {split.split}", workers=workers)


def _finite_store(st, name: str, what: str) -> None:
    for _, x, _ in st.iter_rows(8192):
        _finite(x, name, what)


def _finite(feats: torch.Tensor, name: str, what: str) -> None:
    feats = feats.reshape(len(feats), -1)
    if feats.numel() and not torch.isfinite(feats).all():
        bad = int((~torch.isfinite(feats)).any(1).sum())
        raise ValueError(f"{name}: {bad} {what} feature vector(s) contain NaN/inf; the weights are probably corrupt "
                         f"(check them with `sslzoo info` or re-export the model)")


def _warn_changed(jobs: list[Result], previous: dict) -> None:
    """One warning line per recomputed result whose accuracy differs from the one stored under the same
    key: the key holds everything that should decide the number, so a difference means something outside
    it changed (the data on disk under an unchanged fingerprint, the environment)."""
    for j in jobs:
        old = previous.get(j.key)
        if old is not None and old.accuracy != j.accuracy:
            seed = "" if j.seed is None else f" seed {j.seed}"
            log.warning(f"{j.model} / {j.dataset} / {j.protocol}{seed}: recomputed {j.accuracy:.4f}%, but the "
                        f"store held {old.accuracy:.4f}% under the same key (weights, data fingerprint, protocol, "
                        f"code version); the stored value is replaced")


def evaluate(model_spec: str, dataset: str, *, probes=PROBES, shots=(1, 5, 10, 20, 50, 100), seeds=(0, 1, 2),
             baselines=(), root: str | None = None, download: bool = False, precision: str = "fp32",
             batch_size: int = 512, cache: bool = True, save: bool = True, force: bool = False,
             store: ResultStore | None = None, info: dict | None = None, feature_store: bool = False,
             store_dtype: str = "fp32", label: str | None = None, weights: str | None = None,
             workers: int | None = None) -> list[dict]:
    """Evaluate ``model_spec`` (+ optional baselines) on ``dataset``; returns table rows (one per model x
    protocol, mean ± std over seeds, see :func:`eval.store.aggregate`).

    ``feature_store`` (always on under torchrun): features go to on-disk feature stores
    (:mod:`eval.featstore`, ``store_dtype`` fp32 or fp16) that linear and kNN probes read in chunks;
    under torchrun every rank extracts a shard and rank 0 alone runs the probes, stores results and
    returns rows (the other ranks return ``[]``).

    Stored results with the same key are reused unless ``force`` (or ``cache=False``); new results
    are stored when ``save``. ``info``, when given, receives ``reused`` and ``computed`` counts.
    ``label`` names the model in the store and tables (default: the folder's name or registry name).
    ``weights``: a local weights file for the model (``create_model(..., weights=)``).
    ``workers``: DataLoader processes that decode file-backed data sets (``folder:``, ``imagenet``,
    ``pack:``; default :func:`eval.datasets.default_workers`, 0: in this process); results do not depend on it.

    ``finetune`` is not a frozen-feature probe: it lives in :func:`training.finetune.evaluate_finetune`."""
    probes = list(dict.fromkeys(probes))
    if "finetune" in probes:
        raise ValueError("finetune trains the encoder: run it with training.finetune.evaluate_finetune "
                         "(sslzoo finetune / sslzoo eval --probes finetune)")
    bad = [p for p in probes if p not in PROBES]
    if bad or not probes:
        raise ValueError(f"unknown probe(s) {', '.join(map(str, bad)) or '(none given)'}; "
                         f"choose from {', '.join(PROBES)}")
    for b in baselines:
        if b not in BASELINES:
            raise ValueError(f"unknown baseline {b!r}; choose from {', '.join(BASELINES)} (or none)")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if store_dtype not in ("fp32", "fp16"):
        raise ValueError(f"feature store dtype must be fp32 or fp16, not {store_dtype!r}")
    use_store = bool(feature_store) or D.is_distributed()
    main = D.is_main()
    shots = list(dict.fromkeys(int(k) for k in shots))
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    model = create_model(model_spec, pretrained=True, weights=weights)  # unknown names, bad weights fail first
    train = load_split(dataset, "train", root=root, download=download)
    test = load_split(dataset, "test", root=root, download=download)
    check_inputs(train, test, probes, shots, seeds)
    for split in (train, test):  # one image through the model: channels that cannot convert, NaN weights
        try:
            x = model.preprocess(split.get(0))
        except ValueError as e:
            raise ValueError(f"{split.name}/{split.split} does not fit {_label(model_spec)}: {e}") from None
    with torch.no_grad():
        _finite(model(x[None]), _label(model_spec), "probe")
    n_labelled = int((np.asarray(train.targets) >= 0).sum())
    ds_name = dataset_label(dataset, train)
    data_fp = data_fingerprint(train, test)
    name = label or model_label(model_spec, weights)
    candidates = [(name, model)]
    if "random-init" in baselines and is_random_init(model_spec, weights):
        logger.info("%s is itself random init (seed 0); no separate random-init baseline", model_spec)
        baselines = tuple(b for b in baselines if b != "random-init")
    for b in baselines:
        if b == "pixels":
            px = Pixels(model.preprocess)
            candidates.append((px.label, px))
        elif b == "random-init":
            torch.manual_seed(0)
            rnd = create_model(model_spec, pretrained=False)
            rnd.weights_sha256 = None
            candidates.append((f"{label or model_label(model_spec)} (random init, seed 0)", rnd))
    own_store = store is None and (save or not force) and main
    if own_store:
        store = ResultStore()
    try:
        results, reused, computed = [], 0, 0
        pending = []  # (jobs to compute, their previous results, their probe tasks), per model
        for name, m in candidates:
            sha = m.weights_sha256 if isinstance(m, Pixels) else model_fingerprint(m)
            common = {"precision": precision, "preprocess": m.preprocess.to_dict()}
            jobs = _plan(name, sha, ds_name, data_fp, probes, shots, seeds, common, n_train=n_labelled)
            stored = {} if (force or not cache or store is None) else store.get_many(j.key for j in jobs)
            # what --force / --no-cache recompute: a stored value that comes out different is said, never swapped silently
            previous = store.get_many(j.key for j in jobs) if (store is not None and not stored) else {}
            todo = [j for j in jobs if j.key not in stored]
            if use_store:
                if D.broadcast_object(bool(todo)):  # rank 0 knows what the results store holds
                    kw = dict(name=name, precision=precision, batch_size=batch_size, cache=cache, dtype=store_dtype,
                              workers=workers)
                    tr, te = _store_features(m, train, **kw), _store_features(m, test, **kw)
                    if main:
                        _finite_store(tr, name, "train")
                        _finite_store(te, name, "test")
                        _run_store_jobs(todo, tr, te)
                        _warn_changed(todo, previous)
                        if save:
                            store.put(todo, replace=True)
            elif todo:
                tr = extract(m, train, batch_size=batch_size, precision=precision, cache=cache, desc=f"{name}: train",
                             workers=workers)
                te = extract(m, test, batch_size=batch_size, precision=precision, cache=cache, desc=f"{name}: test",
                             workers=workers)
                _finite(tr[0], name, "train")
                _finite(te[0], name, "test")
                pending.append((todo, previous, _probe_tasks(todo, tr, te), tr[0].numel()))
            results += [stored.get(j.key, j) for j in jobs]
            reused += len(jobs) - len(todo)
            computed += len(todo)
        # Every model's features first (extraction uses all threads), then all their probes as one pool of
        # single-threaded tasks: the cores stay busy to the end and each number is the same at any thread count.
        if pending:
            outputs = run_tasks([t for _, _, ts, _ in pending for t in ts], desc=f"probes ({len(pending)} model(s))",
                                values=max(v for _, _, _, v in pending))
            for todo, previous, ts, _ in pending:
                _apply(todo, outputs[:len(ts)])
                outputs = outputs[len(ts):]
                _warn_changed(todo, previous)
                if save:
                    store.put(todo, replace=True)
    finally:
        if own_store:
            store.close()
    if info is not None:
        info.update(reused=reused, computed=computed)
    return aggregate(results) if main else []
