"""torch.distributed on CPU: 2 gloo processes on loopback (forked from the test process, so they
share its imports) against 1 process.

* one step of SimCLR, DCL, CISSL and DISSL with a global batch of B over 2 ranks (DDP +
  SyncBatchNorm + all-gather with gradients) gives the loss and the gradients of 1 process with
  batch B and the same views. Tolerance: the model runs in float64 but the losses in float32, so
  |loss_2 - loss_1| <= 1e-5 and, per tensor, |g_2 - g_1| <= 1e-4 |g_1| + 1e-5 max|g_1| (max over
  every parameter of the model). Measured: loss <= 1.2e-6, gradients <= 5e-6 max|g|;
* sharded feature extraction into one store is bit-identical to single-process extraction;
* ``Trainer.fit`` on 2 ranks: EMA teachers identical on both ranks, rank 0 alone writes, and a
  checkpoint resumes on the other world size (2 -> 1 and 1 -> 2).
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dist_worker as W

from eval.datasets import load_split
from eval.featstore import FeatureStore, extract_to_store
from eval.features import extract
from training.config import load_recipe
from training.trainer import Trainer
from zoo.backbones import build_resnet

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

WORLD = 2
START = "fork" if sys.platform.startswith("linux") else "spawn"  # fork: children reuse the imports (seconds)


def run_ranks(fn, *args, timeout=240):
    """``fn(rank, WORLD, port, *args)`` in WORLD processes; fails (never hangs) after ``timeout``."""
    W.run_ranks(fn, WORLD, *args, timeout=timeout, start_method=START)


def test_one_step_on_two_ranks_equals_one_process(tmp_path):
    run_ranks(W.equivalence, str(tmp_path))
    for method in W.CASES:
        model, views = W.case_model_and_views(method)
        loss = model(views)
        loss.backward()
        got = torch.load(tmp_path / f"{method}.pt", weights_only=True)
        ref = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
        assert set(got["grads"]) == set(ref), method
        assert abs(float(got["loss"]) - loss.item()) <= 1e-5, (method, float(got["loss"]), loss.item())
        gmax = max(float(g.abs().max()) for g in ref.values())
        for k, g in ref.items():
            torch.testing.assert_close(got["grads"][k], g, rtol=1e-4, atol=1e-5 * gmax, msg=f"{method} {k}")


def test_sharded_extraction_is_bit_identical(tmp_path):
    npz = W.tiny_npz(tmp_path / "d.npz", n=40)  # 6 batches of 7 (the last of 5): rank 0 gets 3, rank 1 gets 3
    run_ranks(W.extraction, str(tmp_path), str(npz))
    store = FeatureStore(tmp_path / "store")
    split = load_split(f"npz:{npz}", "train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks
    try:
        model = W.tiny_encoder(build_resnet)
        ref, labels = extract(model, split, preprocess=W.tiny_preprocess, batch_size=7, cache=False, device="cpu")
        single = extract_to_store(model, split, tmp_path / "single", batch_size=7, preprocess=W.tiny_preprocess)
    finally:
        torch.set_num_threads(threads)
    got, got_y = store.load()
    assert got.shape == ref.shape == (40, 32)
    assert torch.equal(got, ref) and torch.equal(got_y, labels)
    assert torch.equal(single.load()[0], ref)
    m = store.manifest
    assert m["shape"] == [40, 32] and m["dtype"] == "fp32" and m["world_size"] == 2 and m["note"] == "test"
    assert m["model_sha256"] == single.manifest["model_sha256"] and m["dataset_sha256"] == split.fingerprint()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # temporary folders renamed or removed


def _train_cfg(npz, method, **sets):
    base = ["model.width=4", "model.in_chans=1", "augment.size=12", "optim.batch_size=8", "optim.epochs=1",
            "optim.warmup_epochs=0", f"data.dataset=npz:{npz}", "train.monitor_every_epochs=0", "train.log_every=1",
            "train.tensorboard=false", "train.bf16=false", "train.sync_bn=true", "method.proj_hidden_dim=16"]
    base += {"simclr": ["method.proj_dim=8"], "byol": ["method.proj_dim=8", "method.pred_hidden_dim=16"]}[method]
    return load_recipe(f"{method}_fashion_mnist_cpu", base + [f"{k}={v}" for k, v in sets.items()])


def test_train_on_two_ranks_then_resume_on_one_and_back(tmp_path):
    npz = W.tiny_npz(tmp_path / "d.npz", n=32)  # 4 steps of a global batch of 8
    out = tmp_path / "byol"
    run_ranks(W.training, _train_cfg(npz, "byol", **{"train.stop_at_step": 2}), str(out))
    sums = torch.load(out / "teacher_sums.pt", weights_only=True)
    assert torch.equal(sums[0], sums[1])  # EMA teacher bit-identical on both ranks
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 2 and ck["world_size"] == 2 and len(ck["aug_ranks"]) == 2
    assert len((out / "log.csv").read_text().splitlines()) == 1 + 2  # rank 0 alone logged
    t = Trainer(_train_cfg(npz, "byol"), out, device="cpu")  # 2 -> 1
    assert t.fit(resume=True).name == "model.safetensors" and t.step == 4

    out = tmp_path / "simclr"
    Trainer(_train_cfg(npz, "simclr", **{"train.stop_at_step": 2}), out, device="cpu").fit()
    run_ranks(W.training, _train_cfg(npz, "simclr"), str(out), True)  # 1 -> 2
    assert (out / "export" / "model.safetensors").is_file()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
    assert [r.split(",")[0] for r in (out / "log.csv").read_text().splitlines()] == ["step", "1", "2", "3", "4"]


def test_batch_not_divisible_by_world_is_one_line(tmp_path):
    from training.config import ConfigError

    npz = W.tiny_npz(tmp_path / "d.npz", n=32)
    t = Trainer(_train_cfg(npz, "simclr", **{"optim.batch_size": 7}), tmp_path / "r", device="cpu")
    t.world = 2  # as under torchrun; the check comes before any collective
    with pytest.raises(ConfigError, match="not divisible by the 2 processes"):
        t.fit()


def test_gather_rows_order_single_process():
    from training.distributed import gather_rows

    z = torch.arange(12.0).view(6, 2)
    assert gather_rows(z) == (z, None)
    assert np.isfinite(z.numpy()).all()
