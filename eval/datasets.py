"""Dataset catalogue: one spec string -> an in-memory or file-backed labelled image split.

Specs: catalogue names (``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``, ``stl10``,
``svhn``, ``tinyimagenet``, ``imagenet``), ``folder:PATH`` (``PATH/train``, ``PATH/test`` and
optionally ``PATH/val``, one sub-folder per class, see :func:`load_folder`) and ``npz:PATH`` (arrays
``{split}_image`` uint8 ``[N,H,W(,C)]`` + ``{split}_label``, or ``image`` + ``label`` for the train
split only, see :func:`load_npz`) and ``pack:PATH`` (shards of encoded images written by ``sslzoo
pack``, see :func:`load_pack` and ``docs/packs.md``). :func:`decode_bytes` is the one decode policy of
file-backed data.

Every loader reads the upstream on-disk format itself (IDX, CIFAR pickle batches, STL10 binary,
SVHN .mat, image folders), so nothing depends on torchvision's dataset classes except the optional
download. A dataset that is missing gets a one-line :class:`DatasetNotFound` saying where to put it.
"""
from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zoo.base import SSLZooError, atomic_write_text, did_you_mean, home, one_line
from zoo.preprocess import PixelError, pil_to_uint8

log = logging.getLogger(__name__)


class DatasetError(SSLZooError, ValueError):
    """Bad dataset spec or malformed files; the message is one line saying what to do.

    Control characters that came in with user input (a path or spec holding a newline) are shown
    escaped, so the message stays one line whatever the input was.
    """

    def __init__(self, message="", *args):
        if isinstance(message, str):
            message = one_line(message)
        super().__init__(message, *args)


class DatasetNotFound(DatasetError):
    """The dataset is not on disk and could not be downloaded."""


def data_home() -> Path:
    """Root for datasets: ``$SSLZOO_DATA`` or ``~/.cache/sslzoo/data``."""
    return Path(os.environ.get("SSLZOO_DATA") or Path.home() / ".cache" / "sslzoo" / "data").expanduser()


