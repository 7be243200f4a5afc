import json
import math
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.config import RECIPE_DIR, ConfigError, load_recipe
from training.methods import METHODS
from training.optim import LARS, build_optimizer
from training.runfolder import RunFolderError
from training.trainer import Trainer, TrainingError, build_model, warmup_cosine
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


# ============================================================================ every method, multi-crop, LARS, ...

METHOD_RECIPES = list(METHODS)  # every registered method (training.methods discovers them)
SHRINK = {"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 16, "n_clusters": 32, "bottleneck_dim": 8,
          "out_dim": 32, "queue_size": 64}


def _fake_npz(path, n=64, size=16, chans=1, label=None):
    rng = np.random.default_rng(1)
    labels = np.full(n, label) if label is not None else np.repeat(np.arange(4), n // 4)
    images = rng.integers(0, 256, size=(n, size, size, chans), dtype=np.uint8)
    np.savez(path, train_image=images, train_label=labels, test_image=images[:8],
             test_label=np.abs(labels[:8]))
    return path


def _tiny_sets(cfg, npz, batch=8, steps=2, extra=None):
    """Overrides that shrink any recipe to a width-4 network on 16-px fake data."""
    m = cfg["model"]
    extra = "null" if extra is None else f"npz:{extra}"
    sets = [f"data.dataset=npz:{npz}", "data.split=train", f"data.extra={extra}", "model.width=4", "augment.size=16",
            "augment.blur_kernel=3", f"optim.batch_size={batch}", f"train.max_steps={steps}",
            "train.monitor_every_epochs=0", "train.log_every=1", "train.tensorboard=false"]
    if m["expand_dim"]:  # keep the expansion ratio: trunk 64 * 8 * block expansion -> 4 * 8 * block expansion
        block = 4 if m["arch"] == "resnet50" else 1
        sets += [f"model.expand_dim={m['expand_dim'] // (64 * 8 * block) * 4 * 8 * block}", "model.expand_mid=8"]
    if cfg["augment"]["small_crops"]:
        # >= 9 px: a 1x1 map into a stride-2 conv hits a torch CPU bug (bf16 + channels_last weight
        # gradient is not finite), which real crop sizes never reach
        sets.append("augment.small_size=10")
    sets += [f"method.{k}={v}" for k, v in SHRINK.items() if k in cfg["method"]]
    return sets


UPSTREAM = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if "fashion_mnist" not in p.stem)


