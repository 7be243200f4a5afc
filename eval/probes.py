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

Solver
------
All logistic regressions go through :func:`_fit_logreg_batch`, a vectorised L-BFGS that fits many
independent problems on one design matrix at once (each with its own L-BFGS state, line search and
stopping test). The candidates of a selection -- every ``l2`` of the grid on the fit/val split, every
(fold, ``l2``) pair of the few-shot cross-validation -- are fitted together as one stacked problem,
solved to the same precision as the model that is scored on test (:data:`SELECT_TOL`, at most
:data:`SELECT_MAX_ITER` iterations, the defaults of :class:`LinearProbe`), so the selected ``l2`` is a
property of the objective, not of how early the solver stopped. The model that is scored on test is
then refitted alone (``tol=1e-6``, ``max_iter``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_L2_GRID",
    "ONE_SHOT_L2",
    "LinearProbe",
    "fewshot_probe",
    "fit_logreg",
    "knn_probe",
    "linear_probe",
    "stratified_split",
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

#: L-BFGS memory (correction pairs kept per problem); 10 is the scipy / scikit-learn default.
LBFGS_HISTORY = 10

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

_ARMIJO_C1 = 1e-4
_APPROX_EPS = 1e-6  # relative loss increase tolerated by the approximate Wolfe test
_MAX_LINE_SEARCH = 25
_TOL_CHANGE = 1e-10  # stop when no coordinate moves by more than this (below float32 resolution of the weights)


_ROW_CHUNK_BYTES = 4 << 20  # rows of X per block in the objective: ~4 MiB, so a block is read from RAM once


def _logreg_objective(X, y, onehot_t, W, b, penalty, weight):
    """Objectives and gradients of ``A`` independent multinomial logistic regressions on shared ``X``.

    ``X [N, D]``, ``y [N]``, ``onehot_t [C, N]`` (one-hot labels, transposed), ``W [A, C, D]``,
    ``b [A, C]``, ``penalty [A, D]`` (per problem and feature l2 strength), ``weight [A, N]`` (each
    row sums to 1) or ``None`` (uniform ``1/N``). Problem ``a`` is ``sum_i weight[a, i] * CE_i + 1/2 *
    sum_{c,d} penalty[a, d] * W[a, c, d]^2``. Returns ``loss [A]`` (float64), ``gW [A, C, D]``,
    ``gb [A, C]``.

    Logits are computed as ``W X^T`` (``[A*C, rows]``, faster than ``X W^T`` for few classes) block
    by block over the rows, so each block of ``X`` serves the forward and the backward product while
    it is still in cache. Cross-entropy and gradient are computed from the logit differences to the
    true class, which keeps their relative precision for confidently classified points (separable
    data, weak regularisation: losses of 1e-6 and below), where ``lse - z_y`` would cancel in float32.
    """
    A, C, D = W.shape
    N = X.shape[0]
    Wm, bm = W.reshape(A * C, D), b.reshape(A * C, 1)
    gW = torch.zeros(A * C, D, device=X.device)
    gb = torch.zeros(A * C, device=X.device)
    loss = torch.zeros(A, dtype=torch.float64, device=X.device)
    step = max(256, _ROW_CHUNK_BYTES // (4 * max(D, 1)))
    if hasattr(X, "blocks"):  # a row source on disk (eval.stream_probes.RowSource): read block by block
        blocks = X.blocks(step)
    else:
        blocks = ((s, X[s:s + step], y[s:s + step]) for s in range(0, N, step))
    for s, Xc, yc in blocks:
        n = Xc.shape[0]
        Z = torch.addmm(bm, Wm, Xc.t()).view(A, C, n)
        # Cross-entropy and its gradient without cancellation: with d_c = z_c - z_y, CE = softplus(
        # logsumexp_{c != y} d_c) and softmax_c = exp(d_c - CE) for c != y, softmax_y - 1 = -sum of
        # those. The textbook lse - z_y (and softmax_y - 1) lose all digits in float32 once a point
        # is classified with a margin, which stalls the weakly regularised fits on separable data.
        oh = (onehot_t[:, s:s + n] if onehot_t is not None
              else F.one_hot(yc, C).to(torch.float32).t()).unsqueeze(0)         # [1, C, n]
        Z.sub_(Z.gather(1, yc.view(1, 1, n).expand(A, 1, n)))                  # d = z - z_y
        Z.masked_fill_(oh.bool(), float("-inf"))
        ce = F.softplus(torch.logsumexp(Z, dim=1))                               # [A, n]
        G = Z.sub_(ce.unsqueeze(1)).exp_()                                       # softmax, 0 at y
        G.sub_(oh * G.sum(1, keepdim=True))                                      # softmax - onehot
        if weight is None:
            loss += ce.sum(1, dtype=torch.float64) / N
            G.mul_(1.0 / N)
        else:
            wc = weight[:, s:s + step]
            loss += (ce.double() * wc.double()).sum(1)
            G.mul_(wc.unsqueeze(1))
        G = G.view(A * C, n)
        gW.addmm_(G, Xc)
        gb += G.sum(1)
    gW = gW.view(A, C, D)
    reg = W * penalty.unsqueeze(1)
    gW.add_(reg)
    loss += 0.5 * (W * reg).sum((1, 2)).double()
    return loss, gW, gb.view(A, C)


@torch.no_grad()
def _fit_logreg_batch(X, y, num_classes: int, penalty, weight=None, *, tol: float, max_iter: int,
                      init=None, history: int = LBFGS_HISTORY, precond=None,
                      rotation=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``P`` independent multinomial logistic regressions that share the design matrix ``X``.

    ``X [N, D]`` (float32), ``y [N]`` (int64), ``penalty [P]`` (an ``l2`` per problem) or ``[P, D]``
    (an ``l2`` per problem and feature), ``weight [P, N]`` (non-negative, normalised here to sum to 1
    per problem; e.g. a 0/1 mask of the rows problem ``p`` is fitted on) or ``None`` (all rows,
    uniform). Problem ``p`` minimises ``sum_i w_pi CE(softmax(W_p x_i + b_p), y_i) + 1/2 sum_cd
    penalty_pd W_pcd^2`` (with uniform weights: mean cross-entropy + l2/2 ||W_p||^2 as in
    :func:`fit_logreg`).

    Every problem runs its own L-BFGS (own correction pairs and scaling, own backtracking line search
    -- Armijo, or Hager & Zhang's approximate-Wolfe form of it once loss differences fall below
    float32 resolution -- own convergence test), so the iterates are those of ``P`` separate runs;
    they are merely vectorised: one ``[P*C, D] x [D, N]`` product per evaluation instead of ``P``
    thin ones, and problems that have converged are dropped from the batch. A problem stops when its
    max-abs gradient is ``<= tol``, when its step moves no weight by more than 1e-10, when its line
    search finds no decrease (float32 resolution), or after ``max_iter`` iterations (no stop on a
    small loss change: see :func:`_logreg_objective` on tiny losses). ``init`` is an optional ``(W [P, C, D], b [P, C])`` warm start. Returns
    ``W [P, C, D]`` and ``b [P, C]``.

    ``precond`` (``[P, C*D + C]``, positive) is a diagonal initial inverse Hessian per problem: the
    two-loop recursion starts from ``gamma * diag(precond)`` instead of ``gamma * I`` (preconditioned
    L-BFGS; ``gamma = s'y / y'My``). ``rotation`` (``[D, D]`` orthogonal ``U``) says that ``X`` holds
    rotated features ``X0 U``: the gradient test is then made on the weights in the original
    coordinates (``gW U'``), so the stopping rule is the unrotated problem's. See
    :func:`_fit_logreg_spectral`.
    """
    N, D = X.shape
    C = int(num_classes)
    dev = X.device
    penalty = torch.as_tensor(penalty, dtype=torch.float32, device=dev)
    if penalty.ndim == 1:
        penalty = penalty.unsqueeze(1).expand(-1, D)
    P = penalty.shape[0]
    if penalty.shape != (P, D):
        raise ValueError(f"penalty must be [P] or [P, {D}], got {tuple(penalty.shape)}")
    if bool((penalty < 0).any()):
        raise ValueError("l2 must be >= 0")
    if weight is not None:
        weight = torch.as_tensor(weight, dtype=torch.float32, device=dev)
        if weight.shape != (P, N):
            raise ValueError(f"weight must be [{P}, {N}], got {tuple(weight.shape)}")
        weight = weight / weight.sum(1, keepdim=True)
    if hasattr(X, "blocks"):  # a row source streams its labels with its rows
        onehot_t = None
    else:
        onehot_t = F.one_hot(y, C).to(torch.float32).t().contiguous() if N else torch.zeros(C, 0, device=dev)
    nW = C * D
    n = nW + C
    theta = torch.zeros(P, n, device=dev)
    if init is not None:
        theta[:, :nW] = init[0].reshape(P, nW)
        theta[:, nW:] = init[1].reshape(P, C)
    out = theta.clone()

    ids = torch.arange(P, device=dev)          # problems still running (rows of the state below)
    pen, wgt = penalty, weight

    def evaluate(th, pen_, wgt_):
        loss, gW, gb = _logreg_objective(X, y, onehot_t, th[:, :nW].view(-1, C, D), th[:, nW:], pen_, wgt_)
        return loss, torch.cat([gW.reshape(-1, nW), gb], 1)

    M = None
    if precond is not None:
        M = torch.as_tensor(precond, dtype=torch.float32, device=dev)
        if M.shape != (P, n) or not bool((M > 0).all()):
            raise ValueError(f"precond must be positive and [{P}, {n}], got {tuple(M.shape)}")

    def gmax(g_):  # max-abs gradient, in the original coordinates when X is rotated
        if rotation is None:
            return g_.abs().amax(1)
        gw = g_[:, :nW].reshape(-1, D) @ rotation.t()
        return torch.maximum(gw.abs().view(g_.shape[0], -1).amax(1), g_[:, nW:].abs().amax(1))

    f, g = evaluate(theta, pen, wgt)
    S = torch.zeros(history, P, n, device=dev)   # correction pairs, ring buffer; rho = 0 marks unused
    Y = torch.zeros(history, P, n, device=dev)
    rho = torch.zeros(history, P, device=dev)
    gamma = torch.ones(P, device=dev)
    vdot = torch.linalg.vecdot
    done = gmax(g) <= tol
    for it in range(max_iter):
        if bool(done.any()):                    # write back finished problems, shrink the batch
            out[ids[done]] = theta[done]
            keep = ~done
            ids, theta, f, g, S, Y, rho, gamma = (ids[keep], theta[keep], f[keep], g[keep], S[:, keep],
                                                  Y[:, keep], rho[:, keep], gamma[keep])
            pen = pen[keep]
            wgt = wgt[keep] if wgt is not None else None
            M = M[keep] if M is not None else None
        A = ids.numel()
        if A == 0:
            break
        # Two-loop recursion: d = -H g for every problem at once (rho = 0 entries are no-ops).
        d = g.neg()
        slots = [(it - 1 - j) % history for j in range(min(it, history))]  # newest first
        alpha = []
        for s in slots:
            a = rho[s] * vdot(S[s], d)
            d.addcmul_(a.unsqueeze(1), Y[s], value=-1.0)
            alpha.append(a)
        d.mul_(gamma.unsqueeze(1) if M is None else gamma.unsqueeze(1) * M)
        for s, a in zip(reversed(slots), reversed(alpha)):
            d.addcmul_((a - rho[s] * vdot(Y[s], d)).unsqueeze(1), S[s])
        gtd = vdot(g, d)
        bad = ~(gtd < 0)                        # not a descent direction (should not happen): steepest descent
        if bool(bad.any()):
            d[bad] = -g[bad]
            gtd = vdot(g, d)
            rho[:, bad] = 0.0
        if it == 0:   # unscaled first step, as torch's LBFGS
            t = torch.clamp(1.0 / d.abs().sum(1), max=1.0)
        else:
            t = torch.ones(A, device=dev)
        # Backtracking line search, per problem: Armijo, or its derivative form (Hager & Zhang's
        # approximate Wolfe condition) once the loss changes by less than its float32 resolution near
        # the optimum; quadratic interpolation of phi(t) from phi(0), phi'(0), phi(t), kept in
        # [0.1 t, 0.5 t]. Only the problems still searching are evaluated again.
        f_new = g_new = None
        pending = None
        sel = None                              # rows being evaluated; None: all
        for _ in range(_MAX_LINE_SEARCH):
            if sel is None:
                f0, gtd0, t0, d0 = f, gtd, t, d
                f_try, g_try = evaluate(torch.addcmul(theta, t.unsqueeze(1), d), pen, wgt)
            else:
                f0, gtd0, t0, d0 = f[sel], gtd[sel], t[sel], d[sel]
                f_try, g_try = evaluate(torch.addcmul(theta[sel], t0.unsqueeze(1), d0), pen[sel],
                                        wgt[sel] if wgt is not None else None)
            ok = ((f_try <= f0 + _ARMIJO_C1 * t0.double() * gtd0.double())
                  | ((vdot(g_try, d0) <= (2 * _ARMIJO_C1 - 1) * gtd0) & (f_try <= f0 + _APPROX_EPS * f0.abs())))
            if sel is None:
                if bool(ok.all()):
                    f_new, g_new = f_try, g_try
                    break
                f_new, g_new = f.clone(), g.clone()
                pending = torch.ones(A, dtype=torch.bool, device=dev)
                rows = torch.arange(A, device=dev)
            else:
                rows = sel
            f_new[rows[ok]] = f_try[ok]
            g_new[rows[ok]] = g_try[ok]
            pending[rows[ok]] = False
            curv = (f_try - f0 - gtd0.double() * t0.double()).clamp_min(1e-300)
            t_q = (-gtd0.double() * t0.double() ** 2 / (2 * curv)).float()
            t[rows[~ok]] = torch.minimum(torch.maximum(t_q, 0.1 * t0), 0.5 * t0)[~ok]
            sel = pending.nonzero().squeeze(1)
            if sel.numel() == 0:
                break
        slot = it % history
        s_vec = torch.mul(d, t.unsqueeze(1), out=S[slot])
        y_vec = torch.sub(g_new, g, out=Y[slot])
        if pending is not None and bool(pending.any()):  # no decrease found: float32 resolution reached
            failed = pending
            s_vec[failed] = 0.0
        else:
            failed = torch.zeros(A, dtype=torch.bool, device=dev)
        sy = vdot(s_vec, y_vec)
        yy = vdot(y_vec, y_vec) if M is None else vdot(y_vec, y_vec * M)
        valid = (sy > 1e-10) & ~failed
        rho[slot] = torch.where(valid, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        gamma = torch.where(valid, sy / yy.clamp_min(1e-30), gamma)
        theta.add_(s_vec)
        f, g = f_new, g_new
        # No stop on a small loss change: losses of nearly separated data are tiny, and an absolute
        # loss-change test (torch's LBFGS) stops such fits far from their optimum.
        done = failed | (gmax(g) <= tol) | (s_vec.abs().amax(1) <= _TOL_CHANGE)
    out[ids] = theta
    return out[:, :nW].reshape(P, C, D), out[:, nW:].contiguous()


def _precond_kappa(num_classes: int) -> float:
    """Curvature scale of the preconditioner: the cross-entropy Hessian of a class block is about
    ``kappa * X'X / N`` with ``kappa = p (1 - p)``; at the start (uniform predictions) ``p = 1 / C``.
    Only the ratio of ``kappa * eigenvalue`` to ``l2`` shapes the preconditioner (L-BFGS rescales it)."""
    return (1.0 / num_classes) * (1.0 - 1.0 / num_classes) if num_classes > 1 else 0.25


@torch.no_grad()
def _fit_logreg_spectral(X, y, num_classes: int, l2s, *, tol: float, max_iter: int, init=None):
    """:func:`_fit_logreg_batch` for ``P`` problems with a scalar ``l2`` each (uniform row weights),
    solved in the eigenbasis of ``X'X / N`` with a diagonal preconditioner; same objectives, same
    minimisers, same stopping rule (the gradient test is made in the original coordinates).

    Why: L-BFGS needs many iterations when the Hessian's eigenvalues spread over decades, and on
    features they do -- ``kappa * lambda_j + l2`` over the covariance eigenvalues ``lambda_j``, from
    ``l2`` (1e-6) to tens. Rotating the features by the eigenvectors ``U`` leaves the penalty
    ``||W||^2`` unchanged (``||W U|| = ||W||``), and in that basis the Hessian is close to diagonal, so
    the initial inverse Hessian ``diag(1 / (kappa * lambda_j + l2))`` (bias: ``1 / kappa``) removes most
    of the spread. The rotation costs one ``D x D`` eigendecomposition and one ``N x D x D`` product.
    Returns ``W [P, C, D]`` (original coordinates) and ``b [P, C]``.
    """
    N, D = X.shape
    C = int(num_classes)
    l2s = torch.as_tensor(l2s, dtype=torch.float32, device=X.device).reshape(-1)
    P = l2s.numel()
    cov = (X.t() @ X).double() / max(N, 1)
    evals, U = torch.linalg.eigh(cov)
    U = U.to(torch.float32)
    Xr = X @ U
    kappa = _precond_kappa(C)
    mw = 1.0 / (kappa * evals.clamp_min(0).to(torch.float32).unsqueeze(0) + l2s.unsqueeze(1)).clamp_min(1e-12)
    M = torch.cat([mw.unsqueeze(1).expand(P, C, D).reshape(P, C * D),
                   torch.full((P, C), 1.0 / kappa, device=X.device)], 1)
    M = M / M[:, :C * D].mean(1, keepdim=True)  # scale is L-BFGS's business (gamma); keep d ~ g at the start
    init_r = None if init is None else (init[0] @ U, init[1])
    Wr, b = _fit_logreg_batch(Xr, y, C, l2s, tol=tol, max_iter=max_iter, init=init_r, precond=M, rotation=U)
    return Wr @ U.t(), b


def fit_logreg(X, y, num_classes: int, l2: float, max_iter: int = 500, init=None,
               tol: float = 1e-6, spectral: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, all classes jointly, full batch, L-BFGS.

    Minimises ``mean_i CE(softmax(W x_i + b), y_i) + l2 / 2 * ||W||_F^2`` (``b`` not penalised)
    on ``X`` exactly as given (no standardisation here; see :class:`LinearProbe`).

    ``init`` is an optional ``(W, b)`` warm start (e.g. the solution at a neighbouring ``l2``).
    ``tol`` bounds the max-abs gradient at convergence. Returns ``W [C, D]`` and ``b [C]``
    (float32, on ``X``'s device). This is :func:`_fit_logreg_batch` with a single problem
    (``spectral=True``: :func:`_fit_logreg_spectral`, same objective and stopping rule, preconditioned).
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
    fit = _fit_logreg_spectral if spectral else _fit_logreg_batch
    W, b = fit(X, y, C, [float(l2)], tol=tol, max_iter=max_iter, init=init)
    return W[0], b[0]


def _standardiser(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the columns of ``X``; constant features (std <= 1e-6 * max std) get std 1."""
    mean = X.mean(0)
    std = X.std(0, unbiased=False)
    # Constant features carry no information: leave them at 0 rather than dividing by ~0.
    return mean, torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))


class LinearProbe:
    """Standardisation (train mean/std) + multinomial logistic regression.

    ``fit`` computes the statistics on the features it is given and applies the same affine map in
    ``predict``/``predict_proba``/``score``. ``coef_``/``intercept_`` live in the standardised space.
    """

    def __init__(self, num_classes: int, l2: float, max_iter: int = 500, tol: float = 1e-6,
                 spectral: bool = False):
        self.num_classes = int(num_classes)
        self.l2 = float(l2)
        self.max_iter = max_iter
        self.tol = tol
        self.spectral = spectral
        self.mean_ = self.std_ = self.coef_ = self.intercept_ = None

    def transform(self, X) -> torch.Tensor:
        if self.mean_ is None:
            raise RuntimeError("LinearProbe is not fitted; call fit first")
        X = _as_features(X, device=self.mean_.device)
        return (X - self.mean_) / self.std_

    def fit(self, X, y, init=None) -> LinearProbe:
        X = _as_features(X)
        self.mean_, self.std_ = _standardiser(X)
        self.coef_, self.intercept_ = fit_logreg(self.transform(X), y, self.num_classes, self.l2,
                                                 max_iter=self.max_iter, init=init, tol=self.tol,
                                                 spectral=self.spectral)
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


def _stacked_predict(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Predicted class of every row of ``X [N, D]`` under every model ``W [P, C, D], b [P, C]`` -> ``[N, P]``."""
    P, C, D = W.shape
    return torch.addmm(b.reshape(1, P * C), X, W.reshape(P * C, D).t()).view(-1, P, C).argmax(2)


def _select_l2(fit_x, fit_y, val_x, val_y, num_classes, grid, max_iter, spectral=True):
    """Validation accuracy of every ``l2`` in ``grid``; best index (ties -> larger l2) and the accuracies.

    Each candidate is a :class:`LinearProbe` on the fit part (standardised with the fit part's
    statistics); all of them are fitted as one stacked problem (:func:`_fit_logreg_batch`) to
    :data:`SELECT_TOL` / ``min(max_iter, SELECT_MAX_ITER)``.
    """
    mean, std = _standardiser(fit_x)
    fit = _fit_logreg_spectral if spectral else _fit_logreg_batch
    W, b = fit((fit_x - mean) / std, fit_y, num_classes, grid, tol=SELECT_TOL, max_iter=min(max_iter, SELECT_MAX_ITER))
    pred = _stacked_predict((val_x - mean) / std, W, b)
    accs = [_accuracy(pred[:, i], val_y) for i in range(len(grid))]
    best = max(range(len(grid)), key=lambda i: (accs[i], grid[i]))
    return best, accs, (W[best], b[best], mean, std)


def _restandardise(W, b, mean, std, new_mean, new_std):
    """The same logits ``W (x - mean) / std + b`` written for another standardisation
    ``(x - new_mean) / new_std``: ``W' = W * new_std / std``, ``b' = b + W ((new_mean - mean) / std)``."""
    return W * (new_std / std), b + W @ ((new_mean - mean) / std)


def linear_probe(train_x, train_y, test_x, test_y, *, num_classes: int | None = None,
                 l2_grid=None, val_fraction: float = 0.1, seed: int = 0, max_iter: int = 500,
                 spectral: bool = True) -> dict:
    """Linear probe protocol (see module docstring).

    1. Split train into fit/val with :func:`stratified_split` (``val_fraction``, ``seed``).
    2. For every ``l2`` in ``l2_grid`` (default :data:`DEFAULT_L2_GRID`) fit a :class:`LinearProbe`
       on the fit part and measure validation accuracy; pick the best (ties -> larger ``l2``). The
       candidates are fitted together (see :func:`_select_l2`) to :data:`SELECT_TOL`, at most
       ``min(max_iter, SELECT_MAX_ITER)`` iterations.
    3. Refit on all of train with that ``l2`` (``tol=1e-6``, ``max_iter``; warm-started from the
       selected candidate) and report test accuracy (test data is read only here).

    ``spectral`` (default): every fit is solved in the eigenbasis of the features' covariance with a
    diagonal preconditioner (:func:`_fit_logreg_spectral`): the same objectives and stopping rule,
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

    fit_idx, val_idx = stratified_split(train_y, val_fraction, seed)
    if val_idx.size == 0:
        raise ValueError("validation split is empty: every class has fewer than 2 training examples")
    fit_idx_t, val_idx_t = torch.as_tensor(fit_idx, device=dev), torch.as_tensor(val_idx, device=dev)
    best, accs, selected = _select_l2(train_x[fit_idx_t], train_y[fit_idx_t], train_x[val_idx_t],
                                      train_y[val_idx_t], C, grid, max_iter, spectral=spectral)
    l2 = grid[best]

    # The refit starts from the selected candidate (same l2, 90% of the same data), moved to the
    # full train's standardisation: same objective and stopping rule, far fewer iterations.
    probe = LinearProbe(C, l2, max_iter=max_iter, spectral=spectral)
    init = _restandardise(*selected, *_standardiser(train_x))
    probe.fit(train_x, train_y, init=init)
    test_x = _as_features(test_x, device=dev)  # first time test data is touched
    acc = probe.score(test_x, _as_labels(test_y, test_x.shape[0], device=dev))
    return {"accuracy": acc, "l2": l2, "val_accuracy": accs[best], "grid": grid, "n_train": int(train_x.shape[0]),
            "n_test": int(test_x.shape[0]), "val_accuracies": accs}


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
    # One similarity buffer for all chunks: a fresh [chunk, N_train] tensor per chunk (245 MB at 1024 x
    # 60k) is a fresh mmap whose pages the kernel zero-fills on first touch, ~10% of the probe's time.
    buf = torch.empty(min(chunk, test_x.shape[0]), train_n.shape[0], device=dev)
    for s in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[s:s + chunk], dim=1)
        scores = torch.mm(q, train_n.t(), out=buf[:q.shape[0]])
        sim, idx = scores.topk(k, dim=1)
        # exp((sim - max) / T): same vote ratios as exp(sim / T) without overflow for small T.
        w = ((sim - sim[:, :1]) / temperature).exp()
        votes = torch.zeros(q.shape[0], C, device=dev).scatter_add_(1, train_y[idx], w)
        correct += int((votes.argmax(1) == test_y[s:s + chunk]).sum())
    acc = correct / test_x.shape[0] if test_x.shape[0] else float("nan")
    return {"accuracy": acc, "k": k, "temperature": float(temperature)}


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


def _cv_fold_predictions(x, y, num_classes, grid, fold, *, tol=None, max_iter=None):
    """Predictions ``[N, F, G]`` on every row of the support set ``x, y`` of the model fitted on the
    rows outside fold ``f`` (``fold [N]`` holds fold ids ``0..F-1``) with ``l2 = grid[g]``.

    Each model is the :class:`LinearProbe` of its training folds (standardised with *their*
    statistics). All ``F * G`` fits are solved as one stacked problem on the support set standardised
    once with its own statistics ``(m, s)``: the fold-``f`` problem in its coordinates
    ``(x - m_f) / s_f`` is the same problem in the shared coordinates with weights ``V = W * s / s_f``
    (the offset goes into the unpenalised bias) and penalty ``l2 * (s_f / s)^2`` per feature, so its
    minimiser and its predictions are unchanged. Fold membership enters as a 0/1 sample weight.
    ``tol`` / ``max_iter`` default to :data:`SELECT_TOL` / :data:`SELECT_MAX_ITER`.
    """
    tol = SELECT_TOL if tol is None else tol
    max_iter = SELECT_MAX_ITER if max_iter is None else max_iter
    n_folds = int(fold.max()) + 1
    mean, std = _standardiser(x)
    xs = (x - mean) / std
    grid_t = torch.tensor(grid, dtype=torch.float32, device=x.device)
    penalty, weight = [], []
    for f in range(n_folds):
        tr = fold != f
        ratio = _standardiser(x[tr])[1] / std
        penalty.append(grid_t.unsqueeze(1) * ratio.pow(2).unsqueeze(0))   # [G, D]
        weight.append(tr.to(torch.float32).expand(len(grid), -1))           # [G, N]
    W, b = _fit_logreg_batch(xs, y, num_classes, torch.cat(penalty), torch.cat(weight), tol=tol,
                             max_iter=max_iter)
    return _stacked_predict(xs, W, b).view(-1, n_folds, len(grid))         # problem index = f * G + g


def _cv_select_l2(x, y, num_classes, grid, n_folds, seed, max_iter):
    """Stratified ``n_folds``-fold CV on the support set: index of the ``l2`` in ``grid`` with the best
    mean held-out accuracy over folds (ties -> larger ``l2``). Fits as in :func:`_cv_fold_predictions`,
    to :data:`SELECT_TOL` / ``min(max_iter, SELECT_MAX_ITER)``."""
    fold = torch.as_tensor(_cv_folds(y.cpu().numpy(), n_folds, seed), device=x.device)
    pred = _cv_fold_predictions(x, y, num_classes, grid, fold, tol=SELECT_TOL,
                                max_iter=min(max_iter, SELECT_MAX_ITER))
    total = np.zeros(len(grid))
    for f in range(n_folds):
        va = fold == f
        total += np.asarray([_accuracy(pred[va, f, i], y[va]) for i in range(len(grid))])
    mean_acc = total / n_folds
    return max(range(len(grid)), key=lambda i: (mean_acc[i], grid[i]))


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
    :func:`_cv_fold_predictions`, to :data:`SELECT_TOL` / ``min(max_iter, SELECT_MAX_ITER)``); for
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
        results.append({"shots": k, "mean": float(np.mean(accs)), "std": std, "per_seed": accs, "seeds": list(seeds),
                        "per_seed_l2": l2s})
    return results
