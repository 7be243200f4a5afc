"""The stacked, vectorised L-BFGS solver behind every logistic regression of :mod:`eval.probes` and
:mod:`eval.stream_probes`.

:func:`fit_logreg_batch` fits many independent multinomial logistic regressions on one design
matrix at once (each with its own L-BFGS state, line search and stopping test): the candidates of a
selection -- every ``l2`` of a grid, every (fold, ``l2``) pair of a cross-validation -- are solved as
one stacked problem, one ``[P*C, D] x [D, N]`` product per objective evaluation instead of ``P`` thin
ones. :func:`fit_logreg_spectral` is the same solve in the eigenbasis of the features' covariance with
a diagonal preconditioner (same objectives, minimisers and stopping rule, several times fewer
iterations on real features). :func:`logreg_objective` is the shared objective and gradient,
:func:`stacked_predict` the predictions of a stack of models.

Inputs are plain tensors (float32 features ``[N, D]``, int64 labels ``[N]``) or, for the design
matrix, a row source with ``blocks(step)`` (:class:`eval.stream_probes.RowSource`) read block by
block from disk. No standardisation and no input checking happen here: :mod:`eval.probes` does both
(:func:`eval.probes.fit_logreg` is the checked single-problem entry point).
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

__all__ = [
    "APPROX_EPS",
    "ARMIJO_C1",
    "LBFGS_HISTORY",
    "MAX_LINE_SEARCH",
    "ROW_CHUNK_BYTES",
    "TOL_CHANGE",
    "fit_logreg_batch",
    "fit_logreg_spectral",
    "gram",
    "logreg_objective",
    "one_thread",
    "single_threaded",
    "precond_kappa",
    "spectral_basis",
    "run_parallel",
    "ROW_PARTS",
    "ROW_PART_MIN_ROWS",
    "block_rows",
    "even_parts",
    "fill_row_parts",
    "row_parts",
    "rotate_rows",
    "thread_budget",
    "stacked_predict",
]

#: L-BFGS memory (correction pairs kept per problem); 10 is the scipy / scikit-learn default.
LBFGS_HISTORY = 10

#: Sufficient-decrease constant of the backtracking (Armijo) line search.
ARMIJO_C1 = 1e-4
#: Relative loss increase tolerated by the approximate Wolfe test (Hager & Zhang).
APPROX_EPS = 1e-6
#: Most trial steps per line search.
MAX_LINE_SEARCH = 25
#: Stop when no coordinate moves by more than this (below float32 resolution of the weights).
TOL_CHANGE = 1e-10
#: Rows of ``X`` per block in the objective: ~4 MiB, so a block is read from RAM once.
ROW_CHUNK_BYTES = 4 << 20
#: A design with many rows is cut into at most this many contiguous parts of rows, each of at least
#: :data:`ROW_PART_MIN_ROWS` rows (:func:`row_parts`). Every product over the rows -- the objective and its
#: gradient, the covariance and the rotation of the spectral basis -- is computed part by part, each part on
#: one thread, the parts side by side when threads are free (:func:`run_parallel`), and their sums added in
#: part order. The cut depends on the row count alone, so the bits are the same at one thread and at many;
#: a design below ``2 * ROW_PART_MIN_ROWS`` rows is one part and is computed exactly as before the cut existed.
ROW_PARTS = 4
ROW_PART_MIN_ROWS = 8192


def even_parts(n: int, k: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` bounds of ``k`` contiguous, nearly equal, non-empty parts of ``range(n)`` (fewer when ``n < k``)."""
    k = max(1, min(int(k), n))
    edges = [round(i * n / k) for i in range(k + 1)]
    return [(edges[i], edges[i + 1]) for i in range(k) if edges[i + 1] > edges[i]]


