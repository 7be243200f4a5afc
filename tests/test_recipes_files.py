"""Every upstream recipe trains (issue 18, item 5): 2 steps of each ImageNet recipe from a generated
ImageNet-layout tree of JPEGs of varied sizes through the file-backed source (``data.source=files``),
the TinyImageNet recipes from a generated ``tiny-imagenet-200`` tree through the same source, and the
STL10 recipes from generated ``stl10_binary`` files (STL10 is stored as binary arrays, not image
files: its loader holds the split in memory, so those recipes run the in-memory path).

What is scaled down, and only that: the network's width (``model.width=4``, the expansion block
kept in proportion), the heads (``SHRINK``: cluster count, hidden and output widths), the batch (8)
and the step count (2). Every crop size, scale, blur kernel, multi-crop count, optimiser and
schedule is the recipe's own: the ImageNet recipes cut their real 224 / 160 / 96 px crops from the
60-500 px JPEGs.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eval.synthetic import synthetic_image, write_jpeg_tree
from training.config import RECIPE_DIR, load_recipe
from training.filesource import CropDataset
from training.trainer import Trainer

SHRINK = {"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 16, "n_clusters": 32, "bottleneck_dim": 8,
          "out_dim": 32, "queue_size": 64}
RECIPES = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def _dataset(name: str) -> str:
    return load_recipe(name)["data"]["dataset"]


IMAGENET = [r for r in RECIPES if _dataset(r) == "imagenet"]
TINY = [r for r in RECIPES if _dataset(r) == "tinyimagenet"]
STL10 = [r for r in RECIPES if _dataset(r) == "stl10"]


def test_the_recipe_lists_are_the_bundled_ones():
    """The parametrisations below cover what the issue names: DISSL e100/e400/e800, m2/m6/m8,
    d2048/d8192 on ImageNet, and the TinyImageNet and STL10 tables."""
    assert IMAGENET and all(r.startswith("dissl_resnet50_") for r in IMAGENET)
    for part in ("e100", "e400", "e800", "m2", "m6", "m8", "dNone", "d8192"):
        assert any(part in r for r in IMAGENET), part
    assert {r.split("_")[0] for r in TINY} == {"cissl", "dissl"}
    assert {r.split("_")[0] for r in STL10} == {"dcl", "simclr"}


# ----------------------------------------------------------------------------- generated data sets


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory):
    """4 classes x 8 JPEGs, width and height each in 60-500 px (``train/<wnid>/*.JPEG``)."""
    root = tmp_path_factory.mktemp("imagenet")
    write_jpeg_tree(root, classes=4, per_class=8, sizes=(60, 500), seed=0, layout="imagenet")
    return root


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    """``tiny-imagenet-200/``: wnids.txt, words.txt and ``train/<wnid>/images/*.JPEG`` at 64 x 64."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny")
    d = root / "tiny-imagenet-200"
    wnids = [f"n0{c}" for c in range(4)]
    rng = np.random.default_rng(0)
    for c, w in enumerate(wnids):
        (d / "train" / w / "images").mkdir(parents=True)
        for j in range(4):
            Image.fromarray(synthetic_image(rng, 64, 64, c, 4)).save(d / "train" / w / "images" / f"{w}_{j}.JPEG",
                                                                   quality=90)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (d / "words.txt").write_text("".join(f"{w}\tclass {w}\n" for w in wnids))
    return root


@pytest.fixture(scope="module")
def stl10_tree(tmp_path_factory):
    """``stl10_binary/``: train_X/y.bin (8 images), unlabeled_X.bin (8 images), class_names.txt."""
    root = tmp_path_factory.mktemp("stl10")
    d = root / "stl10_binary"
    d.mkdir()
    rng = np.random.default_rng(0)
    (d / "train_X.bin").write_bytes(rng.integers(0, 256, size=(8, 3, 96, 96), dtype=np.uint8).tobytes())
    (d / "train_y.bin").write_bytes(bytes([1, 2, 3, 4, 5, 6, 7, 8]))
    (d / "unlabeled_X.bin").write_bytes(rng.integers(0, 256, size=(8, 3, 96, 96), dtype=np.uint8).tobytes())
    (d / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    return root


# ----------------------------------------------------------------------------- two steps of each recipe


def tiny_sets(cfg: dict, root, source: str) -> list[str]:
    """The scaled-down overrides (see the module docstring): width, heads, batch, steps; nothing of the data."""
    m = cfg["model"]
    sets = [f"data.root={root}", f"data.source={source}", "model.width=4", "optim.batch_size=8",
            "train.max_steps=2", "train.monitor_every_epochs=0", "train.log_every=1", "train.tensorboard=false"]
    if source == "files":
        sets.append("data.workers=0")
    if m["expand_dim"]:  # keep the expansion ratio: trunk 64 * 8 * block expansion -> 4 * 8 * block expansion
        block = 4 if m["arch"] == "resnet50" else 1
        sets += [f"model.expand_dim={m['expand_dim'] // (64 * 8 * block) * 4 * 8 * block}", "model.expand_mid=8"]
    return sets + [f"method.{k}={v}" for k, v in SHRINK.items() if k in cfg["method"]]


def train_two_steps(recipe: str, root, source: str, out):
    cfg = load_recipe(recipe)
    tiny = load_recipe(recipe, tiny_sets(cfg, root, source))
    for section in ("augment", "optim", "data"):  # the recipe's own crops, optimiser and data set
        keep = {k: v for k, v in cfg[section].items() if k not in ("batch_size", "root", "source", "workers")}
        assert all(tiny[section][k] == v for k, v in keep.items()), section
    t = Trainer(tiny, out, device="cpu")
    t.fit()
    assert t.step == 2
    losses = [float(r.split(",")[2]) for r in (out / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert (out / "export" / "model.safetensors").is_file()
    x, _ = t.load_data()
    assert isinstance(x, CropDataset) == (source == "files")  # the source the test names is the one that ran
    return t, cfg


@pytest.mark.parametrize("recipe", IMAGENET)
def test_imagenet_recipe_trains_two_steps_from_jpeg_files(recipe, imagenet_tree, tmp_path):
    t, cfg = train_two_steps(recipe, imagenet_tree, "files", tmp_path / "run")
    a = cfg["augment"]
    assert t.n_small == a["small_crops"] and a["size"] in (160, 224)


@pytest.mark.parametrize("recipe", TINY)
def test_tinyimagenet_recipe_trains_two_steps_from_jpeg_files(recipe, tiny_tree, tmp_path):
    train_two_steps(recipe, tiny_tree, "files", tmp_path / "run")


@pytest.mark.parametrize("recipe", STL10)
def test_stl10_recipe_trains_two_steps_in_memory(recipe, stl10_tree, tmp_path):
    train_two_steps(recipe, stl10_tree, "memory", tmp_path / "run")
