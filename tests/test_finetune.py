"""The ``finetune`` protocol: model selection on a split of train (never test), results in the store
and tables, ``sslzoo finetune`` / ``sslzoo eval --probes finetune``, one-line errors. Tiny data."""
import numpy as np
import pytest
import torch
from sslzoo_runner import runner

from eval.store import ResultStore
from training.cli import main as sslzoo
from training.finetune import evaluate_finetune, finetune, protocol_label
from zoo.backbones import build_resnet
from zoo.io import save_folder

ARCH = {"arch": "resnet18", "stem": "cifar", "width": 4, "in_chans": 1}
PRE = {"resize": 12, "crop": 12, "mean": [0.5], "std": [0.5], "interpolation": "bilinear", "in_chans": 1}


def _images(labels, rng):
    """Dark (class 0) vs light (class 1) noisy 12 px images: separable in a few steps."""
    base = np.where(labels == 0, 50, 200)[:, None, None, None]
    return np.clip(base + rng.normal(0, 25, (len(labels), 12, 12, 1)), 0, 255).astype(np.uint8)


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    ytr, yte = np.repeat([0, 1], 20), np.repeat([0, 1], 8)
    xtr, xte = _images(ytr, rng), _images(yte, rng)
    np.savez(tmp_path / "d.npz", train_image=xtr, train_label=ytr, test_image=xte, test_label=yte)
    np.savez(tmp_path / "adv.npz", train_image=xtr, train_label=ytr, test_image=xte, test_label=1 - yte)
    return tmp_path


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    save_folder(build_resnet(**ARCH).state_dict(), {"name": "tiny", "arch": ARCH, "feature_dim": 32,
                                                    "preprocess": PRE}, tmp_path / "tiny")
    return tmp_path / "tiny"


def _tensor(x):
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


KW = dict(size=12, mean=(0.5,), std=(0.5,), label_fraction=0.5, val_fraction=0.25, lrs=(0.01, 0.1), epochs=2,
          batch_size=8, device="cpu", bf16=False)


def test_selection_never_sees_test(data):
    """Adversarial test labels (every one flipped) and test images (replaced by noise) change the
    test accuracy only: the selected learning rate, epoch and validation accuracy stay the same."""
    torch.manual_seed(0)
    enc = build_resnet(**ARCH)
    z = np.load(data / "d.npz")
    xtr, ytr, xte, yte = _tensor(z["train_image"]), z["train_label"], _tensor(z["test_image"]), z["test_label"]
    real = finetune(enc, xtr, ytr, xte, yte, **KW)
    flipped = finetune(enc, xtr, ytr, xte, 1 - yte, **KW)
    noise = finetune(enc, xtr, ytr, torch.randint(0, 256, xte.shape, dtype=torch.uint8), yte, **KW)
    pick = ("lr", "epoch", "val_accuracy", "n_labelled", "n_val")
    assert {k: real[k] for k in pick} == {k: flipped[k] for k in pick} == {k: noise[k] for k in pick}
    assert real["accuracy"] + flipped["accuracy"] == pytest.approx(1.0)  # two classes, all labels flipped
    assert real["accuracy"] > 0.5  # so the flip really changed the accuracy
    assert real["n_val"] == 10 and real["n_labelled"] == 16  # 25% of 40 for validation, half of the rest labelled


def test_encoder_is_not_modified(data):
    enc = build_resnet(**ARCH)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    z = np.load(data / "d.npz")
    finetune(enc, _tensor(z["train_image"]), z["train_label"], _tensor(z["test_image"]), z["test_label"],
             **dict(KW, lrs=(0.1,), epochs=1))
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_results_land_in_the_store_and_are_reused(data, model_dir):
    kw = dict(fractions=(0.5,), seeds=(0, 1), lrs=(0.1,), epochs=1, batch_size=8, val_fraction=0.25,
              precision="fp32", device="cpu", progress=False)
    info: dict = {}
    rows = evaluate_finetune(str(model_dir), f"npz:{data / 'd.npz'}", info=info, **kw)
    assert info == {"reused": 0, "computed": 2}
    (row,) = rows
    assert row["protocol"] == protocol_label(0.5) == "finetune 50% labels"
    assert row["probe"] == "finetune" and row["seeds"] == "0,1" and row["n"] == 2 and row["model"] == "tiny"
    with ResultStore() as store:
        stored = store.all()
    assert len(stored) == 2 and all(r.params["label_fraction"] == 0.5 and r.extra["lr"] == 0.1 for r in stored)
    again: dict = {}
    rows2 = evaluate_finetune(str(model_dir), f"npz:{data / 'd.npz'}", info=again, **kw)
    assert again == {"reused": 2, "computed": 0} and rows2[0]["accuracy_mean"] == row["accuracy_mean"]


def test_cli_finetune_and_eval_probe(data, model_dir, tmp_path, capsys):
    ds = f"npz:{data / 'd.npz'}"
    common = ["--model", str(model_dir), "--dataset", ds, "--fractions", "0.5", "--seeds", "0"]
    assert sslzoo(["finetune", *common, "--epochs", "1", "--lrs", "0.1", "--batch-size", "8",
                   "--out", str(tmp_path / "ft")]) == 0
    out = capsys.readouterr().out
    assert "finetune 50% labels" in out and "never test" in out
    assert "finetune 50% labels" in (tmp_path / "ft.csv").read_text()
    # the eval protocol: frozen probes and finetune in one table (a different epoch count: a new result)
    assert sslzoo(["eval", *common, "--probes", "linear,finetune", "--baselines", "none", "--finetune-epochs", "1",
                   "--finetune-lrs", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "linear" in out and "finetune 50% labels" in out
    assert sslzoo(["leaderboard", "--format", "csv"]) == 0
    board = capsys.readouterr().out
    # two parameter sets (batch size 8 from `sslzoo finetune`, the default 256 from `sslzoo eval`): two rows
    assert board.count("finetune 50% labels") == 2
    with ResultStore() as store:
        assert len([r for r in store.all() if r.probe == "finetune"]) == 2


@pytest.mark.parametrize("argv, pattern", [
    (["--fractions", "0.5,2"], "label fraction 2 is outside (0, 1]"),
    (["--fractions", "half"], "--fractions expects comma-separated label fractions"),
    (["--lrs", "0.1,-1"], "learning rate -1 must be a positive number"),
    (["--epochs", "0"], "finetune epochs must be >= 1"),
])
def test_cli_errors_are_one_line(argv, pattern, data, model_dir, tmp_path):
    r = runner().run("finetune", "--model", str(model_dir), "--dataset", f"npz:{data / 'd.npz'}", *argv,
                     env={"SSLZOO_HOME": str(tmp_path / "home")})
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("sslzoo finetune: error: ") and pattern in lines[0]
