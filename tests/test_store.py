"""The results store (eval/store.py), its use by `sslzoo eval` (reuse unless --force) and the
leaderboard that reads it (tables, reported numbers, few-shot plot)."""
import json
import math
import multiprocessing as mp
import os
import signal
import sqlite3

import numpy as np
import pytest
import torch

from eval import run as run_mod
from eval.store import Result, ResultStore, StoreError, aggregate, canonical_json, code_version, default_path
from zoo.backbones import build_resnet
from zoo.io import save_folder
from zoo.registry import REGISTRY

SHA = "ab" * 32
DSHA = "cd" * 32


def res(model="m", seed=0, acc=50.0, protocol="few-shot k=5", probe="fewshot", params=None, **kw):
    return Result(model=model, weights_sha256=SHA, dataset="d", dataset_sha256=DSHA, probe=probe, protocol=protocol,
                  params={"shots": 5, "precision": "fp32"} if params is None else params, seed=seed, accuracy=acc,
                  **kw)


# ----------------------------------------------------------------------------- the store itself


def test_roundtrip_wal_and_canonical_keys(tmp_path):
    with ResultStore(tmp_path / "r.sqlite3") as s:
        assert s.con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        r = res(params={"b": (1, 2), "a": {"y": np.float32(0.5), "x": np.int64(3)}}, extra={"l2": 1e-3})
        assert s.put([r]) == 1
        back = s.get(r.key)
        assert back.params == {"a": {"x": 3, "y": 0.5}, "b": [1, 2]} and back.extra == {"l2": 1e-3}
        assert back.accuracy == 50.0 and back.seed == 0 and back.code_version == code_version()
    # the same parameters in another order / container type are the same result
    same = res(params={"a": {"x": 3, "y": 0.5}, "b": [1, 2]})
    assert same.key == r.key
    assert canonical_json({"b": 1, "a": [1.5, (2,)]}) == '{"a":[1.5,[2]],"b":1}'
    # every identity field changes the key; the accuracy, extras and time do not
    for change in (dict(model="m2"), dict(seed=1), dict(protocol="few-shot k=6"), dict(probe="knn"),
                   dict(params={"shots": 5, "precision": "bf16"}), dict(code_version="other")):
        assert res(**change).key != res().key, change
    assert res(acc=1.0, extra={"x": 1}, created="2000").key == res().key
    assert res(seed=None).key != res(seed=0).key


def test_same_key_stored_once_replace_or_keep(tmp_path):
    with ResultStore(tmp_path / "r.sqlite3") as s:
        s.put([res(acc=10.0)])
        assert s.put([res(acc=20.0)], replace=False) == 0
        assert s.get(res().key).accuracy == 10.0
        assert s.put([res(acc=30.0)]) == 1
        assert s.count() == 1 and s.get(res().key).accuracy == 30.0


def test_refuses_nan_and_rolls_back_the_whole_batch(tmp_path):
    with ResultStore(tmp_path / "r.sqlite3") as s:
        with pytest.raises(ValueError, match="not a number"):
            s.put([res(seed=1, acc=1.0), res(seed=2, acc=float("nan"))])
        assert s.count() == 0


