"""What a mirror's files say to the HF ecosystem, without a server (tests/test_hf_loopback.py serves them):
config.json carries timm's keys exactly for the layouts timm builds, timm loads such a folder with our features,
``zoo.hub.from_pretrained`` loads every layout and refuses what is not an ssl-zoo repository."""
import importlib.util
import json

import pytest
import torch

from zoo.backbones import build_resnet
from zoo.hub import create_model, from_pretrained
from zoo.io import WeightsError, save_folder, timm_config
from zoo.registry import REGISTRY

PRE3 = {"resize": 73, "crop": 64, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25], "interpolation": "bilinear",
        "in_chans": 3}
PRE1 = {"resize": 64, "crop": 64, "mean": [0.4], "std": [0.2], "interpolation": "bilinear", "in_chans": 1}


def random_folder(path, arch, pre, seed=0):
    torch.manual_seed(seed)
    net = build_resnet(**arch).eval()
    for m in net.modules():  # BN statistics that matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    save_folder(net.state_dict(), {"name": "t", "arch": arch, "feature_dim": net.feature_dim, "preprocess": pre}, path)
    return net


def test_timm_keys_exactly_for_the_layouts_timm_builds():
    with_keys = {n for n, r in REGISTRY.items()
                 if timm_config(r.arch, r.preprocess.to_dict(), r.feature_dim, r.license) is not None}
    # plain ImageNet-stem ResNets (DISSL dNone, the UvA tutorial ResNet-18); not the expansion block, CIFAR stem, w16
    assert with_keys == {n for n in REGISTRY if n.startswith("dissl_resnet50_dNone")} | {
        "simclr_resnet18_stl10_uva_tutorial", "simclr_resnet18_stl10_uva_tutorial_jax"}
    r = REGISTRY["dissl_resnet50_dNone_e400_m6"]
    keys = timm_config(r.arch, r.preprocess.to_dict(), r.feature_dim, r.license)
    assert keys["architecture"] == "resnet50" and keys["num_classes"] == 0 and keys["num_features"] == 2048
    assert keys["pretrained_cfg"]["input_size"] == [3, 224, 224] and keys["pretrained_cfg"]["crop_pct"] == 0.875
    assert keys["pretrained_cfg"]["num_classes"] == 0 and keys["pretrained_cfg"]["license"] == "mit"
    assert "model_args" not in keys
    one = timm_config({"arch": "resnet18", "in_chans": 1}, PRE1, 512)
    assert one["model_args"] == {"in_chans": 1} and one["pretrained_cfg"]["input_size"] == [1, 64, 64]
    for r in range(8, 300):  # timm resizes to floor(crop / crop_pct): that must be our resize
        for c in (8, r // 2 + 1, r - 1, r):
            pct = timm_config({"arch": "resnet18"}, dict(PRE3, resize=r, crop=c), 512)["pretrained_cfg"]["crop_pct"]
            assert int(c / pct) == r, (r, c)


def test_save_folder_writes_timm_keys_and_ssl_zoo_keys(tmp_path):
    random_folder(tmp_path / "a", {"arch": "resnet18"}, PRE3)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["architecture"] == "resnet18" and cfg["num_features"] == 512 and cfg["arch"] == {"arch": "resnet18"}
    assert {"name", "preprocess", "feature_dim", "sha256", "format_version", "pretrained_cfg"} <= set(cfg)
    random_folder(tmp_path / "b", {"arch": "resnet18", "stem": "cifar", "width": 8}, PRE3)
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert not {"architecture", "pretrained_cfg", "num_classes"} & set(cfg)


@pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                    reason="timm is not installed (pip install timm, or the `test` extra)")
@pytest.mark.parametrize("arch,pre", [({"arch": "resnet18"}, PRE3), ({"arch": "resnet18", "in_chans": 1}, PRE1)])
def test_timm_loads_a_folder_with_our_features(tmp_path, arch, pre):
    import timm
    from timm.data import resolve_data_config

    random_folder(tmp_path / "m", arch, pre)
    tm = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).eval()  # config.json + model.safetensors
    ours = create_model(tmp_path / "m")
    x = torch.randn(2, pre["in_chans"], 64, 64)
    with torch.no_grad():
        assert (tm(x) - ours(x)).abs().max() <= 1e-6
    data = resolve_data_config({}, model=tm)
    assert tuple(data["input_size"]) == (pre["in_chans"], pre["crop"], pre["crop"]) and data["crop_mode"] == "center"
    assert list(data["mean"]) == pre["mean"] and data["interpolation"] == pre["interpolation"]


