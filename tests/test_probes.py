"""Tests for eval/probes.py and its solver eval/solver.py on small synthetic data (1 thread, a few hundred points)."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval import probes, solver
from eval.probes import (
    DEFAULT_L2_GRID,
    LinearProbe,
    fewshot_probe,
    fit_logreg,
    knn_probe,
    linear_probe,
    stratified_split,
)



def blobs(n, d, c, sep, seed):
    """Gaussian blobs: class centres ~ N(0, sep^2 I), unit-variance noise. Returns float32 X, int64 y."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * sep
    y = rng.integers(0, c, n)
    x = centres[y] + rng.normal(size=(n, d))
    return x.astype(np.float32), y.astype(np.int64)


def split(x, y, n_train):
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


# ----------------------------------------------------------------------------- logistic regression

def test_linear_probe_high_accuracy_on_separable_blobs():
    x, y = blobs(700, 10, 4, 3.0, seed=0)  # centres ~3 sigma apart in 10-D: essentially separable
    res = linear_probe(*split(torch.from_numpy(x), torch.from_numpy(y), 400))
    assert set(res) >= {"accuracy", "l2", "val_accuracy", "grid", "n_train", "n_test"}
    assert res["accuracy"] > 0.97
    assert 0.0 <= res["accuracy"] <= 1.0 and 0.0 <= res["val_accuracy"] <= 1.0
    assert res["l2"] in res["grid"] and res["grid"] == list(DEFAULT_L2_GRID)
    assert (res["n_train"], res["n_test"]) == (400, 300)


def test_default_grid_optimum_is_interior():
    # Noisy blobs (5 classes, 32-D, 500 train): the validation optimum is never at an end of the grid.
    for seed in range(4):
        x, y = blobs(800, 32, 5, 0.35, seed=seed)
        res = linear_probe(*split(x, y, 500))
        assert DEFAULT_L2_GRID[0] < res["l2"] < DEFAULT_L2_GRID[-1]
        assert res["val_accuracy"] > max(res["val_accuracies"][0], res["val_accuracies"][-1])


def test_chance_level_on_pure_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    y = rng.integers(0, 4, 600)
    res = linear_probe(*split(x, y, 400), l2_grid=[1e-3, 1e-1])
    assert res["accuracy"] < 0.45  # 0.25 expected; a leak of test labels would push this up


@pytest.mark.parametrize("C", [0.02, 1.0])
def test_logreg_matches_sklearn(C):
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = blobs(800, 12, 4, 0.6, seed=2)  # overlapping classes: the optimum is finite and unique
    xtr, ytr, xte, yte = split(x, y, 500)
    probe = LinearProbe(4, l2=1.0 / (C * len(xtr)), tol=1e-7).fit(xtr, ytr)
    # sklearn sees the same standardised features; C * sum(loss) + 0.5||w||^2 == N*C * our objective.
    ztr, zte = probe.transform(xtr).numpy(), probe.transform(xte).numpy()
    sk = sklearn.LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(ztr, ytr)
    W, b = probe.coef_.numpy(), probe.intercept_.numpy()
    scale = np.abs(sk.coef_).max()
    assert np.abs(W - sk.coef_).max() < 2e-3 * max(scale, 1.0)
    assert np.abs(b - sk.intercept_).max() < 2e-3 * max(np.abs(sk.intercept_).max(), 1.0)
    assert np.abs(probe.predict_proba(xte).numpy() - sk.predict_proba(zte)).max() < 1e-3
    assert abs(probe.score(xte, yte) - sk.score(zte, yte)) <= 0.01


def test_fit_logreg_is_stationary_and_warm_start_agrees():
    x, y = blobs(300, 6, 3, 0.7, seed=3)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    l2 = 1e-2
    W, b = fit_logreg(X, Y, 3, l2, tol=1e-7)
    assert W.shape == (3, 6) and b.shape == (3,) and W.dtype == torch.float32
    # Gradient of the documented objective at the solution is ~0 (bias unregularised).
    Wg, bg = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(X @ Wg.T + bg, Y) + 0.5 * l2 * (Wg ** 2).sum()
    loss.backward()
    assert Wg.grad.abs().max() < 1e-4 and bg.grad.abs().max() < 1e-4
    # Warm start from a far-away regularisation strength reaches the same optimum.
    W0, b0 = fit_logreg(X, Y, 3, 1.0)
    W2, b2 = fit_logreg(X, Y, 3, l2, init=(W0, b0), tol=1e-7)
    assert torch.allclose(W, W2, atol=1e-4) and torch.allclose(b, b2, atol=1e-4)
    # Stronger regularisation shrinks the weights.
    assert W0.norm() < W.norm()


def test_linear_probe_standardises_with_train_statistics():
    x, y = blobs(400, 5, 3, 2.0, seed=4)
    x_shift = x * np.array([1e3, 1e-3, 1, 50, 1], dtype=np.float32) + 7.0
    a = LinearProbe(3, 1e-3).fit(x[:300], y[:300])
    b = LinearProbe(3, 1e-3).fit(x_shift[:300], y[:300])
    # The standardised problem is the same, so predictions on held-out data agree.
    assert torch.equal(a.predict(x[300:]), b.predict(x_shift[300:]))
    assert torch.allclose(b.mean_, torch.from_numpy(x_shift[:300]).mean(0))


# ----------------------------------------------------------------------------- stacked solver

def objective_grad(X, Y, W, b, penalty, weight):
    """Max-abs gradient of sum_i weight_i CE_i + 1/2 sum_cd penalty_d W_cd^2 (autograd reference)."""
    Wg, bg = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(X @ Wg.T + bg, Y, reduction="none")
    loss = (ce * weight).sum() / weight.sum() + 0.5 * (penalty * Wg ** 2).sum()
    loss.backward()
    return max(float(Wg.grad.abs().max()), float(bg.grad.abs().max()))


