"""The data-centric experiments' cell: one training run through the shared harness, then the probes;
the numbers it returns are the ones it puts in the results store (model EXPERIMENT/CELL)."""
import numpy as np
import pytest

from eval.datasets import load_split
from eval.store import ResultStore
from training.experiments import _common as C


@pytest.fixture
def tiny(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 16)
    images = rng.integers(0, 256, size=(64, 28, 28, 1), dtype=np.uint8)
    images[:, :14] //= (labels[:, None, None, None] + 1).astype(np.uint8)
    np.savez(tmp_path / "tiny.npz", train_image=images, train_label=labels, test_image=images[::4],
             test_label=labels[::4])
    return tmp_path / "tiny.npz"


def test_a_cell_trains_probes_and_stores_what_it_returns(tiny, tmp_path):
    spec = f"npz:{tiny}"
    overrides = C.budget_overrides(2, seed=0, batch_size=16) + [f"data.dataset={spec}", "model.width=4"]
    cell = tmp_path / "sas_demo" / "runs" / "random_0.5_s0"
    rec = C.train_and_probe(cell, overrides, (load_split(spec, "train"), load_split(spec, "test")))
    assert rec["steps"] == 2 and 0 <= rec["linear"] <= 100 and 0 <= rec["knn20"] <= 100
    with ResultStore() as store:
        stored = {r.protocol: r for r in store.all()}
    assert set(stored) == {"linear", "knn k=20 T=0.07"}
    assert {r.model for r in stored.values()} == {"sas_demo/random_0.5_s0"}
    assert stored["linear"].accuracy == pytest.approx(rec["linear"]) and stored["linear"].extra["l2"] == rec["linear_l2"]
    assert stored["knn k=20 T=0.07"].accuracy == pytest.approx(rec["knn20"])
    assert stored["linear"].params["probe_train"] is None and stored["linear"].dataset == "tiny"