@dataclass
class ImageSplit:
    """One labelled split. In-memory splits hold ``images`` as uint8 ``[N, H, W, C]``;
    file-backed splits hold ``paths`` and decode on access (``get``)."""

    name: str
    split: str
    targets: np.ndarray
    classes: list
    images: np.ndarray | None = None
    paths: list | None = None
    source: str = ""
    mode: str | None = None  # file-backed only: "RGB" gives 3 channels; None: 1 for grayscale files, 3 for colour
    pack: "PackReader | None" = None  # a packed split (pack:PATH): ``paths`` are the packed file names
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def channels(self) -> int:
        if self.images is not None:
            return self.images.shape[-1]
        return self.get(0).shape[0]

    def get(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 ``[C, H, W]``. Files are decoded by :func:`zoo.preprocess.pil_to_uint8`:
        16-bit images (``I;16``, ``I``) scaled to 8 bits, not clipped; 32-bit float (``F``) refused;
        grayscale (``L``, ``1``, ``LA``, 16-bit) -> 1 channel, colour -> 3 (alpha dropped)."""
        if self.images is not None:
            return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)
        return torch.from_numpy(decode_bytes(self.read_bytes(i), self.describe(i), mode=self.mode)).permute(2, 0, 1)

    def describe(self, i: int) -> str:
        """The name of image ``i`` in messages: its path (a packed split: the pack and the file name)."""
        if self.paths is None:
            return f"{self.name}/{self.split} image {i}"
        if self.pack is not None:
            return f"pack:{self.pack.root} {self.paths[i]}"
        return str(self.paths[i])

    def read_bytes(self, i: int) -> bytes:
        """The encoded bytes of image ``i`` as stored (file-backed splits only): what a decoder in a
        DataLoader worker reads, so that it can decode at reduced size (JPEG draft mode)."""
        if self.paths is None:
            raise DatasetError(f"{self.name}/{self.split} is held in memory; it has no encoded bytes (use .get(i))")
        if self.pack is not None:
            return self.pack.read(i)
        with open(self.paths[i], "rb") as f:
            return f.read()

    def as_tensor(self) -> torch.Tensor:
        """All images as one uint8 ``[N, C, H, W]`` tensor (in-memory splits only)."""
        if self.images is None:
            raise DatasetError(f"{self.name}/{self.split} is file-backed; iterate with .get(i)")
        return torch.from_numpy(self.images).permute(0, 3, 1, 2)

    def images_tensor(self, desc: str | None = None, mismatch=None) -> torch.Tensor:
        """All images as one uint8 ``[N, C, H, W]`` tensor, in-memory and file-backed splits alike.

        In-memory splits: :meth:`as_tensor` (a view, no copy). File-backed splits: every image is
        decoded (:meth:`get`) into one tensor, with a progress bar when ``desc`` is given; they must
        all have image 0's size, otherwise the exception ``mismatch(i, shape_i, shape_0)`` returns is
        raised (default: a :class:`DatasetError`)."""
        if self.images is not None:
            return self.as_tensor()
        from tqdm.auto import tqdm

        first = self.get(0)
        out = torch.empty((len(self),) + tuple(first.shape), dtype=torch.uint8)
        idx = range(len(self))
        for i in (idx if desc is None else tqdm(idx, desc=desc, unit="img", leave=False)):
            im = first if i == 0 else self.get(i)
            if im.shape != first.shape:
                if mismatch is None:
                    raise DatasetError(f"{self.name}/{self.split}: image {i} is {tuple(im.shape)}, image 0 "
                                       f"{tuple(first.shape)}; one tensor needs one image size (resize the data set "
                                       f"first)")
                raise mismatch(i, tuple(im.shape), tuple(first.shape))
            out[i] = im
        return out

    def batch(self, start: int, stop: int, transform) -> torch.Tensor:
        """Images ``start .. stop - 1`` through ``transform``, stacked: an in-memory split hands the
        uint8 batch ``[B, C, H, W]`` to ``transform`` in one call, a file-backed split image by image
        (``[C, H, W]`` each; their sizes may differ)."""
        if self.images is not None:
            return transform(self.as_tensor()[start:stop])
        return torch.stack([transform(self.get(j)) for j in range(start, stop)])

    def fingerprint(self) -> str:
        """sha256 over the content and the labels: the cache key of the data. In-memory splits hash
        their pixels; file-backed splits the sha256 of every file's bytes (:func:`file_digests`, cached
        by path, size, mtime and ctime), its name and the decode mode -- so an image swapped in place
        for another of the same size changes the fingerprint. A packed split takes the sha256 of every
        file from its index (nothing is re-hashed): the same fingerprint as the tree it was packed from."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            if self.images is not None:
                h.update(str(self.images.shape).encode())
                h.update(np.ascontiguousarray(self.images).tobytes())
            else:
                h.update(f"mode={self.mode}\n".encode())
                digests = (self.pack.digests() if self.pack is not None
                           else file_digests(self.paths, desc=f"{self.name}/{self.split}: hashing"))
                for p, d in zip(self.paths, digests):
                    h.update(f"{os.path.basename(p)}:{d}\n".encode())
            h.update(np.asarray(self.targets, dtype=np.int64).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def _decode_error(name: str, data: bytes, e: BaseException) -> DatasetError:
    if not data:
        return DatasetError(f"{name} is empty (0 bytes); replace or remove it")
    if type(e).__name__ == "UnidentifiedImageError":
        return DatasetError(f"{name} is not a readable image (UnidentifiedImageError: cannot identify image file "
                            f"{str(name)!r}); replace or remove it")
    return DatasetError(f"{name} is not a readable image ({type(e).__name__}: {_one_line(e)}); replace or remove it")


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """``(width, height)`` of the encoded image ``data``, read from its header only (nothing is
    decoded). ``name`` (a path or file name) is what a :class:`DatasetError` names when ``data`` is not an
    image."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return tuple(im.size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL's open errors
        raise _decode_error(name, data, e) from None


def decode_bytes(data: bytes, name: str, mode: str | None = "RGB",
                 min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode the encoded image ``data`` to uint8 ``[H, W, C]``; the one decode policy of file-backed data.

    Pixels go through :func:`zoo.preprocess.pil_to_uint8`: CMYK (also Adobe's inverted CMYK JPEGs) and
    YCbCr -> RGB, palette -> RGB, 16-bit -> 8-bit scaled (not clipped), 32-bit float refused; the
    format is told from the bytes, not from ``name``'s extension (a PNG named ``.JPEG`` decodes as a
    PNG). Alpha is dropped. ``mode="RGB"`` gives 3 channels (grayscale repeated); ``mode=None`` gives 1
    for grayscale files, 3 for colour; ``mode="L"`` gives 1 (colour converted with PIL's luma weights).

    ``min_size=(width, height)``: the caller needs at least this size; a JPEG is then decoded at the
    smallest DCT scale (1/2, 1/4, 1/8: PIL draft mode) whose result is still at least that large in
    both sides, so a 4000 px photo is never decoded at full size for a 96 px crop. The result may be
    smaller than the file's :func:`image_size` by up to 8x (divide to map crop boxes); other formats
    decode at full size. A zero-byte, truncated, corrupt or non-image ``data`` raises one
    :class:`DatasetError` line naming ``name``.
    """
    import io

    from PIL import Image

    if mode not in (None, "RGB", "L"):
        raise DatasetError(f"decode mode must be 'RGB', 'L' or None, not {mode!r}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if min_size is not None and im.format == "JPEG":
                w, h = int(min_size[0]), int(min_size[1])
                if w > 0 and h > 0:
                    im.draft(None, (w, h))  # DCT scaling only: size >= (w, h), the mode unchanged
            x = pil_to_uint8(im)  # 16-bit scaled (not clipped), palette / CMYK / 1-bit converted, float refused
    except PixelError as e:
        raise DatasetError(f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL's decode errors
        raise _decode_error(name, data, e) from None
    arr = x.permute(1, 2, 0).numpy()  # H W C, as decoded
    if arr.shape[2] == 4:  # alpha dropped, as PIL's convert("RGB") does
        arr = arr[:, :, :3]
    if mode == "RGB" and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif mode == "L" and arr.shape[2] == 3:  # ITU-R 601-2 luma, PIL's convert("L")
        arr = ((arr[:, :, 0:1].astype(np.uint32) * 19595 + arr[:, :, 1:2].astype(np.uint32) * 38470
                + arr[:, :, 2:3].astype(np.uint32) * 7471 + 0x8000) >> 16).astype(np.uint8)
    return np.ascontiguousarray(arr)


def default_workers() -> int:
    """Decode worker processes when none are asked for: ``min(4, CPUs available to this process)``."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(0, min(4, n))


def _file_key(st: os.stat_result) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def file_digests(paths, desc: str | None = None) -> list[str]:
    """sha256 of every file in ``paths`` (in order), with an index in ``$SSLZOO_HOME/file-hashes``:
    a file whose size, mtime, ctime and inode are unchanged since it was hashed is not read again
    (replacing a file's bytes, even with ``cp -p``, changes its ctime). One index per folder."""
    paths = [os.path.abspath(p) for p in paths]
    by_dir: dict = {}
    for p in paths:
        by_dir.setdefault(os.path.dirname(os.path.dirname(p)), []).append(p)
    digests = {}
    todo_total = 0
    plans = []
    for root, ps in by_dir.items():
        index_path = home() / "file-hashes" / f"{hashlib.sha256(root.encode()).hexdigest()[:24]}.json"
        try:
            index = json.loads(index_path.read_text())
            if not isinstance(index, dict):
                index = {}
        except (OSError, ValueError):
            index = {}
        todo = []
        for p in ps:
            key = _file_key(os.stat(p))
            rec = index.get(p)
            if isinstance(rec, list) and len(rec) == 2 and rec[0] == key:
                digests[p] = rec[1]
            else:
                todo.append((p, key))
        todo_total += len(todo)
        plans.append((index_path, index, todo))
    if todo_total:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo_total, desc=desc, unit="file", leave=False, disable=desc is None or todo_total < 1000)
        for index_path, index, todo in plans:
            for p, key in todo:
                with open(p, "rb") as f:
                    digests[p] = hashlib.file_digest(f, "sha256").hexdigest()
                index[p] = [key, digests[p]]
                bar.update(1)
            if todo:
                try:
                    atomic_write_text(index_path, json.dumps(index, sort_keys=True, separators=(",", ":")))
                except OSError as e:  # a read-only home: hash again next time, the result is the same
                    log.warning(f"cannot write the file-hash index {index_path} ({e.strerror}); files will be "
                                f"hashed again next time")
        bar.close()
    return [digests[p] for p in paths]


# ----------------------------------------------------------------------------- IDX (MNIST family)

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic ``0x0000 <dtype> <ndim>``, big-endian dims."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = bytearray(f.read())  # writable, so torch.from_numpy on the pixels does not warn
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic); re-download it")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.get(data[2])
    if dtype is None:
        raise DatasetError(f"{path}: unknown IDX dtype code {data[2]:#x}")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated ({arr.size} values, header says {int(np.prod(dims))}); re-download it")
    return arr.reshape(dims)


def _find_idx(dirs, stem):
    for d in dirs:
        for name in (stem, stem + ".gz"):
            p = Path(d) / name
            if p.is_file():
                return p
    return None


def _load_idx_dataset(name, split, root, download, debian_dir, tv_name, classes):
    if split not in _IDX_FILES:
        raise DatasetError(f"{name} has splits train and test, not {split!r}")
    base = Path(root) if root else data_home() / name
    dirs = [base, base / tv_name / "raw", base / "raw"]
    if not root:  # an explicit root is the only place looked at
        dirs += [data_home() / name, data_home() / tv_name / "raw"]
    if debian_dir and not root:
        dirs.append(Path(debian_dir))
    img_stem, lbl_stem = _IDX_FILES[split]
    img, lbl = _find_idx(dirs, img_stem), _find_idx(dirs, lbl_stem)
    if (img is None or lbl is None) and download:
        import torchvision

        getattr(torchvision.datasets, tv_name)(str(base), train=(split == "train"), download=True)
        img, lbl = _find_idx(dirs, img_stem), _find_idx(dirs, lbl_stem)
    if img is None or lbl is None:
        hint = " or `apt-get install dataset-fashion-mnist`" if debian_dir and not root else ""
        raise DatasetNotFound(
            f"{name} {split} not found: put {img_stem}.gz and {lbl_stem}.gz in {base}{hint}, or pass --download")
    images, labels = read_idx(img), read_idx(lbl)
    if images.ndim != 3 or len(images) != len(labels):
        raise DatasetError(f"{img} / {lbl}: expected N x H x W images and N labels")
    return ImageSplit(name, split, labels.astype(np.int64), list(classes), images=images[..., None],
                      source=str(img.parent))


def load_fashion_mnist(split="train", root=None, download=False):
    return _load_idx_dataset("fashion-mnist", split, root, download, "/usr/share/datasets/fashion-mnist",
                             "FashionMNIST", FASHION_CLASSES)


def load_mnist(split="train", root=None, download=False):
    return _load_idx_dataset("mnist", split, root, download, None, "MNIST", MNIST_CLASSES)


# ----------------------------------------------------------------------------- shared helpers

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


def _one_line(err) -> str:
    return " ".join(str(err).split())


def _subdirs(d: Path) -> list:
    """Visible sub-folder names of ``d``, sorted."""
    return sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))


