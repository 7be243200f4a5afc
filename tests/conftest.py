import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# One intra-op thread by default: the tests are small, and OpenMP's spinning barriers make 2 threads
# on a 2-core machine shared with any other job many times slower than 1. SSLZOO_TEST_THREADS overrides.
TEST_THREADS = int(os.environ.get("SSLZOO_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _test_threads():
    """Every test starts at TEST_THREADS, whatever code run by an earlier test set (the trainer applies
    ``train.threads``); the one place the tests' thread count is decided."""
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path):
    """Every test gets its own feature cache / results store, never the user's.

    A private MonkeyPatch (not the test's ``monkeypatch`` fixture), so a test that calls
    ``monkeypatch.undo()`` to drop its own patches keeps this isolation."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SSLZOO_HOME", str(tmp_path / "sslzoo_home"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture
def make_tiny_npz(tmp_path):
    """``make(per_class)``: a ``4 * per_class``-image 12 x 12 grayscale npz (4 classes, random pixels from
    seed 0; test = the first ``per_class`` images) at ``tmp_path / "tiny.npz"``."""
    def make(per_class: int):
        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(4), per_class)
        images = rng.integers(0, 256, size=(4 * per_class, 12, 12, 1), dtype=np.uint8)
        path = tmp_path / "tiny.npz"
        np.savez(path, train_image=images, train_label=labels, test_image=images[:per_class],
                 test_label=labels[:per_class])
        return path
    return make


@pytest.fixture
def tiny_npz(make_tiny_npz):
    """A 64-image npz (:func:`make_tiny_npz` with 16 per class): the smallest trainable set."""
    return make_tiny_npz(16)
