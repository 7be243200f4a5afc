"""Packed shards (`sslzoo pack`, `pack:PATH`): byte-exact round trip, stable fingerprint, same features
as the tree they came from, atomic writing, and the bad-file policy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.datasets import DatasetError, load_split
from eval.packed import PackError, pack_splits, parse_size, write_pack
from eval.synthetic import write_bad_files, write_jpeg_tree
from zoo.base import UsageError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree") / "imgs"
    write_jpeg_tree(root, classes=3, per_class=5, sizes=(40, 90), layout="folder", odd_files=True)
    return root


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLZOO_HOME", str(tmp_path / "home"))


def test_pack_round_trip_bytes_labels_fingerprint(tree, tmp_path):
    meta = write_pack(f"folder:{tree}", tmp_path / "p", shard_size=20_000, workers=0)
    assert list(meta["splits"]) == ["train", "test"] and meta["classes"] == ["class0", "class1", "class2"]
    assert len(meta["splits"]["train"]["shards"]) > 2  # small shards: several files, images never split
    for split in ("train", "test"):
        src, packed = load_split(f"folder:{tree}", split), load_split(f"pack:{tmp_path / 'p'}", split)
        assert len(packed) == len(src) and packed.targets.tolist() == src.targets.tolist()
        assert packed.classes == src.classes and packed.mode == src.mode
        assert [packed.read_bytes(i) for i in range(len(src))] == [Path(p).read_bytes() for p in src.paths]
        assert [Path(p).name for p in packed.paths] == [Path(p).name for p in src.paths]
        assert torch.equal(packed.get(3), src.get(3))
        assert packed.fingerprint() == src.fingerprint()  # from the index's sha256s: the same data
    train = load_split(f"folder:{tree}", "train")
    shard_bytes = sum(os.path.getsize(tmp_path / "p" / s) for s in meta["splits"]["train"]["shards"])
    assert shard_bytes == meta["splits"]["train"]["bytes"] == sum(os.path.getsize(p) for p in train.paths)
    # the fingerprint is read from the index, not by hashing the shards again: a changed index changes it
    again = load_split(f"pack:{tmp_path / 'p'}", "train")
    assert again.fingerprint() == load_split(f"folder:{tree}", "train").fingerprint()


def test_pack_reads_without_opening_files_per_image(tree, tmp_path, monkeypatch):
    write_pack(f"folder:{tree}", tmp_path / "p", workers=0)
    s = load_split(f"pack:{tmp_path / 'p'}", "train")
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    for i in range(len(s)):
        s.read_bytes(i)
    assert len(opened) == 1  # one shard, opened once, kept open
    import pickle

    clone = pickle.loads(pickle.dumps(s))  # what a spawned DataLoader worker gets: no descriptors
    assert clone.read_bytes(2) == s.read_bytes(2)


def test_pack_features_equal_the_folder_and_workers_do_not_matter(tree, tmp_path):
    from eval.features import extract
    from zoo.hub import create_model

    write_pack(f"folder:{tree}", tmp_path / "p", workers=0)
    torch.manual_seed(0)
    model = create_model("simclr_resnet18w16_fashion_mnist", pretrained=False)
    folder = load_split(f"folder:{tree}", "train")
    packed = load_split(f"pack:{tmp_path / 'p'}", "train")
    f0, y0 = extract(model, folder, batch_size=4, cache=False, workers=0)
    f2, y2 = extract(model, packed, batch_size=4, cache=False, workers=2)
    assert f0.shape[0] == len(folder) and torch.equal(f0, f2) and torch.equal(y0, y2)


def test_killed_pack_leaves_no_out(tree, tmp_path):
    script = (
        "import os, signal, sys\n"
        "from eval.datasets import ImageSplit\n"
        "from eval.packed import write_pack\n"
        "real, calls = ImageSplit.read_bytes, [0]\n"
        "def read(self, i):\n"
        "    calls[0] += 1\n"
        "    if calls[0] == 10:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, i)\n"
        "ImageSplit.read_bytes = read\n"
        f"write_pack('folder:{tree}', '{tmp_path / 'out'}', shard_size=5000, workers=0)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert r.returncode == -9
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # the hidden work folder it was in


def test_pack_refuses_bad_files_unless_skip_bad(tree, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tree, src)
    bad = write_bad_files(src / "train" / "class1", ext=".jpg")
    with pytest.raises(PackError) as e:
        write_pack(f"folder:{src}", tmp_path / "p", workers=2)
    msg = str(e.value)
    assert msg.startswith("4 file(s) of folder:") and "(and 1 more)" in msg and "--skip-bad" in msg
    assert str(bad["corrupt"]) in msg and "\n" not in msg
    assert not (tmp_path / "p").exists()
    meta = write_pack(f"folder:{src}", tmp_path / "p", workers=0, skip_bad=True)
    assert meta["splits"]["train"]["left_out"] == 4
    s = load_split(f"pack:{tmp_path / 'p'}", "train")
    assert len(s) == len(load_split(f"folder:{tree}", "train"))
    assert not any("bad_" in n for n in s.paths)


def test_pack_other_inputs(tree, tmp_path):
    write_pack(f"folder:{tree}", tmp_path / "p", splits=["test"], workers=0)
    with pytest.raises(DatasetError, match=r"has splits test, not 'train'"):
        load_split(f"pack:{tmp_path / 'p'}", "train")
    with pytest.raises(UsageError, match="already exists; pass --overwrite"):
        write_pack(f"folder:{tree}", tmp_path / "p", workers=0)
    write_pack(f"folder:{tree}", tmp_path / "p", workers=0, overwrite=True)
    assert list(json.loads((tmp_path / "p" / "pack.json").read_text())["splits"]) == ["train", "test"]
    (tmp_path / "mine").mkdir()
    with pytest.raises(UsageError, match="is not a pack"):
        write_pack(f"folder:{tree}", tmp_path / "mine", workers=0, overwrite=True)
    np.savez(tmp_path / "d.npz", train_image=np.zeros((2, 4, 4), np.uint8), train_label=np.array([0, 1]))
    with pytest.raises(PackError, match="held in memory"):
        write_pack(f"npz:{tmp_path / 'd.npz'}", tmp_path / "q", splits=["train"], workers=0)
    with pytest.raises(DatasetError, match="is not a pack"):
        load_split(f"pack:{tmp_path / 'mine'}")
    assert parse_size("1GB") == 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("1000") == 1000
    with pytest.raises(UsageError, match="is not a size"):
        parse_size("lots")
    write_jpeg_tree(tmp_path / "u", classes=2, per_class=2, sizes=(20, 30), layout="unlabelled")
    assert pack_splits(f"folder:{tmp_path / 'u'}") == ["train"]
    write_pack(f"folder:{tmp_path / 'u'}", tmp_path / "up", workers=0)
    u = load_split(f"pack:{tmp_path / 'up'}", "train")
    assert (u.targets == -1).all() and len(u) == 4
    # a pack of a pack is the same pack
    write_pack(f"pack:{tmp_path / 'up'}", tmp_path / "up2", workers=0)
    assert load_split(f"pack:{tmp_path / 'up2'}").fingerprint() == u.fingerprint()


def test_imagenet_pack_test_is_val(tmp_path):
    write_jpeg_tree(tmp_path / "inet", classes=2, per_class=3, sizes=(30, 50))
    meta = write_pack("imagenet", tmp_path / "p", root=str(tmp_path / "inet"), workers=0)
    assert list(meta["splits"]) == ["train", "val"]
    te = load_split(f"pack:{tmp_path / 'p'}", "test")
    assert te.split == "val" and te.mode == "RGB" and te.targets.tolist() == [0, 0, 1, 1]
    assert te.fingerprint() == load_split("imagenet", "val", root=str(tmp_path / "inet")).fingerprint()