def _image_files(d: Path) -> list:
    """Image files directly in ``d`` (extension matched case-insensitively), sorted by name."""
    return sorted(e.path for e in os.scandir(d) if e.is_file() and not e.name.startswith(".")
                  and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS)


def _find_dir(candidates, required):
    """The first candidate folder holding every path in ``required``, or None."""
    for d in candidates:
        if all((Path(d) / r).exists() for r in required):
            return Path(d)
    return None


def _scan_class_tree(split_dir: Path, what: str, classes: list, layout: str):
    """``split_dir/<class>/<image>`` -> (paths, int64 targets) indexed by ``classes`` (the train
    classes). Every class needs at least one image; a class folder that is not a train class is an error."""
    index = {c: i for i, c in enumerate(classes)}
    found = _subdirs(split_dir)
    unknown = [c for c in found if c not in index]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise DatasetError(f"{split_dir}: class folder {unknown[0]!r}{more} is not a class of train/; "
                           f"{what} classes must be train classes ({layout})")
    files = {c: (_image_files(split_dir / c) if c in found else []) for c in classes}
    if not any(files.values()):
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTS)}) in {split_dir}/<class>/: the layout is {layout}")
    paths, targets = [], []
    for c in classes:
        if not files[c]:
            raise DatasetError(f"class {c!r} has no {what} images (expected some in {split_dir / c}; layout {layout})")
        paths += files[c]
        targets += [index[c]] * len(files[c])
    return paths, np.asarray(targets, dtype=np.int64)


# ----------------------------------------------------------------------------- folder:PATH and npz:PATH


