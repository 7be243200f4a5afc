"""Tests for eval/probes.py on small synthetic data (kept cheap: 1 thread, a few hundred points)."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval import probes  # noqa: E402
from eval.probes import (DEFAULT_L2_GRID, LinearProbe, fewshot_probe, fit_logreg, knn_probe,  # noqa: E402
                         linear_probe, stratified_split)

torch.set_num_threads(1)


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


# ----------------------------------------------------------------------------- selection protocol

def test_stratified_split_is_stratified_and_seeded():
    y = np.repeat(np.arange(4), [50, 30, 20, 10])
    fit, val = stratified_split(y, 0.1, seed=0)
    assert np.intersect1d(fit, val).size == 0 and np.union1d(fit, val).size == y.size
    assert np.bincount(y[val], minlength=4).tolist() == [5, 3, 2, 1]
    fit2, val2 = stratified_split(y, 0.1, seed=0)
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

    def spy_fit(self, X, Y, init=None):
        events.append(("fit", X.shape[0], self.l2))
        return orig_fit(self, X, Y, init=init)

    def spy_score(self, X, Y):
        events.append(("score", "test" if X.data_ptr() == xte.data_ptr() else "val", self.l2))
        return orig_score(self, X, Y)

    monkeypatch.setattr(LinearProbe, "fit", spy_fit)
    monkeypatch.setattr(LinearProbe, "score", spy_score)
    res = linear_probe(xtr, ytr, xte, yte, l2_grid=grid)
    # Test features are scored exactly once, last, by a model refitted on all 300 train points.
    assert [e for e in events if e[1] == "test"] == [events[-1]]
    assert events[-2] == ("fit", 300, res["l2"])
    assert all(e[1] < 300 for e in events[:-2] if e[0] == "fit")
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


def test_knn_high_accuracy_on_blobs():
    x, y = blobs(600, 16, 5, 2.0, seed=9)
    assert knn_probe(*split(x, y, 400), k=10)["accuracy"] > 0.95


# ----------------------------------------------------------------------------- few-shot

@pytest.fixture(scope="module")
def fewshot_data():
    x, y = blobs(900, 16, 4, 0.45, seed=10)
    return split(x, y, 300)


def record(monkeypatch):
    """Spy on the support draws and on every LinearProbe fit made by fewshot_probe."""
    draws, fits = [], []
    orig_draw, orig_fit = probes._draw_support, LinearProbe.fit

    def spy_draw(y_np, classes, k, seed):
        idx = orig_draw(y_np, classes, k, seed)
        draws.append((k, seed, idx.copy()))
        return idx

    def spy_fit(self, X, Y, init=None):
        fits.append((X.clone(), Y.clone(), self.l2))
        return orig_fit(self, X, Y, init=init)

    monkeypatch.setattr(probes, "_draw_support", spy_draw)
    monkeypatch.setattr(LinearProbe, "fit", spy_fit)
    return draws, fits


def test_fewshot_draws_exactly_k_per_class_from_train(monkeypatch, fewshot_data):
    xtr, ytr, xte, yte = fewshot_data
    for k in (1, 3):
        draws, fits = record(monkeypatch)
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
        # Cross-validation fits (k >= 2) only ever see rows of the support set.
        support_rows = {tuple(r) for r in xtr[idx].tolist()}
        for X, _, _ in fits[:-1]:
            assert X.shape[0] < 4 * k and all(tuple(r) in support_rows for r in X.tolist())
    assert res[0]["per_seed_l2"][0] in DEFAULT_L2_GRID


@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_fewshot_cv_folds_are_stratified(k):
    n_folds = min(k, 5)
    y = np.repeat(np.arange(4), k)
    fold = probes._cv_folds(y, n_folds, seed=0)
    assert set(fold.tolist()) == set(range(n_folds))
    for c in range(4):  # every class spread evenly over the folds
        counts = np.bincount(fold[y == c], minlength=n_folds)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(fold, probes._cv_folds(y, n_folds, seed=0))


def test_fewshot_one_shot_uses_fixed_l2(fewshot_data):
    res = fewshot_probe(*fewshot_data, shots=(1,), seeds=(0, 1))
    assert res[0]["per_seed_l2"] == [probes.ONE_SHOT_L2] * 2


def test_fewshot_seeds_are_reproducible_and_distinct(monkeypatch, fewshot_data):
    draws_a, _ = record(monkeypatch)
    a = fewshot_probe(*fewshot_data, shots=(1, 2), seeds=(0, 1, 2))
    monkeypatch.undo()
    draws_b, _ = record(monkeypatch)
    b = fewshot_probe(*fewshot_data, shots=(1, 2), seeds=(0, 1, 2))
    monkeypatch.undo()
    # Same seed -> same draw and same accuracies.
    assert [(k, s) for k, s, _ in draws_a] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert all(np.array_equal(da[2], db[2]) for da, db in zip(draws_a, draws_b))
    assert [r["per_seed"] for r in a] == [r["per_seed"] for r in b]
    # The draw depends only on the seed (not on the order of calls).
    alone = probes._draw_support(fewshot_data[1], np.arange(4), 2, 1)
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