@pytest.mark.parametrize("recipe", UPSTREAM)
def test_upstream_recipe_loads_builds_and_runs_two_steps(recipe, tmp_path):
    cfg = load_recipe(recipe)
    npz = _fake_npz(tmp_path / "d.npz", n=32, chans=cfg["model"]["in_chans"])
    extra = _fake_npz(tmp_path / "gen.npz", n=8, chans=cfg["model"]["in_chans"], label=-1) if cfg["data"]["extra"] else None
    # fp32: on 16-px inputs a ResNet-50's layer4 sees 1x1 maps, where torch's CPU bf16 conv weight gradient
    # is not finite (the trainer now refuses that step; before, this test ended with NaN in
    # backbone.layer4.0.conv2.weight unnoticed). Real crop sizes never reach 1x1 maps.
    tiny = load_recipe(recipe, _tiny_sets(cfg, npz, extra=extra) + ["train.bf16=false"])
    t = Trainer(tiny, tmp_path / "run", device="cpu")
    t.fit()
    assert t.step == 2
    losses = [float(r.split(",")[2]) for r in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert len(t.views(torch.zeros(2, cfg["model"]["in_chans"], 16, 16, dtype=torch.uint8))) == \
        2 + cfg["augment"]["small_crops"]


@pytest.mark.parametrize("method", METHOD_RECIPES)
def test_every_method_trains_three_steps_from_its_cpu_recipe(method, tmp_path):
    cfg = load_recipe(f"{method}_fashion_mnist_cpu")
    assert cfg["method"]["name"] == method and cfg["model"]["width"] == 16
    npz = _fake_npz(tmp_path / "d.npz", n=64, chans=1)
    sets = _tiny_sets(cfg, npz, batch=16, steps=3)
    if method == "dino":  # let the last layer (and so its EMA copy) move within these 3 steps
        sets.append("method.freeze_last_layer_epochs=0")
    t = Trainer(load_recipe(f"{method}_fashion_mnist_cpu", sets), tmp_path / "r", device="cpu")
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.fit()
    assert t.step == 3
    losses = [float(r.split(",")[2]) for r in (tmp_path / "r" / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    after = t.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "backbone.conv1.weight" in changed
    # EMA targets / momentum encoders moved too (weight tensors: a BN scale's EMA step can round away)
    frozen = [k for k, p in t.model.named_parameters() if not p.requires_grad and p.ndim > 1]
    assert [k for k in frozen if k not in changed] == []
    if method == "mocov2":
        assert int(after["queue.ptr"]) == 3 * 2 * 16 % 64  # symmetric: 2 key sets of 16 per step
    exported = load_file(str(tmp_path / "r" / "export" / "model.safetensors"))
    src = t.model.teacher_backbone if method == "dino" else t.model.backbone  # DINO exports its teacher
    assert all(torch.equal(exported[k], v) for k, v in src.state_dict().items())
    if method == "dino":
        assert "loss.center" in changed


def test_multicrop_views_and_refusals(tiny_npz, tmp_path):
    t = Trainer(_cfg(tiny_npz, **{"method.name": "dino", "method.out_dim": 16, "method.bottleneck_dim": 8,
                                  "augment.small_crops": 3, "augment.small_size": 6}), tmp_path / "m", device="cpu")
    views = t.views(torch.zeros(5, 1, 12, 12, dtype=torch.uint8))
    assert [tuple(v.shape) for v in views] == [(5, 1, 12, 12)] * 2 + [(5, 1, 6, 6)] * 3
    with pytest.raises(ConfigError, match="takes no small crops"):
        Trainer(_cfg(tiny_npz, **{"augment.small_crops": 2, "augment.small_size": 6}), tmp_path / "x", device="cpu")
    with pytest.raises(ConfigError, match="needs augment.small_size"):
        Trainer(_cfg(tiny_npz, **{"method.name": "dino", "augment.small_crops": 2}), tmp_path / "y", device="cpu")


def test_asymmetric_second_view(tiny_npz, tmp_path):
    t = Trainer(_cfg(tiny_npz, **{"augment.view2": "{blur_p: 1.0, flip_p: 0.0}"}), tmp_path / "a", device="cpu")
    assert t.view_augs[0].blur_p == 0.0 and t.view_augs[1].blur_p == 1.0 and t.view_augs[1].flip_p == 0.0
    assert t.view_augs[1].size == t.view_augs[0].size
    with pytest.raises(ConfigError, match="unknown augment.view2 field 'blurp'"):
        Trainer(_cfg(tiny_npz, **{"augment.view2": "{blurp: 1.0}"}), tmp_path / "b", device="cpu")


@pytest.mark.parametrize("method", ["mocov2", "dino"])
def test_resume_is_bit_identical_with_ema_queue_and_center(method, tiny_npz, tmp_path):
    extra = {"method.name": method, "optim.name": "lars", "optim.lars_clip": "true", "optim.nesterov": "false",
             "optim.grad_clip_norm": 1.0, "optim.weight_decay_end": 0.01}
    if method == "mocov2":
        extra.update({"method.queue_size": 40, "method.momentum_base": 0.9, "method.symmetric": "true"})
    else:
        extra.update({"method.out_dim": 16, "method.bottleneck_dim": 8, "augment.small_crops": 2,
                      "augment.small_size": 10, "method.warmup_teacher_temp_epochs": 1})
    full = Trainer(_cfg(tiny_npz, **extra), tmp_path / "a", device="cpu")
    full.fit()
    Trainer(_cfg(tiny_npz, **extra, **{"train.stop_at_step": 3}), tmp_path / "b", device="cpu").fit()
    resumed = Trainer(_cfg(tiny_npz, **extra), tmp_path / "b", device="cpu")
    resumed.fit(resume=True)
    assert resumed.step == full.step == 8
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    key = "queue.keys" if method == "mocov2" else "loss.center"
    fresh = Trainer(_cfg(tiny_npz, **extra), tmp_path / "c", device="cpu").model.state_dict()
    assert not torch.equal(a[key], fresh[key])  # the queue / centre really changed during training
    sa, sb = full.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)


def test_lars_step_by_hand():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "weight_decay": 0.1, "lars": True}, {"params": [b], "weight_decay": 0.0, "lars": False}],
               lr=0.5, momentum=0.9, eta=0.02)
    w.grad = torch.tensor([[0.0, 1.0]])  # ||g|| = 1
    b.grad = torch.tensor([2.0])
    opt.step()
    trust = 0.02 * 5 / (1 + 0.1 * 5)
    d = [trust * (0 + 0.1 * 3), trust * (1 + 0.1 * 4)]
    assert w.tolist()[0] == pytest.approx([3 - 0.5 * d[0], 4 - 0.5 * d[1]], rel=1e-6)
    assert b.item() == pytest.approx(1 - 0.5 * 2.0)  # excluded: plain SGD, no decay, no adaptation
    w.grad = torch.tensor([[0.0, 1.0]])
    b.grad = torch.tensor([2.0])
    opt.step()  # momentum: buf = 0.9 * buf + d
    assert b.item() == pytest.approx(0.0 - 0.5 * (0.9 * 2.0 + 2.0))
    # LARC clip mode: the adapted rate never exceeds the global one
    v = torch.nn.Parameter(torch.tensor([100.0]))
    clipped = LARS([v], lr=0.1, momentum=0.0, eta=1.0, clip=True)
    v.grad = torch.tensor([1e-3])
    clipped.step()
    assert v.item() == pytest.approx(100.0 - 0.1 * 1e-3)


