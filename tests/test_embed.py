"""`sslzoo embed` (eval/embed.py): features of an unlabelled folder or a data set split to .npy /
.safetensors + an index of file names; equal to the model applied image by image; resumable after an
interruption; never replaces a different finished file unless asked."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import eval.embed as embed_mod
from eval.embed import embed, index_path, partial_paths
from training.cli import main
from zoo.backbones import build_resnet
from zoo.hub import create_model
from zoo.io import save_folder

ARCH = {"arch": "resnet18", "stem": "cifar", "width": 4, "in_chans": 1}
PRE = {"resize": 12, "crop": 12, "mean": [0.5], "std": [0.5], "interpolation": "bilinear", "in_chans": 1}


@pytest.fixture
def model(tmp_path):
    torch.manual_seed(0)
    sd = build_resnet(**ARCH).state_dict()
    save_folder(sd, {"name": "tiny", "arch": ARCH, "feature_dim": 32, "preprocess": PRE}, tmp_path / "model")
    return str(tmp_path / "model")


@pytest.fixture
def photos(tmp_path):
    """11 RGB / grayscale images of different sizes, some nested, plus files that are not images."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    names = []
    for i in range(11):
        sub = ["", "b/", "a/deep/"][i % 3]
        (root / sub).mkdir(parents=True, exist_ok=True)
        shape = (10 + i, 14 + i % 4, 3) if i % 2 else (16, 12 + i)
        name = f"{sub}img{i:02d}.{'png' if i % 4 else 'JPG'}"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / name,
                                                                          format="PNG" if i % 4 else "JPEG")
        names.append(name)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"skipped")
    return root, sorted(names, key=lambda n: n.split("/"))


def reference(model_dir, root, names):
    """The model applied to each image on its own (no batching, no embed code)."""
    m = create_model(model_dir)
    rows = []
    with torch.no_grad():
        for n in names:
            with Image.open(root / n) as im:
                im = im.convert("L") if im.mode not in ("L", "RGB") else im.copy()
            rows.append(m(m.preprocess(im))[0].numpy())  # one PIL image -> a batch of one
    return np.stack(rows)


def test_folder_to_npy_and_safetensors_equal_the_model_image_by_image(model, photos, tmp_path, capsys):
    root, names = photos
    ref = reference(model, root, names)
    assert main(["embed", "--model", model, "--data", str(root), "--out", str(tmp_path / "f.npy"),
                 "--batch-size", "4"]) == 0
    assert "11 x 32 float32 features (computed)" in capsys.readouterr().out
    a = np.load(tmp_path / "f.npy")
    assert a.dtype == np.float32 and a.shape == (11, 32)
    np.testing.assert_allclose(a, ref, rtol=0, atol=1e-5)
    idx = json.loads(index_path(tmp_path / "f.npy").read_text())
    assert idx["files"] == names and "labels" not in idx and idx["rows"] == 11 and idx["dim"] == 32
    assert idx["weights_sha256"] == create_model(model).weights_sha256 and idx["format"] == "npy"

    assert main(["embed", "--model", model, "--data", str(root), "--out", str(tmp_path / "f.safetensors")]) == 0
    with safe_open(str(tmp_path / "f.safetensors"), framework="np") as f:
        assert f.keys() == ["features"]
        np.testing.assert_array_equal(f.get_tensor("features"), a)
        assert f.metadata()["index"] == "f.safetensors.index.json" and f.metadata()["job"] != idx["job"]
    # nothing temporary (sslzoo_home: the test's $SSLZOO_HOME, holding the folder's content-hash index)
    assert sorted(os.listdir(tmp_path)) == ["f.npy", "f.npy.index.json", "f.safetensors",
                                            "f.safetensors.index.json", "model", "photos", "sslzoo_home"]


