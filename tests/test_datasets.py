"""eval.datasets: every loader against tiny files written in the real upstream on-disk format."""
from __future__ import annotations

import gzip
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.datasets import (  # noqa: E402
    LOADERS,
    DatasetError,
    DatasetNotFound,
    ImageSplit,
    load_split,
)


@pytest.fixture(autouse=True)
def _isolated_data_home(tmp_path, monkeypatch):
    """Keep every test away from the real ~/.cache/sslzoo/data."""
    monkeypatch.setenv("SSLZOO_DATA", str(tmp_path / "data_home"))


def one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- IDX (MNIST)


def write_idx(path: Path, arr: np.ndarray):
    """IDX: two zero bytes, dtype code 0x08 (uint8), ndim, big-endian uint32 dims, then the data."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_mnist_idx_roundtrip(tmp_path):
    imgs = np.zeros((3, 28, 28), np.uint8)
    imgs[1, 0, 5] = 255  # image 1: row 0, col 5
    imgs[2, 27, 0] = 7
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([4, 0, 9]))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs[:2])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 2]))

    s = load_split("mnist", "train", root=str(tmp_path))
    assert len(s) == 3 and s.images.shape == (3, 28, 28, 1) and s.images.dtype == np.uint8
    assert s.targets.tolist() == [4, 0, 9]
    assert s.images[1, 0, 5, 0] == 255 and s.images[1, 5, 0, 0] == 0
    assert s.images[2, 27, 0, 0] == 7
    assert s.get(1).shape == (1, 28, 28) and int(s.get(1)[0, 0, 5]) == 255
    assert s.classes == [str(i) for i in range(10)]
    t = load_split("MNIST", "test", root=str(tmp_path))
    assert len(t) == 2 and t.targets.tolist() == [1, 2]


def test_idx_bad_magic(tmp_path):
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x1f\x8bnot idx at all")
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([1]))
    with pytest.raises(DatasetError, match="not an IDX file"):
        load_split("mnist", "train", root=str(tmp_path))


# ----------------------------------------------------------------------------- CIFAR


def cifar_image(seed: int) -> np.ndarray:
    """A 32x32x3 image with a distinctive pixel per channel."""
    img = np.full((32, 32, 3), seed, np.uint8)
    img[0, 5, 0] = 200  # red at row 0, col 5
    img[3, 1, 1] = 77   # green at row 3, col 1
    img[31, 30, 2] = 11  # blue at row 31, col 30
    return img


def cifar_row(img: np.ndarray) -> np.ndarray:
    """The on-disk row: 1024 red values, then green, then blue, each plane row-major."""
    return np.concatenate([img[:, :, c].reshape(-1) for c in range(3)])


def write_pickle(path: Path, obj, py2_names=False):
    data = pickle.dumps(obj, protocol=2)
    if py2_names:  # what the official (Python 2 / numpy 1.x) files reference
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(data)


def make_cifar10(d: Path, per_batch=2):
    d.mkdir(parents=True, exist_ok=True)
    labels = []
    for b in range(1, 6):
        imgs = [cifar_image(10 * b + i) for i in range(per_batch)]
        lab = [(b + i) % 10 for i in range(per_batch)]
        labels += lab
        write_pickle(d / f"data_batch_{b}", {b"batch_label": b"training batch %d of 5" % b, b"labels": lab,
                                             b"data": np.stack([cifar_row(x) for x in imgs]),
                                             b"filenames": [b"x.png"] * per_batch}, py2_names=(b % 2 == 0))
    write_pickle(d / "test_batch", {b"labels": [3], b"data": cifar_row(cifar_image(99))[None]})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_pickle(d / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return labels


@pytest.mark.parametrize("layout", ["root", "root_is_batches_dir", "data_home"])
def test_cifar10(tmp_path, layout):
    root = tmp_path / "c10"
    if layout == "data_home":
        labels = make_cifar10(tmp_path / "data_home" / "cifar10" / "cifar-10-batches-py")
        kw = {}
    elif layout == "root":
        labels = make_cifar10(root / "cifar-10-batches-py")
        kw = {"root": str(root)}
    else:
        labels = make_cifar10(root)
        kw = {"root": str(root)}
    s = load_split("cifar10", "train", **kw)
    assert len(s) == 10 and s.images.shape == (10, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.targets.tolist() == labels
    assert s.classes[0] == "airplane" and s.classes[9] == "truck" and len(s.classes) == 10
    first = s.images[0]  # data_batch_1 image 0: background 10
    assert first[0, 5, 0] == 200 and first[5, 0, 0] == 10  # not transposed
    assert first[3, 1, 1] == 77 and first[1, 3, 1] == 10
    assert first[31, 30, 2] == 11 and first[0, 0, 2] == 10
    assert s.images[2, 10, 10, 0] == 20  # data_batch_2 image 0 comes third
    assert s.get(0).shape == (3, 32, 32) and int(s.get(0)[0, 0, 5]) == 200
    t = load_split("cifar10", "test", **kw)
    assert len(t) == 1 and t.targets.tolist() == [3] and t.images[0, 0, 5, 0] == 200 and t.images[0, 9, 9, 1] == 99


def test_cifar100(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    imgs = np.stack([cifar_row(cifar_image(i)) for i in range(4)])
    write_pickle(d / "train", {b"data": imgs, b"fine_labels": [0, 99, 42, 7], b"coarse_labels": [1, 2, 3, 4]})
    write_pickle(d / "test", {b"data": imgs[:1], b"fine_labels": [5], b"coarse_labels": [0]})
    write_pickle(d / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                              b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    s = load_split("cifar100", "train", root=str(tmp_path))
    assert s.targets.tolist() == [0, 99, 42, 7]  # fine labels, not coarse
    assert len(s.classes) == 100 and s.classes[42] == "c42"
    assert s.images[3, 0, 5, 0] == 200 and s.images[3, 2, 2, 2] == 3
    assert load_split("cifar100", "test", root=str(tmp_path)).targets.tolist() == [5]


class _Evil:
    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_cifar_pickle_refuses_foreign_globals(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    make_cifar10(d)
    write_pickle(d / "test_batch", {b"labels": [1], b"data": _Evil()})
    with pytest.raises(DatasetError, match="refusing global") as e:
        load_split("cifar10", "test", root=str(tmp_path))
    one_line_error(e)


def test_cifar_bad_batch_shape(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    make_cifar10(d)
    write_pickle(d / "test_batch", {b"labels": [1], b"data": np.zeros((1, 100), np.uint8)})
    with pytest.raises(DatasetError, match=r"expected uint8 \[N, 3072\]"):
        load_split("cifar10", "test", root=str(tmp_path))


def test_cifar10_download_uses_torchvision(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def fake_cifar10(root, train, download):
        calls.append((root, train, download))
        make_cifar10(Path(root) / "cifar-10-batches-py")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    s = load_split("cifar10", "test", root=str(tmp_path / "dl"), download=True)
    assert calls == [(str(tmp_path / "dl"), False, True)] and len(s) == 1


# ----------------------------------------------------------------------------- STL-10


def stl_bytes(n: int, marks: dict) -> bytes:
    """``n`` STL images of zeros in the on-disk order, with ``marks[(i, row, col, channel)] = value``.
    Offsets are computed by hand: per image channel-major, each 96x96 channel column-major
    (byte = channel * 96*96 + col * 96 + row)."""
    raw = bytearray(n * 3 * 96 * 96)
    for (i, row, col, ch), v in marks.items():
        raw[i * 3 * 96 * 96 + ch * 96 * 96 + col * 96 + row] = v
    return bytes(raw)


def make_stl10(d: Path):
    d.mkdir(parents=True)
    (d / "train_X.bin").write_bytes(stl_bytes(2, {(0, 0, 5, 0): 255, (1, 90, 3, 2): 42}))
    (d / "train_y.bin").write_bytes(bytes([1, 10]))
    (d / "test_X.bin").write_bytes(stl_bytes(1, {(0, 95, 0, 1): 9}))
    (d / "test_y.bin").write_bytes(bytes([4]))
    (d / "unlabeled_X.bin").write_bytes(stl_bytes(3, {(2, 1, 2, 0): 77}))
    (d / "class_names.txt").write_text("airplane\nbird\ncar\ncat\ndeer\ndog\nhorse\nmonkey\nship\ntruck\n")


def test_stl10_column_major_upright(tmp_path):
    make_stl10(tmp_path / "stl10_binary")
    s = load_split("stl10", "train", root=str(tmp_path))
    assert s.images.shape == (2, 96, 96, 3) and s.images.dtype == np.uint8
    assert s.targets.tolist() == [0, 9]  # 1..10 -> 0..9
    assert s.classes[0] == "airplane" and s.classes[9] == "truck"
    assert s.images[0, 0, 5, 0] == 255 and s.images[0, 5, 0, 0] == 0  # row 0 col 5, not transposed
    assert s.images[1, 90, 3, 2] == 42 and s.images[1, 3, 90, 2] == 0
    assert int(s.images.sum()) == 255 + 42
    assert int(s.get(0)[0, 0, 5]) == 255
    t = load_split("stl10", "test", root=str(tmp_path / "stl10_binary"))
    assert t.targets.tolist() == [3] and t.images[0, 95, 0, 1] == 9
    u = load_split("stl10", "unlabeled", root=str(tmp_path))
    assert len(u) == 3 and u.targets.tolist() == [-1, -1, -1] and u.images[2, 1, 2, 0] == 77
    tu = load_split("stl10", "train+unlabeled", root=str(tmp_path))
    assert tu.targets.tolist() == [0, 9, -1, -1, -1]
    assert tu.images[0, 0, 5, 0] == 255 and tu.images[4, 1, 2, 0] == 77


def test_stl10_truncated(tmp_path):
    make_stl10(tmp_path / "stl10_binary")
    (tmp_path / "stl10_binary" / "test_X.bin").write_bytes(b"\0" * 1000)
    with pytest.raises(DatasetError, match="not a whole number"):
        load_split("stl10", "test", root=str(tmp_path))


# ----------------------------------------------------------------------------- SVHN


def test_svhn_mat(tmp_path):
    sio = pytest.importorskip("scipy.io")
    x = np.zeros((32, 32, 3, 3), np.uint8)  # H x W x C x N, as in the official files
    x[0, 5, 0, 1] = 250  # image 1, row 0, col 5, red
    x[20, 2, 2, 2] = 33
    y = np.array([[10], [1], [9]], np.uint8)  # 10 is the digit 0
    sio.savemat(str(tmp_path / "train_32x32.mat"), {"X": x, "y": y})
    sio.savemat(str(tmp_path / "test_32x32.mat"), {"X": x[..., :1], "y": y[:1]})
    s = load_split("svhn", "train", root=str(tmp_path))
    assert s.images.shape == (3, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.targets.tolist() == [0, 1, 9]
    assert s.images[1, 0, 5, 0] == 250 and s.images[1, 5, 0, 0] == 0
    assert s.images[2, 20, 2, 2] == 33 and int(s.images.sum()) == 283
    assert s.classes == [str(i) for i in range(10)]
    assert load_split("svhn", "test", root=str(tmp_path)).targets.tolist() == [0]


def test_svhn_without_scipy(tmp_path, monkeypatch):
    (tmp_path / "train_32x32.mat").write_bytes(b"placeholder")
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(DatasetError, match="pip install scipy") as e:
        load_split("svhn", "train", root=str(tmp_path))
    one_line_error(e)


# ----------------------------------------------------------------------------- image folders


def save_png(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def marked(value: int, mode="RGB") -> np.ndarray:
    """A 4 x 7 (H x W) image: background ``value``, 255 at row 0 col 5 in the first channel."""
    arr = np.full((4, 7, 3) if mode == "RGB" else (4, 7), value, np.uint8)
    if mode == "RGB":
        arr[0, 5, 0] = 255
    else:
        arr[0, 5] = 255
    return arr


def make_folder(root: Path):
    save_png(root / "train" / "cat" / "b.png", marked(10))
    save_png(root / "train" / "cat" / "a.PNG", marked(20))
    save_png(root / "train" / "dog" / "x.png", marked(30))
    save_png(root / "test" / "cat" / "t.png", marked(40))
    save_png(root / "test" / "dog" / "t.png", marked(50))
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"\0")


def test_folder(tmp_path):
    make_folder(tmp_path / "ds")
    s = load_split(f"folder:{tmp_path / 'ds'}", "train")
    assert isinstance(s, ImageSplit) and s.images is None
    assert s.classes == ["cat", "dog"]
    assert [Path(p).name for p in s.paths] == ["a.PNG", "b.png", "x.png"]
    assert s.targets.tolist() == [0, 0, 1]
    x = s.get(0)
    assert tuple(x.shape) == (3, 4, 7)  # C, H, W
    assert int(x[0, 0, 5]) == 255 and int(x[0, 0, 4]) == 20 and int(x[1, 0, 5]) == 20
    assert s.channels == 3
    t = load_split(f"folder:{tmp_path / 'ds'}", "test")
    assert t.targets.tolist() == [0, 1] and int(t.get(1)[2, 3, 6]) == 50
    with pytest.raises(DatasetError, match="val"):
        load_split(f"folder:{tmp_path / 'ds'}", "val")
    save_png(tmp_path / "ds" / "val" / "dog" / "v.png", marked(60))
    save_png(tmp_path / "ds" / "val" / "cat" / "v.png", marked(70))
    v = load_split(f"folder:{tmp_path / 'ds'}", "val")
    assert v.targets.tolist() == [0, 1] and int(v.get(0)[1, 2, 2]) == 70



def test_images_tensor_and_batch_same_for_in_memory_and_file_backed(tmp_path):
    """ImageSplit.images_tensor / batch: one uint8 [N, C, H, W] (or transformed batch) whether the
    split is in memory or decoded from files; file-backed images of another size are one error line."""
    make_folder(tmp_path / "ds")
    files = load_split(f"folder:{tmp_path / 'ds'}", "train")
    ref = torch.stack([files.get(i) for i in range(len(files))])
    mem = ImageSplit("m", "train", files.targets, files.classes, images=ref.permute(0, 2, 3, 1).numpy())
    for s in (files, mem):
        x = s.images_tensor()
        assert x.dtype == torch.uint8 and torch.equal(x, ref)
        assert torch.equal(s.batch(1, 3, lambda t: t.float() / 2), ref[1:3].float() / 2)
    assert torch.equal(files.images_tensor(desc="decoding"), ref)
    save_png(tmp_path / "ds" / "train" / "dog" / "y.png", marked(30)[:3])
    odd = load_split(f"folder:{tmp_path / 'ds'}", "train")
    with pytest.raises(DatasetError, match=r"image 3 is \(3, 3, 7\), image 0 \(3, 4, 7\)"):
        odd.images_tensor()
    with pytest.raises(KeyError, match="3"):
        odd.images_tensor(mismatch=lambda i, got, first: KeyError(i))


def test_folder_grayscale(tmp_path):
    save_png(tmp_path / "g" / "train" / "a" / "1.png", marked(3, mode="L"))
    save_png(tmp_path / "g" / "test" / "a" / "1.png", marked(4, mode="L"))
    s = load_split(f"folder:{tmp_path / 'g'}")
    x = s.get(0)
    assert tuple(x.shape) == (1, 4, 7) and int(x[0, 0, 5]) == 255 and int(x[0, 3, 6]) == 3


def test_folder_missing(tmp_path):
    with pytest.raises(DatasetNotFound) as e:
        load_split(f"folder:{tmp_path / 'nope'}")
    msg = one_line_error(e)
    assert str(tmp_path / "nope") in msg and "train,test}/<class>/<image>" in msg


@pytest.mark.parametrize("missing", ["train", "test"])
def test_folder_without_split_dir(tmp_path, missing):
    make_folder(tmp_path / "ds")
    import shutil

    shutil.rmtree(tmp_path / "ds" / missing)
    with pytest.raises(DatasetError, match=f"no {missing}/ sub-folder") as e:
        load_split(f"folder:{tmp_path / 'ds'}", "train")
    assert "<class>/<image>" in one_line_error(e)


def test_folder_empty(tmp_path):
    (tmp_path / "ds" / "train").mkdir(parents=True)
    (tmp_path / "ds" / "test").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders.*empty") as e:
        load_split(f"folder:{tmp_path / 'ds'}")
    one_line_error(e)
    (tmp_path / "ds" / "train" / "cat").mkdir()
    (tmp_path / "ds" / "train" / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images") as e:
        load_split(f"folder:{tmp_path / 'ds'}")
    one_line_error(e)


def test_folder_flat_images(tmp_path):
    save_png(tmp_path / "ds" / "train" / "1.png", marked(1))
    (tmp_path / "ds" / "test").mkdir()
    with pytest.raises(DatasetError, match="1 images directly"):
        load_split(f"folder:{tmp_path / 'ds'}")


def test_folder_class_mismatch(tmp_path):
    make_folder(tmp_path / "ds")
    save_png(tmp_path / "ds" / "test" / "bird" / "1.png", marked(1))
    with pytest.raises(DatasetError, match="'bird'.*not a class of train") as e:
        load_split(f"folder:{tmp_path / 'ds'}", "test")
    one_line_error(e)
    import shutil

    shutil.rmtree(tmp_path / "ds" / "test" / "bird")
    shutil.rmtree(tmp_path / "ds" / "test" / "dog")
    with pytest.raises(DatasetError, match="class 'dog' has no test images"):
        load_split(f"folder:{tmp_path / 'ds'}", "test")


# ----------------------------------------------------------------------------- npz


def test_npz_per_split(tmp_path):
    tr = np.zeros((3, 4, 7, 3), np.uint8)
    tr[2, 0, 5, 1] = 99
    te = np.arange(2 * 4 * 7, dtype=np.uint8).reshape(2, 4, 7)  # [N,H,W] gets a channel axis
    np.savez(tmp_path / "d.npz", train_image=tr, train_label=np.array([0, -1, 4]), test_image=te,
             test_label=np.array([1, 2], np.uint8))
    s = load_split(f"npz:{tmp_path / 'd.npz'}", "train")
    assert s.images.shape == (3, 4, 7, 3) and s.images[2, 0, 5, 1] == 99
    assert s.targets.tolist() == [0, -1, 3]  # negative = unlabeled, kept; ids 0, 1, 2, 4 -> classes 0..3
    assert s.classes == ["0", "1", "2", "4"]  # class i is named by its id
    t = load_split(f"npz:{tmp_path / 'd.npz'}", "test")
    assert t.images.shape == (2, 4, 7, 1) and t.images[1, 0, 5, 0] == 28 + 5
    assert t.targets.dtype == np.int64 and t.targets.tolist() == [1, 2]
    assert t.classes == s.classes  # from the ids of every label array in the file
    assert tuple(t.get(1).shape) == (1, 4, 7)


def test_npz_plain_keys_train_only(tmp_path):
    np.savez(tmp_path / "p.npz", image=np.full((2, 3, 3, 1), 5, np.uint8), label=np.array([1, 0]),
             classes=np.array(["zero", "one"]))
    s = load_split(f"npz:{tmp_path / 'p.npz'}", "train")
    assert len(s) == 2 and s.classes == ["zero", "one"] and s.targets.tolist() == [1, 0]
    with pytest.raises(DatasetError, match="test_image \\+ test_label") as e:
        load_split(f"npz:{tmp_path / 'p.npz'}", "test")
    one_line_error(e)


@pytest.mark.parametrize("arrays, pattern", [
    ({"imgs": np.zeros((1, 2, 2, 3), np.uint8), "labels": np.zeros(1, int)},
     r"expected keys train_image \+ train_label.*found imgs, labels"),
    ({"train_image": np.zeros((1, 2, 2, 3), np.uint8)}, r"key 'train_label' is missing"),
    ({"train_image": np.zeros((1, 2, 2, 3), np.float32), "train_label": np.zeros(1, int)},
     r"'train_image' has dtype float32, expected uint8"),
    ({"train_image": np.zeros((1, 3, 2, 2), np.uint8), "train_label": np.zeros(1, int)},
     r"'train_image' has shape \[1, 3, 2, 2\], expected .*channels-first"),
    ({"train_image": np.zeros((1, 2, 2, 4), np.uint8), "train_label": np.zeros(1, int)},
     r"'train_image' has shape \[1, 2, 2, 4\]"),
    ({"train_image": np.zeros((2, 2), np.uint8), "train_label": np.zeros(2, int)}, r"has shape \[2, 2\]"),
    ({"train_image": np.zeros((1, 2, 2, 3), np.uint8), "train_label": np.zeros(1, np.float32)},
     r"'train_label' has dtype float32 and shape \[1\], expected integer \[N\]"),
    ({"train_image": np.zeros((1, 2, 2, 3), np.uint8), "train_label": np.zeros((1, 1), int)},
     r"'train_label' has dtype int64 and shape \[1, 1\]"),
    ({"train_image": np.zeros((2, 2, 2, 3), np.uint8), "train_label": np.zeros(3, int)}, r"3 labels but .* 2 images"),
])
def test_npz_errors(tmp_path, arrays, pattern):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=pattern) as e:
        load_split(f"npz:{tmp_path / 'bad.npz'}", "train")
    assert str(tmp_path / "bad.npz") in one_line_error(e)


def test_npz_negative_test_labels(tmp_path):
    np.savez(tmp_path / "n.npz", test_image=np.zeros((1, 2, 2), np.uint8), test_label=np.array([-1]))
    with pytest.raises(DatasetError, match="only train labels may be < 0"):
        load_split(f"npz:{tmp_path / 'n.npz'}", "test")


def test_npz_refuses_pickled_arrays(tmp_path):
    np.savez(tmp_path / "o.npz", train_image=np.array([object()], dtype=object), train_label=np.zeros(1, int))
    with pytest.raises(DatasetError, match="pickled"):
        load_split(f"npz:{tmp_path / 'o.npz'}", "train")


def test_npz_missing_and_corrupt(tmp_path):
    with pytest.raises(DatasetNotFound) as e:
        load_split(f"npz:{tmp_path / 'none.npz'}")
    assert str(tmp_path / "none.npz") in one_line_error(e)
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_split(f"npz:{tmp_path / 'junk.npz'}")


# ----------------------------------------------------------------------------- Tiny ImageNet / ImageNet


def save_jpeg(path: Path, value: int, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (64, 64, 3) if mode == "RGB" else (64, 64)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path, format="JPEG", quality=95)


def make_tiny(d: Path):
    (d).mkdir(parents=True)
    (d / "wnids.txt").write_text("n02\nn01\n")  # unsorted on purpose
    (d / "words.txt").write_text("n00\tentity\nn01\tgoldfish, Carassius auratus\nn02\tEuropean fire salamander\n")
    for w, vals in (("n01", (10, 20)), ("n02", (200,))):
        for i, v in enumerate(vals):
            save_jpeg(d / "train" / w / "images" / f"{w}_{i}.JPEG", v)
        (d / "train" / w / f"{w}_boxes.txt").write_text("")
    save_jpeg(d / "val" / "images" / "val_0.JPEG", 100)
    save_jpeg(d / "val" / "images" / "val_1.JPEG", 150, mode="L")  # Tiny ImageNet has grayscale JPEGs
    (d / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t4\t60\t50\nval_1.JPEG\tn01\t1\t2\t3\t4\n")
    save_jpeg(d / "test" / "images" / "test_0.JPEG", 1)


def test_tinyimagenet(tmp_path):
    make_tiny(tmp_path / "tiny-imagenet-200")
    s = load_split("tiny-imagenet", "train", root=str(tmp_path))
    assert s.classes == ["goldfish", "European fire salamander"]
    assert [Path(p).name for p in s.paths] == ["n01_0.JPEG", "n01_1.JPEG", "n02_0.JPEG"]
    assert s.targets.tolist() == [0, 0, 1]
    x = s.get(2)
    assert tuple(x.shape) == (3, 64, 64) and abs(int(x[0, 10, 10]) - 200) <= 2
    v = load_split("tinyimagenet", "val", root=str(tmp_path / "tiny-imagenet-200"))
    assert [Path(p).name for p in v.paths] == ["val_0.JPEG", "val_1.JPEG"] and v.targets.tolist() == [1, 0]
    g = v.get(1)
    assert tuple(g.shape) == (3, 64, 64) and abs(int(g[2, 5, 5]) - 150) <= 2  # grayscale decoded to RGB
    t = load_split("tinyimagenet", "test", root=str(tmp_path))
    assert t.paths == v.paths and t.targets.tolist() == v.targets.tolist()  # test = labelled val


def test_tinyimagenet_duplicate_names(tmp_path):
    make_tiny(tmp_path / "tiny-imagenet-200")
    (tmp_path / "tiny-imagenet-200" / "words.txt").write_text("n01\tcrane\nn02\tcrane, derrick\n")
    s = load_split("tinyimagenet", "train", root=str(tmp_path))
    assert s.classes == ["crane (n01)", "crane (n02)"]
    (tmp_path / "tiny-imagenet-200" / "words.txt").unlink()
    assert load_split("tinyimagenet", "train", root=str(tmp_path)).classes == ["n01", "n02"]


def test_tinyimagenet_bad_annotation(tmp_path):
    make_tiny(tmp_path / "tiny-imagenet-200")
    (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match="line 1.*wnid"):
        load_split("tinyimagenet", "val", root=str(tmp_path))


def test_imagenet(tmp_path):
    root = tmp_path / "imagenet"
    save_jpeg(root / "train" / "n01440764" / "n01440764_10026.JPEG", 30)
    save_jpeg(root / "train" / "n01443537" / "n01443537_1.JPEG", 60, mode="L")
    save_jpeg(root / "val" / "n01440764" / "ILSVRC2012_val_00000293.JPEG", 90)
    save_jpeg(root / "val" / "n01443537" / "ILSVRC2012_val_00000236.JPEG", 120)
    s = load_split("imagenet", "train", root=str(root))
    assert s.classes == ["n01440764", "n01443537"] and s.targets.tolist() == [0, 1]
    assert tuple(s.get(1).shape) == (3, 64, 64)  # grayscale JPEG decoded to RGB
    t = load_split("imagenet", "test", root=str(root))
    assert [Path(p).name for p in t.paths] == ["ILSVRC2012_val_00000293.JPEG", "ILSVRC2012_val_00000236.JPEG"]
    assert t.targets.tolist() == [0, 1] and abs(int(t.get(1)[0, 0, 0]) - 120) <= 2


def test_imagenet_flat_val(tmp_path):
    root = tmp_path / "imagenet"
    save_jpeg(root / "train" / "n01440764" / "a.JPEG", 30)
    save_jpeg(root / "val" / "ILSVRC2012_val_00000001.JPEG", 30)
    with pytest.raises(DatasetError, match="flat.*val/<wnid>"):
        load_split("imagenet", "val", root=str(root))
    assert len(load_split("imagenet", "train", root=str(root))) == 1


# ----------------------------------------------------------------------------- catalogue / errors


def test_catalogue_names():
    assert set(LOADERS) == {"fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "svhn", "tinyimagenet",
                            "imagenet"}


def test_unknown_spec_suggests_close_name():
    with pytest.raises(DatasetError, match="did you mean fashion-mnist") as e:
        load_split("fashion-mnst")
    one_line_error(e)


@pytest.mark.parametrize("name, split, mentions, downloadable", [
    ("mnist", "train", "train-images-idx3-ubyte.gz", True),
    ("cifar10", "train", "cifar-10-batches-py", True),
    ("cifar100", "test", "cifar-100-python", True),
    ("stl10", "unlabeled", "stl10_binary", True),
    ("svhn", "test", "test_32x32.mat", True),
    ("tinyimagenet", "val", "tiny-imagenet-200", False),
    ("imagenet", "train", "train/ and val/", False),
])
def test_missing_dataset_says_where(tmp_path, name, split, mentions, downloadable):
    root = tmp_path / "empty" / name
    with pytest.raises(DatasetNotFound) as e:
        load_split(name, split, root=str(root))
    msg = one_line_error(e)
    assert str(root) in msg and mentions in msg
    assert ("--download" in msg) == downloadable
    with pytest.raises(DatasetNotFound) as e:  # default root: the data home
        load_split(name, split)
    assert str(tmp_path / "data_home" / name) in one_line_error(e)


@pytest.mark.parametrize("name, split", [("cifar10", "val"), ("stl10", "extra"), ("svhn", "unlabeled"),
                                         ("tinyimagenet", "unlabeled"), ("imagenet", "extra")])
def test_bad_split_names(tmp_path, name, split):
    with pytest.raises(DatasetError, match=repr(split)):
        load_split(name, split, root=str(tmp_path))


# ----------------------------------------------------------------------------- real Fashion-MNIST

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist():
    tr = load_split("fashion-mnist", "train", root=str(FMNIST_DIR))
    te = load_split("fashion-mnist", "test", root=str(FMNIST_DIR))
    assert len(tr) == 60000 and len(te) == 10000
    assert tr.images.shape == (60000, 28, 28, 1) and tr.images.dtype == np.uint8
    assert te.images.shape == (10000, 28, 28, 1)
    assert len(tr.classes) == 10 and tr.classes[9] == "Ankle boot"
    assert sorted(set(tr.targets.tolist())) == list(range(10))
    assert np.bincount(tr.targets).tolist() == [6000] * 10 and np.bincount(te.targets).tolist() == [1000] * 10
    assert tr.targets[0] == 9 and te.targets[0] == 9  # the first image of each split is an ankle boot


# ----------------------------------------------------------------------------- content fingerprints (issue 17)

def _bmp_folder(root, n=3, size=8):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / split / c / f"{i}.bmp")


def test_folder_fingerprint_follows_content_not_size(tmp_path):
    """Two test images swapped in place (same sizes, mtimes restored): the old path + size fingerprint
    stayed the same and eval kept stale numbers; the content fingerprint changes."""
    import os

    from eval.datasets import file_digests, load_folder

    _bmp_folder(tmp_path / "ds")
    before = load_folder(tmp_path / "ds", "test").fingerprint()
    assert load_folder(tmp_path / "ds", "test").fingerprint() == before  # stable (now from the index)
    a, b = tmp_path / "ds/test/a/0.bmp", tmp_path / "ds/test/b/0.bmp"
    ra, rb = a.read_bytes(), b.read_bytes()
    assert len(ra) == len(rb) and ra != rb
    sa, sb = a.stat(), b.stat()
    a.write_bytes(rb)
    b.write_bytes(ra)
    os.utime(a, ns=(sa.st_atime_ns, sa.st_mtime_ns))
    os.utime(b, ns=(sb.st_atime_ns, sb.st_mtime_ns))
    split = load_folder(tmp_path / "ds", "test")
    assert split.fingerprint() != before
    assert file_digests([a, b]) == [__import__("hashlib").sha256(rb).hexdigest(),
                                     __import__("hashlib").sha256(ra).hexdigest()]
    b.write_bytes(rb)  # swap back: the original fingerprint again
    a.write_bytes(ra)
    assert load_folder(tmp_path / "ds", "test").fingerprint() == before


def test_npz_any_ids_and_dtypes_map_to_contiguous_classes(tmp_path):
    """Issue 17: labels {0, 10^9} grew a process to 22 GB (per-id arrays); uint8 255 ('unlabelled')
    became a class that won every vote. Ids of any integer dtype -> classes 0..K-1 named by their ids;
    the unsigned maximum marks unlabelled train images (target -1) and is refused in test."""
    im = np.zeros((4, 2, 2), np.uint8)
    cases = [(np.array([0, 10**9, 0, 10**9]), np.array([10**9, 0], np.int32), [0, 1, 0, 1], [1, 0],
              ["0", "1000000000"]),
             (np.array([9, 255, 3, 3], np.uint8), np.array([3, 9], np.uint8), [1, -1, 0, 0], [0, 1], ["3", "9"]),
             (np.array([2**63 + 5, 7, 7, 2**64 - 1], np.uint64), np.array([7, 2**63 + 5], np.uint64), [1, 0, 0, -1],
              [0, 1], ["7", str(2**63 + 5)]),
             (np.array([-3, 7, -1, 3], np.int8), np.array([7, 3], np.int16), [-1, 1, -1, 0], [1, 0], ["3", "7"])]
    for tr, te, want_tr, want_te, names in cases:
        np.savez(tmp_path / "d.npz", train_image=im, train_label=tr, test_image=im[:2], test_label=te)
        a, b = load_split(f"npz:{tmp_path / 'd.npz'}", "train"), load_split(f"npz:{tmp_path / 'd.npz'}", "test")
        assert a.targets.tolist() == want_tr and b.targets.tolist() == want_te, tr.dtype
        assert a.classes == b.classes == names
    np.savez(tmp_path / "d.npz", train_image=im, train_label=np.array([0, 1, 1, 0], np.uint8), test_image=im[:2],
             test_label=np.array([0, 255], np.uint8))
    with pytest.raises(DatasetError, match=r"the uint8 'unlabelled' label 255; only train labels may be < 0"):
        load_split(f"npz:{tmp_path / 'd.npz'}", "test")


def test_explicit_root_is_the_only_place_looked_at(tmp_path, monkeypatch):
    """Issue 17: a --root without the data silently fell back to the data home / system copy."""
    home = tmp_path / "data_home" / "mnist"
    home.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, arr in (("t10k-images-idx3-ubyte", rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)),
                      ("t10k-labels-idx1-ubyte", np.array([1, 2], np.uint8))):
        head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
        (home / stem).write_bytes(head + arr.tobytes())
    assert len(load_split("mnist", "test")) == 2  # the data home is used without --root
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    with pytest.raises(DatasetNotFound, match=str(empty)):
        load_split("mnist", "test", root=str(empty))
    with pytest.raises(DatasetError, match=r"--root .* applies to catalogue data sets; npz:PATH names its own"):
        load_split(f"npz:{tmp_path / 'x.npz'}", "test", root=str(empty))
