import dataclasses
import functools
import http.server
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

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
    with pytest.warns(UserWarning, match="trying the next source"), \
            pytest.raises(WeightsError, match=r"bundled: .*refusing it \| hf: HF Hub org/tmp"):
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



def test_normalise_and_resize_normalise_equal_the_code_they_replaced():
    """zoo.preprocess.normalise / resize_normalise are the one inference-time scaling + normalisation;
    bit for bit what Preprocess, fine-tuning (_prepare) and the trainer's kNN monitor (embed) computed."""
    from torchvision.transforms.v2 import functional as TF

    from zoo.preprocess import normalise, resize_normalise

    g = torch.Generator().manual_seed(0)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for shape, size in [((5, 3, 32, 32), 32), ((5, 3, 28, 28), 32), ((4, 3, 20, 24), 16)]:
        x8 = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        xf = torch.rand(shape, generator=g)
        assert torch.equal(normalise(x8, mean, std), TF.normalize(x8.float() / 255.0, list(mean), list(std)))
        for x in (x8, xf):   # finetune._prepare
            ref = x.float() / 255 if x.dtype == torch.uint8 else x.float()
            if ref.shape[-1] != size or ref.shape[-2] != size:
                ref = torch.nn.functional.interpolate(ref, size=(size, size), mode="bilinear", antialias=True,
                                                      align_corners=False)
            ref = (ref - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
            assert torch.equal(resize_normalise(x, size, mean, std), ref)
        if shape[-1] == shape[-2]:  # Trainer.embed (uint8, square)
            ref = x8.float() / 255
            if ref.shape[-1] != size:
                ref = torch.nn.functional.interpolate(ref, size=(size, size), mode="bilinear", antialias=True)
            ref = (ref - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
            assert torch.equal(resize_normalise(x8, size, mean, std), ref)

# ----------------------------------------------------------------------------- upstream: download, convert, cache

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(directory):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(_QuietHandler, directory=str(directory)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_upstream_url_is_downloaded_converted_and_cached(tmp_path):
    from zoo.base import home as zoo_home
    from zoo.convert import download, download_path

    # a small model in the DISSL release layout (expansion block saved as resizer.*), served on loopback HTTP
    arch = {"arch": "resnet18", "stem": "cifar", "width": 4, "in_chans": 1, "expand_dim": 64, "expand_mid": 8}
    torch.manual_seed(0)
    net = build_resnet(**arch)
    (tmp_path / "srv").mkdir()
    torch.save({("resizer." + k.removeprefix("avgpool.0.")) if k.startswith("avgpool.0.") else k: v
                for k, v in net.state_dict().items()}, tmp_path / "srv" / "tiny.torch")
    (tmp_path / "srv" / "login.html").write_text("<html>sign in</html>")
    srv = _serve(tmp_path / "srv")
    url = f"http://127.0.0.1:{srv.server_address[1]}/tiny.torch"
    rec = ModelRecord(name="tiny_upstream", arch=arch, feature_dim=64, method="dissl", train_data="none",
                      preprocess=Preprocess.from_dict(PRE),
                      weights=WeightSource(upstream_url=url, upstream_format="dissl-torchhub"))
    try:
        with pytest.warns(UserWarning, match="unverified"):
            path, src = resolve_weights(rec)
        with pytest.raises(WeightsError, match="HTML page"):
            download(url.replace("tiny.torch", "login.html"), tmp_path / "dl")
        pinned_wrong = dataclasses.replace(rec, name="tiny_pinned", weights=dataclasses.replace(
            rec.weights, upstream_sha256="0" * 64))
        with pytest.warns(UserWarning), pytest.raises(WeightsError, match="does not match the pinned"):
            resolve_weights(pinned_wrong)
    finally:
        srv.shutdown()
        srv.server_close()
    assert src.startswith("upstream: ") and path == zoo_home() / "upstream" / "tiny_upstream" / "model.safetensors"
    got = load_file(str(path))
    assert got.keys() == net.state_dict().keys() and all(torch.equal(got[k], v) for k, v in net.state_dict().items())
    assert read_config(path.parent)["source"]["upstream_url"] == url
    assert not download_path(url).exists()  # the raw pickle is deleted once converted
    # the server is gone: the cached conversion is used
    with pytest.warns(UserWarning, match="unverified"):
        assert resolve_weights(rec)[0] == path
    # a pinned sha256 that the converted file does not have is never loaded
    pinned = dataclasses.replace(rec, weights=dataclasses.replace(rec.weights, sha256="f" * 64))
    with pytest.warns(UserWarning), pytest.raises(WeightsError, match="refusing it"):
        resolve_weights(pinned)
    # a modified cached file is refused
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning), pytest.raises(WeightsError, match="modified or truncated"):
        resolve_weights(rec)


def test_explicit_folder_is_sha_checked_and_hf_only_when_registered(tmp_path):
    from zoo.registry import REGISTRY

    rec = REGISTRY["simclr_resnet18w16_fashion_mnist"]
    save_folder(build_resnet(**rec.arch).state_dict(), {"name": "x", "arch": rec.arch, "feature_dim": 128,
                                                        "preprocess": rec.preprocess.to_dict()}, tmp_path / "w")
    model = create_model(rec.name, weights=tmp_path / "w")
    assert model.weights_source.startswith("explicit") and model.weights_sha256 == read_config(tmp_path / "w")["sha256"]
    data = bytearray((tmp_path / "w" / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "w" / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="modified or truncated"):
        create_model(rec.name, weights=tmp_path / "w")
    # an upstream pickle passed as weights= is not opened; the message says how to convert it
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "upstream.torch")
    with pytest.raises(WeightsError, match=f"sslzoo convert {rec.name} --checkpoint"):
        create_model(rec.name, weights=tmp_path / "upstream.torch")
    # no mirror registered and no upstream: the HF Hub is not asked, the reason is still listed
    bare = dataclasses.replace(rec, weights=WeightSource(sha256="0" * 64))
    with pytest.raises(WeightsError, match="hf: no HF Hub mirror registered"):
        resolve_weights(bare)


def test_every_upstream_entry_is_listed_with_docs_and_weight_source(capsys):
    import argparse
    from pathlib import Path

    from zoo.cli import run_list
    from zoo.registry import REGISTRY

    root = str(Path(__file__).resolve().parent.parent)
    upstream = [n for n, r in REGISTRY.items() if r.weights.upstream_url]
    assert len(upstream) == 12  # 7 DISSL + 3 DCL + the UvA tutorial SimCLR (PyTorch and JAX)
    # what torch.hub.list / torch.hub.help report (they only take GitHub repos; same rule on the local hubconf)
    hub_module = torch.hub._import_module("hubconf", str(Path(root) / "hubconf.py"))
    listed = [f for f in dir(hub_module) if callable(getattr(hub_module, f)) and not f.startswith("_")]
    assert set(upstream) <= set(listed)
    doc = hub_module.dissl_resnet50_d8192_e100_m6.__doc__
    assert "Feature dim: 8192" in doc and "70.7% imagenet val [upstream claim]" in doc and "Weights: unverified" in doc
    run_list(argparse.Namespace(format="table"))
    lines = [[c.strip() for c in ln.split("|")[1:-1]] for ln in capsys.readouterr().out.splitlines()
             if ln.startswith("| ")]
    rows = {cells[0]: dict(zip(lines[0], cells)) for cells in lines[1:]}
    for n in upstream:
        r, row = REGISTRY[n], rows[n]
        assert row["weights"] == f"upstream {r.weights.upstream_format} (unverified)" and row["dim"] == str(r.feature_dim)
        assert row["headline"].startswith(f"{r.metrics[0].value:.1f}% ") and row["method"] == r.method
        assert row["data"] == r.train_data.split(" (")[0]
    for r in REGISTRY.values():  # a reproduction recipe named in a record exists
        assert not r.recipe or (Path(root) / "training" / "recipes" / f"{r.recipe}.yaml").is_file(), r.name
    assert rows["simclr_resnet18w16_fashion_mnist"]["weights"] == "bundled"
