import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from zoo import registry
from zoo.backbones import build_resnet
from zoo.hub import create_model, resolve_weights
from zoo.io import WeightsError, read_config, save_folder, sha256_file
from zoo.preprocess import Preprocess
from zoo.registry import ModelRecord, UnknownModel, WeightSource

ARCH = {"arch": "resnet18", "stem": "cifar", "width": 4, "in_chans": 1}
PRE = {"resize": 12, "crop": 12, "mean": [0.5], "std": [0.5], "interpolation": "bilinear", "in_chans": 1}


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    net = build_resnet(**ARCH)
    save_folder(net.state_dict(), {"name": "tiny", "arch": ARCH, "feature_dim": 32, "preprocess": PRE}, tmp_path / "m")
    return tmp_path / "m", net


def test_folder_roundtrip_is_exact(folder):
    path, net = folder
    model = create_model(path)
    x = torch.rand(3, 1, 12, 12)
    torch.testing.assert_close(model(x), net.eval()(x), rtol=0, atol=0)
    assert model.weights_sha256 == sha256_file(path / "model.safetensors") == read_config(path)["sha256"]
    assert model.preprocess.in_chans == 1 and not model.training


def test_strict_loading_names_the_keys(folder, tmp_path):
    path, net = folder
    sd = net.state_dict()
    sd.pop("layer4.1.bn2.running_var")
    sd["fc.weight"] = torch.zeros(2, 2)
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(bad))
    with pytest.raises(WeightsError, match=r"missing: layer4\.1\.bn2\.running_var.*unexpected: fc\.weight"):
        create_model(path, weights=bad)


def test_modified_or_corrupt_weights_are_refused(folder):
    path, _ = folder
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # flip a byte inside a tensor: sha256 no longer matches config.json
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="modified or truncated"):
        create_model(path)
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        create_model(path, weights=path / "model.safetensors")


def test_not_a_folder_and_unknown_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="not a zoo folder"):
        create_model(tmp_path / "empty")
    with pytest.raises(UnknownModel, match="did you mean simclr_resnet18w16_fashion_mnist"):
        create_model("simclr_resnet18_fashion_mnist")


def _record(bundled, sha):
    return ModelRecord(name="tmp_model", arch=ARCH, feature_dim=32, method="simclr", train_data="none",
                       preprocess=Preprocess.from_dict(PRE), weights=WeightSource(sha256=sha, bundled=bundled,
                                                                                    hf_repo="org/tmp",
                                                                                    hf_revision="0" * 40))


def test_resolution_order_and_sha_pinning(folder, monkeypatch):
    path, _ = folder
    monkeypatch.setattr(registry, "BUNDLED_DIR", path.parent)
    monkeypatch.setattr("zoo.hub.BUNDLED_DIR", path.parent)
    good = _record(path.name, sha256_file(path / "model.safetensors"))
    p, src = resolve_weights(good)
    assert p == path / "model.safetensors" and src.startswith("bundled")
    # a pinned sha that does not match is never loaded; the HF step (offline here) is tried and fails too
    bad = dataclasses.replace(good, weights=dataclasses.replace(good.weights, sha256="f" * 64))
    with pytest.warns(UserWarning, match="trying the next source"):
        with pytest.raises(WeightsError, match=r"bundled: .*refusing it \| hf: HF Hub org/tmp"):
            resolve_weights(bad)


def test_preprocess_converts_channels_and_sizes():
    pre = Preprocess.from_dict(dict(PRE, resize=14, crop=12))
    rgb = torch.randint(0, 256, (2, 3, 28, 20), dtype=torch.uint8)
    out = pre(rgb)
    assert out.shape == (2, 1, 12, 12) and out.dtype == torch.float32
    gray3 = Preprocess.from_dict({**PRE, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3})
    assert gray3(torch.zeros(1, 12, 12, dtype=torch.uint8)).shape == (3, 12, 12)
    with pytest.raises(ValueError, match="channels"):
        pre(torch.zeros(2, 5, 12, 12, dtype=torch.uint8))
