"""zoo.flax and ``--format flax-msgpack``: UvA tutorial 17's JAX/Flax SimCLR checkpoint -> a zoo folder.

The equivalence test builds the tutorial's model in flax.linen (the tutorial's ``SimCLR`` module around a
re-creation of ``flaxmodels.ResNet18(output='activations', normalize=False, num_classes=512)``), gives it random
parameters and non-trivial batch statistics, serialises ``{'params', 'batch_stats'}`` with
``flax.serialization.to_bytes`` (what the notebook's ``checkpoints.save_checkpoint`` writes with flax's
legacy backend), converts the file and compares the encoder's features with flax's ``encode`` in eval mode.
The flax side runs in a child process (tests/flax_tutorial.py), so JAX's threads never live in the pytest
process. It needs jax + flax (the ``jax`` / ``test`` extras) and is skipped without them; the reader tests need
only msgpack.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.convert import FORMATS, convert, safe_torch_load
from zoo.io import WeightsError, load_safetensors, read_config

msgpack = pytest.importorskip("msgpack", reason="reading Flax checkpoints needs msgpack (pip install 'ssl-zoo[jax]')")

from zoo.flax import looks_like_msgpack, read_checkpoint  # noqa: E402  (after the msgpack check)

NAME = "simclr_resnet18_stl10_uva_tutorial_jax"

# sha256 of the sorted "collection/path shape" lines of the variables of the tutorial's SimCLR module built with
# the real flaxmodels 0.1.3 (pip install flaxmodels h5py; SimCLR(hidden_dim=128).init on [2, 96, 96, 3]):
# 104 leaves. The re-creation in tests/flax_tutorial.py must have exactly this tree, so the names converted are flaxmodels' names.
FLAXMODELS_TREE_SHA256 = "7363fdb107d9b461d7d0a02c8eee77029291c471e742c0b2be4e6283c8d39ffa"


def ndarray_ext(a: np.ndarray, code: int = 1, dtype_name: str | None = None) -> "msgpack.ExtType":
    """flax.serialization's encoding of an array: ExtType(1, packb((shape, dtype name, C-order bytes)))."""
    return msgpack.ExtType(code, msgpack.packb((a.shape, dtype_name or a.dtype.name, a.tobytes("C")),
                                               use_bin_type=True))


def handbuilt(path: Path) -> dict:
    """A msgpack file in flax's encoding (arrays, a bfloat16 array, a chunked array, a numpy scalar, a nil
    collection), written by hand; returns the values it holds."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    ints = np.arange(6, dtype=np.int64).reshape(2, 3)
    bf = np.array([1.0, -2.5, 0.15625, 3.0], dtype=np.float32)  # exactly representable in bfloat16
    bf_bits = (bf.view(np.uint32) >> 16).astype("<u2")
    big = rng.standard_normal(10).astype(np.float32)
    tree = {"params": {"Conv_0": {"kernel": ndarray_ext(kernel)}, "ints": ndarray_ext(ints),
                       "half": msgpack.ExtType(1, msgpack.packb(((4,), "bfloat16", bf_bits.tobytes()), use_bin_type=True)),
                       # a leaf over flax's chunk limit is written as flattened chunks
                       "big": {"__msgpack_chunked_array__": True, "shape": {"0": 2, "1": 5},
                               "chunks": {"0": ndarray_ext(big[:6]), "1": ndarray_ext(big[6:])}}},
            "batch_stats": None, "step": msgpack.ExtType(3, msgpack.packb(((), "int32", np.int32(7).tobytes()),
                                                                         use_bin_type=True))}
    path.write_bytes(msgpack.packb(tree, use_bin_type=True))
    return {"params/Conv_0/kernel": kernel, "params/ints": ints, "params/half": bf, "params/big": big.reshape(2, 5),
            "step": np.int32(7)}


def test_reader_decodes_flax_encoding(tmp_path):
    expected = handbuilt(tmp_path / "c.msgpack")
    out = read_checkpoint(tmp_path / "c.msgpack")
    p = out["params"]
    for key, got in (("params/Conv_0/kernel", p["Conv_0"]["kernel"]), ("params/ints", p["ints"]),
                     ("params/half", p["half"]), ("params/big", p["big"]), ("step", out["step"])):
        np.testing.assert_array_equal(got, expected[key])
        assert np.asarray(got).dtype == np.asarray(expected[key]).dtype
    assert out["batch_stats"] is None
    assert looks_like_msgpack((tmp_path / "c.msgpack").read_bytes()[:8])
    assert not looks_like_msgpack(b"\x80\x02}q\x00")  # pickle protocol 2


def logreg_ckpt(path):
    """The real small file of the tutorial: JAX/tutorial17/LogisticRegression_10.ckpt's layout."""
    kernel, bias = np.zeros((512, 10), np.float32), np.zeros(10, np.float32)
    path.write_bytes(msgpack.packb({"params": {"Dense_0": {"bias": ndarray_ext(bias), "kernel": ndarray_ext(kernel)}},
                                    "batch_stats": None}, use_bin_type=True))
    return path