def test_dataset_spec_rows_match_the_feature_extractor_and_keep_labels(model, tmp_path):
    from eval.datasets import load_split
    from eval.features import extract

    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", train_image=rng.integers(0, 256, (9, 12, 12), dtype=np.uint8),
             train_label=np.arange(9) % 3, test_image=rng.integers(0, 256, (5, 12, 12), dtype=np.uint8),
             test_label=np.arange(5) % 3)
    spec = f"npz:{tmp_path / 'd.npz'}"
    r = embed(model, spec, tmp_path / "t.npy", split="test", batch_size=2)
    assert r["computed"] == 5 and r["data"] == f"{spec} (test)"
    feats, labels = extract(create_model(model), load_split(spec, "test"), cache=False)
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), feats.numpy(), rtol=0, atol=1e-5)
    idx = json.loads(index_path(tmp_path / "t.npy").read_text())
    assert idx["files"] == [f"test/{i}" for i in range(5)] and idx["labels"] == labels.tolist()
    assert idx["classes"] == ["0", "1", "2"]


class Interrupt:
    """Wraps create_model: the encoder counts its forward calls and raises KeyboardInterrupt on call
    ``stop`` (call 1 is embed's one-image probe, then one call per batch)."""

    def __init__(self, stop=None):
        self.stop, self.calls = stop, 0

    def __call__(self, *a, **k):
        m = create_model(*a, **k)

        def hook(module, args):
            self.calls += 1
            if self.calls == self.stop:
                raise KeyboardInterrupt

        m.register_forward_pre_hook(hook)
        return m


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_interrupted_run_resumes_where_it_stopped(model, photos, tmp_path, monkeypatch, suffix):
    root, _ = photos
    full = tmp_path / f"full{suffix}"
    embed(model, str(root), full, batch_size=3)
    out = tmp_path / f"f{suffix}"
    first = Interrupt(stop=4)  # probe, batches 0-2 and 3-5 done, interrupted in batch 6-8
    monkeypatch.setattr(embed_mod, "create_model", first)
    with pytest.raises(KeyboardInterrupt):
        embed(model, str(root), out, batch_size=3)
    partial, progress = partial_paths(out)
    assert not out.exists() and partial.exists() and json.loads(progress.read_text())["done"] == 6
    second = Interrupt()
    monkeypatch.setattr(embed_mod, "create_model", second)
    r = embed(model, str(root), out, batch_size=3)
    assert (r["resumed_from"], r["computed"]) == (6, 5) and second.calls == 1 + 2  # probe + rows 6-8, 9-10
    assert not partial.exists() and not progress.exists()
    assert out.read_bytes() != b"" and full.stat().st_size == out.stat().st_size
    if suffix == ".npy":
        np.testing.assert_array_equal(np.load(out), np.load(full))
    else:
        with safe_open(str(out), "np") as f, safe_open(str(full), "np") as g:
            np.testing.assert_array_equal(f.get_tensor("features"), g.get_tensor("features"))
    # a partial file of another job (other precision) is started over, not continued
    monkeypatch.setattr(embed_mod, "create_model", Interrupt(stop=3))
    with pytest.raises(KeyboardInterrupt):
        embed(model, str(root), tmp_path / f"g{suffix}", batch_size=3)
    monkeypatch.setattr(embed_mod, "create_model", create_model)
    r = embed(model, str(root), tmp_path / f"g{suffix}", batch_size=3, precision="bf16")
    assert (r["resumed_from"], r["computed"]) == (0, 11)


def test_finished_file_is_kept_unless_overwrite(model, photos, tmp_path, monkeypatch):
    root, _ = photos
    out = tmp_path / "f.npy"
    embed(model, str(root), out)
    counter = Interrupt()
    monkeypatch.setattr(embed_mod, "create_model", counter)
    r = embed(model, str(root), out)  # the same job: nothing recomputed
    assert r["computed"] == 0 and counter.calls == 1
    before = out.read_bytes()
    with pytest.raises(embed_mod.EmbedError, match=r"exists and holds other features .*--overwrite"):
        embed(model, str(root), out, precision="bf16")
    assert out.read_bytes() == before
    (tmp_path / "user.npy").write_bytes(b"the user's own file")
    with pytest.raises(embed_mod.EmbedError, match="--overwrite"):
        embed(model, str(root), tmp_path / "user.npy")
    assert (tmp_path / "user.npy").read_bytes() == b"the user's own file"
    r = embed(model, str(root), out, precision="bf16", overwrite=True)
    assert r["computed"] == 11 and json.loads(index_path(out).read_text())["precision"] == "bf16"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]
