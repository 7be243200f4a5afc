"""Converters, one per upstream format: a checkpoint built in exactly the upstream layout (module names,
prefixes, wrappers, container dict; random weights with calibrated BatchNorm statistics) is converted, loaded
through the hub entry, and its features are compared with an independent re-creation of the upstream model
on the same weights: max abs diff < 1e-5 in fp32 on 2 images of 64 px.

ResNet-50 is built once per module (torchvision) and reused by the DISSL tests.
"""
import copy
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from zoo.backbones import build_resnet
from zoo.convert import FORMATS, convert, infer_resnet_arch, safe_torch_load
from zoo.hub import create_model
from zoo.io import WeightsError, read_config, sha256_file
from zoo.registry import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5


X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def calibrate(model: nn.Module, seed: int = 0, size: int = 64) -> nn.Module:
    """Random BN affine parameters, then running statistics measured on one random batch, so that eval-mode
    features are O(1) and every BN buffer matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the stats of the one batch
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size, generator=g))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    return model.eval()


def hub_load(name, folder):
    """The registry entry through torch.hub (local clone), with the converted folder as weights."""
    return torch.hub.load(str(ROOT), name, source="local", pretrained=True, weights=str(folder))


# ----------------------------------------------------------------------------- DISSL torch-hub

class RefExpand(nn.Module):
    """Upstream hub/resnet_dim.py BottleneckExpand, re-created: 1x1 -> 3x3 -> 1x1 bottleneck, the input
    tiled (``repeat``) ``out // in`` times as the shortcut."""

    def __init__(self, cin, hidden, cout, tile=True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.k, self.tile = cout // cin, tile

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        short = x.repeat(1, self.k, 1, 1) if self.tile else x.repeat_interleave(self.k, dim=1)
        return self.relu(out + short)


@pytest.fixture(scope="module")
def tv_resnet50():
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    net.fc = nn.Identity()  # upstream: resnet.fc = Identity, so the files have no fc.*
    return calibrate(net)


def dissl_upstream(base, dim):
    """Upstream ``_dissl``: torchvision resnet50, for d8192 ``avgpool = Sequential(resizer, avgpool)``."""
    net = copy.deepcopy(base)
    if dim:
        net.avgpool = nn.Sequential(RefExpand(2048, 512, dim), net.avgpool)
        calibrate(net, seed=1)
    return net


def save_dissl(net, path):
    # the release files hold the resizer as ``resizer.*`` (upstream's loader renames it to avgpool.0)
    sd = {("resizer." + k.removeprefix("avgpool.0.")) if k.startswith("avgpool.0.") else k: v
          for k, v in net.state_dict().items()}
    torch.save(sd, path)
    return sd


def test_dissl_torchhub(tv_resnet50, tmp_path):
    # the d8192 layout (ResNet-50 + resizer.*); the dNone files are the same minus resizer.* (checked below)
    name, dim = "dissl_resnet50_d8192_e800_m8", 8192
    ref = dissl_upstream(tv_resnet50, dim)
    sd = save_dissl(ref, tmp_path / f"{name}.torch")
    assert "resizer.conv3.weight" in sd and not any(k.startswith(("fc.", "avgpool.")) for k in sd)
    out = convert(name, tmp_path / f"{name}.torch", tmp_path / "out", quiet=True)
    model = hub_load(name, out)
    with torch.no_grad():
        want, got = ref(X), model(X)
    assert got.shape == want.shape == (2, dim)
    assert want.abs().mean() > 0.1  # features are not degenerate
    assert max_diff(got, want) < TOL
    cfg = read_config(out)
    assert cfg["feature_dim"] == dim and cfg["source"]["format"] == "dissl-torchhub"
    assert cfg["sha256"] == sha256_file(out / "model.safetensors") == model.weights_sha256
    assert not (out / "heads.safetensors").exists()  # the release files carry no heads
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-feature-extraction" in card and "model-index" in card and cfg["sha256"] in card
    # the comparison can fail: a shortcut tiled with repeat_interleave gives other features
    ref.avgpool[0].tile = False
    with torch.no_grad():
        assert max_diff(ref(X), want) > 1e-3


def test_dissl_model_missing_from_upstream_hubconf_is_registered():
    r = REGISTRY["dissl_resnet50_d8192_e100_m6"]
    assert r.weights.upstream_url.endswith("/v1.0.0-alpha/dissl_resnet50_d8192_e100_m6.torch")
    assert r.arch["expand_dim"] == 8192 and r.feature_dim == 8192
    assert [m.value for m in r.metrics[:2]] == [70.7, 88.5] and all(m.is_claim for m in r.metrics)
    assert sum(n.startswith("dissl_resnet50_") for n in REGISTRY) == 7
    # every dNone entry is exactly torchvision's resnet50 without fc, the layout of the dNone release files
    with torch.device("meta"):  # names and shapes only
        tv = {k: v.shape for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    for n in REGISTRY:
        if n.startswith("dissl_resnet50_dNone"):
            with torch.device("meta"):
                ours = build_resnet(**REGISTRY[n].arch).state_dict()
            assert {k: v.shape for k, v in ours.items()} == tv and REGISTRY[n].feature_dim == 2048


# ----------------------------------------------------------------------------- DCL DataParallel

class RefDCL(nn.Module):
    """chingyaoc/DCL model.py, re-created: torchvision resnet50's children with conv1 replaced by a 3x3
    stride-1 conv and the max-pool and fc dropped, as ``f``; projection head ``g``."""

    def __init__(self, feature_dim=128):
        super().__init__()
        layers = []
        for name, mod in torchvision.models.resnet50().named_children():
            if name == "conv1":
                mod = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            if name not in ("maxpool", "fc"):
                layers.append(mod)
        self.f = nn.Sequential(*layers)
        self.g = nn.Sequential(nn.Linear(2048, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                               nn.Linear(512, feature_dim, bias=True))

    def features(self, x):  # what linear.py probes: flatten(f(x)), not normalised
        return torch.flatten(self.f(x), 1)


def test_dcl_dataparallel(tmp_path):
    torch.manual_seed(1)
    ref = RefDCL()
    calibrate(ref.f, seed=2, size=32)
    with torch.no_grad():  # BN1d of g: give it non-trivial statistics too
        ref.g[1].running_mean.normal_(0, 0.1)
        ref.g[1].running_var.uniform_(0.5, 1.5)
    ref.eval()
    wrapped = nn.DataParallel(ref)  # upstream trains and saves the DataParallel wrapper
    sd = wrapped.state_dict()
    assert all(k.startswith("module.") for k in sd) and "module.f.0.weight" in sd and "module.g.3.bias" in sd
    torch.save(sd, tmp_path / "model_400.pth")
    name = "dcl_resnet50_stl10_tauplus0p1"
    out = convert(name, tmp_path / "model_400.pth", tmp_path / "out", quiet=True)
    model = hub_load(name, out)
    x32 = X[:, :, :32, :32]  # DCL trains on 32-px crops
    with torch.no_grad():
        want, got = ref.features(x32), model(x32)
    assert got.shape == (2, 2048) and want.abs().mean() > 0.1
    assert max_diff(got, want) < TOL
    # the projection head g is kept in heads.safetensors with its upstream names
    heads = load_file(str(out / "heads.safetensors"))
    assert sorted(heads) == sorted(k.removeprefix("module.") for k in sd if k.startswith("module.g."))
    g = nn.Sequential(nn.Linear(2048, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 128)).eval()
    g.load_state_dict({k.removeprefix("g."): v for k, v in heads.items()}, strict=True)
    with torch.no_grad():
        assert max_diff(g(got), ref.g(want)) < TOL
    cfg = read_config(out)
    assert cfg["heads"]["sha256"] == sha256_file(out / "heads.safetensors")
    assert cfg["source"]["upstream"]["wrapper"] == "nn.DataParallel"
    assert REGISTRY[name].arch == {"arch": "resnet50", "stem": "cifar", "stem_padding": 1, "maxpool": False}


# ----------------------------------------------------------------------------- Lightning (UvA tutorial 17)

class RefTutorialSimCLR(nn.Module):
    """The tutorial's LightningModule layout: ``self.convnet`` = torchvision resnet18(num_classes=4*hidden)
    whose fc becomes ``Sequential(fc, ReLU, Linear(4*hidden, hidden))``."""

    def __init__(self, hidden_dim=128):
        super().__init__()
        self.convnet = torchvision.models.resnet18(num_classes=4 * hidden_dim)
        self.convnet.fc = nn.Sequential(self.convnet.fc, nn.ReLU(inplace=True), nn.Linear(4 * hidden_dim, hidden_dim))

    def features(self, x):  # the tutorial's prepare_data_features: deepcopy(convnet), fc = Identity
        net = copy.deepcopy(self.convnet)
        net.fc = nn.Identity()
        return net.eval()(x)


def _fake_lightning(monkeypatch):
    """Modules named like pytorch_lightning's, only so that the pickle references the same globals an
    older Lightning checkpoint does (hyper-parameters as AttributeDict, callbacks keyed by class)."""
    mods = {n: types.ModuleType(n) for n in ("pytorch_lightning", "pytorch_lightning.utilities",
                                             "pytorch_lightning.utilities.parsing", "pytorch_lightning.callbacks",
                                             "pytorch_lightning.callbacks.model_checkpoint")}

    class AttributeDict(dict):
        pass

    class ModelCheckpoint:
        pass

    for cls, mod in ((AttributeDict, "pytorch_lightning.utilities.parsing"),
                     (ModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint")):
        cls.__module__, cls.__qualname__ = mod, cls.__name__
        setattr(mods[mod], cls.__name__, cls)
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    return AttributeDict, ModelCheckpoint


def test_lightning_tutorial_ckpt(tmp_path, monkeypatch):
    torch.manual_seed(2)
    ref = RefTutorialSimCLR()
    calibrate(ref.convnet, seed=3)
    opt = torch.optim.AdamW(ref.parameters(), lr=5e-4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=500, eta_min=5e-4 / 50)
    with monkeypatch.context() as mp:  # the fake modules exist only while saving: loading must not need them
        AttributeDict, ModelCheckpoint = _fake_lightning(mp)
        ckpt = {"epoch": 499, "global_step": 195500, "pytorch-lightning_version": "1.3.8",
                "state_dict": ref.state_dict(),
                "callbacks": {ModelCheckpoint: {"monitor": "val_acc_top5", "best_model_score": torch.tensor(0.99),
                                                "best_model_path": "saved_models/SimCLR.ckpt"}},
                "optimizer_states": [opt.state_dict()], "lr_schedulers": [sched.state_dict()],
                "hparams_name": "kwargs",
                "hyper_parameters": AttributeDict(hidden_dim=128, lr=5e-4, temperature=0.07, weight_decay=1e-4,
                                                  max_epochs=500)}
        torch.save(ckpt, tmp_path / "SimCLR.ckpt")
    assert "pytorch_lightning" not in sys.modules
    assert all(k.startswith("convnet.") for k in ckpt["state_dict"])
    name = "simclr_resnet18_stl10_uva_tutorial"
    out = convert(name, tmp_path / "SimCLR.ckpt", tmp_path / "out", quiet=True)
    model = hub_load(name, out)
    with torch.no_grad():
        want, got = ref.features(X), model(X)
    assert got.shape == (2, 512) and want.abs().mean() > 0.1
    assert max_diff(got, want) < TOL
    cfg = read_config(out)
    up = cfg["source"]["upstream"]
    assert up["epoch"] == 499 and up["hyper_parameters"]["temperature"] == 0.07
    assert set(cfg["source"]["inert_metadata_globals"]) == {
        "pytorch_lightning.utilities.parsing.AttributeDict", "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"}
    assert sorted(load_file(str(out / "heads.safetensors"))) == ["fc.0.bias", "fc.0.weight", "fc.2.bias", "fc.2.weight"]


# ----------------------------------------------------------------------------- solo-learn

class RefSoloCifar(nn.Module):
    """solo-learn BaseMethod on CIFAR: torchvision resnet18, fc = Identity, conv1 3x3 stride 1 padding 2,
    maxpool = Identity; plus projector and the online classifier."""

    def __init__(self, padding=2):
        super().__init__()
        self.backbone = torchvision.models.resnet18()
        self.backbone.fc = nn.Identity()
        self.backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=padding, bias=False)
        self.backbone.maxpool = nn.Identity()
        self.projector = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 256))
        self.classifier = nn.Linear(512, 10)


@pytest.fixture(scope="module")
def solo_ckpt(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("solo")
    torch.manual_seed(3)
    ref = RefSoloCifar()
    calibrate(ref.backbone, seed=4)
    ckpt = {"epoch": 399, "global_step": 100000, "pytorch-lightning_version": "2.0.2",
            "state_dict": ref.state_dict(),
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 399}}}},
            "callbacks": {"LearningRateMonitor{'logging_interval': 'step'}": {}},
            "optimizer_states": [torch.optim.SGD(ref.parameters(), lr=0.4, momentum=0.9).state_dict()],
            "lr_schedulers": [{"base_lrs": [0.4], "last_epoch": 100000}]}
    torch.save(ckpt, tmp_path / "solo.ckpt")
    return ref, tmp_path / "solo.ckpt"


