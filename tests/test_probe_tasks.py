"""eval.run.run_tasks: probe tasks on parallel single-threaded workers give the bits of the sequential run."""
import numpy as np
import pytest
import torch

from eval import probes, solver
from eval.run import probe_workers, run_tasks


def _data(seed=0, n=400, d=24, c=5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * 1.5
    y = np.arange(n) % c
    x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
    yt = np.arange(200) % c
    xt = (centres[yt] + rng.normal(size=(200, d))).astype(np.float32)
    return x, y, xt, yt


def _tasks():
    x, y, xt, yt = _data()
    grid = [1e-3, 1e-1, 10.0]

    def lin():
        return probes.linear_probe(x, y, xt, yt, l2_grid=grid, max_iter=60)

    def few(seed):
        return probes.fewshot_probe(x, y, xt, yt, shots=[5], seeds=[seed], l2_grid=grid, max_iter=60)

    def knn():
        return probes.knn_probes(x, y, xt, yt, settings=[(20, 0.07), (5, 0.1)], chunk=64)

    def weights():
        return solver.fit_logreg_spectral(torch.as_tensor(x), torch.as_tensor(y), 5, [1e-2, 1.0], tol=1e-6,
                                          max_iter=40)

    return [(3.0, lin), (1.0, lambda: few(0)), (1.0, lambda: few(1)), (0.5, knn), (2.0, weights)]


@pytest.mark.parametrize("processes", [True, False])
def test_parallel_tasks_bit_identical_to_sequential(processes):
    """Tasks in two forked worker processes (the default) or two threads return the bits of the
    sequential one-thread run, in task order."""
    before = torch.get_num_threads()
    runs = {}
    try:
        for threads, workers in ((1, 1), (2, 2), (2, None)):
            torch.set_num_threads(threads)
            runs[(threads, workers)] = run_tasks(_tasks(), workers=workers, processes=processes)
            assert torch.get_num_threads() == threads  # restored
    finally:
        torch.set_num_threads(before)
    ref = runs[(1, 1)]
    assert len(ref) == 5 and isinstance(ref[0], dict) and len(ref[4]) == 2
    for key, out in runs.items():
        assert len(out) == len(ref)
        for got, want in zip(out, ref):
            if isinstance(want, tuple):  # weights
                assert all(torch.equal(a, b) for a, b in zip(got, want)), key
            else:
                assert repr(got) == repr(want), key  # repr: NaN std of one seed


def test_task_error_propagates_and_threads_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def bad():
            raise ValueError("broken task")
        for processes in (True, False):
            with pytest.raises(ValueError, match="broken task"):
                run_tasks([(1.0, lambda: None), (2.0, bad)], workers=2, processes=processes)
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_probe_workers_follows_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert probe_workers() == 2 and probe_workers(1) == 1
        # small feature matrices on threads: one task at a time (tiny fits contend for the GIL); processes: 2
        assert probe_workers(10, values=200 * 1024, processes=False) == 1
        assert probe_workers(10, values=60_000 * 1024, processes=False) == 2
        assert probe_workers(10, values=200 * 1024) == 2
        torch.set_num_threads(1)
        assert probe_workers(10) == 1
    finally:
        torch.set_num_threads(before)


def test_select_groups_cover_the_grid_in_order():
    assert probes.select_groups(8) == [(0, 4), (4, 8)]
    assert probes.select_groups(3) == [(0, 2), (2, 3)] or probes.select_groups(3) == [(0, 1), (1, 3)]
    assert probes.select_groups(1) == [(0, 1)]
    for n in range(1, 12):
        g = probes.select_groups(n)
        assert g[0][0] == 0 and g[-1][1] == n and all(a[1] == b[0] for a, b in zip(g, g[1:]))


def test_grouped_selection_same_bits_at_one_and_two_threads():
    """select_l2 solves its grid as fixed groups on parallel workers: weights and accuracies do not depend
    on how many threads the caller has."""
    x, y, _, _ = _data(1)
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    before = torch.get_num_threads()
    out = {}
    try:
        for th in (1, 2):
            torch.set_num_threads(th)
            best, accs, (W, b, _, _), _ = probes.select_l2(x[:300], y[:300], x[300:], y[300:], 5,
                                                        [1e-4, 1e-2, 1.0, 10.0], 80)
            out[th] = (best, accs, W.clone(), b.clone())
            assert torch.get_num_threads() == th
    finally:
        torch.set_num_threads(before)
    assert out[1][:2] == out[2][:2]
    assert torch.equal(out[1][2], out[2][2]) and torch.equal(out[1][3], out[2][3])
    assert solver.thread_budget() == torch.get_num_threads()


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_ends_on_its_total_whatever_the_order_of_float_costs(workers, monkeypatch):
    # run costliest first, these costs sum to more than their total in task order (float rounding): the bar
    # must still end on its total (past it, tqdm warns "clamping frac" and shows a negative time left)
    import eval.run as R

    costs = [0.3101475693193326, 0.7298317482601286, 0.8988382879679935, 0.6839839319154413]
    assert sum(sorted(costs, reverse=True)) > sum(costs)
    ends = []

    class Bar(R.tqdm):
        def close(self):
            ends.append((self.n, self.total))
            super().close()

    monkeypatch.setattr(R, "tqdm", Bar)
    assert run_tasks([(c, lambda c=c: c) for c in costs], workers=workers, processes=False) == costs
    assert ends[0] == (sum(costs), sum(costs))  # (tqdm may close again when collected)


def _sum_in_parts(_=None):
    with solver.one_thread():
        return solver.run_parallel([lambda i=i: i * i for i in range(4)], workers=2)


def test_run_parallel_pool_works_after_fork():
    """run_parallel keeps its worker threads for the process; a forked child (eval.run's task workers) must not
    submit to the parent's threads, which do not exist in the child (it would wait forever)."""
    import multiprocessing as mp

    assert _sum_in_parts() == [0, 1, 4, 9]          # the parent's pool exists now
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_sum_in_parts).get(timeout=60) == [0, 1, 4, 9]
