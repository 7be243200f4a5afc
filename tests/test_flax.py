"""zoo.flax and ``--format flax-msgpack``: UvA tutorial 17's JAX/Flax SimCLR checkpoint -> a zoo folder.

The equivalence test builds the tutorial's model in flax.linen (the tutorial's ``SimCLR`` module around a
re-creation of ``flaxmodels.ResNet18(output='activations', normalize=False, num_classes=512)``), gives it random
parameters and non-trivial batch statistics, serialises ``{'params', 'batch_stats'}`` with
``flax.serialization.to_bytes`` (what the notebook's ``checkpoints.save_checkpoint`` writes with flax's
legacy backend), converts the file and compares the encoder's features with flax's ``encode`` in eval mode.
It needs jax + flax (the ``jax`` / ``test`` extras) and is skipped without them; the reader tests need only
msgpack.
"""
import hashlib

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
# 104 leaves. The re-creation below must have exactly this tree, so the names converted are flaxmodels' names.
FLAXMODELS_TREE_SHA256 = "7363fdb107d9b461d7d0a02c8eee77029291c471e742c0b2be4e6283c8d39ffa"


def ndarray_ext(a: np.ndarray, code: int = 1, dtype_name: str | None = None) -> "msgpack.ExtType":
    """flax.serialization's encoding of an array: ExtType(1, packb((shape, dtype name, C-order bytes)))."""
    return msgpack.ExtType(code, msgpack.packb((a.shape, dtype_name or a.dtype.name, a.tobytes("C")),
                                               use_bin_type=True))


def test_reader_decodes_flax_encoding(tmp_path):
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
    data = msgpack.packb(tree, use_bin_type=True)
    (tmp_path / "c.msgpack").write_bytes(data)
    out = read_checkpoint(tmp_path / "c.msgpack")
    np.testing.assert_array_equal(out["params"]["Conv_0"]["kernel"], kernel)
    np.testing.assert_array_equal(out["params"]["ints"], ints)
    np.testing.assert_array_equal(out["params"]["half"], bf)
    np.testing.assert_array_equal(out["params"]["big"], big.reshape(2, 5))
    assert out["batch_stats"] is None and out["step"] == 7
    assert looks_like_msgpack(data[:8]) and not looks_like_msgpack(b"\x80\x02}q\x00")  # pickle protocol 2
    try:
        from flax.serialization import msgpack_restore
    except ImportError:
        return
    ref = msgpack_restore(data)  # flax's own reader agrees leaf for leaf
    for a, b in ((out["params"]["Conv_0"]["kernel"], ref["params"]["Conv_0"]["kernel"]),
                 (out["params"]["ints"], ref["params"]["ints"]), (out["params"]["big"], ref["params"]["big"]),
                 (out["params"]["half"], np.asarray(ref["params"]["half"], dtype=np.float32))):
        np.testing.assert_array_equal(a, b)
    assert int(ref["step"]) == out["step"]


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



def test_missing_msgpack_is_one_line(tmp_path, monkeypatch):
    ck = logreg_ckpt(tmp_path / "LogisticRegression_10.ckpt")
    monkeypatch.setitem(__import__("sys").modules, "msgpack", None)  # as if not installed
    with pytest.raises(WeightsError, match=r"needs the msgpack package: pip install msgpack \(or pip install "
                                           r"'ssl-zoo\[jax\]'\)$"):
        read_checkpoint(ck)

# ----------------------------------------------------------------------------- the tutorial's model in flax


def tutorial_simclr():
    """UvA tutorial 17 (JAX)'s ``SimCLR`` module (encoder + head, the loss left out) around a re-creation of
    flaxmodels' ResNet18 (flaxmodels/resnet/resnet.py: same modules, same call order, hence the same names)."""
    import flax.linen as nn

    def bn(x, train):  # flaxmodels' ops.batch_norm: epsilon 1e-5, momentum 0.1 (Flax convention)
        return nn.BatchNorm(use_running_average=not train, momentum=0.1, epsilon=1e-5)(x)

    class BasicBlock(nn.Module):
        features: int
        downsample: bool = False

        @nn.compact
        def __call__(self, x, act, name, train=True):
            residual = x
            x = nn.Conv(self.features, (3, 3), strides=(2, 2) if self.downsample else (1, 1), padding=((1, 1), (1, 1)),
                        use_bias=False)(x)
            x = nn.relu(bn(x, train))
            x = nn.Conv(self.features, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), use_bias=False)(x)
            x = bn(x, train)
            if self.downsample:
                residual = bn(nn.Conv(self.features, (1, 1), strides=(2, 2), use_bias=False)(residual), train)
            x = nn.relu(x + residual)
            act[name] = x
            return x

    class ResNet18(nn.Module):
        num_classes: int = 1000

        @nn.compact
        def __call__(self, x, train=True):
            act = {}
            x = nn.Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False)(x)
            x = nn.relu(bn(x, train))
            x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            for s, feats in enumerate((64, 128, 256, 512), 1):
                for i in range(2):
                    x = BasicBlock(feats, downsample=i == 0 and s > 1)(x, act, f"block{s}_{i}", train)
            act["fc"] = nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))
            return act

    class SimCLR(nn.Module):
        hidden_dim: int = 128

        def setup(self):
            self.convnet = ResNet18(num_classes=4 * self.hidden_dim)
            self.head = nn.Sequential([nn.relu, nn.Dense(self.hidden_dim)])

        def __call__(self, imgs, train=True):
            return self.head(self.convnet(imgs, train=train)["fc"])

        def encode(self, imgs, train=False):
            return self.convnet(imgs, train=train)["block4_1"].mean(axis=(1, 2))

    return SimCLR(hidden_dim=128)


