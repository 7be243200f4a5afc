"""Property-based campaign (issue 17) over where input enters: npz readers, Preprocess (tensors and
PIL images of every dtype / mode / bit depth, down to 1 px), zoo folders (config.json) and the kNN
probe on arbitrary label ids. Every example ends in a result equal to an independent reference
computed here (numpy), or in the owning layer's one-line SSLZooError; never another exception.

The suite runs a fixed, bounded set (``derandomize``); a longer campaign:
``SSLZOO_HYPOTHESIS_EXAMPLES=2000 pytest tests/test_fuzz_inputs.py``.
"""
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from eval.datasets import DatasetError, load_npz
from eval.probes import knn_probe
from zoo.base import SSLZooError
from zoo.preprocess import PixelError, Preprocess

EXAMPLES = int(os.environ.get("SSLZOO_HYPOTHESIS_EXAMPLES", "25"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


def one_line(e: BaseException) -> bool:
    return isinstance(e, SSLZooError) and "\n" not in str(e) and str(e)


# ----------------------------------------------------------------------------- npz labels and images

@st.composite
def label_arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(INT_DTYPES)))
    info = np.iinfo(dtype)
    special = [0, 1, 2, 9, info.max, info.max - 1, info.min, -1, 10 ** 6, 10 ** 9, 10 ** 12]
    pool = [v for v in special if info.min <= v <= info.max]
    values = st.one_of(st.sampled_from(pool), st.integers(int(info.min), int(info.max)))
    n_train = draw(st.integers(1, 12))
    n_test = draw(st.integers(0, 6))
    ids = draw(st.lists(values, min_size=1, max_size=4, unique=True))
    train = np.array(draw(st.lists(st.sampled_from(ids), min_size=n_train, max_size=n_train)), dtype=dtype)
    test = np.array(draw(st.lists(st.sampled_from(ids), min_size=n_test, max_size=n_test)), dtype=dtype)
    return train, test


def reference_mapping(train, test):
    """Independent reference: unlabelled = negative, or the unsigned maximum; classes = sorted distinct
    labelled ids over both arrays (Python ints, exact); targets = position of the id."""
    def unl(a):
        return [(v == np.iinfo(a.dtype).max) if a.dtype.kind == "u" else (v < 0) for v in a.tolist()]
    ids = sorted({v for a in (train, test) for v, u in zip(a.tolist(), unl(a)) if not u})
    pos = {v: i for i, v in enumerate(ids)}
    tr = [-1 if u else pos[v] for v, u in zip(train.tolist(), unl(train))]
    te = [-1 if u else pos[v] for v, u in zip(test.tolist(), unl(test))]
    return [str(v) for v in ids], tr, te


@SETTINGS
@given(labels=label_arrays(), h=st.integers(1, 5), w=st.integers(1, 5), c=st.sampled_from([None, 1, 3, 2]),
       img_dtype=st.sampled_from(["uint8", "uint8", "uint16", "float32"]))
def test_npz_reader(tmp_path_factory, labels, h, w, c, img_dtype):
    train, test = labels
    tmp = tmp_path_factory.mktemp("npz")
    shape = (h, w) if c is None else (h, w, c)
    rng = np.random.default_rng(0)
    tr_im = rng.integers(0, 256, (len(train),) + shape).astype(img_dtype)
    te_im = rng.integers(0, 256, (len(test),) + shape).astype(img_dtype)
    np.savez(tmp / "d.npz", train_image=tr_im, train_label=train, test_image=te_im, test_label=test)
    names, want_tr, want_te = reference_mapping(train, test)
    for split, im, want in (("train", tr_im, want_tr), ("test", te_im, want_te)):
        try:
            s = load_npz(tmp / "d.npz", split)
        except DatasetError as e:
            assert one_line(e)
            bad_images = img_dtype != "uint8" or c == 2
            assert bad_images or (split == "test" and -1 in want), str(e)
            continue
        assert img_dtype == "uint8" and c != 2 and not (split == "test" and -1 in want)
        assert s.targets.tolist() == want and s.classes == names
        assert np.array_equal(s.images, im.reshape(im.shape[:3] + (1 if c is None else c,)))


# ----------------------------------------------------------------------------- Preprocess