def test_stacked_fit_equals_separate_fits():
    x, y = blobs(400, 10, 4, 0.6, seed=12)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    grid = [0.0, 1e-4, 1e-2, 1.0]
    W, b = solver.fit_logreg_batch(X, Y, 4, grid, tol=1e-7, max_iter=2000)
    assert W.shape == (4, 4, 10) and b.shape == (4, 4) and W.dtype == torch.float32
    for i, l2 in enumerate(grid):
        # Every block is a stationary point of its own objective ...
        assert objective_grad(X, Y, W[i], b[i], l2, torch.ones(400)) < 1e-5
        if l2 > 0:  # ... and the same point as a fit on its own (unique for l2 > 0).
            Ws, bs = fit_logreg(X, Y, 4, l2, tol=1e-7, max_iter=2000)
            assert torch.allclose(W[i], Ws, atol=1e-4) and torch.allclose(b[i], bs, atol=1e-4)


def correlated(n, d, c, seed):
    """Blobs seen through a random mixing with decaying column scales: standardised, the features'
    covariance spectrum spans several decades (as real network features do)."""
    x, y = blobs(n, d, c, 0.8, seed)
    rng = np.random.default_rng(seed + 100)
    mix = rng.normal(size=(d, d)) * np.logspace(0, -2.5, d)[:, None]
    x = x @ mix + 0.05 * rng.normal(size=(n, d))
    x = (x - x.mean(0)) / x.std(0)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)


def test_spectral_fit_reaches_the_same_minimiser_in_fewer_evaluations(monkeypatch):
    """The rotated, preconditioned solve is the same problem: each candidate is a stationary point of
    the *unrotated* objective (gradient checked by autograd in the original coordinates), equal to the
    plain solver's solution; and it needs fewer objective evaluations on ill-conditioned features."""
    X, Y = correlated(600, 24, 4, seed=21)
    grid = [1e-4, 1e-2, 1.0]
    counts = {}
    orig = solver.logreg_objective

    def counting(*a, **k):
        counts[key] = counts.get(key, 0) + a[3].shape[0]   # problems evaluated
        return orig(*a, **k)

    monkeypatch.setattr(solver, "logreg_objective", counting)
    key = "plain"
    Wp, bp = solver.fit_logreg_batch(X, Y, 4, grid, tol=1e-6, max_iter=5000)
    key = "spectral"
    Ws, bs = solver.fit_logreg_spectral(X, Y, 4, grid, tol=1e-6, max_iter=5000)
    for i, l2 in enumerate(grid):
        assert objective_grad(X, Y, Ws[i], bs[i], l2, torch.ones(600)) < 2e-6
        assert torch.allclose(Ws[i], Wp[i], atol=3e-3)
        assert torch.allclose(bs[i], bp[i], atol=1e-2)
    assert counts["spectral"] < 0.5 * counts["plain"], counts


def test_spectral_warm_start_and_linear_probe_agree_with_plain_solver():
    X, Y = correlated(500, 16, 3, seed=22)
    W0, b0 = fit_logreg(X, Y, 3, 1.0, spectral=True)
    W1, b1 = fit_logreg(X, Y, 3, 1e-3, init=(W0, b0), tol=1e-7, spectral=True)
    W2, b2 = fit_logreg(X, Y, 3, 1e-3, tol=1e-7)
    assert torch.allclose(W1, W2, atol=1e-3) and torch.allclose(b1, b2, atol=1e-3)
    a = linear_probe(X[:400], Y[:400], X[400:], Y[400:], spectral=True)
    b = linear_probe(X[:400], Y[:400], X[400:], Y[400:], spectral=False)
    assert a["l2"] == b["l2"] and abs(a["accuracy"] - b["accuracy"]) <= 0.011


def test_stacked_fit_with_row_weights_and_feature_penalties():
    x, y = blobs(300, 6, 3, 0.7, seed=13)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(rng.random(300) < 0.7)
    soft = torch.from_numpy(rng.uniform(0.1, 3.0, 300).astype(np.float32))
    pen = torch.tensor([1e-3, 1e-1, 1.0, 0.0, 1e-2, 10.0])
    weight = torch.stack([mask.float(), soft, torch.ones(300)])
    penalty = torch.stack([torch.full((6,), 1e-2), torch.full((6,), 1e-2), pen])
    W, b = solver.fit_logreg_batch(X, Y, 3, penalty, weight, tol=1e-7, max_iter=2000)
    for i in range(3):
        assert objective_grad(X, Y, W[i], b[i], penalty[i], weight[i]) < 1e-5
    # A 0/1 weight is the same as fitting on the selected rows only.
    Wm, bm = fit_logreg(X[mask], Y[mask], 3, 1e-2, tol=1e-7, max_iter=2000)
    assert torch.allclose(W[0], Wm, atol=1e-4) and torch.allclose(b[0], bm, atol=1e-4)


@pytest.mark.parametrize("C", [0.02, 1.0])
def test_stacked_fit_matches_sklearn_with_sample_weights(C):
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = blobs(500, 8, 4, 0.6, seed=14)
    rng = np.random.default_rng(1)
    w = rng.uniform(0.2, 2.0, 500)
    # sklearn: C * sum_i w_i loss_i + 0.5 ||W||^2 == C * sum(w) * (our objective with l2 = 1 / (C * sum(w))).
    l2s = [1.0 / (C * w.sum()), 1.0 / (C * 500)]
    weight = torch.from_numpy(np.stack([w, np.ones(500)]).astype(np.float32))
    W, b = solver.fit_logreg_batch(torch.from_numpy(x), torch.from_numpy(y), 4, l2s, weight, tol=1e-7,
                                    max_iter=2000)
    for i, sw in enumerate([w, None]):
        sk = sklearn.LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(x, y, sample_weight=sw)
        assert np.abs(W[i].numpy() - sk.coef_).max() < 2e-3 * max(np.abs(sk.coef_).max(), 1.0)
        assert np.abs(b[i].numpy() - sk.intercept_).max() < 2e-3 * max(np.abs(sk.intercept_).max(), 1.0)


