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

Relation to scikit-learn: ``LogisticRegression(C=C)`` minimises ``C * sum(loss) + 0.5 * ||w||^2``,
which is ``N * C`` times our objective with ``l2 = 1 / (C * N)``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_L2_GRID",
    "ONE_SHOT_L2",
    "LinearProbe",
    "fit_logreg",
    "stratified_split",
    "linear_probe",
    "knn_probe",
    "fewshot_probe",
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


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean()) if y.numel() else float("nan")


# ----------------------------------------------------------------------------- logistic regression

def fit_logreg(X, y, num_classes: int, l2: float, max_iter: int = 500, init=None,
               tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, all classes jointly, full batch, L-BFGS (strong Wolfe).

    Minimises ``mean_i CE(softmax(W x_i + b), y_i) + l2 / 2 * ||W||_F^2`` (``b`` not penalised)
    on ``X`` exactly as given (no standardisation here; see :class:`LinearProbe`).

    ``init`` is an optional ``(W, b)`` warm start (e.g. the solution at a neighbouring ``l2``).
    ``tol`` bounds the max-abs gradient at convergence. Returns ``W [C, D]`` and ``b [C]``
    (float32, on ``X``'s device).
    """
    X = _as_features(X)
    y = _as_labels(y, X.shape[0], device=X.device)
    C, D = int(num_classes), X.shape[1]
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    if init is None:
        W = torch.zeros(C, D, device=X.device)
        b = torch.zeros(C, device=X.device)
    else:
        W = torch.as_tensor(init[0], dtype=torch.float32).to(X.device).clone()
        b = torch.as_tensor(init[1], dtype=torch.float32).to(X.device).clone()
        if W.shape != (C, D) or b.shape != (C,):
            raise ValueError(f"init shapes {tuple(W.shape)}, {tuple(b.shape)} do not match ({C}, {D}), ({C},)")
    W.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, max_eval=int(max_iter * 1.25),
                            tolerance_grad=tol, tolerance_change=1e-10, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(torch.addmm(b, X, W.t()), y) + 0.5 * l2 * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach()


class LinearProbe:
    """Standardisation (train mean/std) + multinomial logistic regression.

    ``fit`` computes the statistics on the features it is given and applies the same affine map in
    ``predict``/``predict_proba``/``score``. ``coef_``/``intercept_`` live in the standardised space.
    """

    def __init__(self, num_classes: int, l2: float, max_iter: int = 500, tol: float = 1e-6):
        self.num_classes = int(num_classes)
        self.l2 = float(l2)
        self.max_iter = max_iter
        self.tol = tol
        self.mean_ = self.std_ = self.coef_ = self.intercept_ = None

    def transform(self, X) -> torch.Tensor:
        if self.mean_ is None:
            raise RuntimeError("LinearProbe is not fitted; call fit first")
        X = _as_features(X, device=self.mean_.device)
        return (X - self.mean_) / self.std_

    def fit(self, X, y, init=None) -> "LinearProbe":
        X = _as_features(X)
        self.mean_ = X.mean(0)
        std = X.std(0, unbiased=False)
        # Constant features carry no information: leave them at 0 rather than dividing by ~0.
        self.std_ = torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))
        self.coef_, self.intercept_ = fit_logreg(self.transform(X), y, self.num_classes, self.l2,
                                                 max_iter=self.max_iter, init=init, tol=self.tol)
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
        n_val = min(max(int(round(fraction * idx.size)), 1), idx.size - 1)
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(y.size, dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


def _select_l2(fit_x, fit_y, val_x, val_y, num_classes, grid, max_iter):
    """Walk the path from strong to weak l2 with warm starts; best val accuracy, ties -> larger l2."""
    order = sorted(range(len(grid)), key=lambda i: -grid[i])
    accs = [float("nan")] * len(grid)
    init = None
    probe = None
    for i in order:
        probe = LinearProbe(num_classes, grid[i], max_iter=max_iter).fit(fit_x, fit_y, init=init)
        init = probe.params
        accs[i] = probe.score(val_x, val_y)
    best = max(order, key=lambda i: (accs[i], grid[i]))
    return best, accs


def linear_probe(train_x, train_y, test_x, test_y, *, num_classes: int | None = None,
                 l2_grid=None, val_fraction: float = 0.1, seed: int = 0, max_iter: int = 500) -> dict:
    """Linear probe protocol (see module docstring).

    1. Split train into fit/val with :func:`stratified_split` (``val_fraction``, ``seed``).
    2. For every ``l2`` in ``l2_grid`` (default :data:`DEFAULT_L2_GRID`) fit a :class:`LinearProbe`
       on the fit part and measure validation accuracy; pick the best (ties -> larger ``l2``).
    3. Refit on all of train with that ``l2`` and report test accuracy (test data is read only here).

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

    fit_idx, val_idx = stratified_split(train_y, val_fraction, seed)
    if val_idx.size == 0:
        raise ValueError("validation split is empty: every class has fewer than 2 training examples")
    fit_idx_t, val_idx_t = torch.as_tensor(fit_idx, device=dev), torch.as_tensor(val_idx, device=dev)
    best, accs = _select_l2(train_x[fit_idx_t], train_y[fit_idx_t], train_x[val_idx_t], train_y[val_idx_t],
                            C, grid, max_iter)
    l2 = grid[best]

    probe = LinearProbe(C, l2, max_iter=max_iter).fit(train_x, train_y)
    test_x = _as_features(test_x, device=dev)  # first time test data is touched
    acc = probe.score(test_x, _as_labels(test_y, test_x.shape[0], device=dev))
    return dict(accuracy=acc, l2=l2, val_accuracy=accs[best], grid=grid, n_train=int(train_x.shape[0]),
                n_test=int(test_x.shape[0]), val_accuracies=accs)


# ----------------------------------------------------------------------------- kNN

@torch.no_grad()
def knn_probe(train_x, train_y, test_x, test_y, *, k: int = 20, temperature: float = 0.07,
              num_classes: int | None = None, chunk: int = 1024) -> dict:
    """Weighted kNN on cosine similarity (InstDisc / DINO protocol).

    Both feature sets are L2-normalised; each test point takes its ``k`` most similar train points
    (ties in similarity broken by ``torch.topk``) and each neighbour votes for its label with weight
    ``exp(sim / temperature)``; the class with the largest total wins (ties -> lowest class index).
    Test points are processed ``chunk`` at a time, so memory is ``O(chunk * N_train)``.
    ``k`` is capped at ``N_train``. Returns ``dict(accuracy, k, temperature)``.
    """
    if k < 1 or temperature <= 0 or chunk < 1:
        raise ValueError(f"need k >= 1, temperature > 0, chunk >= 1; got k={k}, T={temperature}, chunk={chunk}")
    train_x = _as_features(train_x)
    dev = train_x.device
    train_y = _as_labels(train_y, train_x.shape[0], device=dev)
    test_x = _as_features(test_x, device=dev)
    test_y = _as_labels(test_y, test_x.shape[0], device=dev)
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train has {train_x.shape[1]} feature dims, test has {test_x.shape[1]}")
    C = _num_classes(num_classes, train_y)
    k = min(int(k), train_x.shape[0])
    train_n = F.normalize(train_x, dim=1)
    correct = 0
    for s in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[s:s + chunk], dim=1)
        sim, idx = (q @ train_n.t()).topk(k, dim=1)
        # exp((sim - max) / T): same vote ratios as exp(sim / T) without overflow for small T.
        w = ((sim - sim[:, :1]) / temperature).exp()
        votes = torch.zeros(q.shape[0], C, device=dev).scatter_add_(1, train_y[idx], w)
        correct += int((votes.argmax(1) == test_y[s:s + chunk]).sum())
    acc = correct / test_x.shape[0] if test_x.shape[0] else float("nan")
    return dict(accuracy=acc, k=k, temperature=float(temperature))


# ----------------------------------------------------------------------------- few-shot

def _draw_support(y_np: np.ndarray, classes: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k indices per class (classes in increasing order) from a fresh ``default_rng(seed)``.

    Each class draws a permutation and keeps the first k, so supports are nested across k for one seed.
    """
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(np.flatnonzero(y_np == c))[:k] for c in classes])


def _cv_folds(y_np: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold id per example, stratified: within each class examples are shuffled and dealt round-robin."""
    rng = np.random.default_rng([seed, n_folds, 1])
    fold = np.empty(y_np.size, dtype=np.int64)
    for c in np.unique(y_np):
        idx = rng.permutation(np.flatnonzero(y_np == c))
        fold[idx] = np.arange(idx.size) % n_folds
    return fold


def _cv_select_l2(x, y, num_classes, grid, n_folds, seed, max_iter):
    fold = _cv_folds(y.cpu().numpy(), n_folds, seed)
    fold_t = torch.as_tensor(fold, device=x.device)
    total = np.zeros(len(grid))
    for f in range(n_folds):
        tr, va = fold_t != f, fold_t == f
        _, accs = _select_l2(x[tr], y[tr], x[va], y[va], num_classes, grid, max_iter)
        total += np.asarray(accs)
    mean = total / n_folds
    return max(range(len(grid)), key=lambda i: (mean[i], grid[i]))


def fewshot_probe(train_x, train_y, test_x, test_y, *, shots=(1, 5, 10, 20, 50, 100), seeds=(0, 1, 2),
                  num_classes: int | None = None, l2_grid=None, one_shot_l2: float = ONE_SHOT_L2,
                  max_iter: int = 500) -> list[dict]:
    """Few-shot logistic regression (see module docstring).

    For every ``k`` in ``shots`` and ``seed`` in ``seeds``: draw ``k`` train examples of every class
    present in ``train_y`` using ``numpy.random.default_rng(seed)`` (same seed -> same draw; for one
    seed the k-shot support contains the smaller-k supports), fit a :class:`LinearProbe` on them and
    report test accuracy. ``l2``: for ``k >= 2`` the best of ``l2_grid`` (default
    :data:`DEFAULT_L2_GRID`) by stratified ``min(k, 5)``-fold cross-validation on the support set
    only (ties -> larger ``l2``); for ``k = 1`` the fixed ``one_shot_l2`` (default
    :data:`ONE_SHOT_L2`). The test set is never used for selection.

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
            raise ValueError(f"k={k} exceeds the smallest class (class {int(classes[smallest])} has {n_min} "
                             f"train images); use shots <= {n_min}")

    results = []
    for k in shots:
        accs, l2s = [], []
        for seed in seeds:
            idx = torch.as_tensor(_draw_support(y_np, classes, k, seed), device=dev)
            sx, sy = train_x[idx], train_y[idx]
            if k == 1:
                l2 = float(one_shot_l2)
            else:
                l2 = grid[_cv_select_l2(sx, sy, C, grid, min(k, 5), seed, max_iter)]
            probe = LinearProbe(C, l2, max_iter=max_iter).fit(sx, sy)
            accs.append(probe.score(test_x, test_y))
            l2s.append(l2)
        std = float(np.std(accs, ddof=1)) if len(accs) >= 2 else float("nan")
        results.append(dict(shots=k, mean=float(np.mean(accs)), std=std, per_seed=accs, seeds=list(seeds),
                            per_seed_l2=l2s))
    return results