PRE32 = '{"resize": 32, "crop": 32, "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}'


def test_solo_learn_ckpt(solo_ckpt, tmp_path):
    ref, path = solo_ckpt
    with pytest.raises(WeightsError, match="pass --preprocess"):
        convert("adainf_simclr_cifar10", path, tmp_path / "x", fmt="solo-learn", quiet=True)
    assert not (tmp_path / "x").exists()
    out = convert("adainf_simclr_cifar10", path, tmp_path / "out", fmt="solo-learn", preprocess=PRE32, quiet=True)
    cfg = read_config(out)
    assert cfg["arch"] == {"arch": "resnet18", "width": 64, "in_chans": 3, "stem": "cifar", "stem_padding": 2,
                           "maxpool": False}
    model = create_model(out)
    with torch.no_grad():
        want, got = ref.backbone.eval()(X), model(X)
        assert got.shape == (2, 512) and want.abs().mean() > 0.1
        assert max_diff(got, want) < TOL
        # the comparison can fail: solo-learn's padding 2 matters (torchvision-style padding 1 differs)
        wrong = RefSoloCifar(padding=1).backbone
        wrong.load_state_dict(ref.backbone.state_dict())
        assert max_diff(wrong.eval()(X), want) > 1e-3
    heads = load_file(str(out / "heads.safetensors"))
    assert {k.split(".")[0] for k in heads} == {"projector", "classifier"}
    assert cfg["preprocess"]["crop"] == 32 and cfg["source"]["upstream"]["global_step"] == 100000