def test_build_optimizer_groups_skip_frozen_and_exclude_norms(tiny_npz):
    cfg = _cfg(tiny_npz, **{"method.name": "byol", "optim.name": "lars"})
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, LARS)
    decay, no_decay = opt.param_groups
    assert decay["lars"] and not no_decay["lars"] and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(decay["params"]) + len(no_decay["params"]) == n_trainable < len(list(model.parameters()))
    with pytest.raises(ConfigError, match="unknown optimizer 'lamb'"):
        build_optimizer(_cfg(tiny_npz, **{"optim.name": "lamb"}), model)


def test_grad_clip_schedule_and_weight_decay_schedule(tiny_npz, tmp_path):
    t = Trainer(_cfg(tiny_npz, **{"optim.grad_clip_value": 1e-4, "optim.schedule": "constant",
                                  "optim.warmup_steps": 2, "optim.weight_decay_end": 0.05}), tmp_path / "g",
                device="cpu")
    t.fit()
    lrs = [float(r.split(",")[3]) for r in (tmp_path / "g" / "log.csv").read_text().splitlines()[1:]]
    assert lrs[:3] == pytest.approx([0.3, 0.6, 0.6]) and lrs[-1] == pytest.approx(0.6)  # warm-up 2 steps, then flat
    assert t.opt.param_groups[0]["weight_decay"] > 0.04 and t.opt.param_groups[1]["weight_decay"] == 0.0
    grads = [p.grad for p in t.model.parameters() if p.grad is not None]  # the last step's (clipped) gradients
    assert grads and max(float(g.abs().max()) for g in grads) <= 1e-4
    t2 = Trainer(_cfg(tiny_npz, **{"optim.grad_clip_norm": 0.01, "train.max_steps": 2}), tmp_path / "n", device="cpu")
    t2.fit()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in t2.model.parameters()]))
    assert float(norm) <= 0.01 * (1 + 1e-4)
    with pytest.raises(ConfigError, match="unknown optim.schedule 'cosine'"):
        Trainer(_cfg(tiny_npz, **{"optim.schedule": "cosine"}), tmp_path / "h", device="cpu").fit()


def test_extra_data_repeat_and_unlabelled_images_never_vote(tiny_npz, tmp_path):
    gen = _fake_npz(tmp_path / "gen.npz", n=16, size=12, chans=1, label=-1)
    t = Trainer(_cfg(tiny_npz, **{"data.extra": f"npz:{gen}", "data.repeat": 2}), tmp_path / "e", device="cpu")
    x, y = t.load_data()
    assert len(x) == 64 + 16 and t.epoch_size(x) == 2 * 64 + 16 and int((y < 0).sum()) == 16  # copies are virtual
    acc = t.monitor(x, y)  # the kNN probe refuses labels < 0, so they must have been left out
    assert 0.0 <= acc <= 1.0