def tree_signature(variables) -> tuple[int, str]:
    import jax

    lines = sorted(f"{col}/{'/'.join(p.key for p in path)} {tuple(leaf.shape)}"
                   for col in variables for path, leaf in jax.tree_util.tree_flatten_with_path(variables[col])[0])
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_tutorial_flax_checkpoint_converts_with_equal_features(tmp_path):
    pytest.importorskip("jax", reason="the Flax equivalence test needs jax + flax (pip install 'ssl-zoo[jax]')")
    pytest.importorskip("flax", reason="the Flax equivalence test needs jax + flax (pip install 'ssl-zoo[jax]')")
    import jax
    import jax.numpy as jnp
    from flax import serialization

    from zoo.hub import create_model

    model = tutorial_simclr()
    # the variables' tree from tracing init (running flax's initialisers op by op takes far longer), then random
    # values: He-normal kernels, BatchNorm scale / bias away from the init's 1 / 0 (which would hide a swapped
    # pair); running statistics from a train-mode pass on random data (0.1 * init + 0.9 * batch, as flaxmodels'
    # momentum keeps them), so they are neither 0 / 1 nor equal across channels
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 96, 96, 3)), train=True))
    assert tree_signature(shapes) == (104, FLAXMODELS_TREE_SHA256)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name, shape = path[-1].key, leaf.shape
        value = {"kernel": lambda: rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape),
                 "scale": lambda: rng.uniform(0.5, 1.5, shape), "bias": lambda: rng.normal(0, 0.2, shape),
                 "mean": lambda: np.zeros(shape), "var": lambda: np.ones(shape)}[name]()
        return jnp.asarray(value, jnp.float32)
    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    params = variables["params"]
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 96, 96, 3)), jnp.float32)
    _, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
    stats = upd["batch_stats"]
    for name in ("mean", "var"):
        v = np.asarray(stats["convnet"]["BasicBlock_5"]["BatchNorm_1"][name])
        assert v.std() > 0.01 and np.abs(v - (name == "var")).mean() > 0.01

    ckpt = tmp_path / "SimCLR.ckpt"
    ckpt.write_bytes(serialization.to_bytes({"params": params, "batch_stats": stats}))
    out = convert(NAME, ckpt, tmp_path / "zoo", quiet=True)  # format, arch, preprocessing from the registry
    cfg = read_config(out)
    assert cfg["source"]["format"] == "flax-msgpack" and cfg["feature_dim"] == 512
    assert cfg["arch"] == {"arch": "resnet18", "stem": "imagenet", "maxpool": True}
    assert cfg["preprocess"]["mean"] == [0.5, 0.5, 0.5] and cfg["preprocess"]["std"] == [0.5, 0.5, 0.5]
    assert cfg["source"]["upstream"]["flax_resnet"] == "params/convnet"

    # the tutorial's preprocessing (img / 255 * 2 - 1, 96 px), then features: flax encode (eval mode) vs ours
    images = np.random.default_rng(3).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    x = images.astype(np.float32) / 255.0 * 2.0 - 1.0
    bound = model.bind({"params": params, "batch_stats": stats})
    ref = np.asarray(bound.encode(jnp.asarray(x), train=False))
    enc = create_model(out).eval()
    with torch.no_grad():
        ours = enc(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
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
    h = torch.from_numpy(np.array(ref))
    z = torch.relu(h @ heads["convnet.Dense_0.weight"].T + heads["convnet.Dense_0.bias"])
    z = z @ heads["head.layers_1.weight"].T + heads["head.layers_1.bias"]
    assert float((z - torch.from_numpy(np.array(bound(jnp.asarray(x), train=False)))).abs().max()) <= 1e-4