# ----------------------------------------------------------------------------- sslzoo training checkpoints

def test_sslzoo_training_checkpoint(tmp_path):
    from training.config import load_recipe
    from training.trainer import Trainer, save_checkpoint

    cfg = load_recipe("simclr_fashion_mnist_cpu", ["model.width=4", "name=tiny_fmnist", "train.threads=1"])
    trainer = Trainer(cfg, tmp_path / "run", device="cpu")
    calibrate_1ch(trainer.model.backbone)
    save_checkpoint(tmp_path / "checkpoint.pt", trainer.state(3, 0))
    out = convert("tiny_fmnist", tmp_path / "checkpoint.pt", tmp_path / "out", fmt="sslzoo-checkpoint", quiet=True)
    cfg_out = read_config(out)
    assert cfg_out["arch"] == cfg["model"] and cfg_out["method"] == "simclr"
    assert cfg_out["preprocess"]["mean"] == list(cfg["export"]["preprocess"]["mean"])
    model = create_model(out)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert max_diff(model(x), trainer.model.backbone.eval()(x)) < TOL
    heads = load_file(str(out / "heads.safetensors"))
    assert heads and not any(k.startswith("backbone.") for k in heads)
    # under a registered name the architecture must be the record's
    with pytest.raises(WeightsError, match="trained with model"):
        convert("simclr_resnet18w16_fashion_mnist", tmp_path / "checkpoint.pt", tmp_path / "o2", quiet=True)


