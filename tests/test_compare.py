"""Smoke test of the method comparison: 2 methods x 1 seed x 3 steps on tiny Fashion-MNIST-like data,
the table, CSV and plot appear, an interrupted run resumes, a finished run is skipped."""
import csv
import json

import numpy as np
import pytest

from eval.store import ResultStore
from training.experiments.compare import main, parse_methods


@pytest.fixture
def tiny(tmp_path):
    """64 train / 16 test 28x28 grey images in 4 classes (16 per class: enough for 10-shot)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 16)
    images = rng.integers(0, 256, size=(64, 28, 28, 1), dtype=np.uint8)
    images[:, :14] //= (labels[:, None, None, None] + 1).astype(np.uint8)  # some class signal
    np.savez(tmp_path / "tiny.npz", train_image=images, train_label=labels, test_image=images[::4],
             test_label=labels[::4])
    return tmp_path / "tiny.npz"


def _argv(tiny, out, *extra):
    # a width-4 network without the expansion block: the probes on 1024-d features would cost most of the time
    return ["--methods", "simclr,dcl_tau0.1", "--seeds", "0", "--steps", "3", "--batch-size", "16",
            "--dataset", f"npz:{tiny}", "--out", str(out), "--eval-batch-size", "64",
            "--set", "model.width=4", "--set", "model.expand_dim=null", *extra]


def test_compare_smoke(tiny, tmp_path, capsys):
    out = tmp_path / "cmp"
    # first call: simclr is stopped after 2 of its 3 steps (as an interrupted run would be)
    assert main(_argv(tiny, out, "--set", "train.stop_at_step=2")) == 0
    rec = json.loads((out / "runs" / "simclr_s0" / "compare.json").read_text())
    assert rec["status"] == "stopped" and rec["segments"][-1]["end_step"] == 2
    assert not (out / "compare.md").exists()  # nothing evaluated yet
    capsys.readouterr()
    # second call: both resume from their checkpoints and finish; everything is evaluated
    assert main(_argv(tiny, out)) == 0
    rec = json.loads((out / "runs" / "simclr_s0" / "compare.json").read_text())
    assert rec["status"] == "done" and [s["start_step"] for s in rec["segments"]] == [0, 2]
    assert rec["wall_complete"] and rec["wall_s"] > 0
    assert rec["config"]["model"]["width"] == 4 and rec["config"]["method"]["name"] == "simclr"
    assert rec["config"]["train"]["max_steps"] == 3 and rec["config"]["optim"]["batch_size"] == 16
    md = (out / "compare.md").read_text()
    assert "3 optimisation steps x batch 16" in md and "training seeds: 0" in md and "kNN k=20" in md
    assert "SimCLR" in md and "DCL tau+ 0.1" in md
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["method"] for r in rows] == ["simclr", "dcl_tau0.1"]
    assert all(0 <= float(r["linear_mean"]) <= 100 and r["steps"] == "3" for r in rows)
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with ResultStore() as store:
        stored = store.all()
    assert {r.model for r in stored} == {"compare/simclr_s0", "compare/dcl_tau0.1_s0"}
    assert len(stored) == 2 * (1 + 2 + 3)  # linear, 2 kNN settings, 10-shot x 3 seeds per run
    # third call: nothing to train, nothing to recompute
    mtime = (out / "runs" / "simclr_s0" / "export" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(_argv(tiny, out)) == 0
    assert capsys.readouterr().out.count("finished before, skipped") == 2
    assert (out / "runs" / "simclr_s0" / "export" / "model.safetensors").stat().st_mtime_ns == mtime
    with ResultStore() as store:
        assert store.count() == len(stored)
    # a different budget in the same folder is refused, in one line
    assert main(_argv(tiny, out, "--set", "optim.lr=0.1")) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("training.experiments.compare")]
    assert len(lines) == 1 and "another recipe or budget" in lines[0]


def test_results_of_an_earlier_code_version_are_reused(tiny, tmp_path, capsys, monkeypatch):
    """A commit between two invocations changes the store's code version: the probes of unchanged
    weights are taken from the store, not run again; --reevaluate runs them again."""
    import sqlite3

    import eval.run
    from eval.store import default_path

    out = tmp_path / "cmp"
    argv = ["--methods", "simclr", "--seeds", "0", "--steps", "2", "--batch-size", "16", "--dataset", f"npz:{tiny}",
            "--out", str(out), "--eval-batch-size", "64", "--set", "model.width=4", "--set", "model.expand_dim=null"]
    assert main(argv) == 0
    with sqlite3.connect(default_path()) as con:  # as if an older commit had stored them
        con.execute("UPDATE results SET code_version = '0.1.0+gOLD', key = key || '-old'")
    calls = []
    real = eval.run.evaluate
    monkeypatch.setattr(eval.run, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    before = (out / "runs.csv").read_text().splitlines()[1].split(",")[:5]
    assert main(argv) == 0
    assert calls == []                                   # nothing re-run
    row = (out / "runs.csv").read_text().splitlines()[1].split(",")
    assert row[:5] == before and row[-1] == "0.1.0+gOLD"  # same accuracies, attributed to the old version
    assert "probes of the runs by: 0.1.0+gOLD" in (out / "compare.md").read_text()
    assert main(argv + ["--reevaluate"]) == 0
    assert calls == [1]
    assert "0.1.0+gOLD" not in (out / "runs.csv").read_text()


def test_a_failed_run_is_reported_and_the_others_go_on(tiny, tmp_path, monkeypatch):
    """A run whose training fails (a NaN loss) does not stop the comparison: the other methods are
    trained, evaluated and tabulated, and the failure is listed under the table with its message."""
    from training import trainer as T

    real_fit = T.Trainer.fit

    def fit(self, *a, **k):
        if self.cfg["method"]["name"] == "dcl":
            raise T.TrainingError("loss is nan at step 1 (epoch 0); lower optim.lr")
        return real_fit(self, *a, **k)

    monkeypatch.setattr(T.Trainer, "fit", fit)
    out = tmp_path / "cmp"
    assert main(_argv(tiny, out)) == 0
    rec = json.loads((out / "runs" / "dcl_tau0.1_s0" / "compare.json").read_text())
    assert rec["status"] == "failed" and "loss is nan" in rec["error"]
    md = (out / "compare.md").read_text()
    table = md.split("Failed runs")[0]
    assert "SimCLR" in table and "DCL tau+ 0.1" not in table.split("| method")[1]
    assert "- DCL tau+ 0.1 (seed 0): loss is nan at step 1" in md
    assert [r["method"] for r in csv.DictReader((out / "compare.csv").open())] == ["simclr"]


def test_every_method_gets_the_d1024_architecture_and_the_budget(tmp_path):
    """The plan: each variant's own recipe, then the d1024 model section and the same budget."""
    from training.experiments.compare import EXTRA_METHODS, VARIANTS, arch_overrides, plan_runs
    from training.config import load_recipe

    arch = load_recipe("simclr_d1024_fashion_mnist_cpu")["model"]
    runs = plan_runs(list(VARIANTS), [0, 1, 2], [0], tmp_path, arch_overrides() + ["train.max_steps=7"])
    assert len(runs) == 4 * 3 + len(EXTRA_METHODS)  # default variants x 3 seeds + every other method x 1
    assert {r.method for r in runs if r.seed == 1} == {m for m in VARIANTS if m not in EXTRA_METHODS}
    for r in runs:
        cfg = load_recipe(r.recipe, r.overrides)
        assert cfg["model"] == arch and cfg["train"]["max_steps"] == 7 and cfg["train"]["seed"] == r.seed
        assert cfg["method"]["name"] == r.method.split("_")[0]
    taus = {r.method: load_recipe(r.recipe, r.overrides)["method"].get("tau_plus") for r in runs}
    assert taus["dcl_tau0.05"] == 0.05 and taus["dcl_tau0.1"] == 0.1


def test_method_sets():
    assert parse_methods("default") == ["simclr", "dcl_tau0.05", "dcl_tau0.1", "cissl"]
    from training.methods import METHODS

    assert len(parse_methods("all")) == len(METHODS) + 1  # every registered method, DCL as two tau+ variants
    with pytest.raises(ValueError, match="unknown method 'simclrr'"):
        parse_methods("simclrr")