def test_from_pretrained_takes_a_folder_and_refuses_what_is_not_ours(tmp_path, monkeypatch):
    net = random_folder(tmp_path / "m", {"arch": "resnet18", "stem": "cifar", "width": 4}, PRE3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (from_pretrained(str(tmp_path / "m"))(x) - net(x)).abs().max() == 0
    with pytest.raises(WeightsError, match="names revision 'abc' but revision='def'"):
        from_pretrained("org/name@abc", revision="def")
    # a timm repository (its config.json has no ssl-zoo keys), served by a stand-in for hf_hub_download that hands
    # out local files (NOT the Hub; the loopback test downloads for real)
    timm_repo = tmp_path / "timm_repo"
    timm_repo.mkdir()
    (timm_repo / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 1000}))
    (timm_repo / "model.safetensors").write_bytes(b"")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **kw: str(timm_repo / name))
    with pytest.raises(WeightsError, match=r"not an ssl-zoo repository.*timm.create_model\('hf-hub:org/timm'"):
        from_pretrained("org/timm")
    # offline with nothing cached: one line saying what to check
    monkeypatch.undo()
    with pytest.raises(WeightsError, match="cannot download org/missing@main .*HF_HUB_OFFLINE"):
        from_pretrained("org/missing", cache_dir=tmp_path / "empty-cache")


def test_a_folder_card_is_read_by_huggingface_hub(tmp_path):
    from huggingface_hub import ModelCard

    from zoo.convert import folder_card

    random_folder(tmp_path / "m", {"arch": "resnet18"}, PRE3)
    cfg = dict(json.loads((tmp_path / "m" / "config.json").read_text()), train_data="STL10 unlabeled")
    (tmp_path / "README.md").write_text(folder_card(cfg))
    card = ModelCard.load(tmp_path / "README.md", ignore_metadata_errors=False)
    assert card.data.datasets == ["tanganke/stl10"] and card.data.library_name == "ssl-zoo"
    assert 'timm.create_model("hf-hub:ORG/NAME", pretrained=True)' in card.text  # timm can build this one


def test_the_mirror_step_refuses_a_config_that_describes_other_weights(tmp_path, monkeypatch):
    """A pinned revision whose config.json records another sha256 than the registry is not loaded. The mirror is a
    stand-in for hf_hub_download handing out local files (NOT the Hub; tests/test_hf_loopback.py serves real ones)."""
    import dataclasses

    import huggingface_hub

    from zoo.hub import resolve_weights
    from zoo.io import sha256_file
    from zoo.records import WeightSource

    random_folder(tmp_path / "m", {"arch": "resnet18", "stem": "cifar", "width": 4}, PRE3)
    sha = sha256_file(tmp_path / "m" / "model.safetensors")
    fetched = []

    def download(repo, name, revision=None, **kw):
        fetched.append(name)
        return str(tmp_path / "m" / name)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    base = REGISTRY["simclr_resnet18w16_fashion_mnist"]
    good = dataclasses.replace(base, weights=WeightSource(sha256=sha, hf_repo="org/m", hf_revision="a" * 40))
    path, src = resolve_weights(good)
    assert src.startswith("hf: ") and sha256_file(path) == sha and fetched == ["config.json", "model.safetensors"]
    other = dataclasses.replace(base, weights=WeightSource(sha256="0" * 64, hf_repo="org/m", hf_revision="a" * 40))
    with pytest.warns(UserWarning), pytest.raises(WeightsError, match="its config.json describes weights with sha256"):
        resolve_weights(other)
