"""Probes on frozen features: linear (logistic regression), weighted kNN and few-shot.

Every probe takes features ``[N, D]`` (torch tensors or numpy arrays; computed in float32) and
integer labels ``[N]`` and returns accuracies as fractions in ``[0, 1]``. Computation happens on
the device of the training features (numpy input -> CPU).

Protocols
---------
* **Linear** (:func:`linear_probe`): multinomial logistic regression on standardised features
  (mean/std of the training features), objective ``mean cross-entropy + l2/2 * ||W||^2`` (bias not
  penalised), fitted full-batch with L-BFGS. ``l2`` is selected on a stratified, seeded validation
  split carved out of *train*; the model is then refitted on all of train and evaluated once on test.
  The test set is never used for selection.
* **kNN** (:func:`knn_probe`): cosine similarity, top-``k`` neighbours, vote weighted by
  ``exp(sim / T)`` (InstDisc / DINO protocol).
* **Few-shot** (:func:`fewshot_probe`): ``k`` labelled train images per class, drawn with
  ``numpy.random.default_rng(seed)``; logistic regression as above with ``l2`` chosen by stratified
  cross-validation on the support set (``min(k, 5)`` folds) for ``k >= 2`` and fixed to
  :data:`ONE_SHOT_L2` for ``k = 1``.

Determinism: every probe runs its arithmetic on one thread (:func:`eval.solver.one_thread`), so
its weights, predictions and accuracies are bit-identical whatever ``torch.get_num_threads()`` is
(multi-threaded GEMM and ``eigh`` split their inner sums by thread count; see there).

Relation to scikit-learn: ``LogisticRegression(C=C)`` minimises ``C * sum(loss) + 0.5 * ||w||^2``,
which is ``N * C`` times our objective with ``l2 = 1 / (C * N)``.

Solver
------
All logistic regressions go through :func:`eval.solver.fit_logreg_batch`, a vectorised L-BFGS that fits many
independent problems at once (each with its own L-BFGS state, line search and stopping test), on one
design matrix or one per problem. The candidates of a selection -- every ``l2`` of the grid on the fit/val
split, every (fold, ``l2``) pair of a small support's few-shot cross-validation (larger supports: the grid,
fold by fold) -- are fitted together as one stacked problem,
solved to the same precision as the model that is scored on test (:data:`SELECT_TOL`, at most
:data:`SELECT_MAX_ITER` iterations, the defaults of :class:`LinearProbe`), so the selected ``l2`` is a
property of the objective, not of how early the solver stopped. The model that is scored on test is
then refitted alone (``tol=1e-6``, ``max_iter``).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .solver import (block_rows, even_parts, fill_row_parts, fit_logreg_batch, fit_logreg_spectral, row_parts,
                     run_parallel, single_threaded, spectral_basis, stacked_predict)
from .stats import mean_std

__all__ = [
    "DEFAULT_L2_GRID",
    "ONE_SHOT_L2",
    "SELECT_MAX_ITER",
    "SELECT_GROUPS",
    "SELECT_TOL",
    "CV_BATCH_MAX_VALUES",
    "LinearProbe",
    "cv_fold_predictions",
    "cv_folds",
    "contiguous_labels",
    "cv_select_l2",
    "draw_support",
    "fewshot_probe",
    "fit_logreg",
    "knn_probe",
    "knn_probes",
    "linear_probe",
    "select_groups",
    "select_l2",
    "standardise_rows",
    "standardiser",
    "stratified_split",
    "take_rows",
]

#: Default regularisation grid: 1e-6 ... 10, one value per decade (8 values). On standardised
#: features ``l2 = 1e-6`` is almost unregularised even for ImageNet-sized train sets, while at
#: ``l2 = 10`` the weights are nearly at their strong-regularisation limit (a nearest-class-mean-like
#: classifier), so both ends are rarely best on real features and the optimum is interior. On
#: synthetic noisy blobs (a few hundred points, 20-256 dims) the selected value was 0.1 or 1.
#: The path is walked from strong to weak regularisation with warm starts.
DEFAULT_L2_GRID: tuple[float, ...] = tuple(10.0 ** e for e in range(-6, 2))

#: Fixed ``l2`` for 1-shot (no cross-validation possible with one example per class). At this
#: strength the solution is close to its strong-regularisation limit, a prototype classifier
#: (``W_c`` proportional to the centred mean of class ``c``), which is the usual 1-shot baseline.
ONE_SHOT_L2: float = 1.0


# ----------------------------------------------------------------------------- input handling

def _as_features(x, device=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"features must be 2-D [N, D], got shape {tuple(t.shape)}")
    t = t.detach().to(dtype=torch.float32)
    return t.to(device) if device is not None else t


def _as_labels(y, n: int, device=None) -> torch.Tensor:
    t = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    t = t.detach().reshape(-1)
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ValueError("labels must be integers")
    t = t.to(dtype=torch.int64)
    if t.numel() != n:
        raise ValueError(f"got {n} feature rows but {t.numel()} labels")
    if n and int(t.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(t.min())}")
    return t.to(device) if device is not None else t


def _num_classes(num_classes, train_y: torch.Tensor) -> int:
    """Classifier width: ``num_classes`` or ``max(train label) + 1``. Only *train* labels are read;
    test labels outside the range simply count as errors."""
    top = int(train_y.max()) + 1 if train_y.numel() else 0
    if num_classes is None:
        return top
    if top > num_classes:
        raise ValueError(f"num_classes={num_classes} but a train label is {top - 1}; use num_classes >= {top}")
    return int(num_classes)


def contiguous_labels(train_y: torch.Tensor, *others: torch.Tensor, num_classes: int | None = None):
    """Label ids -> contiguous class indices ``0..K-1`` (``K`` = distinct train ids), in increasing id
    order so every "ties -> lowest class" rule is unchanged; other label tensors (test) map through the
    same table, ids that train lacks to ``K`` (a class no model predicts: counted as errors). Returns the ids
    ``[K]`` and the mapped tensors. With ``num_classes`` given, or ids already ``0..K-1``, nothing is
    remapped (ids ``arange(max + 1)``). Memory is ``O(N)`` whatever the ids are: labels ``{0, 10^9}``
    give two classes, not a 10^9-wide classifier."""
    top = int(train_y.max()) + 1 if train_y.numel() else 0
    if num_classes is not None or top <= train_y.numel():
        if num_classes is not None or top == 0 or torch.unique(train_y).numel() == top:
            return torch.arange(top, device=train_y.device), (train_y, *others)
    ids = torch.unique(train_y)  # sorted
    out = [torch.searchsorted(ids, train_y)]
    for y in others:
        pos = torch.searchsorted(ids, y).clamp_max(ids.numel() - 1)
        out.append(torch.where(ids[pos] == y, pos, torch.full_like(pos, ids.numel())))
    return ids, tuple(out)


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean()) if y.numel() else float("nan")


# ----------------------------------------------------------------------------- logistic regression

#: Stopping rule of the *selection* fits (the grid on the validation split, the few-shot CV): the
#: max-abs gradient of the objective ``<= SELECT_TOL`` or ``SELECT_MAX_ITER`` iterations -- the
#: precision of the fit that is scored (:class:`LinearProbe`: ``tol=1e-6``, ``max_iter=500``), so a
#: candidate is judged as the model it would become. Looser stops change the selection: with
#: scikit-learn's defaults (``tol=1e-4``, ``max_iter=100``) the weakly regularised candidates on
#: separable data (few-shot supports, raw pixels) stop far from their optimum, and an early-stopped
#: fit acts as a more regularised one. Measured on Fashion-MNIST (``benchmarks/results/
#: probes_select_*.json``; reference: the same fits at 1e-8 / 2000): 1e-4 / 100 changed 8 of the 15
#: cross-validated few-shot selections on raw pixels and 2 of 15 on 128-d features, 1e-6 / 500 changed
#: 4 and 1 (the previous, unstacked solver at 1e-6 / 500: 5 and 1). Few-shot supports are separable
#: and their CV accuracies nearly tie across the weak end of the grid, so some solver dependence
#: remains there at any affordable precision. ``tests/test_probes.py`` checks selections against a
#: float64 reference solver.
SELECT_TOL: float = 1e-6
SELECT_MAX_ITER: int = 500


def fit_logreg(X, y, num_classes: int, l2: float, max_iter: int = 500, init=None,
               tol: float = 1e-6, spectral: bool = False,
               precondition: bool = True, basis=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, all classes jointly, full batch, L-BFGS.

    Minimises ``mean_i CE(softmax(W x_i + b), y_i) + l2 / 2 * ||W||_F^2`` (``b`` not penalised)
    on ``X`` exactly as given (no standardisation here; see :class:`LinearProbe`).

    ``init`` is an optional ``(W, b)`` warm start (e.g. the solution at a neighbouring ``l2``).
    ``tol`` bounds the max-abs gradient at convergence. Returns ``W [C, D]`` and ``b [C]``
    (float32, on ``X``'s device). This is :func:`eval.solver.fit_logreg_batch` with a single problem
    (``spectral=True``: :func:`eval.solver.fit_logreg_spectral`, same objective and stopping rule, preconditioned
    unless ``precondition=False``; in the span of the rows when ``N < D``). ``basis``: a full eigenbasis
    ``(evals, U [D, D])`` to precondition in instead of ``X``'s own, e.g. that of most of the same rows.
    """
    X = _as_features(X)
    y = _as_labels(y, X.shape[0], device=X.device)
    C, D = int(num_classes), X.shape[1]
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    if init is not None:
        W0 = torch.as_tensor(init[0], dtype=torch.float32).to(X.device)
        b0 = torch.as_tensor(init[1], dtype=torch.float32).to(X.device)
        if W0.shape != (C, D) or b0.shape != (C,):
            raise ValueError(f"init shapes {tuple(W0.shape)}, {tuple(b0.shape)} do not match ({C}, {D}), ({C},)")
        init = (W0.unsqueeze(0), b0.unsqueeze(0))
    if basis is not None and tuple(basis[1].shape) != (D, D):
        raise ValueError(f"basis must be a full [{D}, {D}] eigenbasis, got {tuple(basis[1].shape)}")
    if spectral:
        W, b = fit_logreg_spectral(X, y, C, [float(l2)], tol=tol, max_iter=max_iter, init=init,
                                   precondition=precondition, basis=basis)
    else:
        W, b = fit_logreg_batch(X, y, C, [float(l2)], tol=tol, max_iter=max_iter, init=init)
    return W[0], b[0]