def test_file_backed_folder_is_decoded_into_memory(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(d / f"{i}.png")
    cfg = load_recipe("simclr_fashion_mnist_cpu", [f"data.dataset=folder:{tmp_path / 'imgs'}", "model.in_chans=1"])
    x, y = Trainer(cfg, tmp_path / "f", device="cpu").load_data()
    assert x.shape == (16, 1, 12, 12) and x.dtype == torch.uint8 and sorted(set(y.tolist())) == [0, 1]
    Image.fromarray(rng.integers(0, 256, (10, 12), dtype=np.uint8)).save(tmp_path / "imgs" / "train" / "a" / "odd.png")
    with pytest.raises(ConfigError, match="one image size"):
        Trainer(cfg, tmp_path / "f2", device="cpu").load_data()


def test_tensorboard_scalars_when_available(tiny_npz, tmp_path, monkeypatch):
    logged = []

    class FakeWriter:
        def __init__(self, logdir):
            self.logdir = logdir

        def add_scalar(self, tag, value, step):
            logged.append((tag, float(value), step))

        def close(self):
            logged.append(("closed", 0.0, 0))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    Trainer(_cfg(tiny_npz, **{"method.name": "dissl", "method.n_clusters": 16, "method.bottleneck_dim": 8}),
            tmp_path / "tb", device="cpu").fit()
    tags = {t for t, _, _ in logged}
    assert {"train/loss", "train/lr", "train/H_M", "monitor/knn20_heldout_train", "closed"} <= tags
    assert sum(1 for t, _, _ in logged if t == "train/loss") == 8


def test_finetune_protocol_selects_on_a_train_split_and_tests_once(monkeypatch):
    from training import finetune as ft

    sub = ft.stratified_subset(np.array([0] * 10 + [1] * 30), 0.1, 0)
    assert sum(1 for i in sub if i < 10) == 1 and sum(1 for i in sub if i >= 10) == 3
    with pytest.raises(ValueError, match="fraction"):
        ft.stratified_subset([0, 1], 0.0, 0)
    torch.manual_seed(0)
    y = torch.arange(4).repeat_interleave(16)
    x = torch.randint(0, 60, (64, 1, 12, 12), dtype=torch.uint8)
    x[:, :, :6] += (y * 60).to(torch.uint8)[:, None, None, None]  # class signal in the top half
    enc = build_model(_cfg("unused")).backbone
    w0 = enc.conv1.weight.detach().clone()
    seen = []
    real = ft.accuracy_of
    monkeypatch.setattr(ft, "accuracy_of", lambda m, xs, *a, **k: seen.append(len(xs)) or real(m, xs, *a, **k))
    r = ft.finetune(enc, x, y, x[:20], y[:20], size=12, mean=(0.5,), std=(0.5,), label_fraction=0.5,
                    val_fraction=0.25, lrs=(0.01, 0.05), epochs=2, batch_size=16, device="cpu")
    assert r["protocol"] == "finetune" and 0 <= r["accuracy"] <= 1 and r["lr"] in (0.01, 0.05)
    assert r["n_val"] == 16 and r["n_labelled"] == 24 and 1 <= r["epoch"] <= 2
    assert seen == [16] * 4 + [20]  # validation after every epoch of each lr, test exactly once at the end
    assert torch.equal(enc.conv1.weight, w0)  # the caller's encoder is left alone


def test_bad_batch_size_and_corrupt_checkpoint_write_nothing(tiny_npz, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"batch_size 512 is larger than the dataset \(64 images\)"):
        Trainer(_cfg(tiny_npz, **{"optim.batch_size": 512}), out, device="cpu").fit()
    assert not out.exists()
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(TrainingError, match=r"cannot read checkpoint .*checkpoint\.pt"):
        Trainer(_cfg(tiny_npz), out, device="cpu").fit(resume=True)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]
    other = tmp_path / "other"
    Trainer(_cfg(tiny_npz, **{"train.stop_at_step": 1}), other, device="cpu").fit()
    with pytest.raises(RunFolderError, match=r"was started with recipe '.*' \(method simclr\), not .*\(method byol\)"):
        Trainer(_cfg(tiny_npz, **{"method.name": "byol"}), other, device="cpu").fit(resume=True)
