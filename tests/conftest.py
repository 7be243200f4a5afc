import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own feature cache / results store, never the user's."""
    monkeypatch.setenv("SSLZOO_HOME", str(tmp_path / "sslzoo_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
