"""The `sslzoo` command end to end, in subprocesses: a folder model on a folder dataset, and
bad input that must give one clear line, a non-zero exit code and no half-written output."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.backbones import build_resnet
from zoo.io import save_folder

ROOT = Path(__file__).resolve().parent.parent


def sslzoo(*args, env_extra=None, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "training", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=300)


def error_line(r):
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode != 0, r.stdout
    assert len(lines) == 1, r.stderr  # one line, no traceback
    return lines[0]


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        for c, name in enumerate(("dark", "light")):
            d = tmp_path / "imgs" / split / name
            d.mkdir(parents=True)
            for i in range(n):
                base = 40 if c == 0 else 200
                arr = np.clip(base + rng.normal(0, 20, (20, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return tmp_path / "imgs"


@pytest.fixture
def model_folder(tmp_path):
    arch = {"arch": "resnet18", "stem": "cifar", "width": 4, "in_chans": 3}
    pre = {"resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "in_chans": 3}
    torch.manual_seed(0)
    save_folder(build_resnet(**arch).state_dict(), {"name": "tiny", "arch": arch, "feature_dim": 32,
                                                    "preprocess": pre}, tmp_path / "model")
    return tmp_path / "model"


def test_eval_folder_model_on_image_folder(image_folder, model_folder, tmp_path):
    out = tmp_path / "table"
    r = sslzoo("eval", "--model", str(model_folder), "--dataset", f"folder:{image_folder}", "--shots", "1,2",
               "--seeds", "0,1,2", "--baselines", "pixels", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "| model" in r.stdout and "linear" in r.stdout and "knn k=20 T=0.07" in r.stdout
    assert "few-shot k=2" in r.stdout and "±" in r.stdout
    rows = json.loads(out.with_suffix(".json").read_text())
    by = {(x["model"], x["protocol"]): x for x in rows}
    # light vs dark is trivially separable from raw pixels
    assert by[("pixels", "linear")]["accuracy_mean"] == 100.0
    assert by[("model", "knn k=20 T=0.07")]["weights_sha256"] == json.loads(
        (model_folder / "config.json").read_text())["sha256"]
    # the same evaluation again: every result comes from the store, the table is the same
    first = out.with_suffix(".json").read_text()
    args = ("eval", "--model", str(model_folder), "--dataset", f"folder:{image_folder}", "--shots", "1,2", "--seeds",
            "0,1,2", "--baselines", "pixels", "--out", str(out))
    files = {p: p.read_bytes() for p in tmp_path.glob("table.*")}
    assert sorted(p.name for p in files) == ["table.csv", "table.json", "table.md"]
    refused = sslzoo(*args)  # the tables exist: replaced only when asked
    assert refused.returncode == 2 and "already exists; pass --overwrite" in refused.stderr
    assert {p: p.read_bytes() for p in tmp_path.glob("table.*")} == files
    again = sslzoo(*args, "--overwrite")
    assert again.returncode == 0, again.stderr
    n = 2 * (1 + 2 + 2 * 3)  # (linear + 2 kNN + 2 shots x 3 seeds) x (model + pixels)
    assert f"{n} of {n} results came from the results store" in again.stdout
    assert out.with_suffix(".json").read_text() == first
    # --out with a table suffix writes that file only: a report.md beside it is not the command's to replace
    (tmp_path / "report.md").write_text("# my own report\n")
    only = sslzoo(*args[:-1], str(tmp_path / "report.csv"))
    assert only.returncode == 0, only.stderr
    assert (tmp_path / "report.md").read_text() == "# my own report\n" and not (tmp_path / "report.json").exists()
    assert "pixels" in (tmp_path / "report.csv").read_text()
    lb = sslzoo("leaderboard", "--format", "csv")
    assert lb.returncode == 0 and "pixels" in lb.stdout
    lb = sslzoo("leaderboard")
    assert lb.returncode == 0 and "| model" in lb.stdout and "few-shot k=2" in lb.stdout, lb.stderr


def test_unknown_model(tmp_path):
    line = error_line(sslzoo("eval", "--model", "simclr_resnet18w16_fashion_mnst", "--dataset", "fashion-mnist"))
    assert "did you mean simclr_resnet18w16_fashion_mnist" in line


def test_missing_dataset_says_where(tmp_path):
    line = error_line(sslzoo("eval", "--dataset", "mnist", env_extra={"SSLZOO_DATA": str(tmp_path / "data")}))
    assert "mnist train not found" in line and str(tmp_path / "data") in line and "--download" in line


def test_folder_without_test(image_folder, model_folder, tmp_path):
    import shutil

    shutil.rmtree(image_folder / "test")
    out = tmp_path / "t"
    line = error_line(sslzoo("eval", "--model", str(model_folder), "--dataset", f"folder:{image_folder}",
                             "--out", str(out)))
    assert "test" in line
    assert not list(tmp_path.glob("t.*"))


def test_config_unknown_key_writes_nothing(tmp_path):
    out = tmp_path / "run"
    line = error_line(sslzoo("train", "simclr_fashion_mnist_cpu", "--set", "optim.lrr=0.1", "--out", str(out)))
    assert "unknown config key 'optim.lrr'" in line and "did you mean 'lr'" in line
    assert not out.exists()


def test_list_and_info():
    r = sslzoo("list", "--format", "json")
    assert r.returncode == 0
    names = [m["name"] for m in json.loads(r.stdout)]
    assert "simclr_resnet18w16_fashion_mnist" in names
    r = sslzoo("info", "simclr_resnet18w16_fashion_mnist")
    assert r.returncode == 0 and "bundled" in r.stdout


# ----------------------------------------------------------------------------- the one handler (issue 17a)


def test_closed_stdout_exits_quietly():
    """`sslzoo list | head`: the reader went away; no traceback, no message, exit 141 (128 + SIGPIPE)."""
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # the reader is gone before the first write
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "training", "list", "--format", "json"], stdout=w_fd,
                       stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, timeout=300)
    os.close(w_fd)
    assert p.returncode == 141 and p.stderr == "", p.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (ENOSPC on every write)")
def test_full_disk_is_one_line():
    with open("/dev/full", "w") as full:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        p = subprocess.run([sys.executable, "-m", "training", "list"], stdout=full, stderr=subprocess.PIPE, text=True,
                           env=env, cwd=ROOT, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr
    assert lines[0] == (f"sslzoo list: error: {os.strerror(28)}; free some space or write elsewhere (--out, "
                        f"$SSLZOO_HOME)")


def test_disk_full_during_training_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    """ENOSPC on the run's first write (simulated): one line naming the file, exit 1, the lock released and
    the folder the run created removed again."""
    import errno

    import training.trainer as trainer
    from training.cli import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", train_image=rng.integers(0, 256, (16, 12, 12), dtype=np.uint8),
             train_label=np.repeat(np.arange(2), 8), test_image=rng.integers(0, 256, (4, 12, 12), dtype=np.uint8),
             test_label=np.arange(4) % 2)

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(trainer, "atomic_write_text", full)
    out = tmp_path / "run"
    rc = main(["train", "simclr_fashion_mnist_cpu", "--out", str(out), "--device", "cpu", "--set",
               f"data.dataset=npz:{tmp_path / 'd.npz'}", "--set", "model.width=4", "--set", "optim.batch_size=8",
               "--set", "train.tensorboard=false"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "step/s" not in ln and "%|" not in ln]
    assert rc == 1 and len(err) == 1, err
    assert err[0] == (f"sslzoo train: error: {os.strerror(errno.ENOSPC)}: {out / 'config.yaml'}; free some space or "
                      f"write elsewhere (--out, $SSLZOO_HOME)")
    assert not out.exists()