@single_threaded
def standardiser(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) std of the columns of ``X``; constant features (std <= 1e-6 * max std) get std 1.

    A design of one row part (:func:`eval.solver.row_parts`: fewer than 16,384 rows) takes torch's
    ``mean`` / ``std``. A larger one is read part by part, side by side when threads are free: each part's mean
    and sum of squared deviations (two passes over blocks of rows that stay in cache), combined in float64 in
    part order (Chan et al.'s pairwise update), so the bits do not depend on the thread count. Why: torch's
    column ``std`` of a row-major ``[60000, 1024]`` runs at a fifth of the speed of the two passes, on one thread.
    """
    parts = row_parts(X.shape[0])
    if len(parts) == 1:
        mean = X.mean(0)
        std = X.std(0, unbiased=False)
    else:
        moments = run_parallel([functools.partial(_part_moments, X[lo:hi]) for lo, hi in parts])
        n = sum(k for k, _, _ in moments)
        mean64 = sum(k * m for k, m, _ in moments) / n
        m2 = sum(ss + k * (m - mean64) ** 2 for k, m, ss in moments)
        mean, std = mean64.float(), (m2 / n).sqrt().float()
    # Constant features carry no information: leave them at 0 rather than dividing by ~0.
    return mean, torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))


def standardise_rows(X: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(X - mean) / std`` into a new tensor, row part by row part (:func:`eval.solver.fill_row_parts`;
    elementwise: the same bits either way)."""
    return fill_row_parts(torch.empty_like(X), lambda lo, hi, o: torch.sub(X[lo:hi], mean, out=o).div_(std))


def take_rows(X: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``X[idx]``, row part by row part (:func:`eval.solver.fill_row_parts`; a copy: the same bits)."""
    return fill_row_parts(X.new_empty(idx.numel(), *X.shape[1:]),
                          lambda lo, hi, o: torch.index_select(X, 0, idx[lo:hi], out=o))


def _part_moments(Xp: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Rows, column means (float64) and column sums of squared deviations from them (float64) of ``Xp``."""
    n, D = Xp.shape
    mean = Xp.mean(0)
    ss = torch.zeros(D, dtype=torch.float64, device=Xp.device)
    step = block_rows(D)
    for s in range(0, n, step):
        d = Xp[s:s + step] - mean
        ss += d.mul_(d).sum(0).double()
    return n, mean.double(), ss


class LinearProbe:
    """Standardisation (train mean/std) + multinomial logistic regression.

    ``fit`` computes the statistics on the features it is given and applies the same affine map in
    ``predict``/``predict_proba``/``score``. ``coef_``/``intercept_`` live in the standardised space.
    """

    def __init__(self, num_classes: int, l2: float, max_iter: int = 500, tol: float = 1e-6,
                 spectral: bool = False, precondition: bool = True):
        self.num_classes = int(num_classes)
        self.l2 = float(l2)
        self.max_iter = max_iter
        self.tol = tol
        self.spectral = spectral
        self.precondition = precondition
        self.mean_ = self.std_ = self.coef_ = self.intercept_ = None

    def transform(self, X) -> torch.Tensor:
        if self.mean_ is None:
            raise RuntimeError("LinearProbe is not fitted; call fit first")
        X = _as_features(X, device=self.mean_.device)
        return standardise_rows(X, self.mean_, self.std_)

    def fit(self, X, y, init=None, stats=None, basis=None) -> LinearProbe:
        """``stats``: ``standardiser(X)`` when the caller has it; ``init``, ``basis``: see :func:`fit_logreg`."""
        X = _as_features(X)
        self.mean_, self.std_ = standardiser(X) if stats is None else stats
        self.coef_, self.intercept_ = fit_logreg(self.transform(X), y, self.num_classes, self.l2,
                                                 max_iter=self.max_iter, init=init, tol=self.tol,
                                                 spectral=self.spectral, precondition=self.precondition, basis=basis)
        return self

    @property
    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.coef_, self.intercept_

    def decision_function(self, X) -> torch.Tensor:
        return torch.addmm(self.intercept_, self.transform(X), self.coef_.t())

    def predict_proba(self, X) -> torch.Tensor:
        return self.decision_function(X).softmax(1)

    def predict(self, X) -> torch.Tensor:
        return self.decision_function(X).argmax(1)

    def score(self, X, y) -> float:
        """Accuracy in [0, 1]."""
        pred = self.predict(X)
        return _accuracy(pred, _as_labels(y, pred.numel(), device=pred.device))


# ----------------------------------------------------------------------------- linear protocol

def stratified_split(y, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices ``0..N-1`` into ``(fit_idx, val_idx)``.

    Per class ``round(fraction * n_c)`` examples go to validation, clamped to ``[1, n_c - 1]`` for
    classes with at least 2 examples (singleton classes stay in the fit part). Both index arrays are
    sorted. Uses ``numpy.random.default_rng(seed)``, classes visited in increasing order.
    """
    y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).reshape(-1)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if idx.size < 2:
            continue
        n_val = min(max(round(fraction * idx.size), 1), idx.size - 1)
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(y.size, dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


#: The selection's grid on a design of one row part (:func:`eval.solver.row_parts`: fewer than 16,384 rows) is
#: solved as this many contiguous groups of candidates, each a stacked problem, run side by side when threads
#: are free (:func:`eval.solver.run_parallel`). A larger design is one stacked problem whose objective is summed
#: over row parts side by side instead: every thread busy until the last candidate converges (two groups left
#: one core idle for 2.8 of 6.3 s at 54k x 512, the weak-l2 group taking 2.3x the other's time). Either way
#: the decomposition is fixed -- it does not follow the thread count --, so the selected ``l2`` and every
#: weight are the same bits at one thread and at two; only the wall time changes.
SELECT_GROUPS: int = 2


def select_groups(n: int, groups: int = SELECT_GROUPS) -> list[tuple[int, int]]:
    """``[lo, hi)`` bounds of ``groups`` contiguous, nearly equal groups of ``n`` candidates."""
    return even_parts(n, groups)


@single_threaded
def select_l2(fit_x, fit_y, val_x, val_y, num_classes, grid, max_iter, spectral=True):
    """Validation accuracy of every ``l2`` in ``grid``: the best index (ties -> larger l2), the accuracies, the
    best candidate ``(W, b, mean, std)`` and the fit part's spectral basis (``None`` unless ``spectral``).

    Each candidate is a :class:`LinearProbe` on the fit part (standardised with the fit part's
    statistics); all of them are fitted as one stacked problem (:func:`eval.solver.fit_logreg_batch`) to
    :data:`SELECT_TOL` / ``min(max_iter, SELECT_MAX_ITER)``.
    """
    mean, std = standardiser(fit_x)
    xs = standardise_rows(fit_x, mean, std)
    # A design of several row parts is computed part-parallel (eval.solver.row_parts): one stacked problem.
    # A smaller one is solved as SELECT_GROUPS groups of candidates side by side, sharing one basis.
    groups = select_groups(len(grid)) if len(row_parts(xs.shape[0])) == 1 else [(0, len(grid))]
    basis = spectral_basis(xs) if spectral else None
    fit = functools.partial(fit_logreg_spectral, basis=basis) if spectral else fit_logreg_batch

    def solve(lo, hi):
        return fit(xs, fit_y, num_classes, grid[lo:hi], tol=SELECT_TOL, max_iter=min(max_iter, SELECT_MAX_ITER))

    parts = run_parallel([functools.partial(solve, lo, hi) for lo, hi in groups])
    W, b = torch.cat([w for w, _ in parts]), torch.cat([c for _, c in parts])
    pred = stacked_predict((val_x - mean) / std, W, b)
    accs = [_accuracy(pred[:, i], val_y) for i in range(len(grid))]
    best = max(range(len(grid)), key=lambda i: (accs[i], grid[i]))
    return best, accs, (W[best], b[best], mean, std), basis


def _restandardise(W, b, mean, std, new_mean, new_std):
    """The same logits ``W (x - mean) / std + b`` written for another standardisation
    ``(x - new_mean) / new_std``: ``W' = W * new_std / std``, ``b' = b + W ((new_mean - mean) / std)``."""
    return W * (new_std / std), b + W @ ((new_mean - mean) / std)


@single_threaded
def linear_probe(train_x, train_y, test_x, test_y, *, num_classes: int | None = None,
                 l2_grid=None, val_fraction: float = 0.1, seed: int = 0, max_iter: int = 500,
                 spectral: bool = True) -> dict:
    """Linear probe protocol (see module docstring).

    1. Split train into fit/val with :func:`stratified_split` (``val_fraction``, ``seed``).
    2. For every ``l2`` in ``l2_grid`` (default :data:`DEFAULT_L2_GRID`) fit a :class:`LinearProbe`
       on the fit part and measure validation accuracy; pick the best (ties -> larger ``l2``). The
       candidates are fitted together (see :func:`select_l2`) to :data:`SELECT_TOL`, at most
       ``min(max_iter, SELECT_MAX_ITER)`` iterations.
    3. Refit on all of train with that ``l2`` (``tol=1e-6``, ``max_iter``; warm-started from the
       selected candidate) and report test accuracy (test data is read only here).

    ``spectral`` (default): every fit is solved in the eigenbasis of the features' covariance with a
    diagonal preconditioner (:func:`eval.solver.fit_logreg_spectral`): the same objectives and stopping rule,
    reached in several times fewer iterations; ``False`` is the plain L-BFGS of earlier versions.

    Returns ``dict(accuracy, l2, val_accuracy, grid, n_train, n_test, val_accuracies)``; accuracies
    in [0, 1], ``val_accuracies`` aligned with ``grid``.
    """
    train_x = _as_features(train_x)
    dev = train_x.device
    train_y = _as_labels(train_y, train_x.shape[0], device=dev)
    grid = [float(v) for v in (DEFAULT_L2_GRID if l2_grid is None else l2_grid)]
    if not grid:
        raise ValueError("l2_grid is empty")
    C = _num_classes(num_classes, train_y)
    train_ids = train_y
    ids, (train_y,) = contiguous_labels(train_y, num_classes=num_classes)
    C = C if num_classes is not None else int(ids.numel())

    fit_idx, val_idx = stratified_split(train_y, val_fraction, seed)
    if val_idx.size == 0:
        raise ValueError("validation split is empty: every class has fewer than 2 training examples")
    fit_idx_t, val_idx_t = torch.as_tensor(fit_idx, device=dev), torch.as_tensor(val_idx, device=dev)
    best, accs, selected, basis = select_l2(take_rows(train_x, fit_idx_t), train_y[fit_idx_t], train_x[val_idx_t],
                                            train_y[val_idx_t], C, grid, max_iter, spectral=spectral)
    l2 = grid[best]

    # The refit starts from the selected candidate (same l2, 90% of the same data), moved to the
    # full train's standardisation: same objective and stopping rule, far fewer iterations.
    probe = LinearProbe(C, l2, max_iter=max_iter, spectral=spectral)
    stats = standardiser(train_x)
    # and is preconditioned in the fit part's eigenbasis (the covariance of 90% of the same rows) rather than
    # paying for its own: any orthonormal basis gives the same minimiser.
    full = basis is not None and basis[1].shape[1] == train_x.shape[1]
    probe.fit(train_x, train_y, init=_restandardise(*selected, *stats), stats=stats, basis=basis if full else None)
    test_x = _as_features(test_x, device=dev)  # first time test data is touched
    _, (_, test_y) = contiguous_labels(train_ids, _as_labels(test_y, test_x.shape[0], device=dev),
                                       num_classes=num_classes)
    acc = probe.score(test_x, test_y)
    return {"accuracy": acc, "l2": l2, "val_accuracy": accs[best], "grid": grid, "n_train": int(train_x.shape[0]),
            "n_test": int(test_x.shape[0]), "val_accuracies": accs}


# ----------------------------------------------------------------------------- kNN

@torch.no_grad()
@single_threaded
def knn_probe(train_x, train_y, test_x, test_y, *, k: int = 20, temperature: float = 0.07,
              num_classes: int | None = None, chunk: int = 1024) -> dict:
    """Weighted kNN on cosine similarity (InstDisc / DINO protocol).

    Both feature sets are L2-normalised; each test point takes its ``k`` most similar train points
    (ties in similarity broken by ``torch.topk``) and each neighbour votes for its label with weight
    ``exp(sim / temperature)``; the class with the largest total wins (ties -> lowest class index).
    Test points are processed ``chunk`` at a time, so memory is ``O(chunk * N_train)``.
    ``k`` is capped at ``N_train``. Returns ``dict(accuracy, k, temperature)``.
    """
    return knn_probes(train_x, train_y, test_x, test_y, settings=[(k, temperature)], num_classes=num_classes,
                      chunk=chunk)[0]


@torch.no_grad()
@single_threaded
def knn_probes(train_x, train_y, test_x, test_y, *, settings=((20, 0.07),), num_classes: int | None = None,
               chunk: int = 1024) -> list[dict]:
    """:func:`knn_probe` for several ``(k, temperature)`` settings from one pass over the similarities:
    one ``test x train`` product and one ``topk`` of the largest ``k`` per chunk, each setting voting with
    the first ``k`` of those (sorted) neighbours -- the cost of one setting. Returns one
    ``dict(accuracy, k, temperature)`` per setting, in order."""
    settings = [(int(k), float(t)) for k, t in settings]
    if not settings:
        raise ValueError("no kNN settings given")
    if chunk < 1 or any(k < 1 or t <= 0 for k, t in settings):
        bad = next(((k, t) for k, t in settings if k < 1 or t <= 0), settings[0])
        raise ValueError(f"need k >= 1, temperature > 0, chunk >= 1; got k={bad[0]}, T={bad[1]}, chunk={chunk}")
    train_x = _as_features(train_x)
    dev = train_x.device
    train_y = _as_labels(train_y, train_x.shape[0], device=dev)
    test_x = _as_features(test_x, device=dev)
    test_y = _as_labels(test_y, test_x.shape[0], device=dev)
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train has {train_x.shape[1]} feature dims, test has {test_x.shape[1]}")
    C = _num_classes(num_classes, train_y)
    ids, (train_y, test_y) = contiguous_labels(train_y, test_y, num_classes=num_classes)
    C = C if num_classes is not None else int(ids.numel())
    settings = [(min(k, train_x.shape[0]), t) for k, t in settings]
    k_max = max(k for k, _ in settings)
    train_n = F.normalize(train_x, dim=1)
    correct = [0] * len(settings)
    # One similarity buffer for all chunks: a fresh [chunk, N_train] tensor per chunk (245 MB at 1024 x
    # 60k) is a fresh mmap whose pages the kernel zero-fills on first touch, ~10% of the probe's time.
    buf = torch.empty(min(chunk, test_x.shape[0]), train_n.shape[0], device=dev)
    for s in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[s:s + chunk], dim=1)
        scores = torch.mm(q, train_n.t(), out=buf[:q.shape[0]])
        sim_all, idx_all = scores.topk(k_max, dim=1)                      # sorted, most similar first
        for i, (k, temperature) in enumerate(settings):
            sim, idx = sim_all[:, :k], idx_all[:, :k]
            # exp((sim - max) / T): same vote ratios as exp(sim / T) without overflow for small T.
            w = ((sim - sim[:, :1]) / temperature).exp()
            votes = torch.zeros(q.shape[0], C, device=dev).scatter_add_(1, train_y[idx], w)
            correct[i] += int((votes.argmax(1) == test_y[s:s + chunk]).sum())
    n_test = test_x.shape[0]
    return [{"accuracy": c / n_test if n_test else float("nan"), "k": k, "temperature": t}
            for c, (k, t) in zip(correct, settings)]


# ----------------------------------------------------------------------------- few-shot

def draw_support(y_np: np.ndarray, classes: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k indices per class (classes in increasing order) from a fresh ``default_rng(seed)``.

    Each class draws a permutation and keeps the first k, so supports are nested across k for one seed.
    """
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(np.flatnonzero(y_np == c))[:k] for c in classes])


def cv_folds(y_np: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold id per example, stratified: within each class examples are shuffled and dealt round-robin."""
    rng = np.random.default_rng([seed, n_folds, 1])
    fold = np.empty(y_np.size, dtype=np.int64)
    for c in np.unique(y_np):
        idx = rng.permutation(np.flatnonzero(y_np == c))
        fold[idx] = np.arange(idx.size) % n_folds
    return fold


#: The folds of a few-shot cross-validation are one batched solve (a design per fold) while ``folds x grid x
#: rows x span`` stays below this many values (the batched objective gathers each problem's design); larger
#: supports solve fold by fold. One batch runs its L-BFGS loop once instead of once per fold: on small supports
#: the loop's per-iteration overhead, not arithmetic, is the cost.
CV_BATCH_MAX_VALUES = 2_000_000


def cv_fold_predictions(x, y, num_classes, grid, fold, *, tol=None, max_iter=None):
    """Predictions ``[N, F, G]`` on every row of the support set ``x, y`` of the model fitted on the
    rows outside fold ``f`` (``fold [N]`` holds fold ids ``0..F-1``) with ``l2 = grid[g]``.

    Each model is the :class:`LinearProbe` of its training folds (standardised with *their*
    statistics), solved as by :func:`eval.solver.fit_logreg_spectral` without preconditioner: in the
    eigenbasis of the fold's features, restricted to the span of its rows when it has fewer rows than
    features (every few-shot support up to ``k * C < D``), where the minimiser lies. Small supports
    (:data:`CV_BATCH_MAX_VALUES`) solve all ``F * G`` problems as one batch with a design per fold; larger
    ones fold by fold. ``tol`` / ``max_iter`` default to :data:`SELECT_TOL` / :data:`SELECT_MAX_ITER`.
    """
    tol = SELECT_TOL if tol is None else tol
    max_iter = SELECT_MAX_ITER if max_iter is None else max_iter
    n_folds = int(fold.max()) + 1
    G = len(grid)
    parts = []                                   # per fold: (standardiser, basis U [D, r], rotated rows, labels)
    for f in range(n_folds):
        tr = fold != f
        mean, std = standardiser(x[tr])
        xs = (x[tr] - mean) / std
        U = spectral_basis(xs)[1]
        parts.append((mean, std, U, xs @ U, y[tr]))
    n_max = max(p[3].shape[0] for p in parts)
    r_max = max(p[2].shape[1] for p in parts)
    if n_folds * G * n_max * r_max > CV_BATCH_MAX_VALUES:
        W = [fit_logreg_batch(xr, yt, num_classes, grid, tol=tol, max_iter=max_iter, rotation=U)
             for _, _, U, xr, yt in parts]
        Ws, bs = [w for w, _ in W], [b for _, b in W]
    else:  # one batch: designs zero-padded to n_max rows (weight 0) and r_max coordinates (weights stay 0)
        D0 = x.shape[1]
        X3 = x.new_zeros(n_folds, n_max, r_max)
        U3 = x.new_zeros(n_folds, D0, r_max)
        y3 = y.new_zeros(n_folds, n_max)
        wgt = x.new_zeros(n_folds * G, n_max)
        for f, (_, _, U, xr, yt) in enumerate(parts):
            X3[f, :xr.shape[0], :xr.shape[1]] = xr
            U3[f, :, :U.shape[1]] = U
            y3[f, :yt.shape[0]] = yt
            wgt[f * G:(f + 1) * G, :yt.shape[0]] = 1.0
        design = torch.arange(n_folds, device=x.device).repeat_interleave(G)
        Wb, bb = fit_logreg_batch(X3, y3, num_classes, list(grid) * n_folds, wgt, tol=tol, max_iter=max_iter,
                                  rotation=U3, design=design)
        Ws = [Wb[f * G:(f + 1) * G, :, :parts[f][2].shape[1]] for f in range(n_folds)]
        bs = [bb[f * G:(f + 1) * G] for f in range(n_folds)]
    preds = [stacked_predict(((x - mean) / std) @ U, W, b) for (mean, std, U, _, _), W, b in zip(parts, Ws, bs)]
    return torch.stack(preds, 1)                                                # [N, F, G]


@single_threaded
def cv_select_l2(x, y, num_classes, grid, n_folds, seed, max_iter):
    """Stratified ``n_folds``-fold CV on the support set: index of the ``l2`` in ``grid`` with the best
    mean held-out accuracy over folds (ties -> larger ``l2``). Fits as in :func:`cv_fold_predictions`,
    to :data:`SELECT_TOL` / ``min(max_iter, SELECT_MAX_ITER)``."""
    fold = torch.as_tensor(cv_folds(y.cpu().numpy(), n_folds, seed), device=x.device)
    pred = cv_fold_predictions(x, y, num_classes, grid, fold, tol=SELECT_TOL,
                                max_iter=min(max_iter, SELECT_MAX_ITER))
    total = np.zeros(len(grid))
    for f in range(n_folds):
        va = fold == f
        total += np.asarray([_accuracy(pred[va, f, i], y[va]) for i in range(len(grid))])
    mean_acc = total / n_folds
    return max(range(len(grid)), key=lambda i: (mean_acc[i], grid[i]))


@single_threaded
def fewshot_probe(train_x, train_y, test_x, test_y, *, shots=(1, 5, 10, 20, 50, 100), seeds=(0, 1, 2),
                  num_classes: int | None = None, l2_grid=None, one_shot_l2: float = ONE_SHOT_L2,
                  max_iter: int = 500) -> list[dict]:
    """Few-shot logistic regression (see module docstring).

    For every ``k`` in ``shots`` and ``seed`` in ``seeds``: draw ``k`` train examples of every class
    present in ``train_y`` using ``numpy.random.default_rng(seed)`` (same seed -> same draw; for one
    seed the k-shot support contains the smaller-k supports), fit a :class:`LinearProbe` on them and
    report test accuracy. ``l2``: for ``k >= 2`` the best of ``l2_grid`` (default
    :data:`DEFAULT_L2_GRID`) by stratified ``min(k, 5)``-fold cross-validation on the support set
    only (ties -> larger ``l2``; all fold x ``l2`` fits solved together, see
    :func:`cv_fold_predictions`, to :data:`SELECT_TOL` / ``min(max_iter, SELECT_MAX_ITER)``); for
    ``k = 1`` the fixed ``one_shot_l2`` (default :data:`ONE_SHOT_L2`). The probe evaluated on test is
    fitted at full precision (``tol=1e-6``, ``max_iter``). The test set is never used for selection.

    Raises ``ValueError`` if some ``k`` exceeds the smallest class count in train.

    Returns one dict per ``k``: ``shots``, ``mean``, ``std`` (sample std, ddof=1, over seeds; NaN for a
    single seed), ``per_seed`` (test accuracies in seed order), ``seeds``, ``per_seed_l2``.
    """
    train_x = _as_features(train_x)
    dev = train_x.device
    train_y = _as_labels(train_y, train_x.shape[0], device=dev)
    test_x = _as_features(test_x, device=dev)
    test_y = _as_labels(test_y, test_x.shape[0], device=dev)
    C = _num_classes(num_classes, train_y)
    ids, (train_y, test_y) = contiguous_labels(train_y, test_y, num_classes=num_classes)
    C = C if num_classes is not None else int(ids.numel())
    grid = [float(v) for v in (DEFAULT_L2_GRID if l2_grid is None else l2_grid)]
    shots = [int(k) for k in shots]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty")

    y_np = train_y.cpu().numpy()
    classes, counts = np.unique(y_np, return_counts=True)
    if classes.size == 0:
        raise ValueError("train set is empty")
    smallest = int(np.argmin(counts))
    n_min = int(counts[smallest])
    for k in shots:
        if k < 1:
            raise ValueError(f"shots must be >= 1, got k={k}")
        if k > n_min:
            raise ValueError(f"k={k} exceeds the smallest class (class {int(ids[int(classes[smallest])])} has {n_min} "
                             f"train images); use shots <= {n_min}")

    results = []
    for k in shots:
        accs, l2s = [], []
        for seed in seeds:
            idx = torch.as_tensor(draw_support(y_np, classes, k, seed), device=dev)
            sx, sy = train_x[idx], train_y[idx]
            if k == 1:
                l2 = float(one_shot_l2)
            else:
                l2 = grid[cv_select_l2(sx, sy, C, grid, min(k, 5), seed, max_iter)]
            probe = LinearProbe(C, l2, max_iter=max_iter, spectral=True, precondition=False).fit(sx, sy)
            accs.append(probe.score(test_x, test_y))
            l2s.append(l2)
        mean, std = mean_std(accs, missing=float("nan"))
        results.append({"shots": k, "mean": mean, "std": std, "per_seed": accs, "seeds": list(seeds),
                        "per_seed_l2": l2s})
    return results
