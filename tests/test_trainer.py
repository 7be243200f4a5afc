import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.config import load_recipe
from training.trainer import Trainer, TrainingError, warmup_cosine
from zoo.hub import create_model


@pytest.fixture
def tiny_npz(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 16)
    images = rng.integers(0, 256, size=(64, 12, 12, 1), dtype=np.uint8)
    images[..., :6, :] //= (labels[:, None, None, None] + 1).astype(np.uint8)  # some class signal
    path = tmp_path / "tiny.npz"
    np.savez(path, train_image=images, train_label=labels, test_image=images[:16], test_label=labels[:16])
    return path


def _cfg(npz, **extra):
    sets = [f"data.dataset=npz:{npz}", "model.width=4", "model.in_chans=1", "augment.size=12",
            "optim.batch_size=16", "optim.epochs=2", "optim.warmup_epochs=1", "method.proj_hidden_dim=16",
            "method.proj_dim=8", "train.monitor_every_epochs=1", "train.monitor_size=32", "train.monitor_val_size=16",
            "train.log_every=1"] + [f"{k}={v}" for k, v in extra.items()]
    return load_recipe("simclr_fashion_mnist_cpu", sets)


def test_warmup_cosine_shape():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_train_exports_a_loadable_zoo_folder(tiny_npz, tmp_path):
    out = tmp_path / "run"
    path = Trainer(_cfg(tiny_npz), out, device="cpu").fit()
    assert path == out / "export" / "model.safetensors"
    cfg = json.loads((out / "export" / "config.json").read_text())
    assert cfg["feature_dim"] == 32 and cfg["preprocess"]["in_chans"] == 1
    assert not any(k.startswith("head.") for k in load_file(str(path)))  # backbone only
    model = create_model(out / "export")
    assert model(torch.rand(2, 1, 12, 12)).shape == (2, 32)
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss") and len(rows) == 1 + 8  # 4 steps/epoch x 2 epochs
    assert len((out / "monitor.csv").read_text().splitlines()) == 1 + 2


def test_resume_is_bit_identical(tiny_npz, tmp_path):
    full = Trainer(_cfg(tiny_npz), tmp_path / "a", device="cpu")
    full.fit()
    part = Trainer(_cfg(tiny_npz, **{"train.stop_at_step": 3}), tmp_path / "b", device="cpu")
    assert part.fit().name == "checkpoint.pt"  # stopped mid-epoch, nothing exported
    assert not (tmp_path / "b" / "export").exists()
    resumed = Trainer(_cfg(tiny_npz), tmp_path / "b", device="cpu")
    resumed.fit(resume=True)
    assert resumed.step == full.step == 8
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tiny_npz, tmp_path):
    t = Trainer(_cfg(tiny_npz), tmp_path / "nan", device="cpu")
    t.model.backbone.bn1.weight.data.fill_(float("nan"))
    with pytest.raises(TrainingError, match=r"at step 0 .*--resume"):
        t.fit()