def test_sslzoo_reproduction_of_an_upstream_model_is_not_labelled_as_upstream(tmp_path):
    from training.config import load_recipe
    from training.trainer import Trainer, save_checkpoint

    name = "simclr_resnet18_stl10_uva_tutorial"
    trainer = Trainer(load_recipe(REGISTRY[name].recipe, ["train.threads=1"]), tmp_path / "run", device="cpu")
    save_checkpoint(tmp_path / "checkpoint.pt", trainer.state(1, 0))
    out = convert(name, tmp_path / "checkpoint.pt", tmp_path / "out", quiet=True)  # format detected
    cfg = read_config(out)
    assert cfg["source"]["format"] == "sslzoo-checkpoint" and cfg["reproduction_of"] == name
    assert "upstream_url" not in cfg["source"] and "reproduction" in cfg["description"]
    card = (out / "README.md").read_text()
    assert "upstream claim" not in card and "model-index" not in card
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_diff(hub_load(name, out)(x), trainer.model.backbone.eval()(x)) < TOL


def calibrate_1ch(backbone):
    g = torch.Generator().manual_seed(5)
    for m in backbone.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)


# ----------------------------------------------------------------------------- strictness and safety

def test_missing_and_unexpected_keys_are_named(solo_ckpt, tmp_path):
    ref, path = solo_ckpt
    ck = torch.load(path, weights_only=True)
    sd = ck["state_dict"]
    del sd["backbone.layer3.1.bn2.running_var"]
    sd["backbone.fc.weight"] = torch.zeros(10, 512)
    torch.save(ck, tmp_path / "bad.ckpt")
    with pytest.raises(WeightsError, match=r"missing: layer3\.1\.bn2\.running_var; unexpected: fc\.weight"):
        convert("x", tmp_path / "bad.ckpt", tmp_path / "out", fmt="solo-learn", preprocess=PRE32, quiet=True)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    # a DISSL file with an extra prefix (e.g. saved from a wrapper) is not silently stripped
    torch.save({"module." + k: v for k, v in ref.backbone.state_dict().items()}, tmp_path / "wrapped.torch")
    with pytest.raises(WeightsError, match="no conv1.weight"):
        convert("y", tmp_path / "wrapped.torch", tmp_path / "out", fmt="dissl-torchhub", quiet=True)