def test_stacked_fit_drops_converged_problems(monkeypatch):
    x, y = blobs(200, 30, 4, 0.3, seed=15)  # separable: the weakly regularised fit needs many iterations
    sizes = []
    orig = solver.logreg_objective

    def spy(X, y, onehot, W, *args):
        sizes.append(W.shape[0])
        return orig(X, y, onehot, W, *args)

    monkeypatch.setattr(solver, "logreg_objective", spy)
    solver.fit_logreg_batch(torch.from_numpy(x), torch.from_numpy(y), 4, [1e-6, 10.0], tol=1e-6, max_iter=500)
    # The strongly regularised problem converges long before the weak one and leaves the batch.
    assert sizes[0] == 2 and sizes[-1] == 1 and sizes.count(2) < sizes.count(1)
    sizes.clear()
    solver.fit_logreg_batch(torch.from_numpy(x), torch.from_numpy(y), 4, [1e-6, 10.0], tol=1e-6, max_iter=5)
    assert len(sizes) <= 1 + 5 * solver.MAX_LINE_SEARCH  # max_iter caps the iterations


@pytest.mark.parametrize("n,d,batched", [(60, 12, True), (60, 12, False), (40, 64, True), (40, 64, False)])
def test_cv_fold_models_are_the_per_fold_linear_probes(monkeypatch, n, d, batched):
    """Every CV model predicts as the plain LinearProbe of its training folds: fewer rows than dimensions
    (solved in the span of the rows) or not, all folds as one batch or fold by fold."""
    if not batched:
        monkeypatch.setattr(probes, "CV_BATCH_MAX_VALUES", 0)
    # Features on very different scales, so the per-fold standardisation matters.
    x, y = blobs(n, d, 4, 0.8, seed=16)
    x = x * np.random.default_rng(2).uniform(0.1, 10.0, d).astype(np.float32) + 3.0
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    fold = torch.from_numpy(probes.cv_folds(y, 5, seed=0))
    grid = [1e-3, 1e-1, 10.0]
    pred = probes.cv_fold_predictions(X, Y, 4, grid, fold, tol=1e-7, max_iter=2000)
    assert pred.shape == (n, 5, 3)
    for f in range(5):
        tr = fold != f
        for g, l2 in enumerate(grid):
            probe = LinearProbe(4, l2, tol=1e-7, max_iter=2000).fit(X[tr], Y[tr])
            assert torch.equal(pred[:, f, g], probe.predict(X))


def test_cv_selection_is_the_mean_held_out_accuracy_argmax(monkeypatch):
    x, y = blobs(900, 16, 4, 0.45, seed=10)
    grid = list(DEFAULT_L2_GRID)
    preds = []
    orig = probes.cv_fold_predictions

    def spy(*args, **kw):
        preds.append(orig(*args, **kw))
        return preds[-1]

    monkeypatch.setattr(probes, "cv_fold_predictions", spy)
    for k, seed in [(2, 0), (3, 0), (5, 1), (10, 2)]:
        idx = probes.draw_support(y, np.arange(4), k, seed)
        X, Y = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
        n_folds = min(k, 5)
        best = probes.cv_select_l2(X, Y, 4, grid, n_folds, seed, 500)
        fold = probes.cv_folds(y[idx], n_folds, seed)
        pred = preds[-1].numpy()
        acc = np.mean([(pred[fold == f, f, :] == y[idx][fold == f, None]).mean(0) for f in range(n_folds)], 0)
        assert best == max(range(len(grid)), key=lambda i: (round(acc[i], 9), grid[i]))  # ties -> larger l2


# ----------------------------------------------------------------------------- agreement with scikit-learn

def sklearn_standardise(a, ref):
    """The standardisation of LinearProbe (population std, constant features -> 1), in numpy."""
    m, s = ref.mean(0), ref.std(0)
    return (a - m) / np.where(s > 1e-6 * max(s.max(), 1e-12), s, 1.0)


