"""zoo.preprocess: what Preprocess and the data set readers accept, and the pixel values they give
(issue 17: 16-bit images were clipped to black / white, 0..255 floats and int64 tensors were used
unscaled, a single PIL image did not fit the model)."""
import numpy as np
import pytest
import torch
from PIL import Image

from zoo.preprocess import PixelError, Preprocess, as_pixels, pil_to_uint8

PRE = Preprocess(resize=8, crop=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _ref(arr8: np.ndarray) -> torch.Tensor:
    """Independent reference: uint8 H x W x 3 at the crop size -> (x / 255 - 0.5) / 0.25."""
    return torch.from_numpy((arr8.astype(np.float64) / 255.0 - 0.5) / 0.25).permute(2, 0, 1).float()


def test_sixteen_bit_images_are_scaled_not_clipped():
    a16 = np.random.default_rng(0).integers(0, 65536, (8, 8), dtype=np.uint16)
    want8 = np.floor(a16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    for im in (Image.fromarray(a16), Image.fromarray(a16.astype(np.int32), mode="I")):
        got = pil_to_uint8(im)
        assert got.shape == (1, 8, 8) and torch.equal(got[0], torch.from_numpy(want8)), im.mode
        assert int(got.max()) > 1 and len(torch.unique(got)) > 2  # PIL's convert("L") gives 0 / 255 only
    with pytest.raises(PixelError, match="mode-F"):
        pil_to_uint8(Image.fromarray(np.zeros((2, 2), np.float32)))
    with pytest.raises(PixelError, match=r"outside 16 bits"):
        pil_to_uint8(Image.fromarray(np.full((2, 2), 70000, np.int32), mode="I"))


def test_single_pil_image_list_and_batch():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x = PRE(Image.fromarray(a))
    assert x.shape == (1, 3, 8, 8)  # the README's model(model.preprocess(image)) fits the model
    assert torch.allclose(x[0], _ref(a), atol=1e-6)
    b = PRE([Image.fromarray(a), torch.from_numpy(a).permute(2, 0, 1)])
    assert b.shape == (2, 3, 8, 8) and torch.equal(b[0], b[1]) and torch.equal(b[0], x[0])
    batch = PRE(torch.from_numpy(np.stack([a, a])).permute(0, 3, 1, 2))
    assert torch.equal(batch, b)
    assert PRE(Image.fromarray(a).convert("P")).shape == (1, 3, 8, 8)


def test_tensor_dtypes_and_ranges():
    a = np.random.default_rng(2).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    u8 = PRE(torch.from_numpy(a))
    assert torch.equal(PRE(torch.from_numpy(a).to(torch.int64)), u8)  # 8-bit values in int64: same pixels
    assert torch.allclose(PRE(torch.from_numpy(a).float() / 255), u8, atol=1e-6)
    if hasattr(torch, "uint16"):
        assert torch.allclose(PRE(torch.from_numpy(a.astype(np.int32) * 257).to(torch.uint16)), u8, atol=1e-5)
    for bad, msg in ((torch.from_numpy(a).float(), r"must lie in \[0, 1\].*divide by 255"),
                     (torch.from_numpy(a).to(torch.int64) * 100, r"int64 images must hold 8-bit values 0\.\.255"),
                     (torch.full((3, 4, 4), float("nan")), "NaN"),
                     (torch.ones(3, 4, 4, dtype=torch.bool), "dtype bool"),
                     (torch.zeros(3, 0, 4, dtype=torch.uint8), "no pixels"),
                     (torch.zeros(4, 4, dtype=torch.uint8), r"expected an image \[C,H,W\]")):
        with pytest.raises(PixelError, match=msg):
            PRE(bad)
    assert as_pixels(torch.zeros(1, dtype=torch.uint8)).dtype == torch.uint8


def test_folder_reader_scales_sixteen_bit_files(tmp_path):
    from eval.datasets import load_folder

    a16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(a16).save(tmp_path / split / c / "0.png")
            Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / split / c / "1.tif")
    s = load_folder(tmp_path, "train")
    want = np.floor(a16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    assert torch.equal(s.get(0)[0], torch.from_numpy(want))
    from eval.datasets import DatasetError

    with pytest.raises(DatasetError, match=r"1\.tif: a mode-F \(32-bit float\) image"):
        s.get(1)