def test_cli_convert_and_bad_checkpoint_one_line_nothing_written(solo_ckpt, tmp_path, capsys):
    from training.cli import main  # the `sslzoo` dispatcher, in process

    _, path = solo_ckpt
    args = ["--format", "solo-learn", "--preprocess", PRE32]
    assert main(["convert", "adainf_x", "--checkpoint", str(path), "--out", str(tmp_path / "ok"), *args]) == 0
    out = capsys.readouterr().out
    assert f"-> {tmp_path / 'ok'}" in out and read_config(tmp_path / "ok")["sha256"] in out
    ck = torch.load(path, weights_only=True)
    ck["state_dict"]["backbone.layer9.0.conv1.weight"] = torch.zeros(1)
    torch.save(ck, tmp_path / "bad.ckpt")
    bad_out = tmp_path / "out"
    assert main(["convert", "adainf_x", "--checkpoint", str(tmp_path / "bad.ckpt"), "--out", str(bad_out), *args]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sslzoo convert: error:"), lines
    assert "unexpected: layer9.0.conv1.weight" in lines[0]
    assert not bad_out.exists() and not list(tmp_path.glob(".out*"))


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious checkpoint does: call os.system on load
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}, "x": RunsCode(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(WeightsError, match=r"refusing to unpickle \(it references (posix|os)\.system\)"):
        safe_torch_load(tmp_path / "evil.ckpt")
    with pytest.raises(WeightsError, match="refusing to unpickle"):
        convert("z", tmp_path / "evil.ckpt", tmp_path / "out", fmt="solo-learn", preprocess=PRE32, quiet=True)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_truncated_checkpoint_is_refused(solo_ckpt, tmp_path):
    _, path = solo_ckpt
    data = path.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        safe_torch_load(tmp_path / "cut.ckpt")


def test_infer_arch_and_formats_listed():
    sd = torchvision.models.resnet34().state_dict()
    sd.pop("fc.weight"), sd.pop("fc.bias")
    assert infer_resnet_arch(sd) == {"arch": "resnet34", "width": 64, "in_chans": 3, "stem": "imagenet",
                                     "maxpool": True}
    assert set(FORMATS) == {"dissl-torchhub", "dcl-dataparallel", "lightning-convnet", "solo-learn",
                            "sslzoo-checkpoint", "flax-msgpack"}
    for r in REGISTRY.values():
        assert r.weights.upstream_format in (None, *FORMATS)


def test_convert_writes_only_its_files_and_never_replaces_without_overwrite(solo_ckpt, tmp_path):
    """--out is a user's folder: convert writes model.safetensors, config.json, README.md (heads.safetensors)
    into it and nothing else; other files and hand edits survive byte for byte; its own files are replaced
    only with overwrite."""
    _, path = solo_ckpt
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_bytes(b"mine\x00\xff")
    (out / "sub").mkdir()
    (out / "sub" / "eval.csv").write_text("a,b\n")
    convert("w", path, out, fmt="solo-learn", preprocess=PRE32, quiet=True)
    assert (out / "notes.txt").read_bytes() == b"mine\x00\xff" and (out / "sub" / "eval.csv").read_text() == "a,b\n"
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    (out / "README.md").write_text("hand-edited card")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(WeightsError, match=r"--out .*out already holds model\.safetensors, heads\.safetensors, README\.md, "
                                           r"config\.json; pass --overwrite to replace them \(other files there are kept\)"):
        convert("w", path, out, fmt="solo-learn", preprocess=PRE32, quiet=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # byte for byte
    assert not list(tmp_path.glob(".out*"))
    convert("w", path, out, fmt="solo-learn", preprocess=PRE32, quiet=True, overwrite=True)
    assert (out / "README.md").read_text() != "hand-edited card"  # replaced: it was asked for
    assert (out / "notes.txt").read_bytes() == b"mine\x00\xff" and (out / "sub" / "eval.csv").read_text() == "a,b\n"
    f = tmp_path / "afile"
    f.write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"--out .*afile is a file; give a folder"):
        convert("w", path, f, fmt="solo-learn", preprocess=PRE32, quiet=True)
    assert f.read_bytes() == b"x"


def test_converting_the_same_checkpoint_gives_the_same_bytes(solo_ckpt, tmp_path):
    """Issue 17: safetensors writes its metadata in hash-map order (four conversions of one checkpoint
    gave two sha256); zoo.io canonicalises the header, so every file of the folder is byte-identical."""
    _, path = solo_ckpt
    digests = set()
    for i in range(4):
        out = convert("adainf_simclr_cifar10", path, tmp_path / f"out{i}", fmt="solo-learn", preprocess=PRE32,
                      quiet=True)
        digests.add(tuple((f.name, sha256_file(f)) for f in sorted(out.iterdir())))
    assert len(digests) == 1
    names = [n for n, _ in next(iter(digests))]
    assert "model.safetensors" in names and "heads.safetensors" in names
    assert read_config(tmp_path / "out0")["sha256"] == sha256_file(tmp_path / "out0" / "model.safetensors")


def test_safetensors_metadata_order_is_canonical(tmp_path):
    from safetensors.torch import save_file

    from zoo.io import atomic_save_safetensors, canonicalise_safetensors_header

    t = {"b": torch.arange(3.0), "a": torch.ones(2, 2, dtype=torch.float16)}
    meta = {k: str(i) for i, k in enumerate("zyxwvutsrq")}
    raw = set()
    for i in range(6):  # the raw writer's order varies (the defect); the canonical bytes never do
        save_file(t, tmp_path / f"raw{i}.safetensors", metadata=meta)
        raw.add(sha256_file(tmp_path / f"raw{i}.safetensors"))
        canonicalise_safetensors_header(tmp_path / f"raw{i}.safetensors")
        atomic_save_safetensors(t, tmp_path / f"c{i}.safetensors", metadata=meta)
    canon = {sha256_file(tmp_path / f"{p}{i}.safetensors") for p in ("raw", "c") for i in range(6)}
    assert len(canon) == 1 and len(raw) > 1
    back = load_file(str(tmp_path / "c0.safetensors"))
    assert torch.equal(back["a"], t["a"]) and torch.equal(back["b"], t["b"])