def test_linear_probe_protocol_matches_sklearn():
    """The whole linear protocol against scikit-learn's LogisticRegression(lbfgs) at the same
    regularisation (C = 1 / (l2 * N)), on the same split and standardisation: the same validation
    accuracy for every l2 of the grid, the same selected l2, coefficients within 2e-3 (relative to
    the largest) and test accuracy within 0.5 points."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = blobs(900, 24, 5, 0.45, seed=21)
    xtr, ytr, xte, yte = split(x, y, 600)
    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    res = linear_probe(xtr, ytr, xte, yte, l2_grid=grid, seed=0)
    fit, val = stratified_split(ytr, 0.1, seed=0)
    zf, zv = sklearn_standardise(xtr[fit], xtr[fit]), sklearn_standardise(xtr[val], xtr[fit])
    sk_accs = [sklearn.LogisticRegression(C=1.0 / (l2 * fit.size), tol=1e-10, max_iter=10_000).fit(zf, ytr[fit])
               .score(zv, ytr[val]) for l2 in grid]
    assert res["val_accuracies"] == pytest.approx(sk_accs, abs=1e-6)  # float32 accuracies
    assert res["l2"] == grid[max(range(len(grid)), key=lambda i: (sk_accs[i], grid[i]))]
    sk = sklearn.LogisticRegression(C=1.0 / (res["l2"] * len(xtr)), tol=1e-10, max_iter=10_000)
    sk.fit(sklearn_standardise(xtr, xtr), ytr)
    assert abs(res["accuracy"] - sk.score(sklearn_standardise(xte, xtr), yte)) <= 0.005
    ours = LinearProbe(5, res["l2"]).fit(xtr, ytr)
    assert np.abs(ours.coef_.numpy() - sk.coef_).max() < 2e-3 * np.abs(sk.coef_).max()


def float64_logreg(z, y, C, l2):
    """Reference solver, independent of ours: scipy's L-BFGS-B in float64 on the same objective (mean
    cross-entropy + l2/2 ||W||^2, bias free), run to machine precision (no loss-change stop)."""
    from scipy.optimize import minimize

    n, d = z.shape
    Y = np.eye(C)[y]

    def f(theta):
        W, b = theta[:C * d].reshape(C, d), theta[C * d:]
        Z = z @ W.T + b
        Z -= Z.max(1, keepdims=True)
        lse = np.log(np.exp(Z).sum(1))
        G = (np.exp(Z - lse[:, None]) - Y) / n
        loss = (lse - Z[np.arange(n), y]).mean() + l2 / 2 * (W ** 2).sum()
        return loss, np.concatenate([(G.T @ z + l2 * W).ravel(), G.sum(0)])

    r = minimize(f, np.zeros(C * d + C), jac=True, method="L-BFGS-B",
                 options={"ftol": 0.0, "gtol": 1e-11, "maxiter": 100_000, "maxcor": 30})
    return r.x[:C * d].reshape(C, d), r.x[C * d:]


@pytest.mark.parametrize("d,C,k,seed", [(32, 4, 5, 0), (128, 4, 10, 1), (256, 10, 5, 2), (128, 10, 10, 3)])
def test_fewshot_selection_matches_a_float64_reference_solver(d, C, k, seed):
    """The cross-validated l2 of a few-shot support is the one a float64 reference solver selects
    with the same folds and per-fold standardisation: the stacked float32 fits at SELECT_TOL are
    precise enough that the choice is a property of the objective. (Supports of k <= 10 images in
    32-256 dims are separable, the hard case: weakly regularised fits converge slowly there.)"""
    pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(C, d)) * 0.25
    y = np.repeat(np.arange(C), k)
    x = (centres[y] + rng.normal(size=(y.size, d)) * rng.uniform(0.2, 3.0, d)).astype(np.float32)
    grid = list(DEFAULT_L2_GRID)
    n_folds = min(k, 5)
    fold = probes.cv_folds(y, n_folds, seed)
    ref = np.zeros(len(grid))
    for f in range(n_folds):
        tr = fold != f
        ztr, zva = sklearn_standardise(x[tr].astype(np.float64), x[tr]), sklearn_standardise(x[~tr], x[tr])
        for i, l2 in enumerate(grid):
            W, b = float64_logreg(ztr, y[tr], C, l2)
            ref[i] += ((zva @ W.T + b).argmax(1) == y[~tr]).mean() / n_folds
    expected = max(range(len(grid)), key=lambda i: (round(ref[i], 9), grid[i]))
    got = probes.cv_select_l2(torch.from_numpy(x), torch.from_numpy(y), C, grid, n_folds, seed, 500)
    assert grid[got] == grid[expected]


def test_objective_is_accurate_for_confident_predictions():
    """Cross-entropy of well-classified points is computed without cancellation (softplus of the
    other classes' log-sum-exp), so fits on separable data reach the float64 optimum's objective."""
    x, y = blobs(40, 16, 4, 3.0, seed=30)   # separable
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    W = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(0)) * 5
    b = torch.zeros(1, 4)
    onehot = torch.nn.functional.one_hot(Y, 4).float().t().contiguous()
    loss, gW, _ = solver.logreg_objective(X, Y, onehot, W, b, torch.zeros(1, 16), None)
    Z = (X.double() @ W[0].double().T)
    ref = (torch.logsumexp(Z, 1) - Z.gather(1, Y[:, None]).squeeze(1)).mean()
    assert abs(float(loss[0]) - float(ref)) <= 1e-6 * float(ref) + 1e-12
    Wg = W[0].double().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(X.double() @ Wg.T, Y).backward()
    assert torch.allclose(gW[0].double(), Wg.grad, rtol=1e-4, atol=1e-12)
    # and a weakly regularised fit gets to the reference optimum
    l2 = 1e-5
    Wf, bf = fit_logreg(X, Y, 4, l2, tol=1e-9, max_iter=5000)
    Wr, br = float64_logreg(x.astype(np.float64), y, 4, l2)

    def obj(W_, b_):
        Z_ = x.astype(np.float64) @ W_.T + b_
        Z_ -= Z_.max(1, keepdims=True)
        return (np.log(np.exp(Z_).sum(1)) - Z_[np.arange(len(y)), y]).mean() + l2 / 2 * (W_ ** 2).sum()

    assert obj(Wf.double().numpy(), bf.double().numpy()) <= obj(Wr, br) * (1 + 1e-3)


# ----------------------------------------------------------------------------- selection protocol

def test_stratified_split_is_stratified_and_seeded():
    y = np.repeat(np.arange(4), [50, 30, 20, 10])
    fit, val = stratified_split(y, 0.1, seed=0)
    assert np.intersect1d(fit, val).size == 0 and np.union1d(fit, val).size == y.size
    assert np.bincount(y[val], minlength=4).tolist() == [5, 3, 2, 1]
    _fit2, val2 = stratified_split(y, 0.1, seed=0)
    assert np.array_equal(val, val2)
    assert not np.array_equal(val, stratified_split(y, 0.1, seed=1)[1])


def test_selected_l2_is_the_validation_argmax():
    x, y = blobs(500, 40, 5, 0.35, seed=5)  # noisy, high-D: regularisation matters
    xtr, ytr, xte, yte = split(x, y, 300)
    grid = [1e-4, 1e-2, 1.0, 100.0]
    res = linear_probe(xtr, ytr, xte, yte, l2_grid=grid, seed=3)
    fit, val = stratified_split(ytr, 0.1, seed=3)
    accs = [LinearProbe(5, l2).fit(xtr[fit], ytr[fit]).score(xtr[val], ytr[val]) for l2 in grid]
    assert res["val_accuracies"] == pytest.approx(accs, abs=1e-9)
    best = max(range(len(grid)), key=lambda i: (accs[i], grid[i]))  # ties -> stronger regularisation
    assert res["l2"] == grid[best] and res["val_accuracy"] == pytest.approx(accs[best])
    # Reported accuracy is the refit on all of train, evaluated on test.
    full = LinearProbe(5, res["l2"]).fit(xtr, ytr)
    assert res["accuracy"] == pytest.approx(full.score(xte, yte), abs=1e-9)


def test_ties_go_to_stronger_regularisation():
    x, y = blobs(300, 4, 2, 5.0, seed=6)  # trivially separable: every l2 gets 100% validation accuracy
    res = linear_probe(*split(x, y, 200), l2_grid=[1e-5, 1e-3, 1e-1])
    assert res["val_accuracy"] == 1.0 and res["l2"] == 1e-1


def test_test_data_never_used_for_selection(monkeypatch):
    x, y = blobs(500, 40, 5, 0.35, seed=7)
    xtr, ytr, xte, yte = split(torch.from_numpy(x), torch.from_numpy(y), 300)
    grid = [1e-4, 1e-2, 1.0, 100.0]

    events = []
    orig_fit, orig_score = LinearProbe.fit, LinearProbe.score

    def spy_fit(self, X, Y, **kwargs):
        events.append(("fit", X.shape[0], self.l2))
        return orig_fit(self, X, Y, **kwargs)

    def spy_score(self, X, Y):
        events.append(("score", "test" if X.data_ptr() == xte.data_ptr() else "val", self.l2))
        return orig_score(self, X, Y)

    orig_select = probes.select_l2

    def spy_select(fit_x, fit_y, val_x, val_y, *args, **kwargs):
        # The stacked grid walk sees the fit/val parts of train and nothing else.
        events.append(("select", fit_x.shape[0], val_x.shape[0]))
        train_rows = {tuple(r) for r in xtr.tolist()}
        assert all(tuple(r) in train_rows for r in torch.cat([fit_x, val_x]).tolist())
        return orig_select(fit_x, fit_y, val_x, val_y, *args, **kwargs)

    monkeypatch.setattr(LinearProbe, "fit", spy_fit)
    monkeypatch.setattr(LinearProbe, "score", spy_score)
    monkeypatch.setattr(probes, "select_l2", spy_select)
    res = linear_probe(xtr, ytr, xte, yte, l2_grid=grid)
    # Test features are scored exactly once, last, by a model refitted on all 300 train points.
    assert [e for e in events if e[1] == "test"] == [events[-1]]
    assert events[-2] == ("fit", 300, res["l2"])
    assert all(e[1] < 300 for e in events[:-2] if e[0] == "fit")
    # Selection (on a 270 / 30 split of train) happens once, before the refit.
    assert [e for e in events if e[0] == "select"] == [events[-3]] == [("select", 270, 30)]
    monkeypatch.undo()

    # Selection is a function of train only: adversarial test labels change nothing but the accuracy.
    shuffled = linear_probe(xtr, ytr, xte, (yte + 1) % 5, l2_grid=grid)
    assert (shuffled["l2"], shuffled["val_accuracy"]) == (res["l2"], res["val_accuracy"])
    assert shuffled["accuracy"] != res["accuracy"]


# ----------------------------------------------------------------------------- kNN

def brute_knn_predict(train_x, train_y, test_x, k, T, C):
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    q = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sim = q.astype(np.float64) @ a.T.astype(np.float64)
    pred = []
    for row in sim:
        nn = np.argsort(-row, kind="stable")[:k]
        votes = np.zeros(C)
        np.add.at(votes, train_y[nn], np.exp(row[nn] / T))
        pred.append(int(np.argmax(votes)))
    return np.array(pred)


def test_knn_hand_computed():
    # Unit vectors at similarities 1.0, 0.8, 0.6, 0.0 to the query (1, 0).
    train_x = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    train_y = np.array([0, 1, 1, 0])
    query = np.array([[2.0, 0.0]], dtype=np.float32)  # length must not matter (cosine)
    # k=3, T=1: class 0 gets e^1 = 2.718, class 1 gets e^0.8 + e^0.6 = 4.048 -> class 1.
    assert knn_probe(train_x, train_y, query, [1], k=3, temperature=1.0)["accuracy"] == 1.0
    # k=3, T=0.1: class 0 gets e^10 = 22026, class 1 gets e^8 + e^6 = 3384 -> class 0.
    assert knn_probe(train_x, train_y, query, [0], k=3, temperature=0.1)["accuracy"] == 1.0
    # k=1: nearest neighbour only -> class 0; k=4 at T=1: class 0 gains e^0 = 1 -> 3.718 < 4.048 -> class 1.
    assert knn_probe(train_x, train_y, query, [0], k=1, temperature=1.0)["accuracy"] == 1.0
    assert knn_probe(train_x, train_y, query, [1], k=4, temperature=1.0)["accuracy"] == 1.0
    # T tiny must not overflow (weights are exp(sim/T) up to a per-query constant).
    assert knn_probe(train_x, train_y, query, [0], k=3, temperature=1e-3)["accuracy"] == 1.0
    res = knn_probe(train_x, train_y, query, [1], k=10, temperature=0.5)
    assert res["k"] == 4 and res["temperature"] == 0.5  # k capped at N_train


@pytest.mark.parametrize("k,T,chunk", [(1, 0.07, 1024), (5, 0.07, 7), (20, 0.5, 13)])
def test_knn_matches_brute_force(k, T, chunk):
    rng = np.random.default_rng(8)
    train_x = rng.normal(size=(120, 16)).astype(np.float32)
    train_y = rng.integers(0, 6, 120)
    test_x = rng.normal(size=(50, 16)).astype(np.float32)
    pred = brute_knn_predict(train_x, train_y, test_x, k, T, 6)
    # Labelling the test set with the reference predictions: every prediction must agree.
    res = knn_probe(torch.from_numpy(train_x), torch.from_numpy(train_y), test_x, pred, k=k, temperature=T,
                    chunk=chunk)
    assert res["accuracy"] == 1.0
    test_y = rng.integers(0, 6, 50)
    assert knn_probe(train_x, train_y, test_x, test_y, k=k, temperature=T, chunk=chunk)["accuracy"] == \
        pytest.approx(np.mean(pred == test_y))


def test_knn_settings_from_one_pass_match_the_brute_force_per_setting():
    """knn_probes (the run's path: one product, one top-k of the largest k) gives each setting the
    predictions of the brute-force reference of that setting alone, k capped at N_train per setting."""
    rng = np.random.default_rng(11)
    train_x = rng.normal(size=(150, 12)).astype(np.float32)
    train_y = rng.integers(0, 5, 150)
    test_x = rng.normal(size=(40, 12)).astype(np.float32)
    settings = [(20, 0.07), (3, 0.5), (200, 0.1)]
    for (k, T), res in zip(settings, probes.knn_probes(train_x, train_y, test_x, np.zeros(40, dtype=np.int64),
                                                      settings=settings, chunk=16)):
        assert res["k"] == min(k, 150) and res["temperature"] == T
    for i, (k, T) in enumerate(settings):
        pred = brute_knn_predict(train_x, train_y, test_x, min(k, 150), T, 5)
        res = probes.knn_probes(train_x, train_y, test_x, pred, settings=settings, chunk=16)
        assert res[i]["accuracy"] == 1.0


def test_knn_high_accuracy_on_blobs():
    x, y = blobs(600, 16, 5, 2.0, seed=9)
    assert knn_probe(*split(x, y, 400), k=10)["accuracy"] > 0.95


# ----------------------------------------------------------------------------- few-shot

@pytest.fixture(scope="module")
def fewshot_data():
    x, y = blobs(900, 16, 4, 0.45, seed=10)
    return split(x, y, 300)


def record(monkeypatch):
    """Spy on the support draws, on every LinearProbe fit made by fewshot_probe, on the inputs of the
    cross-validation and on every stacked solve (its design matrix, labels and l2 grid)."""
    draws, fits, cv, stacked = [], [], [], []
    orig_draw, orig_fit = probes.draw_support, LinearProbe.fit
    orig_cv, orig_batch = probes.cv_select_l2, probes.fit_logreg_spectral

    def spy_cv(x, y, *args):
        cv.append((x.clone(), y.clone()))
        return orig_cv(x, y, *args)

    def spy_batch(X, y, num_classes, l2s, **kw):
        stacked.append((X.clone(), y.clone(), list(l2s)))
        return orig_batch(X, y, num_classes, l2s, **kw)

    def spy_draw(y_np, classes, k, seed):
        idx = orig_draw(y_np, classes, k, seed)
        draws.append((k, seed, idx.copy()))
        return idx

    def spy_fit(self, X, Y, init=None):
        fits.append((X.clone(), Y.clone(), self.l2))
        return orig_fit(self, X, Y, init=init)

    monkeypatch.setattr(probes, "draw_support", spy_draw)
    monkeypatch.setattr(LinearProbe, "fit", spy_fit)
    monkeypatch.setattr(probes, "cv_select_l2", spy_cv)
    monkeypatch.setattr(probes, "fit_logreg_spectral", spy_batch)
    return draws, fits, cv, stacked


def test_fewshot_draws_exactly_k_per_class_from_train(monkeypatch, fewshot_data):
    xtr, ytr, xte, yte = fewshot_data
    for k in (1, 3):
        draws, fits, cv, stacked = record(monkeypatch)
        res = fewshot_probe(xtr, ytr, xte, yte, shots=(k,), seeds=(0,))
        monkeypatch.undo()
        assert len(draws) == 1
        idx = draws[0][2]
        assert np.unique(idx).size == idx.size  # without replacement
        assert np.bincount(ytr[idx], minlength=4).tolist() == [k] * 4
        # The last fit (the one evaluated on test) is exactly that support set.
        X, Y, l2 = fits[-1]
        assert torch.equal(X, torch.from_numpy(xtr[idx])) and torch.equal(Y, torch.from_numpy(ytr[idx]))
        assert l2 == res[0]["per_seed_l2"][0]
        # Cross-validation (k >= 2) only ever sees the support set (its fits are checked against per-fold
        # linear probes in test_cv_fold_models_are_the_per_fold_linear_probes); the final fit is the whole
        # support with the selected l2.
        assert len(fits) == 1
        (final,) = stacked
        support = torch.from_numpy(xtr[idx])
        mean, std = probes.standardiser(support)
        assert torch.equal(final[0], (support - mean) / std) and final[2] == [res[0]["per_seed_l2"][0]]
        if k == 1:
            assert cv == []
        else:
            assert len(cv) == 1 and torch.equal(cv[0][0], torch.from_numpy(xtr[idx]))
            assert torch.equal(cv[0][1], torch.from_numpy(ytr[idx]))
    assert res[0]["per_seed_l2"][0] in DEFAULT_L2_GRID


@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_fewshot_cv_folds_are_stratified(k):
    n_folds = min(k, 5)
    y = np.repeat(np.arange(4), k)
    fold = probes.cv_folds(y, n_folds, seed=0)
    assert set(fold.tolist()) == set(range(n_folds))
    for c in range(4):  # every class spread evenly over the folds
        counts = np.bincount(fold[y == c], minlength=n_folds)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(fold, probes.cv_folds(y, n_folds, seed=0))


def test_fewshot_one_shot_uses_fixed_l2(fewshot_data):
    res = fewshot_probe(*fewshot_data, shots=(1,), seeds=(0, 1))
    assert res[0]["per_seed_l2"] == [probes.ONE_SHOT_L2] * 2


def test_fewshot_seeds_are_reproducible_and_distinct(monkeypatch, fewshot_data):
    draws_a, *_ = record(monkeypatch)
    a = fewshot_probe(*fewshot_data, shots=(1, 2), seeds=(0, 1, 2))
    monkeypatch.undo()
    draws_b, *_ = record(monkeypatch)
    b = fewshot_probe(*fewshot_data, shots=(1, 2), seeds=(0, 1, 2))
    monkeypatch.undo()
    # Same seed -> same draw and same accuracies.
    assert [(k, s) for k, s, _ in draws_a] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert all(np.array_equal(da[2], db[2]) for da, db in zip(draws_a, draws_b))
    assert [r["per_seed"] for r in a] == [r["per_seed"] for r in b]
    # The draw depends only on the seed (not on the order of calls).
    alone = probes.draw_support(fewshot_data[1], np.arange(4), 2, 1)
    assert np.array_equal(alone, draws_a[4][2])
    # Different seeds -> different supports and different accuracies.
    for k in (1, 2):
        sets = [frozenset(d[2].tolist()) for d in draws_a if d[0] == k]
        assert len(set(sets)) == 3
    assert len(set(a[0]["per_seed"])) > 1 and len(set(a[1]["per_seed"])) > 1


def test_fewshot_result_format(fewshot_data):
    res = fewshot_probe(*fewshot_data, shots=(1, 2), seeds=(0, 1, 2))
    assert [r["shots"] for r in res] == [1, 2]
    for r in res:
        assert r["seeds"] == [0, 1, 2] and len(r["per_seed"]) == 3
        assert r["mean"] == pytest.approx(np.mean(r["per_seed"]))
        assert r["std"] == pytest.approx(np.std(r["per_seed"], ddof=1))
        assert all(0.0 <= a <= 1.0 for a in r["per_seed"])
    assert res[1]["mean"] > 0.4  # well above chance (0.25) on these blobs
    single = fewshot_probe(*fewshot_data, shots=(1,), seeds=(5,))
    assert math.isnan(single[0]["std"]) and single[0]["seeds"] == [5]


def test_fewshot_k_too_large_raises():
    x, y = blobs(60, 4, 3, 1.0, seed=11)
    y = np.concatenate([np.zeros(20), np.ones(25), np.full(5, 2), np.zeros(10)]).astype(np.int64)
    with pytest.raises(ValueError, match=r"^k=6 exceeds the smallest class \(class 2 has 5 train images\); "
                                         r"use shots <= 5$"):
        fewshot_probe(x, y, x, y, shots=(1, 6), seeds=(0,))


def test_fewshot_selection_ignores_test_labels(fewshot_data):
    xtr, ytr, xte, yte = fewshot_data
    a = fewshot_probe(xtr, ytr, xte, yte, shots=(3,), seeds=(0, 1))
    b = fewshot_probe(xtr, ytr, xte, (yte + 1) % 4, shots=(3,), seeds=(0, 1))
    assert a[0]["per_seed_l2"] == b[0]["per_seed_l2"]
    assert a[0]["per_seed"] != b[0]["per_seed"]


def test_inputs_validated():
    with pytest.raises(ValueError, match="labels"):
        knn_probe(np.ones((3, 2)), [0, 1], np.ones((1, 2)), [0])
    with pytest.raises(ValueError, match="2-D"):
        linear_probe(np.ones(3), [0, 1, 1], np.ones((1, 2)), [0])


def test_speed_benchmark_smoke(tmp_path):
    """benchmarks/probes_speed.py runs end to end on tiny sizes and writes its JSON."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "probes_speed.py"
    spec = importlib.util.spec_from_file_location("probes_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.json"
    args = ["--n", "300", "--n-test", "100", "--dims", "16", "--shots", "1,2", "--seeds", "0,1", "--threads", "1",
            "--out", str(out)]
    try:
        import sklearn  # noqa: F401
        args.append("--sklearn")
    except ImportError:
        pass
    assert bench.main(args) == 0
    res = json.loads(out.read_text())
    probes_run = {r["probe"] for r in res["results"]}
    assert {"linear", "knn k=20 T=0.07", "knn k=200 T=0.1", "fewshot 2x2"} <= probes_run
    assert res["machine"]["cpu_count"] and res["machine"]["torch"] == torch.__version__
    assert all(r["seconds"] >= 0 and 0.0 <= r["accuracy"] <= 1.0 for r in res["results"])


def test_knn_bounds_benchmark_smoke(tmp_path):
    """benchmarks/knn_bounds.py runs end to end on tiny sizes; its lower bounds are sums of its rows."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "knn_bounds.py"
    spec = importlib.util.spec_from_file_location("knn_bounds", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "kb.json"
    assert bench.main(["--n", "2000", "--queries", "300", "--dim", "32", "--chunk", "128", "--repeats", "1",
                       "--out", str(out)]) == 0
    rows = {r["row"]: r["seconds"] for r in json.loads(out.read_text())["results"]}
    assert {"knn_probe k=20 (fp32, exact)", "matmul int8 (torch._int_mm)", "top-k k=20 of fp32 scores"} <= set(rows)
    assert rows["lower bound fp32 + top-k k=20"] == pytest.approx(rows["matmul fp32"] + rows["top-k k=20 of fp32 scores"])


# ----------------------------------------------------------------------------- determinism (issue 17)

def _det_data(n=4500, nt=600, d=96, c=6, seed=0):
    rng = np.random.default_rng(seed)
    y, yt = rng.integers(0, c, n), rng.integers(0, c, nt)
    mu = rng.normal(size=(c, d)) * 0.35
    return ((mu[y] + rng.normal(size=(n, d))).astype(np.float32), y,
            (mu[yt] + rng.normal(size=(nt, d))).astype(np.float32), yt)


def _at_1_and_2_threads(fn):
    """``fn()`` at 1 and at 2 torch threads; each call must leave the caller's thread count as it found it."""
    before = torch.get_num_threads()
    out = []
    try:
        for th in (1, 2):
            torch.set_num_threads(th)
            out.append(fn())
            assert torch.get_num_threads() == th  # the caller's thread count is restored
    finally:
        torch.set_num_threads(before)
    return out


def test_probes_bit_identical_at_1_and_2_threads():
    """Same data and seeds at 1 and 2 threads: identical accuracies, selected l2 and fitted weights
    (torch.equal). Without eval.solver.one_thread the spectral preconditioner's eigh and the long-inner-
    dimension gradient GEMM round differently at 2 threads and the weights differ in the last bits."""
    x, y, xt, yt = _det_data()

    def run():
        lin = probes.linear_probe(x, y, xt, yt, l2_grid=[1e-3, 1e-1, 10.0], max_iter=60)
        few = probes.fewshot_probe(x, y, xt, yt, shots=[5], seeds=[0, 1], l2_grid=[1e-3, 1e-1, 10.0], max_iter=60)
        knn = probes.knn_probe(x, y, xt, yt, k=20, chunk=256)
        W = solver.fit_logreg_spectral(torch.as_tensor(x), torch.as_tensor(y), 6, [1e-2], tol=1e-6, max_iter=40)
        return lin, few, knn, W

    (l1, f1, k1, W1), (l2, f2, k2, W2) = _at_1_and_2_threads(run)
    assert l1 == l2 and f1 == f2 and k1 == k2
    assert torch.equal(W1[0], W2[0]) and torch.equal(W1[1], W2[1])


def test_large_designs_are_cut_into_row_parts_with_the_same_bits_at_1_and_2_threads():
    """A design of >= 2 * ROW_PART_MIN_ROWS rows is summed part by part (eval.solver.row_parts), the parts side
    by side on two threads; the cut depends on the row count only, so the linear probe, the standardiser and
    the objective are the same bits at 1 and 2 threads -- and they are the float64 answers to float32 rounding."""
    n = solver.ROW_PARTS * solver.ROW_PART_MIN_ROWS + 4001
    assert len(solver.row_parts(n)) == solver.ROW_PARTS and solver.row_parts(n)[-1][1] == n
    x, y, xt, yt = _det_data(n=n, nt=500, d=24, c=5)
    x = x * np.linspace(0.5, 3.0, 24, dtype=np.float32) + 7.0         # unstandardised: mean 7, spread scales
    X, Y = torch.as_tensor(x), torch.as_tensor(y)
    W = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(0)) * 0.1
    b = torch.zeros(2, 5)
    onehot_t = F.one_hot(Y, 5).float().t().contiguous()
    pen = torch.full((2, 24), 1e-3)
    def run():
        lin = probes.linear_probe(x, y, xt, yt, l2_grid=[1e-3, 1e-1, 10.0], max_iter=40)
        with solver.one_thread():
            obj = solver.logreg_objective(X, Y, onehot_t, W, b, pen, None)
        return lin, probes.standardiser(X), obj

    (l1, s1, o1), (l2, s2, o2) = _at_1_and_2_threads(run)
    assert l1 == l2
    assert all(torch.equal(a, c) for a, c in zip(s1, s2)) and all(torch.equal(a, c) for a, c in zip(o1, o2))
    X64 = X.double()
    assert torch.allclose(s1[0].double(), X64.mean(0), rtol=1e-6)
    assert torch.allclose(s1[1].double(), X64.std(0, unbiased=False), rtol=1e-5)
    # the objective against a float64 evaluation of the same formula
    Z = torch.einsum("acd,nd->anc", W.double(), X64) + b.double().unsqueeze(1)
    ce = (torch.logsumexp(Z, 2) - Z.gather(2, Y.view(1, -1, 1).expand(2, -1, 1)).squeeze(2)).mean(1)
    ref = ce + 0.5 * 1e-3 * (W.double() ** 2).sum((1, 2))
    assert torch.allclose(o1[0], ref, rtol=1e-6)
    G = (Z.softmax(2) - F.one_hot(Y, 5).double().unsqueeze(0)) / n
    gW = torch.einsum("anc,nd->acd", G, X64) + 1e-3 * W.double()
    assert torch.allclose(o1[1].double(), gW, atol=1e-6) and torch.allclose(o1[2].double(), G.sum(1), atol=1e-6)