def list_images(root) -> list[str]:
    """Every image file below ``root`` (suffixes :data:`IMAGE_EXTS`, case-insensitive; hidden files and
    folders skipped), recursively, sorted by relative path (folder by folder, so a file's position
    does not depend on the file system's listing order)."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTS:
                found.append(os.path.relpath(os.path.join(dirpath, f), root))
    found.sort(key=lambda p: Path(p).parts)
    return [str(root / p) for p in found]


FOLDER_SPLITS = ("train", "test", "val")


def is_unlabelled_folder(root) -> bool:
    """The rule that tells the two ``folder:`` layouts apart: a folder with none of the sub-folders
    ``train/``, ``test/``, ``val/`` is unlabelled (every image below it, at any depth, label -1); a
    folder with any of them is the labelled layout (``train/`` and ``test/``, one sub-folder per class)."""
    root = Path(root)
    return root.is_dir() and not any((root / s).is_dir() for s in FOLDER_SPLITS)


def load_unlabelled_folder(root: Path, split: str = "train") -> ImageSplit:
    """An unlabelled ``folder:`` (see :func:`is_unlabelled_folder`): its one split ``train`` holds every
    image below ``root`` with target -1 (the unlabelled sentinel of :func:`unlabelled_mask`), classes
    ``[]``. For training and ``sslzoo embed``; the probes need labels, so another split is refused."""
    if split != "train":
        raise DatasetError(f"image folder {root} is unlabelled (no train/ or test/ sub-folder): it has one split, "
                           f"train, for training and `sslzoo embed`; probes need labels, put them in "
                           f"{root}/{{train,test}}/<class>/<image>")
    paths = list_images(root)
    if not paths:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTS)}) in {root} or its sub-folders: an unlabelled folder "
                           f"holds images at any depth, a labelled one {root}/{{train,test}}/<class>/<image>")
    return ImageSplit(root.name, "train", np.full(len(paths), -1, dtype=np.int64), [], paths=paths, source=str(root))


def load_folder(path, split: str = "train") -> ImageSplit:
    """``PATH/train/<class>/<image>``, ``PATH/test/<class>/<image>`` and, when present, ``PATH/val/...``.

    Classes are the sorted sub-folder names of ``train/``; images are any of :data:`IMAGE_EXTS`
    (case-insensitive, other files are ignored). Every train class must have images in the requested
    split and the split may not have class folders that train lacks. File-backed: decoded by ``get``.
    A folder with none of ``train/``, ``test/``, ``val/`` is unlabelled (:func:`load_unlabelled_folder`).
    """
    root = Path(path).expanduser()
    layout = f"{root}/{{train,test}}/<class>/<image>"
    if not root.is_dir():
        raise DatasetNotFound(f"image folder {root} not found: put the images in {layout}")
    if is_unlabelled_folder(root):
        return load_unlabelled_folder(root, split)
    for sub in ("train", "test"):
        if not (root / sub).is_dir():
            raise DatasetError(f"{root} has no {sub}/ sub-folder: the layout is {layout}")
    splits = ["train", "test"] + (["val"] if (root / "val").is_dir() else [])
    if split not in splits:
        extra = "" if "val" in splits else f" (val needs {root}/val)"
        raise DatasetError(f"image folder {root} has splits {', '.join(splits)}, not {split!r}{extra}")
    classes = _subdirs(root / "train")
    if not classes:
        n = len(_image_files(root / "train"))
        what = f"it holds {n} images directly; move them into class folders" if n else "it is empty"
        raise DatasetError(f"{root}/train has no class sub-folders ({what}): the layout is {layout}")
    paths, targets = _scan_class_tree(root / split, split, classes, layout)
    return ImageSplit(root.name, split, targets, classes, paths=paths, source=str(root))


def _npz_array(z, p, key):
    try:
        return z[key]
    except ValueError:  # object arrays need pickle, which is refused
        raise DatasetError(f"{p}: array {key!r} is an object (pickled) array; store plain numeric arrays") from None


def _sentinel(dtype) -> int | None:
    """The value an unsigned label array uses for "unlabelled": its maximum (``-1`` cast to the dtype,
    e.g. 255 for uint8); signed arrays use negative labels."""
    dtype = np.dtype(dtype)
    return int(np.iinfo(dtype).max) if dtype.kind == "u" else None


def unlabelled_mask(labels: np.ndarray) -> np.ndarray:
    """Which labels mark an unlabelled image: negative ones, and for unsigned arrays the dtype's maximum
    (255 for uint8: what ``-1`` becomes when cast). They never become a class."""
    s = _sentinel(labels.dtype)
    return labels == s if s is not None else labels < 0


def _union_ids(parts: list) -> np.ndarray:
    """Sorted distinct ids over label arrays of possibly different integer dtypes (uint64 beyond int64
    kept exact)."""
    if all(p.dtype.kind == "i" or p.size == 0 or int(p.max()) <= np.iinfo(np.int64).max for p in parts):
        return np.unique(np.concatenate([p.astype(np.int64) for p in parts]))
    # some uint64 id beyond int64: then every id is >= 0 (the unlabelled ones are gone), exact in uint64
    return np.unique(np.concatenate([p.astype(np.uint64) for p in parts]))


def load_npz(path, split: str = "train") -> ImageSplit:
    """An ``.npz`` written with ``np.savez``. Split ``S`` reads keys ``S_image`` + ``S_label``; a file
    with plain ``image`` + ``label`` serves the train split only. ``*_image``: uint8 ``[N,H,W]`` or
    ``[N,H,W,C]`` with C in {1, 3}; ``*_label``: integer ``[N]`` of any integer dtype. Train labels < 0
    -- and for unsigned dtypes the dtype's maximum, e.g. 255 for uint8 (what -1 becomes when cast) --
    mark unlabeled images and are kept (target -1, never a class); other splits may not have them.
    Classes: with a ``classes`` array of names, labels index it; otherwise the distinct label ids over
    all label arrays of the file, sorted, become classes ``0..K-1`` named by their ids (``classes[i]``
    is the id of class ``i``: the mapping travels with the split), so ids such as ``{0, 10^9}`` cost
    two classes, not 10^9. Pickled arrays are refused.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetNotFound(f"npz file {p} not found: save it there with np.savez(path, train_image=uint8 [N,H,W,C], "
                              f"train_label=int [N], test_image=..., test_label=...)")
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as e:  # not a zip / npy at all
        raise DatasetError(f"{p} is not a readable .npz ({type(e).__name__}: {_one_line(e)}); "
                           f"write it with np.savez") from None
    if not hasattr(z, "files"):
        raise DatasetError(f"{p} is a single .npy array, expected an .npz with "
                           f"train_image/train_label/test_image/test_label")
    with z:
        keys = set(z.files)
        found = ", ".join(sorted(keys)) or "none"
        if f"{split}_image" in keys or f"{split}_label" in keys:
            ik, lk = f"{split}_image", f"{split}_label"
        elif split == "train" and ("image" in keys or "label" in keys):
            ik, lk = "image", "label"
        else:
            alt = " (or image + label)" if split == "train" else " (plain image + label only serve the train split)"
            raise DatasetError(f"{p} has no arrays for split {split!r}: expected keys {split}_image + "
                               f"{split}_label{alt}; found {found}")
        for k in (ik, lk):
            if k not in keys:
                raise DatasetError(f"{p}: key {k!r} is missing (expected {ik} + {lk}; found {found})")
        images, labels = _npz_array(z, p, ik), _npz_array(z, p, lk)
        expect = "expected uint8 [N,H,W] or [N,H,W,C] with C in {1, 3}"
        if images.dtype != np.uint8:
            hint = "; scale floats with (x * 255).round().astype(np.uint8)" if images.dtype.kind == "f" else ""
            raise DatasetError(f"{p}: {ik!r} has dtype {images.dtype}, {expect}{hint}")
        if images.ndim == 3:
            images = images[..., None]
        elif images.ndim != 4 or images.shape[-1] not in (1, 3):
            hint = ("; it looks channels-first, transpose it to [N,H,W,C]"
                    if images.ndim == 4 and images.shape[1] in (1, 3) else "")
            raise DatasetError(f"{p}: {ik!r} has shape {list(images.shape)}, {expect}{hint}")
        if labels.dtype.kind not in "iu" or labels.ndim != 1:
            raise DatasetError(f"{p}: {lk!r} has dtype {labels.dtype} and shape {list(labels.shape)}, "
                               f"expected integer [N]")
        if len(labels) != len(images):
            raise DatasetError(f"{p}: {lk!r} has {len(labels)} labels but {ik!r} has {len(images)} images; "
                               f"expected one label per image")
        unlabelled = unlabelled_mask(labels)
        if split != "train" and unlabelled.any():
            what = ("negative labels" if _sentinel(labels.dtype) is None else
                    f"the {labels.dtype} 'unlabelled' label {_sentinel(labels.dtype)}")
            raise DatasetError(f"{p}: {lk!r} has {what}; only train labels may be < 0 (unlabeled images)")
        if "classes" in keys:  # labels index a list of names
            names = _npz_array(z, p, "classes")
            top = -1
            for k in keys:
                if k == "label" or k.endswith("_label"):
                    arr = labels if k == lk else _npz_array(z, p, k)
                    if arr.dtype.kind in "iu" and arr.ndim == 1 and arr.size:
                        kept = arr[~unlabelled_mask(arr)]
                        top = max(top, int(kept.max()) if kept.size else -1)
            if names.ndim != 1 or len(names) <= top:
                raise DatasetError(f"{p}: 'classes' has shape {list(names.shape)}, expected one name per label "
                                   f"(at least {top + 1})")
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names.tolist()]
            labels = np.where(unlabelled, -1, labels.astype(np.int64, copy=False)).astype(np.int64)
        else:  # any integer ids -> contiguous classes 0..K-1 in increasing id order; names are the ids
            found = [np.unique(labels[~unlabelled])]
            for k in keys:
                if (k == "label" or k.endswith("_label")) and k != lk:
                    arr = _npz_array(z, p, k)
                    if arr.dtype.kind in "iu" and arr.ndim == 1:
                        found.append(np.unique(arr[~unlabelled_mask(arr)]))
            ids = _union_ids(found)
            classes = [str(i) for i in ids.tolist()]
            mapped = np.full(labels.shape, -1, dtype=np.int64)
            mapped[~unlabelled] = np.searchsorted(ids, labels[~unlabelled].astype(ids.dtype))
            labels = mapped
    return ImageSplit(p.stem, split, labels, classes, images=np.ascontiguousarray(images), source=str(p))


