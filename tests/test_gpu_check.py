"""benchmarks/gpu_check.py (issue 18, item 6) runs to the end in its CPU dry mode: the pytest step, the
generated JPEG tree, SimCLR and DISSL m6 steps through the trainer and the file-backed source, the
printed figures and the JSON. No timing claim: the figures of a dry run only have to exist and be sane."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_runs_to_the_end(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), SSLZOO_HOME=str(tmp_path / "home"))
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "pytest -q -rs -p no:cacheprovider -k cuda" in r.stdout
    for case in ("simclr", "dissl_m6"):
        assert f"{case}: " in r.stdout and "images/s" in r.stdout and "waiting for data" in r.stdout
    res = json.loads(out.read_text())
    assert res["machine"]["dry"] is True and res["machine"]["torch"]
    tests, *runs = res["results"]
    assert tests["tests"]["returncode"] in (0, 5) and tests["tests"]["summary"]
    assert [row["case"] for row in runs] == ["simclr", "dissl_m6"]
    assert [row["crops"] for row in runs] == ["2x64", "2x64+4x32"]
    for row in runs:
        assert row["steps"] == 3 and row["timed_steps"] == 2
        assert row["images_per_s"] > 0 and 0 <= row["data_wait_fraction"] < 1
        assert "data.source=files" in row["overrides"]
    # the tree was generated once into the cache of $SSLZOO_HOME and is reused
    assert len(list((tmp_path / "home" / "cache" / "bench-jpeg").iterdir())) == 1


def test_gpu_check_without_a_gpu_says_so_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has a GPU: the real check would run")
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--no-tests", "--out", str(tmp_path / "x.json")],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--dry" in r.stderr
    assert not (tmp_path / "x.json").exists()
