"""File-backed data (issue 18, eval side): the decode policy, the generated JPEG trees, unlabelled
folders, and feature extraction with DataLoader workers."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from eval.datasets import DatasetError, decode_bytes, image_size, load_split
from eval.synthetic import BAD_FILES, synthetic_image, write_bad_files, write_jpeg_tree


def _jpeg(arr, mode=None, quality=95) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    (im.convert(mode) if mode else im).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# ----------------------------------------------------------------------------- decode policy


def test_decode_rgb_jpeg_and_header_size():
    arr = synthetic_image(np.random.default_rng(0), 120, 90)
    data = _jpeg(arr)
    assert image_size(data, "a.jpg") == (120, 90)
    out = decode_bytes(data, "a.jpg")
    assert out.dtype == np.uint8 and out.shape == (90, 120, 3) and out.flags["C_CONTIGUOUS"]
    assert np.abs(out.astype(int) - arr.astype(int)).mean() < 4  # JPEG q95 of a smooth image


def test_cmyk_jpeg_decodes_close_to_the_rgb_original():
    arr = synthetic_image(np.random.default_rng(1), 96, 80)
    rgb = decode_bytes(_jpeg(arr), "rgb.jpg")
    cmyk = decode_bytes(_jpeg(arr, "CMYK"), "cmyk.jpg")
    assert cmyk.shape == rgb.shape == (80, 96, 3)
    assert np.abs(cmyk.astype(int) - rgb.astype(int)).mean() < 6


def test_grayscale_jpeg_modes():
    arr = synthetic_image(np.random.default_rng(2), 64, 48)
    data = _jpeg(arr, "L")
    assert decode_bytes(data, "g.jpg", mode=None).shape == (48, 64, 1)
    rgb = decode_bytes(data, "g.jpg", mode="RGB")
    assert rgb.shape == (48, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert decode_bytes(_jpeg(arr), "c.jpg", mode="L").shape == (48, 64, 1)


def test_png_named_jpeg_decodes_by_content():
    arr = synthetic_image(np.random.default_rng(3), 40, 30)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    out = decode_bytes(buf.getvalue(), "n0001_1.JPEG", min_size=(8, 8))
    assert np.array_equal(out, arr)  # lossless, full size (draft applies to JPEGs only)


def test_16_bit_png_is_scaled_not_clipped():
    ramp = (np.linspace(0, 65535, 64 * 8).reshape(8, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    out = decode_bytes(buf.getvalue(), "deep.png", mode=None)
    assert out.shape == (8, 64, 1)
    expect = ((ramp.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    assert np.array_equal(out[..., 0], expect)
    assert out.max() == 255 and len(np.unique(out)) > 200  # scaled over the whole range, not clipped at 255


def test_draft_decodes_jpeg_at_reduced_size_but_at_least_min_size():
    arr = synthetic_image(np.random.default_rng(4), 480, 400)
    data = _jpeg(arr)
    small = decode_bytes(data, "big.jpg", min_size=(96, 96))
    assert small.shape == (100, 120, 3)  # 1/4 scale: 1/8 (60 x 50) would be smaller than 96
    assert decode_bytes(data, "big.jpg", min_size=(50, 50)).shape == (50, 60, 3)  # 1/8
    assert decode_bytes(data, "big.jpg", min_size=(400, 10)).shape == (400, 480, 3)  # width forbids any scaling
    full = decode_bytes(data, "big.jpg").astype(np.float32)
    ref = full.reshape(100, 4, 120, 4, 3).mean(axis=(1, 3))
    assert np.abs(small.astype(np.float32) - ref).mean() < 4  # the same picture, averaged


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_files_raise_one_line_naming_the_file(kind, tmp_path):
    path = write_bad_files(tmp_path)[kind]
    with pytest.raises(DatasetError) as e:
        decode_bytes(path.read_bytes(), str(path))
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and "replace or remove it" in msg
    if kind == "empty":
        assert "empty (0 bytes)" in msg
    if kind in ("corrupt", "not_image", "empty"):  # no header to read either
        with pytest.raises(DatasetError, match="bad_"):
            image_size(path.read_bytes(), str(path))


# ----------------------------------------------------------------------------- generated trees


def test_write_jpeg_tree_imagenet_layout_with_odd_files(tmp_path):
    paths = write_jpeg_tree(tmp_path, classes=3, per_class=4, sizes=(60, 200), odd_files=True)
    assert len(paths) == 3 * 4 + 3 * 2 + 2 * 4
    tr = load_split("imagenet", "train", root=str(tmp_path))
    va = load_split("imagenet", "val", root=str(tmp_path))
    assert len(tr) == 3 * 4 + 4 and len(va) == 3 * 2 + 4 and tr.classes == ["n01000000", "n01000001", "n01000002"]
    sizes = set()
    for i in range(len(tr)):
        data = tr.read_bytes(i)
        w, h = image_size(data, tr.describe(i))
        assert 60 <= w <= 200 and 60 <= h <= 200
        sizes.add((w, h))
        assert tuple(tr.get(i).shape) == (3, h, w)  # every odd file decodes to RGB at its size
    assert len(sizes) > 5
    big = [p for p in paths if p.suffix == ".JPEG" and "odd" not in p.name]
    jpeg_bytes = sum(p.stat().st_size for p in big)
    pixels = sum(np.prod(image_size(p.read_bytes(), p.name)) for p in big)
    assert 0.1 < jpeg_bytes / pixels < 1.5  # photo-like compression, not flat colour
    again = write_jpeg_tree(tmp_path / "again", classes=3, per_class=4, sizes=(60, 200), odd_files=True)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]  # same seed, same bytes


def test_write_jpeg_tree_folder_and_unlabelled_layouts(tmp_path):
    write_jpeg_tree(tmp_path / "f", classes=2, per_class=3, sizes=(32, 48), layout="folder")
    tr, te = load_split(f"folder:{tmp_path / 'f'}", "train"), load_split(f"folder:{tmp_path / 'f'}", "test")
    assert tr.targets.tolist() == [0, 0, 0, 1, 1, 1] and te.targets.tolist() == [0, 0, 1, 1]
    paths = write_jpeg_tree(tmp_path / "u", classes=2, per_class=3, sizes=(32, 48), layout="unlabelled")
    assert len(paths) == 6 and all(p.parent.parent == tmp_path / "u" for p in paths)
    with pytest.raises(ValueError, match="layout must be one of"):
        write_jpeg_tree(tmp_path / "x", layout="coco")


# ----------------------------------------------------------------------------- unlabelled folders


def test_unlabelled_folder_flat_and_nested(tmp_path):
    from eval.datasets import is_unlabelled_folder

    write_jpeg_tree(tmp_path / "u", classes=2, per_class=3, sizes=(20, 40), layout="unlabelled")
    rng = np.random.default_rng(0)
    Image.fromarray(synthetic_image(rng, 30, 20)).save(tmp_path / "u" / "top.png")  # flat and nested together
    (tmp_path / "u" / "part1" / "deeper").mkdir()
    Image.fromarray(synthetic_image(rng, 30, 20)).save(tmp_path / "u" / "part1" / "deeper" / "z.JPG")
    (tmp_path / "u" / "part0" / "notes.txt").write_text("not an image, ignored")
    (tmp_path / "u" / ".hidden").mkdir()
    Image.fromarray(synthetic_image(rng, 30, 20)).save(tmp_path / "u" / ".hidden" / "h.png")
    assert is_unlabelled_folder(tmp_path / "u")
    s = load_split(f"folder:{tmp_path / 'u'}", "train")
    rel = [str(p).removeprefix(str(tmp_path / "u") + "/") for p in s.paths]
    assert rel == ["part0/part0_img_00000.jpg", "part0/part0_img_00001.jpg", "part0/part0_img_00002.jpg",
                   "part1/deeper/z.JPG", "part1/part1_img_00000.jpg", "part1/part1_img_00001.jpg",
                   "part1/part1_img_00002.jpg", "top.png"]
    assert s.targets.dtype == np.int64 and (s.targets == -1).all() and s.classes == []
    assert s.get(7).shape == (3, 20, 30) and len(s.fingerprint()) == 64
    for split in ("test", "val"):
        with pytest.raises(DatasetError, match=r"is unlabelled .* probes need labels") as e:
            load_split(f"folder:{tmp_path / 'u'}", split)
        assert "\n" not in str(e.value)


def test_labelled_and_unlabelled_folder_rule(tmp_path):
    from eval.datasets import is_unlabelled_folder

    write_jpeg_tree(tmp_path / "f", classes=2, per_class=2, sizes=(20, 30), layout="folder")
    assert not is_unlabelled_folder(tmp_path / "f")
    (tmp_path / "e").mkdir()
    with pytest.raises(DatasetError, match="no images .* an unlabelled folder holds images at any depth"):
        load_split(f"folder:{tmp_path / 'e'}")


# ----------------------------------------------------------------------------- evaluation from file-backed data


@pytest.fixture
def jpeg_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLZOO_HOME", str(tmp_path / "home"))
    root = tmp_path / "imgs"
    write_jpeg_tree(root, classes=2, per_class=6, sizes=(30, 80), layout="folder", odd_files=True)
    return root


def _model():
    from zoo.hub import create_model

    torch.manual_seed(0)
    return create_model("simclr_resnet18w16_fashion_mnist", pretrained=False)


def test_features_identical_with_0_and_2_workers_in_memory_and_in_a_store(jpeg_folder, tmp_path):
    from eval.featstore import extract_to_store
    from eval.features import extract

    split = load_split(f"folder:{jpeg_folder}", "train")
    model = _model()
    f0, y0 = extract(model, split, batch_size=3, cache=False, workers=0)
    f2, y2 = extract(model, split, batch_size=3, cache=False, workers=2)
    assert f0.shape == (len(split), 128) and torch.equal(f0, f2) and torch.equal(y0, y2)
    st = extract_to_store(model, split, tmp_path / "store", batch_size=3, workers=2)
    fx, fy = st.load()
    assert torch.equal(fx, f0) and torch.equal(fy, y0)


def test_evaluate_folder_with_feature_store_and_workers(jpeg_folder, tmp_path):
    from eval.run import evaluate
    from zoo.backbones import build_resnet
    from zoo.io import save_folder

    arch = {"arch": "resnet18", "stem": "cifar", "width": 4, "in_chans": 3}
    pre = {"resize": 24, "crop": 24, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear", "in_chans": 3}
    torch.manual_seed(0)
    save_folder(build_resnet(**arch).state_dict(), {"name": "tiny", "arch": arch, "feature_dim": 32,
                                                    "preprocess": pre}, tmp_path / "m")
    kw = dict(probes=("knn", "linear"), seeds=(0,), save=False, force=True, batch_size=4)
    mem = evaluate(str(tmp_path / "m"), f"folder:{jpeg_folder}", workers=0, **kw)
    disk = evaluate(str(tmp_path / "m"), f"folder:{jpeg_folder}", workers=2, feature_store=True, **kw)
    assert [r["protocol"] for r in disk] == [r["protocol"] for r in mem] and len(mem) >= 2
    assert [r["accuracy_mean"] for r in disk] == pytest.approx([r["accuracy_mean"] for r in mem], abs=1e-4)
    assert list((tmp_path / "home" / "featstores").iterdir())  # the features went to disk


def test_a_bad_file_in_a_worker_is_one_line_naming_it(jpeg_folder):
    from eval.features import extract

    files = write_bad_files(jpeg_folder / "test" / "class1", ext=".jpg")
    bad = files.pop("truncated")
    for other in files.values():
        other.unlink()
    split = load_split(f"folder:{jpeg_folder}", "test")
    with pytest.raises(DatasetError) as e:
        extract(_model(), split, batch_size=2, cache=False, workers=2)
    msg = str(e.value)
    assert msg.startswith(f"{bad} is not a readable image") and "\n" not in msg and "Traceback" not in msg
