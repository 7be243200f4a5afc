"""Probes that read a :class:`~eval.featstore.FeatureStore` chunk by chunk: memory depends on the
chunk, not on the number of rows.

* :func:`streaming_linear_probe` is the linear protocol of :func:`eval.probes.linear_probe` (same
  stratified fit/val split, same ``l2`` grid, same objectives and stopping rule, same refit) with
  the design matrix read from disk. It runs the plain stacked L-BFGS: the in-memory probe's
  spectral preconditioner (:func:`eval.solver.fit_logreg_spectral`) needs a rotated copy of the
  features, which is what streaming avoids, so on disk the same minimisers take more passes. Here
  every objective evaluation is one pass over the store, its full-batch gradient accumulated block
  by block (the same row blocks the in-memory solver uses), and the standardisation statistics are
  accumulated in float64 over chunks. Memory: one block of rows plus
  the solver state ``O(P * C * D)``; only labels and split indices (8 bytes a row) scale with ``N``.
* :func:`chunked_knn_probe` is :func:`eval.probes.knn_probe` with the train set streamed: for each
  chunk of test queries, a running top-``k`` is merged with every chunk of train rows.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .featstore import FeatureStore
from .probes import DEFAULT_L2_GRID, SELECT_MAX_ITER, SELECT_TOL, stratified_split
from .solver import fit_logreg_batch, single_threaded, stacked_predict

__all__ = ["RowSource", "chunked_knn_probe", "streaming_linear_probe", "streaming_standardiser"]

DEFAULT_CHUNK_ROWS = 8192


class RowSource:
    """Rows ``index`` of a store, standardised on the fly as ``(x - mean) / std``: what
    :func:`eval.solver.fit_logreg_batch` reads block by block (``blocks(step)``)."""

    def __init__(self, store: FeatureStore, index: np.ndarray, mean: torch.Tensor, std: torch.Tensor):
        self.store, self.index, self.mean, self.std = store, np.asarray(index), mean, std
        self.shape = (len(self.index), store.dim)
        self.device = torch.device("cpu")

    def blocks(self, step: int):
        for s, x, y in self.store.iter_rows(step, self.index):
            yield s, (x - self.mean) / self.std, y


def streaming_standardiser(store: FeatureStore, index: np.ndarray, chunk_rows: int = DEFAULT_CHUNK_ROWS):
    """Mean and std (population) of rows ``index`` in float64 over chunks (two passes), as
    :func:`eval.probes.standardiser`: constant features (std <= 1e-6 * max std) get std 1."""
    d = store.dim
    total = torch.zeros(d, dtype=torch.float64)
    for _, x, _ in store.iter_rows(chunk_rows, index):
        total += x.double().sum(0)
    n = max(1, len(index))
    mean = total / n
    sq = torch.zeros(d, dtype=torch.float64)
    for _, x, _ in store.iter_rows(chunk_rows, index):
        sq += ((x.double() - mean) ** 2).sum(0)
    std = (sq / n).sqrt().float()
    mean = mean.float()
    return mean, torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))


def _predict_stream(store, index, mean, std, W, b, chunk_rows) -> tuple[torch.Tensor, int]:
    """Correct predictions per model (``W [P, C, D]``) over rows ``index`` (None: all) and the row count."""
    correct = torch.zeros(W.shape[0], dtype=torch.int64)
    n = 0
    for _, x, y in store.iter_rows(chunk_rows, index):
        pred = stacked_predict((x - mean) / std, W, b)            # [n, P]
        correct += (pred == y.unsqueeze(1)).sum(0)
        n += len(y)
    return correct, n


def _check_pair(train: FeatureStore, test: FeatureStore) -> None:
    if train.dim != test.dim:
        raise ValueError(f"train store has {train.dim} feature dims, test store {test.dim}")


@single_threaded
def streaming_linear_probe(train: FeatureStore, test: FeatureStore, *, num_classes: int | None = None,
                           l2_grid=None, val_fraction: float = 0.1, seed: int = 0, max_iter: int = 500,
                           chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict:
    """The linear protocol (:func:`eval.probes.linear_probe`) on stores; train rows with a label < 0
    (unlabelled) are left out. Returns the same dict (``accuracy``, ``l2``, ``val_accuracy``, ...)."""
    _check_pair(train, test)
    y_all = train.labels()
    labelled = np.flatnonzero(y_all >= 0)
    if labelled.size == 0:
        raise ValueError("train store has no labelled rows")
    y = y_all[labelled]
    del y_all
    grid = [float(v) for v in (DEFAULT_L2_GRID if l2_grid is None else l2_grid)]
    if not grid:
        raise ValueError("l2_grid is empty")
    C = int(y.max()) + 1 if num_classes is None else int(num_classes)
    fit_pos, val_pos = stratified_split(y, val_fraction, seed)
    if val_pos.size == 0:
        raise ValueError("validation split is empty: every class has fewer than 2 training examples")
    fit_idx, val_idx = labelled[fit_pos], labelled[val_pos]
    del fit_pos, val_pos, y

    mean, std = streaming_standardiser(train, fit_idx, chunk_rows)
    W, b = fit_logreg_batch(RowSource(train, fit_idx, mean, std), None, C, grid, tol=SELECT_TOL,
                             max_iter=min(max_iter, SELECT_MAX_ITER))
    correct, n_val = _predict_stream(train, val_idx, mean, std, W, b, chunk_rows)
    accs = [int(c) / n_val for c in correct]
    best = max(range(len(grid)), key=lambda i: (accs[i], grid[i]))
    l2 = grid[best]
    del fit_idx, val_idx

    mean, std = streaming_standardiser(train, labelled, chunk_rows)
    W, b = fit_logreg_batch(RowSource(train, labelled, mean, std), None, C, [l2], tol=1e-6, max_iter=max_iter)
    correct, n_test = _predict_stream(test, None, mean, std, W, b, chunk_rows)  # first time test is read
    return {"accuracy": int(correct[0]) / n_test if n_test else float("nan"), "l2": l2, "val_accuracy": accs[best],
            "grid": grid, "n_train": int(labelled.size), "n_test": n_test, "val_accuracies": accs}


@torch.no_grad()
@single_threaded
def chunked_knn_probe(train: FeatureStore, test: FeatureStore, *, k: int = 20, temperature: float = 0.07,
                      num_classes: int | None = None, query_chunk: int = 256,
                      chunk_rows: int = 4096) -> dict:
    """Weighted cosine kNN (:func:`eval.probes.knn_probe`) with both sets streamed: memory
    ``O(query_chunk * chunk_rows + chunk_rows * D)`` (the similarity block and one train chunk). Train rows with a label < 0 never vote."""
    if k < 1 or temperature <= 0 or query_chunk < 1 or chunk_rows < 1:
        raise ValueError(f"need k >= 1, temperature > 0, chunks >= 1; got k={k}, T={temperature}, "
                         f"query_chunk={query_chunk}, chunk_rows={chunk_rows}")
    _check_pair(train, test)
    y_all = train.labels()
    labelled = np.flatnonzero(y_all >= 0)
    if labelled.size == 0:
        raise ValueError("train store has no labelled rows")
    C = int(y_all[labelled].max()) + 1 if num_classes is None else int(num_classes)
    del y_all
    k = min(int(k), int(labelled.size))
    every = labelled.size == len(train)
    correct = n_test = 0
    for _, q, qy in test.iter_rows(query_chunk):
        q = F.normalize(q, dim=1)
        best_s = torch.full((len(q), 0), float("-inf"))
        best_y = torch.zeros((len(q), 0), dtype=torch.int64)
        for _, x, y in train.iter_rows(chunk_rows, None if every else labelled):
            # the chunk's own top-k first, then a merge with the running top-k: [q, 2k] at most
            sim, idx = (q @ F.normalize(x, dim=1).t()).topk(min(k, len(x)), dim=1)
            cat_s = torch.cat([best_s, sim], 1)
            cat_y = torch.cat([best_y, y[idx]], 1)
            best_s, pos = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
            best_y = cat_y.gather(1, pos)
        w = ((best_s - best_s[:, :1]) / temperature).exp()
        votes = torch.zeros(len(q), C).scatter_add_(1, best_y, w)
        correct += int((votes.argmax(1) == qy).sum())
        n_test += len(q)
    return {"accuracy": correct / n_test if n_test else float("nan"), "k": k, "temperature": float(temperature)}