def _writer(path, worker, n, barrier):
    barrier.wait()  # every process opens the (new) store at the same moment
    with ResultStore(path) as s:
        for i in range(n):
            s.put([res(model=f"m{worker}", seed=i, acc=float(worker * 1000 + i))])  # one transaction each
            if i % 10 == 0:  # a key every worker writes: must end up once
                s.put([res(model="shared", seed=i // 10, acc=float(i))])


def test_8_concurrent_writers_x_100_results_lose_and_duplicate_nothing(tmp_path):
    path = tmp_path / "r.sqlite3"
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_writer, args=(path, w, 100, barrier)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    assert [p.exitcode for p in procs] == [0] * 8
    with ResultStore(path) as s:
        assert s.integrity_check() == "ok"
        rows = s.all()
        assert s.count() == len(rows) == 8 * 100 + 10
        keys = [r.key for r in rows]
        assert len(set(keys)) == len(keys)
        got = {(r.model, r.seed): r.accuracy for r in rows}
        for w in range(8):
            for i in range(100):
                assert got[(f"m{w}", i)] == w * 1000 + i
    board = {r["model"]: r for r in aggregate(rows)}
    assert set(board) == {f"m{w}" for w in range(8)} | {"shared"}
    for w in range(8):
        r = board[f"m{w}"]
        vals = [w * 1000 + i for i in range(100)]
        assert r["n"] == 100 and r["seeds"] == ",".join(map(str, range(100)))
        assert r["accuracy_mean"] == pytest.approx(np.mean(vals)) and r["accuracy_std"] == pytest.approx(
            np.std(vals, ddof=1))
    assert board["shared"]["n"] == 10


def _committer(path, conn):
    with ResultStore(path) as s:
        for i in range(10**6):
            s.put([res(seed=i, acc=float(i))])
            conn.send(i)  # only after COMMIT returned


def test_sigkill_while_writing_keeps_every_commit_and_the_file_sound(tmp_path):
    path = tmp_path / "r.sqlite3"
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_committer, args=(path, b))
    p.start()
    last = -1
    while last < 30:
        last = a.recv()
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    while a.poll():
        last = a.recv()
    with ResultStore(path) as s:
        assert s.integrity_check() == "ok"
        n = s.count()
        seeds = sorted(r.seed for r in s.all())
    assert last + 1 <= n <= last + 2  # every acknowledged commit, at most the one in flight
    assert seeds == list(range(n))


def test_aggregate_latest_result_per_seed_wins():
    rows = [res(seed=0, acc=10.0, created="2026-01-01"), res(seed=1, acc=20.0, created="2026-01-01"),
            res(seed=0, acc=30.0, created="2026-02-01", code_version="new"),
            res(protocol="linear", probe="linear", params={"val_fraction": 0.1}, acc=80.0),
            res(protocol="knn k=20 T=0.07", probe="knn", params={"k": 20, "T": 0.07}, seed=None, acc=70.0)]
    out = {r["protocol"]: r for r in aggregate(rows)}
    few = out["few-shot k=5"]
    assert few["n"] == 2 and few["seeds"] == "0,1" and few["per_seed"] == "30.0,20.0"
    assert few["accuracy_mean"] == 25.0 and few["accuracy_std"] == pytest.approx(math.sqrt(50))
    assert set(few["code_version"].split(",")) == {code_version(), "new"}
    assert out["linear"]["accuracy_std"] is None and out["linear"]["seeds"] == "0"
    assert out["knn k=20 T=0.07"]["seeds"] == "-" and out["knn k=20 T=0.07"]["n"] == 1


def test_legacy_json_results_imported_once(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "results").mkdir(parents=True)
    legacy = [dict(model="m", weights_sha256=SHA, dataset="d", dataset_sha256="x/y", protocol="few-shot k=2",
                   accuracy_mean=60.0, accuracy_std=5.0, seeds="0,1", n=2,
                   params=json.dumps({"per_seed": [0.55, 0.65], "l2": [0.1, 0.2]}), precision="fp32",
                   code_version="abc", time="2026-01-01T00:00:00+00:00"),
              dict(model="m", weights_sha256=SHA, dataset="d", dataset_sha256="x/y", protocol="linear",
                   accuracy_mean=90.0, accuracy_std=None, seeds="0", n=1,
                   params=json.dumps({"l2": 0.01, "val_accuracy": 0.9, "val_fraction": 0.1}), precision="fp32",
                   code_version="abc", time="2026-01-01T00:00:00+00:00"),
              dict(model="m", weights_sha256=SHA, dataset="d", dataset_sha256="x/y", protocol="knn k=20 T=0.07",
                   accuracy_mean=85.0, accuracy_std=None, seeds="-", n=1, params=json.dumps({"k": 20, "T": 0.07}),
                   precision="fp32", code_version="abc", time="2026-01-01T00:00:00+00:00")]
    (home / "results" / "20260101T000000-1.json").write_text(json.dumps(legacy))
    (home / "results" / "broken.json").write_text("[{")
    monkeypatch.setenv("SSLZOO_HOME", str(home))
    with ResultStore() as s:
        assert s.path == default_path() == home / "results.sqlite3"
        assert s.count() == 4  # 2 few-shot seeds + linear + knn
    with ResultStore() as s:
        assert s.count() == 4  # not imported twice
        rows = {r["protocol"]: r for r in aggregate(s.all())}
    assert rows["few-shot k=2"]["accuracy_mean"] == pytest.approx(60.0)
    assert rows["few-shot k=2"]["accuracy_std"] == pytest.approx(math.sqrt(50))
    assert rows["linear"]["accuracy_mean"] == 90.0 and rows["knn k=20 T=0.07"]["code_version"] == "abc"


def test_unusable_store_is_a_one_line_error(tmp_path, monkeypatch):
    bad = tmp_path / "garbage.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="unreadable") as e:
        ResultStore(bad)
    assert "\n" not in str(e.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create the results store folder"):
        ResultStore(tmp_path / "file" / "r.sqlite3")
    newer = tmp_path / "newer.sqlite3"
    ResultStore(newer).close()
    con = sqlite3.connect(newer)
    con.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="schema 99, newer"):
        ResultStore(newer)


# ----------------------------------------------------------------------------- sslzoo eval + the store


@pytest.fixture
def tiny(tmp_path):
    arch = {"arch": "resnet18", "stem": "cifar", "width": 4, "in_chans": 1}
    pre = {"resize": 12, "crop": 12, "mean": [0.5], "std": [0.5], "interpolation": "bilinear", "in_chans": 1}
    torch.manual_seed(0)
    save_folder(build_resnet(**arch).state_dict(), {"name": "tiny", "arch": arch, "feature_dim": 32,
                                                    "preprocess": pre}, tmp_path / "tinymodel")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 8)
    x = rng.integers(0, 256, (24, 12, 12), dtype=np.uint8)
    x[y == 1] //= 3
    np.savez(tmp_path / "d.npz", train_image=x, train_label=y, test_image=x[::2], test_label=y[::2])
    return tmp_path / "tinymodel", f"npz:{tmp_path / 'd.npz'}"


def _evaluate(model, data, **kw):
    info = {}
    kw.setdefault("probes", ("linear", "knn", "fewshot"))
    kw.setdefault("shots", (1, 2))
    kw.setdefault("seeds", (0, 1))
    rows = run_mod.evaluate(str(model), data, info=info, **kw)
    return {(r["model"], r["protocol"]): r for r in rows}, info


def test_eval_stores_per_seed_results_and_reuses_them(tiny, monkeypatch):
    model, data = tiny
    first, info = _evaluate(model, data)
    assert info == {"reused": 0, "computed": 1 + 2 + 2 * 2}
    with ResultStore() as s:
        stored = s.all()
    assert len(stored) == 7
    few = [r for r in stored if r.probe == "fewshot"]
    assert sorted((r.params["shots"], r.seed) for r in few) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert {r.dataset for r in stored} == {"npz:d.npz"} and all(len(r.dataset_sha256) == 64 for r in stored)
    assert all(r.params["precision"] == "fp32" and r.params["preprocess"]["crop"] == 12 for r in stored)
    assert first[("tinymodel", "few-shot k=2")]["n"] == 2

    def boom(*a, **k):
        raise AssertionError("recomputed although stored")

    with monkeypatch.context() as patch:
        for name in ("extract", "linear_probe", "knn_probes", "fewshot_probe"):
            patch.setattr(run_mod, name, boom)
        again, info = _evaluate(model, data)
    assert info == {"reused": 7, "computed": 0}
    for k, r in first.items():
        assert again[k]["accuracy_mean"] == r["accuracy_mean"] and again[k]["per_seed"] == r["per_seed"]

    # a new seed computes only that seed; --force recomputes everything, storing nothing twice
    _, info = _evaluate(model, data, seeds=(0, 1, 2), probes=("fewshot",))
    assert info == {"reused": 4, "computed": 2}
    _, info = _evaluate(model, data, force=True)
    assert info == {"reused": 0, "computed": 7}
    _, info = _evaluate(model, data, cache=False, probes=("knn",))
    assert info == {"reused": 0, "computed": 2}
    with ResultStore() as s:
        assert s.count() == 9


def test_eval_checks_everything_before_computing(tiny, monkeypatch, tmp_path):
    model, data = tiny
    monkeypatch.setattr(run_mod, "extract", lambda *a, **k: (_ for _ in ()).throw(AssertionError("computed")))
    with pytest.raises(ValueError, match=r"few-shot k=9 exceeds the smallest train class .* 8 labelled"):
        _evaluate(model, data, shots=(1, 9))
    with pytest.raises(ValueError, match="unknown baseline 'pixel'"):
        _evaluate(model, data, baselines=("pixel",))
    with pytest.raises(ValueError, match="needs at least one seed"):
        _evaluate(model, data, seeds=())
    assert not (tmp_path / "sslzoo_home" / "results.sqlite3").exists()


# ----------------------------------------------------------------------------- the leaderboard


def _fill_store():
    bundled = "simclr_resnet18w16_fashion_mnist"
    results = [Result(model=bundled, weights_sha256=SHA, dataset="fashion-mnist", dataset_sha256=DSHA, probe="linear",
                      protocol="linear", params={"val_fraction": 0.1}, seed=0, accuracy=88.0)]
    for m, base in (("a", 40.0), ("b", 50.0)):
        for k in (1, 5, 10):
            for s in (0, 1, 2):
                results.append(res(model=m, protocol=f"few-shot k={k}", params={"shots": k}, seed=s,
                                   acc=base + k + s))
    with ResultStore() as s:
        s.put(results)
    return bundled


def test_leaderboard_rows_reported_numbers_and_formats(tmp_path, capsys):
    from training.cli import main

    bundled = _fill_store()
    assert main(["leaderboard", "--format", "json", "--out", str(tmp_path / "lb.csv")]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 1 + 2 * 3  # one row per model x dataset x protocol
    lin = next(r for r in recs if r["model"] == bundled)
    reported = next(m for m in REGISTRY[bundled].metrics if m.protocol.startswith("linear"))
    assert lin["reported"] == reported.value and lin["reported_protocol"].startswith(reported.protocol)
    a5 = next(r for r in recs if r["model"] == "a" and r["protocol"] == "few-shot k=5")
    assert a5["accuracy_mean"] == 46.0 and a5["accuracy_std"] == pytest.approx(1.0) and a5["n"] == 3
    assert a5["reported"] is None and a5["code_version"] == code_version()
    assert (tmp_path / "lb.csv").read_text().startswith("model,weights_sha256,dataset,protocol,accuracy_mean")
    assert sorted(os.listdir(tmp_path)) == ["lb.csv", "sslzoo_home"]  # no temporary files left

    assert main(["leaderboard"]) == 0
    md = capsys.readouterr().out
    line = next(ln for ln in md.splitlines() if bundled in ln)
    assert "88.00" in line and f"{reported.value:.2f}" in line and "linear (L2" in line
    assert "46.00 ± 1.00" in md and "reported protocol" in md.splitlines()[0]


def test_leaderboard_plot_is_a_png_with_one_line_per_model(tmp_path, capsys):
    import matplotlib.image

    from eval.plots import fewshot_points
    from eval.tables import make_table
    from training.cli import main

    _fill_store()
    png = tmp_path / "curves.png"
    assert main(["leaderboard", "--plot", str(png)]) == 0
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0
    with ResultStore() as s:
        pts = fewshot_points(make_table(aggregate(s.all())))
    assert set(pts) == {"d"} and set(pts["d"]) == {"a", "b"}
    assert pts["d"]["a"] == [(1, 42.0, 1.0), (5, 46.0, 1.0), (10, 51.0, 1.0)]


def test_leaderboard_empty_and_bad_plot(tmp_path, capsys):
    from training.cli import main

    assert main(["leaderboard"]) == 0
    assert "no results yet" in capsys.readouterr().out
    assert main(["leaderboard", "--plot", str(tmp_path / "p.png")]) == 2
    assert "no few-shot results to plot" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def test_feature_cache_with_a_flipped_byte_is_recomputed_not_used(tmp_path, caplog):
    """A cached feature file whose content no longer matches its recorded sha256 is never used."""
    import numpy as np
    import torch

    from eval.datasets import ImageSplit
    from eval.features import extract
    from zoo.base import home as sslzoo_home

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    split = ImageSplit("toy", "test", np.arange(8) % 2, ["a", "b"],
                       images=np.random.default_rng(0).integers(0, 255, (8, 4, 4, 1), dtype=np.uint8))
    from zoo.preprocess import Preprocess
    pre = Preprocess(resize=4, crop=4, mean=(0.5,), std=(0.25,), in_chans=1)
    ref, _ = extract(model, split, preprocess=pre)
    (path,) = (sslzoo_home() / "features").glob("*.safetensors")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x40                                   # flip one bit inside the feature data
    path.write_bytes(bytes(raw))
    with caplog.at_level("WARNING", logger="eval.features"):
        again, _ = extract(model, split, preprocess=pre)
    assert torch.equal(again, ref)
    assert [(r.name, r.levelname) for r in caplog.records] == [("eval.features", "WARNING")]
    assert "does not match its recorded sha256" in caplog.records[0].getMessage()
    caplog.clear()
    third, _ = extract(model, split, preprocess=pre)  # the entry was rewritten intact
    assert torch.equal(third, ref) and "recomputing" not in caplog.text


def test_force_says_when_a_recomputed_value_differs_and_knn_is_labelled_with_its_real_k(tiny, caplog):
    """Issue 17: --force replaced a stored number by a different one silently; kNN k=200 on 24 train
    images ran with k=24 but was labelled k=200."""
    import logging

    model, data = tiny
    rows, _ = _evaluate(model, data, probes=("knn",))
    assert ("tinymodel", "knn k=24 T=0.1") in rows and ("tinymodel", "knn k=20 T=0.07") in rows
    with caplog.at_level(logging.WARNING, logger="eval.run"):
        _evaluate(model, data, probes=("knn",), force=True)  # same number again: nothing to say
    assert not [r for r in caplog.records if "recomputed" in r.getMessage()]
    with sqlite3.connect(default_path()) as con:  # a stored value computed under other circumstances
        con.execute("UPDATE results SET accuracy = accuracy + 1 WHERE protocol = 'knn k=20 T=0.07'")
    with caplog.at_level(logging.WARNING, logger="eval.run"):
        rows, info = _evaluate(model, data, probes=("knn",), force=True)
    msgs = [r.getMessage() for r in caplog.records if "recomputed" in r.getMessage()]
    assert len(msgs) == 1 and "knn k=20 T=0.07" in msgs[0] and "\n" not in msgs[0]
    with ResultStore() as s:
        assert s.count() == 2