def block_rows(dim: int) -> int:
    """Rows of a ``dim``-wide float32 block of :data:`ROW_CHUNK_BYTES` (at least 256)."""
    return max(256, ROW_CHUNK_BYTES // (4 * max(dim, 1)))


def row_parts(n: int) -> list[tuple[int, int]]:
    """The parts of a design with ``n`` rows (see :data:`ROW_PARTS`); always at least one, ``[(0, n)]``."""
    return even_parts(n, min(ROW_PARTS, n // ROW_PART_MIN_ROWS)) or [(0, n)]


@contextlib.contextmanager
def one_thread():
    """Run the block on one intra-op thread, then restore the caller's thread count.

    Why: a probe's number must not depend on how many threads computed it. Two kinds of kernel give
    different float32 bits at 1 and 2 threads (measured with torch 2.14 on this CPU): a GEMM with
    few output rows and a long inner dimension (the gradient ``G [C, n] @ X [n, D]`` of the logistic
    regression on a block of 2,048 rows) splits its inner sum between threads, and LAPACK's ``eigh``
    (the spectral preconditioner) does too. Those sums then round differently, L-BFGS amplifies
    the last bit into a different iterate, and near-tied selections (few-shot cross-validation) pick a
    different ``l2``. Every probe therefore runs its arithmetic here: the same sequence of operations
    whatever ``torch.get_num_threads()`` is, hence bit-identical weights, predictions and
    accuracies (``tests/test_probes.py::test_probes_bit_identical_at_1_and_2_threads``). Feature
    extraction, which dominates an evaluation's time, keeps every thread. Nested use is cheap."""
    n = torch.get_num_threads()
    outer = getattr(_budget, "threads", None)
    if outer is None:
        _budget.threads = n  # the outermost caller's thread count: what thread_budget() may hand out
    try:
        if n == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)
    finally:
        _budget.threads = outer


_budget = threading.local()


def thread_budget() -> int:
    """Threads this thread may use for independent single-threaded tasks: the thread count of the caller
    that entered the outermost :func:`one_thread` (``torch.get_num_threads()`` outside one). Inside a
    worker of :func:`run_parallel` (or of ``eval.run.run_tasks``) it is 1, so nested tasks run in turn."""
    return max(1, getattr(_budget, "threads", None) or torch.get_num_threads())


def run_parallel(fns, workers: int | None = None) -> list:
    """``[fn() for fn in fns]``, the calls spread over ``workers`` threads (default :func:`thread_budget`),
    each with one intra-op thread. The decomposition into ``fns`` is the caller's and fixed, and every call
    computes on one thread, so the results are the same bits whatever ``workers`` is."""
    fns = list(fns)
    workers = min(len(fns), thread_budget() if workers is None else int(workers))
    if workers <= 1:
        with one_thread():
            return [fn() for fn in fns]
    n = torch.get_num_threads()
    try:
        pool = _pool(workers)
        return [f.result() for f in [pool.submit(fn) for fn in fns]]
    finally:
        torch.set_num_threads(n)  # the BLAS thread count may be shared with the workers'


_pools: dict = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads with one intra-op thread each, kept for the process: the objective of a
    many-row design calls :func:`run_parallel` once per evaluation, and new threads each time re-create the BLAS
    library's per-thread state (measured 3-15% of an evaluation). Keyed by the process id: a forked child
    (``eval.run``'s task workers) does not inherit the parent's threads and starts its own pool."""
    key = (os.getpid(), workers)
    pool = _pools.get(key)
    if pool is None:
        for k in [k for k in _pools if k[0] != key[0]]:
            del _pools[k]                      # a parent's pools: their threads do not exist in this process
        pool = _pools[key] = ThreadPoolExecutor(max_workers=workers, initializer=torch.set_num_threads,
                                                initargs=(1,), thread_name_prefix="sslzoo-rows")
    return pool


def single_threaded(fn):
    """Decorator: ``fn`` runs inside :func:`one_thread`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with one_thread():
            return fn(*args, **kwargs)
    return wrapper


def _softmax_minus_onehot(Z, y_index, oh):
    """In place on logits ``Z [A, C, n]``: the cross-entropy ``ce [A, n]`` and ``G = softmax - onehot``
    (``y_index`` the true class as ``[A or 1, 1, n]``, ``oh`` the one-hot labels ``[A or 1, C, n]``).

    Without cancellation: with d_c = z_c - z_y, CE = softplus(logsumexp_{c != y} d_c) and softmax_c =
    exp(d_c - CE) for c != y, softmax_y - 1 = -sum of those. The textbook lse - z_y (and softmax_y - 1)
    lose all digits in float32 once a point is classified with a margin, which stalls the weakly
    regularised fits on separable data."""
    Z.sub_(Z.gather(1, y_index))                                                # d = z - z_y
    Z.masked_fill_(oh.bool(), float("-inf"))
    ce = F.softplus(torch.logsumexp(Z, dim=1))                                  # [A, n]
    G = Z.sub_(ce.unsqueeze(1)).exp_()                                          # softmax, 0 at y
    G.sub_(oh * G.sum(1, keepdim=True))                                         # softmax - onehot
    return ce, G


def _row_blocks(X, y, lo, hi, step):
    """``(start, X rows, y rows)`` blocks of ``step`` rows covering rows ``[lo, hi)``."""
    for s in range(lo, hi, step):
        e = min(s + step, hi)
        yield s, X[s:e], y[s:e]


def _objective_rows(blocks, N, C, Wm, bm, onehot_t, weight):
    """The data term of :func:`logreg_objective` summed over ``blocks`` (``(start, X rows, y rows)``) of a
    design with ``N`` rows: ``loss [A]`` (float64), ``gW [A*C, D]``, ``gb [A*C]``."""
    AC, D = Wm.shape
    A = AC // C
    gW = torch.zeros(AC, D, device=Wm.device)
    gb = torch.zeros(AC, device=Wm.device)
    loss = torch.zeros(A, dtype=torch.float64, device=Wm.device)
    for s, Xc, yc in blocks:
        n = Xc.shape[0]
        Z = torch.addmm(bm, Wm, Xc.t()).view(A, C, n)
        oh = (onehot_t[:, s:s + n] if onehot_t is not None
              else F.one_hot(yc, C).to(torch.float32).t()).unsqueeze(0)         # [1, C, n]
        ce, G = _softmax_minus_onehot(Z, yc.view(1, 1, n).expand(A, 1, n), oh)
        if weight is None:
            loss += ce.sum(1, dtype=torch.float64) / N
            G.mul_(1.0 / N)
        else:
            wc = weight[:, s:s + n]
            loss += (ce.double() * wc.double()).sum(1)
            G.mul_(wc.unsqueeze(1))
        G = G.view(AC, n)
        gW.addmm_(G, Xc)
        gb += G.sum(1)
    return loss, gW, gb


def logreg_objective(X, y, onehot_t, W, b, penalty, weight, design=None):
    """Objectives and gradients of ``A`` independent multinomial logistic regressions on shared ``X``.

    ``X [N, D]``, ``y [N]``, ``onehot_t [C, N]`` (one-hot labels, transposed), ``W [A, C, D]``,
    ``b [A, C]``, ``penalty [A, D]`` (per problem and feature l2 strength), ``weight [A, N]`` (each
    row sums to 1) or ``None`` (uniform ``1/N``). Problem ``a`` is ``sum_i weight[a, i] * CE_i + 1/2 *
    sum_{c,d} penalty[a, d] * W[a, c, d]^2``. Returns ``loss [A]`` (float64), ``gW [A, C, D]``,
    ``gb [A, C]``.

    Logits are computed as ``W X^T`` (``[A*C, rows]``, faster than ``X W^T`` for few classes) block
    by block over the rows, so each block of ``X`` serves the forward and the backward product while
    it is still in cache; a design of many rows is summed part by part (:func:`row_parts`), the parts side by
    side when threads are free. Cross-entropy and gradient are computed from the logit differences to the
    true class, which keeps their relative precision for confidently classified points (separable
    data, weak regularisation: losses of 1e-6 and below), where ``lse - z_y`` would cancel in float32.

    ``design [A]`` (with ``X [F, N, D]``, ``y [F, N]``, ``weight`` given): problem ``a`` is fitted on design
    ``X[design[a]]`` (small problems with different rows, e.g. the folds of a cross-validation, solved as
    one batch: one batched product each way per evaluation).
    """
    A, C, D = W.shape
    if design is not None:
        Xp, yp = X[design], y[design]                                           # [A, N, D], [A, N]
        Z = torch.baddbmm(b.unsqueeze(2), W, Xp.transpose(1, 2))                # [A, C, N]
        ce, G = _softmax_minus_onehot(Z, yp.unsqueeze(1), F.one_hot(yp, C).to(torch.float32).transpose(1, 2))
        loss = (ce.double() * weight.double()).sum(1)
        G.mul_(weight.unsqueeze(1))
        gW, gb = torch.bmm(G, Xp), G.sum(2)
    else:
        N = X.shape[0]
        Wm, bm = W.reshape(A * C, D), b.reshape(A * C, 1)
        step = block_rows(D)
        if hasattr(X, "blocks"):  # a row source on disk (eval.stream_probes.RowSource): read block by block
            loss, gW, gb = _objective_rows(X.blocks(step), N, C, Wm, bm, onehot_t, weight)
        else:
            parts = run_parallel([functools.partial(_objective_rows, _row_blocks(X, y, lo, hi, step), N, C, Wm, bm,
                                                    onehot_t, weight) for lo, hi in row_parts(N)])
            loss, gW, gb = parts[0]
            for part in parts[1:]:                                              # in part order: fixed bits
                loss, gW, gb = loss + part[0], gW.add_(part[1]), gb.add_(part[2])
        gW, gb = gW.view(A, C, D), gb.view(A, C)
    reg = W * penalty.unsqueeze(1)
    gW.add_(reg)
    loss += 0.5 * (W * reg).sum((1, 2)).double()
    return loss, gW, gb


@torch.no_grad()
@single_threaded
def fit_logreg_batch(X, y, num_classes: int, penalty, weight=None, *, tol: float, max_iter: int,
                      init=None, history: int = LBFGS_HISTORY, precond=None, precond_basis=None,
                      rotation=None, design=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``P`` independent multinomial logistic regressions that share the design matrix ``X``.

    ``X [N, D]`` (float32), ``y [N]`` (int64), ``penalty [P]`` (an ``l2`` per problem) or ``[P, D]``
    (an ``l2`` per problem and feature), ``weight [P, N]`` (non-negative, normalised here to sum to 1
    per problem; e.g. a 0/1 mask of the rows problem ``p`` is fitted on) or ``None`` (all rows,
    uniform). Problem ``p`` minimises ``sum_i w_pi CE(softmax(W_p x_i + b_p), y_i) + 1/2 sum_cd
    penalty_pd W_pcd^2`` (with uniform weights: mean cross-entropy + l2/2 ||W_p||^2 as in
    :func:`eval.probes.fit_logreg`).

    Every problem runs its own L-BFGS (own correction pairs and scaling, own backtracking line search
    -- Armijo, or Hager & Zhang's approximate-Wolfe form of it once loss differences fall below
    float32 resolution -- own convergence test), so the iterates are those of ``P`` separate runs;
    they are merely vectorised: one ``[P*C, D] x [D, N]`` product per evaluation instead of ``P``
    thin ones, and problems that have converged are dropped from the batch. A problem stops when its
    max-abs gradient is ``<= tol``, when its step moves no weight by more than 1e-10, when its line
    search finds no decrease (float32 resolution), or after ``max_iter`` iterations (no stop on a
    small loss change: see :func:`logreg_objective` on tiny losses). ``init`` is an optional ``(W [P, C, D], b [P, C])`` warm start. Returns
    ``W [P, C, D]`` and ``b [P, C]``.

    ``precond`` (``[P, C*D + C]``, positive) is a diagonal initial inverse Hessian per problem: the
    two-loop recursion starts from ``gamma * diag(precond)`` instead of ``gamma * I`` (preconditioned
    L-BFGS; ``gamma = s'y / y'My``). With ``precond_basis`` (``[D, D]`` orthogonal ``U``) the weights' part of
    ``precond`` is the diagonal in the coordinates ``w U`` of each class row: the initial inverse Hessian is
    ``U diag(m) U'`` per class row (three ``[A*C, D] x [D, D]`` products per iteration), which is what the
    diagonal ``precond`` is on rotated features ``X U``, without rotating ``X``. ``rotation`` (``[D, D]``
    orthogonal ``U``) says that ``X`` holds rotated features ``X0 U``: the gradient test is then made on the
    weights in the original coordinates (``gW U'``), so the stopping rule is the unrotated problem's. See
    :func:`fit_logreg_spectral`.

    ``design [P]`` (int64): problem ``p`` is fitted on ``X[design[p]]`` of ``X [F, N, D]`` with labels
    ``y [F, N]``; ``weight`` is then required (0 for a design's padding rows) and ``rotation``, if given, is
    ``[F, D0, D]`` (one per design). See :func:`eval.probes.cv_fold_predictions`.
    """
    if design is not None:
        design = torch.as_tensor(design, dtype=torch.int64, device=X.device)
        if X.ndim != 3 or y.shape != X.shape[:2] or weight is None:
            raise ValueError("per-problem designs need X [F, N, D], y [F, N] and row weights")
    N, D = X.shape[-2:]
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
    if hasattr(X, "blocks") or design is not None:  # a row source streams its labels with its rows
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
    pen, wgt, des = penalty, weight, design

    def evaluate(th, pen_, wgt_, des_):
        loss, gW, gb = logreg_objective(X, y, onehot_t, th[:, :nW].view(-1, C, D), th[:, nW:], pen_, wgt_, des_)
        return loss, torch.cat([gW.reshape(-1, nW), gb], 1)

    def rotate_back(gw, rows):  # class rows of the weight gradient [R, C, D] in the original coordinates
        if design is None:
            return gw.reshape(-1, D) @ rotation.t()
        return torch.bmm(gw, rotation[des[rows]].transpose(1, 2))

    M = None
    if precond is not None:
        M = torch.as_tensor(precond, dtype=torch.float32, device=dev)
        if M.shape != (P, n) or not bool((M > 0).all()):
            raise ValueError(f"precond must be positive and [{P}, {n}], got {tuple(M.shape)}")
    Ub = None
    if precond_basis is not None:
        Ub = torch.as_tensor(precond_basis, dtype=torch.float32, device=dev)
        if M is None or Ub.shape != (D, D) or rotation is not None or design is not None:
            raise ValueError("precond_basis needs precond, a [D, D] basis, no rotation and a shared design")

    def by_halves(fn, v, M_):  # fn on two fixed halves of the problems, side by side when threads are free
        return torch.cat(run_parallel([functools.partial(fn, v[lo:hi], M_[lo:hi], Ub, C)
                                       for lo, hi in even_parts(v.shape[0], 2)]))

    def apply_h0(v, M_):  # the initial inverse Hessian (without gamma) times v [A, n], in the basis Ub
        return by_halves(_h0_apply, v, M_)   # [A*C, D] x [D, D] products

    def h0_norm(v, M_):  # v' H0 v
        return vdot(v, v * M_) if Ub is None else by_halves(_h0_norm, v, M_)

    def converged(g_):  # max-abs gradient <= tol, in the original coordinates when X is rotated
        if rotation is None:
            return g_.abs().amax(1) <= tol
        # Rotating a class row of the gradient back (g U', U with orthonormal columns) keeps its 2-norm,
        # and the max-abs of a D0-vector lies in [norm / sqrt(D0), norm]: only problems that the bound
        # cannot settle pay for the rotation (a [C, r] x [r, D0] product, as costly as the objective
        # when r ~ D0). The margins cover float32 rounding of the two norms, so every decision is the
        # one the exact test makes.
        bias_ok = g_[:, nW:].abs().amax(1) <= tol
        norm = g_[:, :nW].reshape(g_.shape[0], C, D).norm(dim=2).amax(1)
        ok = bias_ok & (norm <= tol * (1 - 1e-3))
        unsure = bias_ok & ~ok & (norm <= tol * (1 + 1e-3) * rotation.shape[-2] ** 0.5)
        if bool(unsure.any()):
            rows = unsure.nonzero().squeeze(1)
            gw = rotate_back(g_[rows, :nW].reshape(-1, C, D), rows)
            ok[rows] = gw.abs().reshape(rows.numel(), -1).amax(1) <= tol
        return ok

    f, g = evaluate(theta, pen, wgt, des)
    S = torch.zeros(history, P, n, device=dev)   # correction pairs, ring buffer; rho = 0 marks unused
    Y = torch.zeros(history, P, n, device=dev)
    rho = torch.zeros(history, P, device=dev)
    gamma = torch.ones(P, device=dev)
    vdot = torch.linalg.vecdot
    done = converged(g)
    for it in range(max_iter):
        if bool(done.any()):                    # write back finished problems, shrink the batch
            out[ids[done]] = theta[done]
            keep = ~done
            ids, theta, f, g, S, Y, rho, gamma = (ids[keep], theta[keep], f[keep], g[keep], S[:, keep],
                                                  Y[:, keep], rho[:, keep], gamma[keep])
            pen = pen[keep]
            wgt = wgt[keep] if wgt is not None else None
            des = des[keep] if des is not None else None
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
        if Ub is None:
            d.mul_(gamma.unsqueeze(1) if M is None else gamma.unsqueeze(1) * M)
        else:
            d = apply_h0(d, M).mul_(gamma.unsqueeze(1))
        for s, a in zip(reversed(slots), reversed(alpha)):
            d.addcmul_((a - rho[s] * vdot(Y[s], d)).unsqueeze(1), S[s])
        gtd = vdot(g, d)
        bad = ~(gtd < 0)                        # not a descent direction (should not happen): steepest descent
        if bool(bad.any()):
            d[bad] = -g[bad]
            gtd = vdot(g, d)
            rho[:, bad] = 0.0
        if it == 0:   # unscaled first step, as torch's LBFGS
            if rotation is not None and M is None:
                # the l1 norm in the original coordinates: the only rotation-dependent quantity of plain
                # L-BFGS (inner products, gamma and the line search are invariant), so a rotated plain
                # solve follows the unrotated iterates (up to rounding)
                dw = rotate_back(d[:, :nW].reshape(-1, C, D), torch.arange(A, device=dev))
                t = torch.clamp(1.0 / (dw.abs().reshape(A, -1).sum(1) + d[:, nW:].abs().sum(1)), max=1.0)
            else:
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
        for _ in range(MAX_LINE_SEARCH):
            if sel is None:
                f0, gtd0, t0, d0 = f, gtd, t, d
                f_try, g_try = evaluate(torch.addcmul(theta, t.unsqueeze(1), d), pen, wgt, des)
            else:
                f0, gtd0, t0, d0 = f[sel], gtd[sel], t[sel], d[sel]
                f_try, g_try = evaluate(torch.addcmul(theta[sel], t0.unsqueeze(1), d0), pen[sel],
                                        wgt[sel] if wgt is not None else None, des[sel] if des is not None else None)
            ok = ((f_try <= f0 + ARMIJO_C1 * t0.double() * gtd0.double())
                  | ((vdot(g_try, d0) <= (2 * ARMIJO_C1 - 1) * gtd0) & (f_try <= f0 + APPROX_EPS * f0.abs())))
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
        yy = vdot(y_vec, y_vec) if M is None else h0_norm(y_vec, M)
        valid = (sy > 1e-10) & ~failed
        rho[slot] = torch.where(valid, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        gamma = torch.where(valid, sy / yy.clamp_min(1e-30), gamma)
        theta.add_(s_vec)
        f, g = f_new, g_new
        # No stop on a small loss change: losses of nearly separated data are tiny, and an absolute
        # loss-change test (torch's LBFGS) stops such fits far from their optimum.
        done = failed | converged(g) | (s_vec.abs().amax(1) <= TOL_CHANGE)
    out[ids] = theta
    return out[:, :nW].reshape(P, C, D), out[:, nW:].contiguous()


def _h0_apply(v, M, U, C):
    """``U diag(m) U'`` per class row of the weights, ``diag`` on the biases: ``v [A, C*D + C]``, ``M`` alike."""
    A, D = v.shape[0], U.shape[0]
    nW = C * D
    w = (v[:, :nW].reshape(A * C, D) @ U).mul_(M[:, :nW].reshape(A * C, D))
    return torch.cat([(w @ U.t()).view(A, nW), v[:, nW:] * M[:, nW:]], 1)


def _h0_norm(v, M, U, C):
    """``v' H0 v`` per problem for :func:`_h0_apply`'s ``H0``."""
    A, D = v.shape[0], U.shape[0]
    nW = C * D
    w = v[:, :nW].reshape(A * C, D) @ U
    return ((w * w).view(A, nW) * M[:, :nW]).sum(1) + (v[:, nW:] ** 2 * M[:, nW:]).sum(1)


def precond_kappa(num_classes: int) -> float:
    """Curvature scale of the preconditioner: the cross-entropy Hessian of a class block is about
    ``kappa * X'X / N`` with ``kappa = p (1 - p)``; at the start (uniform predictions) ``p = 1 / C``.
    Only the ratio of ``kappa * eigenvalue`` to ``l2`` shapes the preconditioner (L-BFGS rescales it)."""
    return (1.0 / num_classes) * (1.0 - 1.0 / num_classes) if num_classes > 1 else 0.25


@torch.no_grad()
@single_threaded
def fit_logreg_spectral(X, y, num_classes: int, l2s, *, tol: float, max_iter: int, init=None,
                        precondition: bool = True, basis=None):
    """:func:`fit_logreg_batch` for ``P`` problems with a scalar ``l2`` each (uniform row weights),
    solved in the eigenbasis of ``X'X / N`` with a diagonal preconditioner; same objectives, same
    minimisers, same stopping rule (the gradient test is made in the original coordinates).

    Why: L-BFGS needs many iterations when the Hessian's eigenvalues spread over decades, and on
    features they do -- ``kappa * lambda_j + l2`` over the covariance eigenvalues ``lambda_j``, from
    ``l2`` (1e-6) to tens. Rotating the features by the eigenvectors ``U`` leaves the penalty
    ``||W||^2`` unchanged (``||W U|| = ||W||``), and in that basis the Hessian is close to diagonal, so
    the initial inverse Hessian ``diag(1 / (kappa * lambda_j + l2))`` (bias: ``1 / kappa``) removes most
    of the spread. The basis costs one ``D x D`` eigendecomposition and the covariance's ``N x D x D`` product.
    With fewer rows than features (``N < D``) the basis spans the rows only (:func:`spectral_basis`):
    the same minimiser, solved in ``N`` coordinates per class instead of ``D``.

    ``precondition=False``: the rotation (and the row-span reduction) without the preconditioner. Plain
    L-BFGS is rotation-equivariant (its first step is scaled by the direction's l1 norm, taken in the
    original coordinates), so this follows :func:`fit_logreg_batch`'s iterates on ``X`` up to rounding,
    at the cost of ``N``-wide instead of ``D``-wide steps: the few-shot fits use it, keeping the answers
    of the plain solver where weakly regularised fits on separable supports stop (at ``tol``) before
    their predictions settle.
    With a full basis (``N >= D``) and the preconditioner the rows are not rotated: the same preconditioner is
    applied in the basis (``fit_logreg_batch(precond_basis=U)``), which saves the ``N x D x D`` product; only the
    first step's length (scaled by the direction's l1 norm) is then taken in the original coordinates.
    ``basis``: ``spectral_basis(X)`` when the caller has it already (e.g. shared by several calls on ``X``); a full
    basis (``r = D``) may also be another covariance's, e.g. of most of the same rows: any orthonormal basis gives
    the same minimiser, a nearby one preconditions as well.
    Returns ``W [P, C, D]`` (original coordinates) and ``b [P, C]``.
    """
    N, D = X.shape
    C = int(num_classes)
    l2s = torch.as_tensor(l2s, dtype=torch.float32, device=X.device).reshape(-1)
    P = l2s.numel()
    evals, U = spectral_basis(X) if basis is None else basis  # U [D, r]: r = D, or N when N < D (the row span)
    r = U.shape[1]
    M = None
    if precondition:
        kappa = precond_kappa(C)
        mw = 1.0 / (kappa * evals.clamp_min(0).to(torch.float32).unsqueeze(0) + l2s.unsqueeze(1)).clamp_min(1e-12)
        M = torch.cat([mw.unsqueeze(1).expand(P, C, r).reshape(P, C * r),
                       torch.full((P, C), 1.0 / kappa, device=X.device)], 1)
        M = M / M[:, :C * r].mean(1, keepdim=True)  # scale is L-BFGS's business (gamma); keep d ~ g at the start
    if M is not None and r == D:
        # A full basis: precondition in it rather than rotate the rows (saves the [N, D] x [D, D] product X U;
        # the same method -- only the first step's length, scaled by the direction's l1 norm, is taken in the
        # original coordinates).
        return fit_logreg_batch(X, y, C, l2s, tol=tol, max_iter=max_iter, init=init, precond=M, precond_basis=U)
    Xr = rotate_rows(X, U)
    init_r = None if init is None else (init[0] @ U, init[1])
    Wr, b = fit_logreg_batch(Xr, y, C, l2s, tol=tol, max_iter=max_iter, init=init_r, precond=M, rotation=U)
    return Wr @ U.t(), b


def spectral_basis(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues ``[r]`` (float64, ascending) and orthonormal eigenvectors ``U [D, r]`` (float32) of the
    covariance ``X'X / N`` of ``X [N, D]``, restricted to the row span of ``X``.

    ``N >= D``: ``r = D``, one ``D x D`` eigendecomposition. ``N < D`` (few-shot supports, small data sets):
    ``r = N``; the minimiser of every penalised fit on ``X`` lies in the span of its rows (the gradient of the
    data term does, and the penalty pulls the rest to 0), so the fit is solved exactly in those ``N``
    coordinates. The basis comes from a Householder QR of ``X'`` (orthonormal whatever ``X``'s rank) and the
    eigendecomposition of the ``N x N`` covariance of the coordinates ``R'``: ``O(N^2 D)`` instead of
    ``O(D^3)``, and an ``N x N`` problem per L-BFGS step instead of a ``D``-wide one."""
    N, D = X.shape
    if N >= D or N == 0:
        evals, U = torch.linalg.eigh(gram(X) / max(N, 1))
        return evals, U.to(torch.float32)
    Q, R = torch.linalg.qr(X.t().double())                 # X' = Q R, Q [D, N] orthonormal columns
    evals, E = torch.linalg.eigh(R @ R.t() / N)            # covariance of X Q = R'
    return evals, (Q @ E).to(torch.float32)


@single_threaded
def gram(X: torch.Tensor) -> torch.Tensor:
    """``X'X`` (float64 ``[D, D]``) of ``X [N, D]``: float32 products per row part (:func:`row_parts`), summed in
    float64 in part order. A design of several parts computes only the blocks on and above the diagonal of up to
    4 column blocks of >= 256 columns (5/8 of the products at 1024 columns) and mirrors them."""
    parts = row_parts(X.shape[0])
    cols = [(0, X.shape[1])] if len(parts) == 1 else even_parts(X.shape[1], min(4, X.shape[1] // 256))
    grams = run_parallel([functools.partial(_part_gram, X[lo:hi], cols) for lo, hi in parts])
    out = grams[0]
    for part in grams[1:]:
        out += part
    return out


def _part_gram(Xp: torch.Tensor, cols) -> torch.Tensor:
    if len(cols) == 1:
        return (Xp.t() @ Xp).double()
    D = Xp.shape[1]
    out = torch.empty(D, D, dtype=torch.float64, device=Xp.device)
    for i, (a, b) in enumerate(cols):
        for c, e in cols[i:]:
            blk = (Xp[:, a:b].t() @ Xp[:, c:e]).double()
            out[a:b, c:e] = blk
            out[c:e, a:b] = blk.t()
    return out


def fill_row_parts(out: torch.Tensor, fn) -> torch.Tensor:
    """``fn(lo, hi, out[lo:hi])`` for every row part of ``out`` (:func:`row_parts`), side by side when threads are
    free; ``fn`` writes rows ``[lo, hi)`` of the result into its third argument. Returns ``out``. Each row is
    computed by the same operation whatever the thread count (one part: the whole of ``out`` at once)."""
    run_parallel([functools.partial(fn, lo, hi, out[lo:hi]) for lo, hi in row_parts(out.shape[0])])
    return out


@single_threaded
def rotate_rows(X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``X @ U``, row part by row part (:func:`fill_row_parts`)."""
    return fill_row_parts(X.new_empty(X.shape[0], U.shape[1]),
                          lambda lo, hi, o: torch.matmul(X[lo:hi], U, out=o))


def stacked_predict(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Predicted class of every row of ``X [N, D]`` under every model ``W [P, C, D], b [P, C]`` -> ``[N, P]``."""
    P, C, D = W.shape
    return torch.addmm(b.reshape(1, P * C), X, W.reshape(P * C, D).t()).view(-1, P, C).argmax(2)