# ----------------------------------------------------------------------------- pack:PATH (eval.packed writes it)

PACK_FORMAT = "sslzoo-pack"
PACK_VERSION = 1
PACK_META = "pack.json"
#: one row per image of a split's ``SPLIT.index.npy``: shard number, byte offset and length in it, label
#: (-1: unlabelled), sha256 of the file's bytes
PACK_INDEX_DTYPE = np.dtype([("shard", "<u4"), ("offset", "<u8"), ("length", "<u8"), ("label", "<i8"),
                             ("sha256", "V32")])


class PackReader:
    """Random access to one packed split: ``read(i)`` is one ``os.pread`` on a shard file kept open.

    The files are opened lazily, once per process (a DataLoader worker forked from a process that
    already read opens its own descriptors: the ones inherited across ``fork`` are not shared, and a
    pickled reader carries none). The index is memory-mapped, so 1.28M rows cost no resident memory
    until they are touched."""

    def __init__(self, root, split: str, shards: list, index: np.ndarray):
        self.root, self.split, self.shards, self.index = Path(root), split, list(shards), index
        self._fds: dict = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = {}, None
        return state

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: the parent's descriptors share its file offsets; use our own
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            path = self.root / self.shards[shard]
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                raise DatasetError(f"pack {self.root}: cannot open shard {path} ({e.strerror}); the pack is "
                                   f"incomplete, write it again with `sslzoo pack`") from None
            self._fds[shard] = fd
        return fd

    def read(self, i: int) -> bytes:
        """The encoded bytes of image ``i``, exactly as they were in the packed file."""
        row = self.index[i]
        shard, offset, length = int(row["shard"]), int(row["offset"]), int(row["length"])
        data = os.pread(self._fd(shard), length, offset)
        if len(data) != length:
            raise DatasetError(f"pack {self.root}: shard {self.shards[shard]} ends before image {i} "
                               f"({len(data)} of {length} bytes at offset {offset}); the shard is truncated, write "
                               f"the pack again with `sslzoo pack`")
        return data

    def digests(self) -> list[str]:
        """The sha256 (hex) of every packed file, from the index."""
        return [bytes(d).hex() for d in self.index["sha256"]]

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fds = {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def read_pack_meta(root) -> dict:
    """``PATH/pack.json`` checked: format, version and the splits it lists."""
    root = Path(root)
    meta_path = root / PACK_META
    if not root.is_dir():
        raise DatasetNotFound(f"pack {root} not found: write it with `sslzoo pack SRC {root}`")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{root} is not a pack (no {PACK_META}); write one with `sslzoo pack SRC OUT`") from None
    except ValueError as e:
        raise DatasetError(f"{meta_path} is not valid JSON ({_one_line(e)}); write the pack again") from None
    if not isinstance(meta, dict) or meta.get("format") != PACK_FORMAT or not isinstance(meta.get("splits"), dict):
        raise DatasetError(f"{meta_path} is not an ssl-zoo pack description; write the pack again with `sslzoo pack`")
    if meta.get("version") != PACK_VERSION:
        raise DatasetError(f"{root} is pack format version {meta.get('version')!r}, this ssl-zoo reads version "
                           f"{PACK_VERSION}; write it again with this version's `sslzoo pack`")
    return meta


def load_pack(path, split: str = "train") -> ImageSplit:
    """A pack written by ``sslzoo pack`` (format: ``docs/packs.md``) as a file-backed split whose
    ``read_bytes`` reads from the shards (no per-image file opens) and whose fingerprint comes from
    the index. ``test`` falls back to ``val`` when the pack has no ``test`` split (ImageNet's layout)."""
    root = Path(path).expanduser()
    meta = read_pack_meta(root)
    splits = meta["splits"]
    if split not in splits and split == "test" and "val" in splits:
        split = "val"
    if split not in splits:
        raise DatasetError(f"pack {root} has splits {', '.join(splits) or 'none'}, not {split!r}")
    info = splits[split]
    try:
        index = np.load(root / info["index"], mmap_mode="r", allow_pickle=False)
        names = json.loads((root / info["names"]).read_text())
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"pack {root}: the {split} index is unreadable ({type(e).__name__}: {_one_line(e)}); "
                           f"write the pack again with `sslzoo pack`") from None
    if index.dtype != PACK_INDEX_DTYPE or index.ndim != 1 or not isinstance(names, list) or len(names) != len(index):
        raise DatasetError(f"pack {root}: the {split} index does not match its names ({len(index)} rows of "
                           f"{index.dtype}, {len(names) if isinstance(names, list) else '?'} names); write the pack "
                           f"again")
    reader = PackReader(root, split, info["shards"], index)
    targets = np.ascontiguousarray(index["label"], dtype=np.int64).copy()  # a writable array, not a view
    return ImageSplit(str(meta.get("name") or root.name), split, targets, list(meta.get("classes", [])),
                      paths=[str(n) for n in names], source=str(root), mode=info.get("mode"), pack=reader)


