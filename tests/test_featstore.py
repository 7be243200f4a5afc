"""Feature stores (eval/featstore.py) and the probes that stream them (eval/stream_probes.py)."""
import json

import numpy as np
import pytest
import torch

from eval import run as run_mod
from eval.featstore import FeatureStore, StoreFormatError, shard_batches, store_from_chunks
from eval.probes import knn_probe, linear_probe
from eval.stream_probes import chunked_knn_probe, streaming_linear_probe
from zoo.backbones import build_resnet
from zoo.io import save_folder


def blobs(n, d=12, c=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(42).normal(size=(c, d)) * 0.8
    y = rng.integers(0, c, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def make(path, x, y, dtype="fp32", step=300):
    return store_from_chunks(path, len(x), x.shape[1], ((x[i:i + step], y[i:i + step]) for i in range(0, len(x), step)),
                             dtype=dtype, meta={"model_sha256": "m", "dataset": "blobs", "transform": {"crop": 1}})


def test_store_round_trip_manifest_and_memmap(tmp_path):
    x, y = blobs(1000)
    st = make(tmp_path / "s", x, y)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["shape"] == [1000, 12] and m["dtype"] == "fp32" and m["model_sha256"] == "m" and "transform" in m
    fx, fy = st.load()
    assert np.array_equal(fx.numpy(), x) and np.array_equal(fy.numpy(), y)
    assert np.array_equal(np.asarray(st.memmap()), x)
    assert np.array_equal(st.read_index(np.array([3, 17, 999]))[0], x[[3, 17, 999]])
    half = make(tmp_path / "h", x, y, dtype="fp16")
    assert half.dtype == np.float16 and np.array_equal(half.load()[0].numpy(), x.astype(np.float16).astype(np.float32))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_incomplete_or_wrong_stores_are_one_line_errors(tmp_path):
    x, y = blobs(100)
    with pytest.raises(StoreFormatError, match="no manifest.json"):
        FeatureStore(tmp_path)
    with pytest.raises(ValueError, match="chunks gave 100 rows, the store has 200"):
        store_from_chunks(tmp_path / "bad", 200, 12, [(x, y)])
    assert not (tmp_path / "bad").exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    st = make(tmp_path / "s", x, y)
    with open(st.path / "features.npy", "r+b") as f:
        f.truncate(500)
    with pytest.raises(StoreFormatError, match="truncated"):
        FeatureStore(st.path)


def test_shards_cover_the_batch_grid_once():
    for n, bs, w in [(40, 7, 2), (5, 7, 3), (100, 10, 4)]:
        got = [i for r in range(w) for i in shard_batches(n, bs, w, r)]
        assert got == list(range(-(-n // bs)))


def test_streaming_probes_equal_the_in_memory_probes(tmp_path):
    x, y = blobs(2000)
    xt, yt = blobs(300, seed=1)
    tr, te = make(tmp_path / "tr", x, y), make(tmp_path / "te", xt, yt)
    a = linear_probe(x, y, xt, yt, max_iter=200)
    b = streaming_linear_probe(tr, te, max_iter=200, chunk_rows=256)
    assert b["l2"] == a["l2"] and b["accuracy"] == pytest.approx(a["accuracy"], abs=1e-6)
    assert b["val_accuracies"] == pytest.approx(a["val_accuracies"], abs=1e-6)
    for k, t in [(20, 0.07), (200, 0.1)]:
        assert chunked_knn_probe(tr, te, k=k, temperature=t, chunk_rows=150, query_chunk=64)["accuracy"] == \
            pytest.approx(knn_probe(x, y, xt, yt, k=k, temperature=t)["accuracy"], abs=1e-9)


def test_evaluate_with_feature_store_matches_in_memory(tmp_path):
    arch = {"arch": "resnet18", "stem": "cifar", "width": 4, "in_chans": 1}
    pre = {"resize": 12, "crop": 12, "mean": [0.5], "std": [0.5], "interpolation": "bilinear", "in_chans": 1}
    torch.manual_seed(0)
    save_folder(build_resnet(**arch).state_dict(), {"name": "tiny", "arch": arch, "feature_dim": 32,
                                                    "preprocess": pre}, tmp_path / "m")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 8)
    x = rng.integers(0, 256, (24, 12, 12), dtype=np.uint8)
    x[y == 1] //= 3
    np.savez(tmp_path / "d.npz", train_image=x, train_label=y, test_image=x[::2], test_label=y[::2])
    kw = dict(probes=("linear", "knn", "fewshot"), shots=(1, 2), seeds=(0,), save=False, force=True)
    mem = run_mod.evaluate(str(tmp_path / "m"), f"npz:{tmp_path / 'd.npz'}", **kw)
    disk = run_mod.evaluate(str(tmp_path / "m"), f"npz:{tmp_path / 'd.npz'}", feature_store=True, **kw)
    assert [r["protocol"] for r in disk] == [r["protocol"] for r in mem]
    assert [r["accuracy_mean"] for r in disk] == pytest.approx([r["accuracy_mean"] for r in mem], abs=1e-4)
