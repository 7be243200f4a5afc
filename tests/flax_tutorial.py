"""Flax side of tests/test_flax.py: UvA tutorial 17 (JAX)'s SimCLR model, run in a child process.

    python tests/flax_tutorial.py OUT_DIR [HANDBUILT.msgpack]

writes into OUT_DIR: ``SimCLR.ckpt`` (``flax.serialization.to_bytes({'params', 'batch_stats'})``, what the
notebook's ``checkpoints.save_checkpoint`` writes with flax's legacy backend), ``images.npy`` (uint8 NHWC),
``encode.npy`` (the module's ``encode`` in eval mode on ``images / 255 * 2 - 1``), ``project.npy`` (its head
output), ``tree.json`` (leaf count + sha256 of the variables' tree) and, given a msgpack file,
``restored.npz`` (``flax.serialization.msgpack_restore`` of it, leaves keyed by path).

A separate process because JAX starts threads: a later ``os.fork`` in the pytest process (tests/test_store.py's
concurrent writers) would otherwise run in a process with JAX's threads, which JAX warns may deadlock.
Imports only jax, flax and numpy (no torch).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def tutorial_simclr():
    """The notebook's ``SimCLR`` module (encoder + head, the loss left out) around a re-creation of
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
    """(leaf count, sha256 of the sorted ``collection/path shape`` lines) of a variables tree."""
    import jax

    lines = sorted(f"{col}/{'/'.join(p.key for p in path)} {tuple(leaf.shape)}"
                   for col in variables for path, leaf in jax.tree_util.tree_flatten_with_path(variables[col])[0])
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()


def main(out: Path, handbuilt: Path | None = None) -> None:
    import jax
    import jax.numpy as jnp
    from flax import serialization

    model = tutorial_simclr()
    # the variables' tree from tracing init (running flax's initialisers op by op takes far longer), then random
    # values: He-normal kernels, BatchNorm scale / bias away from the init's 1 / 0 (which would hide a swapped
    # pair); running statistics from a train-mode pass on random data (0.1 * init + 0.9 * batch, as flaxmodels'
    # momentum keeps them), so they are neither 0 / 1 nor equal across channels
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 96, 96, 3)), train=True))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name, shape = path[-1].key, leaf.shape
        value = {"kernel": lambda: rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape),
                 "scale": lambda: rng.uniform(0.5, 1.5, shape), "bias": lambda: rng.normal(0, 0.2, shape),
                 "mean": lambda: np.zeros(shape), "var": lambda: np.ones(shape)}[name]()
        return jnp.asarray(value, jnp.float32)
    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 96, 96, 3)), jnp.float32)
    _, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
    params, stats = variables["params"], upd["batch_stats"]
    (out / "SimCLR.ckpt").write_bytes(serialization.to_bytes({"params": params, "batch_stats": stats}))

    images = np.random.default_rng(3).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    x = jnp.asarray(images.astype(np.float32) / 255.0 * 2.0 - 1.0)  # the notebook's image_to_numpy + img*2-1
    bound = model.bind({"params": params, "batch_stats": stats})
    np.save(out / "images.npy", images)
    np.save(out / "encode.npy", np.asarray(bound.encode(x, train=False)))
    np.save(out / "project.npy", np.asarray(bound(x, train=False)))
    bs = stats["convnet"]["BasicBlock_5"]["BatchNorm_1"]
    (out / "tree.json").write_text(json.dumps({"signature": tree_signature(shapes), "stats_example": {
        k: np.asarray(v).tolist() for k, v in bs.items()}}))
    if handbuilt is not None:
        tree = serialization.msgpack_restore(handbuilt.read_bytes())
        flat = {"/".join(p.key for p in path): np.asarray(leaf, dtype=np.float32 if leaf.dtype.name == "bfloat16"
                                                          else None)
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
        np.savez(out / "restored.npz", **flat)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