PRE_MEAN, PRE_STD = (0.25, 0.5, 0.75), (0.5, 0.25, 0.125)


@SETTINGS
@given(dtype=st.sampled_from(["uint8", "int16", "int32", "int64", "float16", "float32", "float64", "bool"]),
       c=st.sampled_from([1, 2, 3, 4]), h=st.integers(1, 6), w=st.integers(1, 6), batch=st.booleans(),
       hi=st.sampled_from([1, 255, 256, 65535]), neg=st.booleans())
def test_preprocess_tensors(dtype, c, h, w, batch, hi, neg):
    rng = np.random.default_rng(h * 7 + w)
    size = max(h, w)
    pre = Preprocess(resize=size, crop=size, mean=PRE_MEAN, std=PRE_STD)
    raw = rng.integers(-1 if neg else 0, hi + 1, (2, c, h, w) if batch else (c, h, w))
    if dtype.startswith("float"):
        raw = raw / 255.0
    x = torch.from_numpy(raw.astype(dtype))
    vals = x.numpy().astype(np.float64)  # what the tensor holds after the cast (uint8(-1) is 255)
    try:
        out = pre(x)
    except SSLZooError as e:
        assert one_line(e)
        ints = not dtype.startswith("float") and dtype != "bool"
        assert dtype == "bool" or c == 2 or vals.min() < 0 or vals.max() > (255 if ints else 1.0), str(e)
        return
    # accepted: the reference must agree on what was accepted and on the values
    ints = not dtype.startswith("float") and dtype != "bool"
    assert dtype != "bool" and c != 2
    assert vals.min() >= 0 and vals.max() <= (255 if ints else 1.0)
    assert out.shape == ((2,) if batch else ()) + (3, size, size) and torch.isfinite(out).all()
    if (h, w) == (size, size):  # no resize: exact reference
        v = vals / (255.0 if ints else 1.0)
        if c == 1:
            v = np.repeat(v, 3, axis=-3)
        elif c == 4:
            v = v[..., :3, :, :]
        ref = (v - np.array(PRE_MEAN).reshape(3, 1, 1)) / np.array(PRE_STD).reshape(3, 1, 1)
        assert np.allclose(out.numpy(), ref, atol=1e-4)


@SETTINGS
@given(mode=st.sampled_from(["L", "RGB", "RGBA", "P", "1", "LA", "I;16", "I", "F", "CMYK"]),
       h=st.integers(1, 6), w=st.integers(1, 6), hi=st.sampled_from([1, 255, 65535, 70000]))