# ----------------------------------------------------------------------------- CIFAR-10 / CIFAR-100

_CIFAR = {
    "cifar10": dict(dir="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", labels=b"labels", names=b"label_names", tv="CIFAR10",
                    files="data_batch_1..5, test_batch, batches.meta"),
    "cifar100": dict(dir="cifar-100-python", train=["train"], test=["test"], meta="meta", labels=b"fine_labels",
                     names=b"fine_label_names", tv="CIFAR100", files="train, test, meta"),
}


# The only globals a CIFAR batch needs: rebuilding numpy arrays (numpy 1.x and 2.x module names), and
# _codecs.encode, which is how protocol-2 pickles written by Python 3 store bytes.
_PICKLE_GLOBALS = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _PICKLE_GLOBALS[(_mod, "_reconstruct")] = np.zeros(1).__reduce__()[0]
    _PICKLE_GLOBALS[(_mod, "scalar")] = np.float64(0).__reduce__()[0]
del _mod


class _BatchUnpickler(pickle.Unpickler):
    """Reader for the CIFAR "python version" batches. The official dataset files are pickles (a dict of
    a uint8 numpy array and lists; torchvision reads them with ``pickle.load`` too) and they are only
    read from dataset folders the user chose. Even so, only :data:`_PICKLE_GLOBALS` are resolved, so a
    tampered file fails to load instead of running code."""

    def find_class(self, module, name):
        obj = _PICKLE_GLOBALS.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refusing global {module}.{name} (not part of a dataset batch)")
        return obj


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as e:
        raise DatasetError(f"{path} is not a CIFAR python batch ({type(e).__name__}: {_one_line(e)}); "
                           f"re-download it") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch dict; re-download it")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def _load_cifar(name, split, root, download):
    info = _CIFAR[name]
    if split not in ("train", "test"):
        raise DatasetError(f"{name} has splits train and test, not {split!r}")
    base = Path(root).expanduser() if root else data_home() / name
    candidates = [base / info["dir"], base] + ([] if root else [data_home() / name / info["dir"]])
    need = info[split] + [info["meta"]]
    d = _find_dir(candidates, need)
    if d is None and download:
        import torchvision

        getattr(torchvision.datasets, info["tv"])(str(base), train=(split == "train"), download=True)
        d = _find_dir(candidates, need)
    if d is None:
        raise DatasetNotFound(f"{name} {split} not found: put {info['dir']}/ ({info['files']}) in {base}, "
                              f"or pass --download")
    meta = _read_cifar_pickle(d / info["meta"])
    if info["names"] not in meta:
        raise DatasetError(f"{d / info['meta']} has no {info['names']!r}; re-download {name}")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[info["names"]]]
    images, labels = [], []
    for fname in info[split]:
        batch = _read_cifar_pickle(d / fname)
        data, lab = batch.get(b"data"), batch.get(info["labels"])
        if data is None or lab is None:
            raise DatasetError(f"{d / fname} lacks b'data' or {info['labels']!r}; re-download {name}")
        data, lab = np.asarray(data), np.asarray(lab, dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(lab) != len(data):
            raise DatasetError(f"{d / fname}: b'data' is {data.dtype} {list(data.shape)} with {len(lab)} labels, "
                               f"expected uint8 [N, 3072] and N labels; re-download {name}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are R, G, B planes, row-major
        labels.append(lab)
    targets = np.concatenate(labels)
    if targets.size and (targets.min() < 0 or targets.max() >= len(classes)):
        raise DatasetError(f"{d}: labels outside 0..{len(classes) - 1}; re-download {name}")
    return ImageSplit(name, split, targets, classes, images=np.ascontiguousarray(np.concatenate(images)), source=str(d))


def load_cifar10(split="train", root=None, download=False):
    return _load_cifar("cifar10", split, root, download)


def load_cifar100(split="train", root=None, download=False):
    """CIFAR-100 with the 100 fine labels."""
    return _load_cifar("cifar100", split, root, download)


# ----------------------------------------------------------------------------- STL-10

_STL_SPLITS = {"train": ["train"], "test": ["test"], "unlabeled": ["unlabeled"],
               "train+unlabeled": ["train", "unlabeled"]}
_STL_BYTES = 3 * 96 * 96


def _read_stl_images(paths):
    """STL-10 ``*_X.bin`` files -> one uint8 ``[N, 96, 96, 3]`` and the per-file counts. Each image is
    stored channel after channel and each channel column-major (the files come from MATLAB), so a
    C-order view of one image is ``[C, W, H]``; transposing to ``[H, W, C]`` keeps the images upright."""
    counts = []
    for p in paths:
        size = p.stat().st_size
        if size % _STL_BYTES:
            raise DatasetError(f"{p}: {size} bytes is not a whole number of 3x96x96 images; re-download stl10")
        counts.append(size // _STL_BYTES)
    out = np.empty((sum(counts), 96, 96, 3), np.uint8)
    start = 0
    for p, n in zip(paths, counts):
        if n:
            raw = np.memmap(p, dtype=np.uint8, mode="r", shape=(n, 3, 96, 96))
            for s in range(0, n, 4096):  # chunked so the 2.7 GB unlabeled file is never held twice
                chunk = raw[s:s + 4096]
                out[start + s:start + s + len(chunk)] = chunk.transpose(0, 3, 2, 1)
            del raw
        start += n
    return out, counts


def load_stl10(split="train", root=None, download=False):
    """STL-10 binary version. Splits: ``train``, ``test``, ``unlabeled`` (targets -1) and
    ``train+unlabeled``; labels on disk are 1..10 and come out as 0..9."""
    if split not in _STL_SPLITS:
        raise DatasetError(f"stl10 has splits {', '.join(_STL_SPLITS)}, not {split!r}")
    parts = _STL_SPLITS[split]
    base = Path(root).expanduser() if root else data_home() / "stl10"
    need = [f"{s}_X.bin" for s in parts] + [f"{s}_y.bin" for s in parts if s != "unlabeled"] + ["class_names.txt"]
    candidates = [base / "stl10_binary", base] + ([] if root else [data_home() / "stl10" / "stl10_binary"])
    d = _find_dir(candidates, need)
    if d is None and download:
        import torchvision

        torchvision.datasets.STL10(str(base), split=split, download=True)
        d = _find_dir(candidates, need)
    if d is None:
        raise DatasetNotFound(f"stl10 {split} not found: put stl10_binary/ ({', '.join(need)}) in {base}, "
                              f"or pass --download")
    images, counts = _read_stl_images([d / f"{s}_X.bin" for s in parts])
    targets = []
    for s, n in zip(parts, counts):
        if s == "unlabeled":
            targets.append(np.full(n, -1, dtype=np.int64))
            continue
        y = np.fromfile(d / f"{s}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        if len(y) != n or (y.size and (y.min() < 0 or y.max() > 9)):
            raise DatasetError(f"{d / f'{s}_y.bin'}: expected {n} labels in 1..10, found {len(y)}; re-download stl10")
        targets.append(y)
    classes = [line.strip() for line in (d / "class_names.txt").read_text().splitlines() if line.strip()]
    return ImageSplit("stl10", split, np.concatenate(targets), classes, images=images, source=str(d))


# ----------------------------------------------------------------------------- SVHN

SVHN_CLASSES = [str(i) for i in range(10)]


def load_svhn(split="train", root=None, download=False):
    """SVHN cropped digits (``{split}_32x32.mat``: ``X`` is H x W x C x N uint8, ``y`` N x 1 with 10 for
    the digit 0, which comes out as label 0). Splits: train, test, extra. Needs scipy to read .mat."""
    if split not in ("train", "test", "extra"):
        raise DatasetError(f"svhn has splits train, test and extra, not {split!r}")
    base = Path(root).expanduser() if root else data_home() / "svhn"
    fname = f"{split}_32x32.mat"
    candidates = [base, base / "svhn"] + ([] if root else [data_home() / "svhn"])
    d = _find_dir(candidates, [fname])
    if d is None and download:
        import torchvision

        torchvision.datasets.SVHN(str(base), split=split, download=True)
        d = _find_dir(candidates, [fname])
    if d is None:
        raise DatasetNotFound(f"svhn {split} not found: put {fname} in {base}, or pass --download")
    try:
        import scipy.io
    except ImportError:
        raise DatasetError("svhn is stored as MATLAB .mat files, which need scipy: pip install scipy") from None
    path = d / fname
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except Exception as e:
        raise DatasetError(f"{path} is not a readable .mat file ({type(e).__name__}: {_one_line(e)}); "
                           f"re-download it") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise DatasetError(f"{path} lacks the X / y variables; re-download it")
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3 or y.size != x.shape[3]:
        raise DatasetError(f"{path}: X is {x.dtype} {list(x.shape)} with {y.size} labels, "
                           f"expected uint8 [H, W, 3, N] and N labels; re-download it")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{path}: labels outside 1..10; re-download it")
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))  # H W C N -> N H W C
    return ImageSplit("svhn", split, labels, list(SVHN_CLASSES), images=images, source=str(d))


# ----------------------------------------------------------------------------- Tiny ImageNet / ImageNet


def _wnid_names(words: Path, wnids: list) -> list:
    """Readable class names from ``words.txt`` (``wnid<TAB>name, synonym, ...``): the first name,
    with the wnid appended where two classes share it; the wnid itself when unknown."""
    table = {}
    if words.is_file():
        for line in words.read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, text = line.partition("\t")
            table[wnid.strip()] = text.split(",")[0].strip()
    names = [table.get(w) or w for w in wnids]
    return [f"{n} ({w})" if n != w and names.count(n) > 1 else n for n, w in zip(names, wnids)]


def load_tinyimagenet(split="train", root=None, download=False):
    """Tiny ImageNet 200 (``tiny-imagenet-200/``), file-backed 64x64 JPEGs decoded to RGB.

    Splits: ``train`` (``train/<wnid>/images/*.JPEG``), ``val`` (``val/images/*.JPEG`` labelled by
    ``val/val_annotations.txt``) and ``test``, which is the labelled val split: the official test
    images have no public labels. Classes are the sorted wnids of ``wnids.txt``, named via ``words.txt``.
    """
    if split not in ("train", "val", "test"):
        raise DatasetError(f"tinyimagenet has splits train, val and test (= val), not {split!r}")
    base = Path(root).expanduser() if root else data_home() / "tinyimagenet"
    need = ["wnids.txt", "train" if split == "train" else "val/val_annotations.txt"]
    d = _find_dir([base / "tiny-imagenet-200", base] + ([] if root else [data_home() / "tinyimagenet" / "tiny-imagenet-200"]),
                  need)
    if d is None:
        raise DatasetNotFound(f"tinyimagenet {split} not found: unzip tiny-imagenet-200.zip "
                              f"(http://cs231n.stanford.edu/tiny-imagenet-200.zip) into {base} so that "
                              f"{base / 'tiny-imagenet-200' / need[1]} exists (there is no automatic download)")
    wnids = sorted({line.strip() for line in (d / "wnids.txt").read_text().splitlines() if line.strip()})
    if not wnids:
        raise DatasetError(f"{d / 'wnids.txt'} is empty; re-download tinyimagenet")
    index = {w: i for i, w in enumerate(wnids)}
    paths, targets = [], []
    if split == "train":
        for w in wnids:
            img_dir = d / "train" / w / "images"
            files = _image_files(img_dir) if img_dir.is_dir() else []
            if not files:
                raise DatasetError(f"class {w!r} has no train images (expected {img_dir}/*.JPEG); "
                                   f"re-download tinyimagenet")
            paths += files
            targets += [index[w]] * len(files)
    else:
        ann = d / "val" / "val_annotations.txt"
        img_dir = d / "val" / "images"
        present = set(os.listdir(img_dir)) if img_dir.is_dir() else set()
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 2 or cols[1].strip() not in index:
                raise DatasetError(f"{ann} line {n}: expected 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1' with a wnid "
                                   f"from wnids.txt, got {line[:80]!r}")
            if cols[0] not in present:
                raise DatasetError(f"{ann} line {n}: {cols[0]} is missing from {img_dir}; re-download tinyimagenet")
            paths.append(str(img_dir / cols[0]))
            targets.append(index[cols[1].strip()])
        if not paths:
            raise DatasetError(f"{ann} lists no images; re-download tinyimagenet")
    return ImageSplit("tinyimagenet", split, np.asarray(targets, dtype=np.int64), _wnid_names(d / "words.txt", wnids),
                      paths=paths, source=str(d), mode="RGB")


def load_imagenet(split="train", root=None, download=False):
    """ImageNet-1k in torchvision's ImageFolder layout: ``root/train/<wnid>/*.JPEG`` and
    ``root/val/<wnid>/*.JPEG`` (val sorted into class folders, the usual valprep.sh step). File-backed,
    decoded to RGB; classes are the sorted wnids. ``test`` = ``val`` (test labels are not public)."""
    if split not in ("train", "val", "test"):
        raise DatasetError(f"imagenet has splits train, val and test (= val), not {split!r}")
    base = Path(root).expanduser() if root else data_home() / "imagenet"
    sub = "train" if split == "train" else "val"
    layout = f"{base}/{{train,val}}/<wnid>/*.JPEG"
    d = _find_dir([base] + ([] if root else [data_home() / "imagenet"]), ["train", sub])
    if d is None:
        raise DatasetNotFound(f"imagenet {split} not found: put the ILSVRC2012 train/ and val/ folders as {layout} "
                              f"(there is no automatic download; get it from image-net.org)")
    layout = f"{d}/{{train,val}}/<wnid>/*.JPEG"
    classes = _subdirs(d / "train")
    if not classes:
        raise DatasetError(f"{d}/train has no class folders: the layout is {layout}")
    if sub == "val" and not _subdirs(d / "val") and _image_files(d / "val"):
        raise DatasetError(f"{d}/val holds its images flat: sort them into val/<wnid>/ folders first "
                           f"(the usual valprep.sh step), the layout is {layout}")
    paths, targets = _scan_class_tree(d / sub, sub, classes, layout)
    return ImageSplit("imagenet", split, targets, classes, paths=paths, source=str(d), mode="RGB")


LOADERS = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "stl10": load_stl10,
    "svhn": load_svhn,
    "tinyimagenet": load_tinyimagenet,
    "imagenet": load_imagenet,
}


def load_split(spec: str, split: str = "train", root: str | None = None, download: bool = False) -> ImageSplit:
    """Resolve a dataset spec to one split."""
    if "\x00" in spec or (root is not None and "\x00" in str(root)):
        raise DatasetError(f"dataset spec {spec[:200]!r} contains a NUL character")
    try:
        return _load_split(spec, split, root, download)
    except OSError as e:  # a path the OS refuses (too long, unreadable, ...) deep inside a loader
        where = f" ({e.filename})" if getattr(e, "filename", None) and len(str(e.filename)) < 200 else ""
        raise DatasetError(f"cannot read dataset {spec[:200]!r}: {e.strerror or type(e).__name__}{where}") from None


def _load_split(spec: str, split: str, root: str | None, download: bool) -> ImageSplit:
    if root is not None and str(root) != "":
        if spec.startswith(("folder:", "npz:", "pack:")):
            raise DatasetError(f"--root {root} applies to catalogue data sets; {spec.split(':', 1)[0]}:PATH names "
                               f"its own files (drop --root)")
    if spec.startswith("folder:"):
        return load_folder(spec[len("folder:"):], split)
    if spec.startswith("npz:"):
        return load_npz(spec[len("npz:"):], split)
    if spec.startswith("pack:"):
        return load_pack(spec[len("pack:"):], split)
    key = spec.lower().replace("_", "-")
    key = {"fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "tiny-imagenet": "tinyimagenet"}.get(key, key)
    if key not in LOADERS:
        raise DatasetError(f"unknown dataset {spec!r}{did_you_mean(key, LOADERS)} (catalogue: {', '.join(LOADERS)}; "
                           f"or folder:PATH, npz:PATH, pack:PATH)")
    return LOADERS[key](split=split, root=root, download=download)
