"""Generated image trees for tests, benchmarks and the GPU check: no download, same layout as the real thing.

:func:`write_jpeg_tree` writes a tiny ImageNet-layout (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``),
``folder:``-layout (``train/<class>/*.jpg``, ``test/<class>/*.jpg``) or unlabelled tree of JPEGs of
varied sizes. The content is a smooth class-coloured gradient plus low-frequency blobs and a little
pixel noise, so the JPEGs compress like photos (about 0.3-0.5 bytes per pixel at quality 90, not the
10x smaller files of flat colour) and a linear probe can tell the classes apart.

``odd_files=True`` adds, per split, the files that occur in the real ImageNet train set and must decode
like any other: a CMYK JPEG, a grayscale JPEG, a PNG named ``.JPEG``, and a 16-bit grayscale PNG.
:func:`write_bad_files` writes the ones that cannot be decoded (zero bytes, truncated JPEG, corrupt
JPEG, a text file named ``.JPEG``).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

__all__ = ["LAYOUTS", "synthetic_image", "write_jpeg_tree", "write_bad_files", "ODD_FILES", "BAD_FILES"]

LAYOUTS = ("imagenet", "folder", "unlabelled")
ODD_FILES = ("cmyk", "gray", "png_as_jpeg", "png16")
BAD_FILES = ("empty", "truncated", "corrupt", "not_image")


def synthetic_image(rng: np.random.Generator, width: int, height: int, cls: int = 0, classes: int = 1) -> np.ndarray:
    """A photo-like uint8 ``[height, width, 3]`` image whose dominant hue depends on ``cls``."""
    hue = 2 * np.pi * (cls + 0.5) / max(classes, 1)
    base = 128 + 90 * np.cos(hue + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]))  # class colour
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    grad = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)[..., None] * 60.0
    gh, gw = max(2, height // 48 + 2), max(2, width // 48 + 2)  # low-frequency blobs, bilinearly upsampled
    grid = rng.normal(0, 40, size=(gh, gw, 3)).astype(np.float32)
    fy = yy / max(height - 1, 1) * (gh - 1)
    fx = xx / max(width - 1, 1) * (gw - 1)
    y0, x0 = np.floor(fy).astype(int).clip(0, gh - 2), np.floor(fx).astype(int).clip(0, gw - 2)
    wy, wx = (fy - y0)[..., None], (fx - x0)[..., None]
    blobs = ((1 - wy) * ((1 - wx) * grid[y0, x0] + wx * grid[y0, x0 + 1])
             + wy * ((1 - wx) * grid[y0 + 1, x0] + wx * grid[y0 + 1, x0 + 1]))
    noise = rng.normal(0, 6, size=(height, width, 3)).astype(np.float32)
    return np.clip(base[None, None, :] + grad + blobs + noise, 0, 255).astype(np.uint8)


def _save(img, path: Path, fmt: str, **kw) -> None:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    path.write_bytes(buf.getvalue())


def _write_odd(folder: Path, rng, sizes, quality: int, ext: str, cls: int, classes: int) -> list:
    """The four odd files in ``folder`` (names start with ``odd_``)."""
    from PIL import Image

    out = []
    w, h = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
    rgb = Image.fromarray(synthetic_image(rng, w, h, cls, classes))
    p = folder / f"odd_cmyk{ext}"
    _save(rgb.convert("CMYK"), p, "JPEG", quality=quality)
    out.append(p)
    p = folder / f"odd_gray{ext}"
    _save(rgb.convert("L"), p, "JPEG", quality=quality)
    out.append(p)
    p = folder / f"odd_png_as_jpeg{ext}"  # a PNG under a JPEG name, as in ImageNet's train set
    _save(rgb, p, "PNG")
    out.append(p)
    gray16 = (np.asarray(rgb.convert("L"), dtype=np.uint32) * 257).astype(np.uint16)  # full 0..65535 range
    p = folder / "odd_png16.png"
    _save(Image.fromarray(gray16), p, "PNG")
    out.append(p)
    return out


def write_jpeg_tree(root, classes: int = 4, per_class: int = 8, sizes=(60, 500), seed: int = 0, quality: int = 90,
                    layout: str = "imagenet", odd_files: bool = False, eval_per_class: int | None = None) -> list:
    """Write a tree of JPEGs under ``root`` and return the paths written (in writing order).

    ``layout``: ``"imagenet"`` (``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``, wnids ``n0100000c``,
    what ``imagenet --root ROOT`` reads), ``"folder"`` (``train/<class>/*.jpg`` and ``test/<class>/*.jpg``
    with classes ``class0..``, what ``folder:ROOT`` reads) or ``"unlabelled"`` (``classes * per_class``
    images in ``classes`` nested sub-folders ``part0..`` with no split level: an unlabelled ``folder:``).
    Each image has a random width and height in ``sizes`` (inclusive) and quality ``quality``; the
    evaluation split gets ``eval_per_class`` images per class (default ``max(2, per_class // 2)``).
    ``odd_files``: also a CMYK JPEG, a grayscale JPEG, a PNG named like a JPEG and a 16-bit PNG in the
    first class folder of every split (unlabelled: in ``part0``). Same arguments, same bytes.
    """
    from PIL import Image

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    lo, hi = int(sizes[0]), int(sizes[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"sizes must be (min, max) with 1 <= min <= max, not {sizes!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_eval = max(2, per_class // 2) if eval_per_class is None else int(eval_per_class)
    if layout == "imagenet":
        names, ext, splits = [f"n{1000000 + c:08d}" for c in range(classes)], ".JPEG", [("train", per_class), ("val", n_eval)]
    elif layout == "folder":
        names, ext, splits = [f"class{c}" for c in range(classes)], ".jpg", [("train", per_class), ("test", n_eval)]
    else:
        names, ext, splits = [f"part{c}" for c in range(classes)], ".jpg", [("", per_class)]
    written = []
    for split, n in splits:
        for c, name in enumerate(names):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
                p = folder / f"{name}_{split or 'img'}_{j:05d}{ext}"
                _save(Image.fromarray(synthetic_image(rng, w, h, c, classes)), p, "JPEG", quality=quality)
                written.append(p)
            if odd_files and c == 0:
                written += _write_odd(folder, rng, (lo, hi), quality, ext, c, classes)
    return written


def write_bad_files(folder, ext: str = ".JPEG", seed: int = 0) -> dict:
    """Write the undecodable files of :data:`BAD_FILES` into ``folder``: ``{kind: path}``. A zero-byte
    file, a JPEG cut to half its bytes, a JPEG whose bytes after the first 20 are random, and a text
    file with an image extension."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(synthetic_image(rng, 80, 64)).save(buf, "JPEG", quality=90)
    good = buf.getvalue()
    out = {k: folder / f"bad_{k}{ext}" for k in BAD_FILES}
    out["empty"].write_bytes(b"")
    out["truncated"].write_bytes(good[: len(good) // 2])
    out["corrupt"].write_bytes(good[:20] + rng.integers(0, 256, size=len(good) - 20, dtype=np.uint8).tobytes())
    out["not_image"].write_bytes(b"this is a text file, not an image\n")
    return out