def test_preprocess_pil_images(mode, h, w, hi):
    rng = np.random.default_rng(h * 11 + w)
    size = max(h, w)
    pre = Preprocess(resize=size, crop=size, mean=PRE_MEAN, std=PRE_STD)
    if mode in ("I;16", "I", "F"):
        hi16 = min(hi, 65535) if mode == "I;16" else hi
        a = rng.integers(0, hi16 + 1, (h, w))
        im = Image.fromarray(a.astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
        assert im.mode == mode
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    try:
        out = pre(im)
    except PixelError as e:
        assert one_line(e)
        assert mode == "F" or (mode == "I" and hi > 65535)
        return
    assert out.shape == (1, 3, size, size) and torch.isfinite(out).all()
    if mode in ("I;16", "I") and (h, w) == (size, size):
        v = np.floor(np.asarray(im).astype(np.float64) * 255 / 65535 + 0.5) / 255
        ref = (v[None] - np.array(PRE_MEAN).reshape(3, 1, 1)) / np.array(PRE_STD).reshape(3, 1, 1)
        assert np.allclose(out[0].numpy(), ref, atol=1e-5)


# ----------------------------------------------------------------------------- zoo folders

ARCH_VALUES = st.one_of(st.integers(-3, 6), st.sampled_from([0, 4, 65537, 4096, True, "4", 4.0, None, "cifar"]))
ARCH_KEYS = st.sampled_from(["arch", "stem", "stem_padding", "maxpool", "width", "in_chans", "expand_dim",
                             "widht", "depth", "in_chan"])


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from zoo.backbones import build_resnet
    from zoo.io import save_folder

    d = tmp_path_factory.mktemp("zoo") / "m"
    arch = {"arch": "resnet18", "stem": "cifar", "width": 4, "in_chans": 1}
    pre = {"resize": 12, "crop": 12, "mean": [0.5], "std": [0.5], "interpolation": "bilinear", "in_chans": 1}
    torch.manual_seed(0)
    save_folder(build_resnet(**arch).state_dict(), {"name": "tiny", "arch": arch, "feature_dim": 32,
                                                    "preprocess": pre}, d)
    return d


@SETTINGS
@given(changes=st.dictionaries(ARCH_KEYS, ARCH_VALUES, max_size=3), pretrained=st.booleans())
def test_model_folder_configs(tiny_weights, tmp_path_factory, changes, pretrained):
    import shutil

    from zoo.hub import create_model

    d = tmp_path_factory.mktemp("cfg") / "m"
    shutil.copytree(tiny_weights, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["arch"].update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    try:
        m = create_model(d, pretrained=pretrained)
    except SSLZooError as e:
        assert one_line(e)
        return
    a = cfg["arch"]
    # accepted only when every key is build_resnet's and every value valid (reference rules, written here)
    assert set(a) <= {"arch", "stem", "stem_padding", "maxpool", "width", "in_chans", "expand_dim"}
    assert a["arch"] == "resnet18" and a.get("stem", "imagenet") in ("imagenet", "cifar")
    assert all(type(a[k]) is int and a[k] >= (0 if k == "stem_padding" else 1) for k in
               ("width", "in_chans", "stem_padding", "expand_dim") if k in a and a[k] is not None)
    if pretrained:  # the weights fit only the shapes they were saved with (padding / max-pool have none)
        assert a["width"] == 4 and a["in_chans"] == 1 and a.get("stem") == "cifar" and a.get("expand_dim") is None
    width = a["width"]
    assert m.feature_dim == (a.get("expand_dim") or width * 8)


# ----------------------------------------------------------------------------- kNN on arbitrary ids

def knn_reference(tr_x, tr_y, te_x, k, T):
    """numpy float64 weighted cosine kNN on the raw ids; ties -> the smallest id."""
    a = tr_x / np.linalg.norm(tr_x, axis=1, keepdims=True)
    q = te_x / np.linalg.norm(te_x, axis=1, keepdims=True)
    sim = q @ a.T
    ids = sorted(set(tr_y.tolist()))
    out = []
    for row in sim:
        nn = np.argsort(-row, kind="stable")[:k]
        votes = {i: 0.0 for i in ids}
        for j in nn:
            votes[int(tr_y[j])] += np.exp((row[j] - row[nn[0]]) / T)
        best = max(votes.values())
        out.append(min(i for i, v in votes.items() if v == best))
    return np.array(out)


@SETTINGS
@given(ids=st.lists(st.integers(0, 10 ** 12), min_size=2, max_size=4, unique=True), n=st.integers(2, 30),
       k=st.integers(1, 40), seed=st.integers(0, 1000))
def test_knn_on_arbitrary_ids(ids, n, k, seed):
    rng = np.random.default_rng(seed)
    # well-separated similarities (integer grid directions), so float32 and float64 rank alike
    tr_x = rng.integers(-3, 4, (n, 4)).astype(np.float64) + np.array([0.5, 0, 0, 0])
    te_x = rng.integers(-3, 4, (7, 4)).astype(np.float64) + np.array([0.5, 0, 0, 0])
    tr_y = np.array(ids)[rng.integers(0, len(ids), n)]
    te_y = np.array(ids)[rng.integers(0, len(ids), 7)]
    sims = (te_x / np.linalg.norm(te_x, axis=1, keepdims=True)) @ (tr_x / np.linalg.norm(tr_x, axis=1,
                                                                                          keepdims=True)).T
    kk = min(k, n)
    srt = -np.sort(-sims, axis=1)
    if kk < n and np.any(np.isclose(srt[:, kk - 1], srt[:, kk], atol=1e-6)):
        return  # a tie at the k-th neighbour: which one is kept is not part of the protocol
    want = (knn_reference(tr_x, tr_y, te_x, kk, 0.5) == te_y).mean()
    r = knn_probe(tr_x.astype(np.float32), tr_y, te_x.astype(np.float32), te_y, k=k, temperature=0.5)
    assert r["k"] == kk and r["accuracy"] == pytest.approx(want, abs=1e-12)