def test_msgpack_given_to_a_pytorch_format_names_the_flax_converter(tmp_path):
    ck = logreg_ckpt(tmp_path / "LogisticRegression_10.ckpt")
    with pytest.raises(WeightsError, match=r"is a Flax/JAX msgpack checkpoint, not a PyTorch pickle; convert it with "
                                           r"--format flax-msgpack"):
        safe_torch_load(ck)
    with pytest.raises(WeightsError, match=r"--format flax-msgpack"):
        convert("x", ck, tmp_path / "out", fmt="lightning-convnet", quiet=True)
    # the right format, but the file holds no ResNet
    with pytest.raises(WeightsError, match=r"no flaxmodels-style ResNet .* \(top-level modules: Dense_0\)"):
        convert("x", ck, tmp_path / "out", fmt="flax-msgpack", quiet=True)
    # a PyTorch file given as flax-msgpack; a truncated msgpack file
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=r"is not a Flax msgpack checkpoint \(a PyTorch zip checkpoint\)"):
        convert(NAME, tmp_path / "w.pt", tmp_path / "out", quiet=True)
    (tmp_path / "cut.ckpt").write_bytes(ck.read_bytes()[:100])
    with pytest.raises(WeightsError, match=r"not a readable Flax msgpack checkpoint .*truncated"):
        convert(NAME, tmp_path / "cut.ckpt", tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
    assert "flax-msgpack" in FORMATS
    # given to the model as weights= (a safetensors file or zoo folder is expected)
    from zoo.hub import create_model

    with pytest.raises(WeightsError, match=r"is a Flax/JAX msgpack checkpoint, not safetensors; convert it first: "
                                           rf"sslzoo convert {NAME} --checkpoint .* --format flax-msgpack"):
        create_model(NAME, weights=ck)



def test_missing_msgpack_is_one_line(tmp_path, monkeypatch):
    ck = logreg_ckpt(tmp_path / "LogisticRegression_10.ckpt")
    monkeypatch.setitem(__import__("sys").modules, "msgpack", None)  # as if not installed
    with pytest.raises(WeightsError, match=r"needs the msgpack package: pip install msgpack \(or pip install "
                                           r"'ssl-zoo\[jax\]'\)$"):
        read_checkpoint(ck)

# ----------------------------------------------------------------------------- the tutorial's model in flax


@pytest.fixture(scope="module")
def flax_side(tmp_path_factory):
    """Reference files written by tests/flax_tutorial.py in a child process (see its docstring)."""
    missing = [m for m in ("jax", "flax") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the Flax equivalence tests need {' + '.join(missing)} (pip install 'ssl-zoo[jax]')")
    out = tmp_path_factory.mktemp("flax")
    expected = handbuilt(out / "handbuilt.msgpack")
    here = Path(__file__).resolve().parent
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, str(here / "flax_tutorial.py"), str(out), str(out / "handbuilt.msgpack")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, expected


def test_reader_agrees_with_flax_msgpack_restore(flax_side):
    out, expected = flax_side
    restored = np.load(out / "restored.npz")
    assert sorted(restored.files) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(restored[key], value)


def test_tutorial_flax_checkpoint_converts_with_equal_features(flax_side, tmp_path):
    from zoo.hub import create_model

    ref_dir, _ = flax_side
    info = json.loads((ref_dir / "tree.json").read_text())
    assert tuple(info["signature"]) == (104, FLAXMODELS_TREE_SHA256)
    for name, v in info["stats_example"].items():  # running statistics neither 0 / 1 nor constant
        v = np.asarray(v)
        assert v.std() > 0.01 and np.abs(v - (name == "var")).mean() > 0.01

    out = convert(NAME, ref_dir / "SimCLR.ckpt", tmp_path / "zoo", quiet=True)  # format etc. from the registry
    cfg = read_config(out)
    assert cfg["source"]["format"] == "flax-msgpack" and cfg["feature_dim"] == 512
    assert cfg["arch"] == {"arch": "resnet18", "stem": "imagenet", "maxpool": True}
    assert cfg["preprocess"]["mean"] == [0.5, 0.5, 0.5] and cfg["preprocess"]["std"] == [0.5, 0.5, 0.5]
    assert cfg["source"]["upstream"]["flax_resnet"] == "params/convnet"

    # the tutorial's preprocessing (img / 255 * 2 - 1, 96 px), then features: flax encode (eval mode) vs ours
    images, ref = np.load(ref_dir / "images.npy"), np.load(ref_dir / "encode.npy")
    x = torch.from_numpy(images.astype(np.float32) / 255.0 * 2.0 - 1.0).permute(0, 3, 1, 2).contiguous()
    enc = create_model(out).eval()
    with torch.no_grad():
        ours = enc(x).numpy()
        via_preprocess = enc(enc.preprocess(torch.from_numpy(images).permute(0, 3, 1, 2))).numpy()
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (4, 512)
    diff = float(np.abs(ours - ref).max())
    print(f"flax vs converted features: max abs diff {diff:.3g} (feature scale {float(np.abs(ref).max()):.3g})")
    assert diff <= 1e-4
    assert float(np.abs(via_preprocess - ref).max()) <= 1e-4  # model.preprocess is the tutorial's transform

    # the heads file: the ResNet's Dense_0 and the SimCLR head, Dense kernels transposed; z = head(fc(h))
    heads = load_safetensors(out / "heads.safetensors")
    assert sorted(heads) == ["convnet.Dense_0.bias", "convnet.Dense_0.weight", "head.layers_1.bias",
                             "head.layers_1.weight"]
    h = torch.from_numpy(ref)
    z = torch.relu(h @ heads["convnet.Dense_0.weight"].T + heads["convnet.Dense_0.bias"])
    z = z @ heads["head.layers_1.weight"].T + heads["head.layers_1.bias"]
    assert float((z - torch.from_numpy(np.load(ref_dir / "project.npy"))).abs().max()) <= 1e-4
