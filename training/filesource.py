"""The file-backed training source: image files decoded and cropped in DataLoader workers.

The in-memory path (:meth:`training.trainer.Trainer.load_data`) decodes a whole split into one uint8
tensor, which needs one image size and the RAM of the decoded set. This module reads a file-backed
:class:`eval.datasets.ImageSplit` (``folder:``, ``imagenet``, ``tinyimagenet``, anything whose
``read_bytes(i)`` returns the encoded file) image by image instead:

* :class:`CropDataset` -- ``dataset[(epoch, i)]`` reads sample ``i``'s bytes, draws each view's
  random resized crop box on the image's header size from a counter-based stream keyed by
  ``(seed, epoch, i, view)`` (:func:`crop_seed`; torchvision's RandomResizedCrop rule,
  :func:`training.augmentation.sample_crop_boxes`), decodes the JPEG at the largest DCT scale
  (1/2, 1/4, 1/8: PIL's draft mode) that keeps every box at least the view's output size
  (:func:`draft_scale`), and cuts each box resized to the view's size (PIL, antialiased, the
  recipe's bilinear / bicubic) as uint8 ``[C, size, size]``. Nothing depends on which worker or
  process runs it, so a batch is the same with 0 or 8 workers and resume needs no worker state.
* :class:`FileBatches` -- the batches of one rank: one seeded permutation per epoch
  (:func:`epoch_permutation`, the in-memory path's), rank ``r`` takes its slice of every global
  batch, starting at any ``(epoch, batch)``; a single DataLoader iterator with ``workers`` processes
  spans every epoch (the workers live as long as the run), prefetches ``prefetch`` batches per worker
  and pins memory on CUDA.
* :func:`augment_cropped` -- everything after the crop (flip, colour jitter, grayscale, blur,
  solarize, normalise) runs batched in the main process with the recipe's ``ViewAugment``
  (``augment.version: 2``; the fused C kernel on CPU, torch ops on CUDA) with every crop box set to
  the whole, already cropped, view (an exact identity resample).

Unreadable images (corrupt or truncated files, zero bytes, not an image) do not stop training: the
sample is replaced by the next readable sample of the epoch's sample list (deterministic: the same
replacement whatever the workers) and the main process logs each bad file once with a running
count (:attr:`FileBatches.bad`). Only when :data:`MAX_REPLACEMENTS` images in a row are unreadable
is it one :class:`FileSourceError` line naming the first file.

:func:`choose_source` is ``data.source: auto``: in memory for in-memory splits and for small
file-backed sets whose images share one size; files when the decoded set would exceed
:data:`AUTO_MEMORY_LIMIT_BYTES` (2 GiB) or the sampled image sizes differ.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import os
import random
import struct
import sys
from dataclasses import dataclass

import numpy as np
import torch

from eval.datasets import ImageSplit
from zoo.base import SSLZooError
from zoo.preprocess import pil_to_uint8

from .augmentation import ViewAugment

__all__ = [
    "AUTO_MEMORY_LIMIT_BYTES",
    "MAX_REPLACEMENTS",
    "CropDataset",
    "FileBatches",
    "FileSourceError",
    "ResizedImages",
    "ViewCrop",
    "augment_cropped",
    "choose_source",
    "collate_crops",
    "crop_box",
    "crop_seed",
    "decode_crops",
    "default_workers",
    "draft_scale",
    "epoch_permutation",
    "view_crops",
]

logger = logging.getLogger(__name__)

#: ``data.source: auto`` trains from files when the decoded training set would exceed this (bytes).
AUTO_MEMORY_LIMIT_BYTES = 2 << 30
#: Consecutive unreadable samples tolerated before training stops with one line.
MAX_REPLACEMENTS = 16
_DRAFT_SCALES = (8, 4, 2, 1)
_PROBE = 32  # images whose headers data.source=auto reads


class FileSourceError(SSLZooError, RuntimeError):
    """The file-backed source cannot go on (e.g. a run of unreadable images); one line naming the file."""


@dataclass(frozen=True)
class ViewCrop:
    """The crop of one view: output ``size`` ``(h, w)``, RandomResizedCrop ``scale`` and ``ratio``,
    and the resampling filter (``bilinear`` / ``bicubic`` / ``nearest``)."""

    size: tuple
    scale: tuple
    ratio: tuple
    interpolation: str = "bilinear"


def view_crops(large: list, small: ViewAugment | None = None, n_small: int = 0) -> list[ViewCrop]:
    """The crops of the trainer's views (:func:`training.trainer.build_view_augments`): one per large
    view, then ``n_small`` small crops, in the order the methods see the views."""
    def one(a: ViewAugment) -> ViewCrop:
        size = (a.size, a.size) if isinstance(a.size, int) else (int(a.size[0]), int(a.size[1]))
        interp = a.interpolation if a.interpolation in ("bilinear", "bicubic") else "nearest"
        return ViewCrop(size, tuple(float(s) for s in a.scale), tuple(float(r) for r in a.ratio), interp)
    return [one(a) for a in large] + ([one(small)] * n_small if small is not None else [])


def default_workers() -> int:
    """``data.workers: null``: min(8, the CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return min(8, cpus)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch``: the same on every rank and in both sources (the in-memory path's)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))


def crop_seed(seed: int, epoch: int, index: int, view: int) -> int:
    """The seed of one crop: a hash of ``(seed, epoch, sample index, view)`` (counter-based: no state)."""
    h = hashlib.blake2b(struct.pack("<4q", int(seed), int(epoch), int(index), int(view)), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def crop_box(seed: int, epoch: int, index: int, view: int, height: int, width: int, crop: ViewCrop) -> tuple:
    """``(top, left, h, w)`` in pixels of the full image: torchvision's RandomResizedCrop rule (the same
    rule as :func:`training.augmentation.sample_crop_boxes`: up to 10 tries of area ~ U(scale) * H * W and
    log aspect ~ U(log ratio), the first that fits placed uniformly, else the centred whole image clamped
    to the ratio range) drawn from the stream of :func:`crop_seed`. Scalar Python draws: one box costs
    microseconds, where a torch generator and tensor ops per box cost ~0.1 ms in every worker."""
    rng = random.Random(crop_seed(seed, epoch, index, view))
    area = height * width
    lo, hi = math.log(crop.ratio[0]), math.log(crop.ratio[1])
    for _ in range(10):
        target = rng.uniform(crop.scale[0], crop.scale[1]) * area
        r = math.exp(rng.uniform(lo, hi))
        w = round(math.sqrt(target * r))
        h = round(math.sqrt(target / r))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(crop.ratio):
        w, h = width, round(width / min(crop.ratio))
    elif in_ratio > max(crop.ratio):
        h, w = height, round(height * max(crop.ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draft_scale(boxes: list, crops: list) -> int:
    """The largest JPEG DCT reduction (8, 4, 2 or 1) that keeps every box at least its view's output size."""
    for s in _DRAFT_SCALES:
        if all(h / s >= c.size[0] and w / s >= c.size[1] for (_, _, h, w), c in zip(boxes, crops)):
            return s
    return 1


_RESAMPLE = {"bilinear": 2, "bicubic": 3, "nearest": 0}  # PIL.Image.Resampling values


def _to_8bit(im):
    """A PIL image in mode ``RGB`` or ``L``: 16-bit scaled (not clipped), CMYK / palette converted,
    alpha dropped (:func:`zoo.preprocess.pil_to_uint8`)."""
    from PIL import Image

    if im.mode in ("RGB", "L"):
        return im
    arr = pil_to_uint8(im).permute(1, 2, 0).numpy()
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.shape[2] == 2:
        arr = arr[:, :, :1]
    return Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if arr.shape[2] == 1 else arr))


def decode_crops(data: bytes, crops: list, boxes_for, channels: int = 3) -> tuple[list, tuple]:
    """Decode the encoded image ``data`` once and cut one crop per view.

    ``boxes_for(height, width)`` returns the views' boxes ``(top, left, h, w)`` on the full image's
    size (read from the header). The JPEG is decoded at the largest reduction :func:`draft_scale`
    allows; each box is then resized to its view's size by PIL (antialiased). Returns the uint8
    ``[channels, h, w]`` crops and the size ``(width, height)`` that was actually decoded."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        boxes = boxes_for(height, width)
        f = 1.0
        s = draft_scale(boxes, crops)
        if s > 1 and im.format == "JPEG":
            got = im.draft(None, (width // s, height // s))
            if got is not None:
                f = width / got[1][2]
        im.load()
        decoded = im.size
        im8 = _to_8bit(im)
        out = []
        for (top, left, h, w), c in zip(boxes, crops):
            box = (left / f, top / f, (left + w) / f, (top + h) / f)
            v = im8.resize((c.size[1], c.size[0]), _RESAMPLE[c.interpolation], box=box)
            if channels == 1 and v.mode != "L":
                v = v.convert("L")
            t = torch.from_numpy(np.array(v))  # one writable copy; collate's stack makes it [B, C, h, w]
            t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
            if channels == 3 and t.shape[0] == 1:
                t = t.expand(3, -1, -1)
            out.append(t)
    return out, decoded


class CropDataset(torch.utils.data.Dataset):
    """``dataset[(epoch, i)]`` -> ``(views, i, bad)``: sample ``i``'s crops (uint8 ``[C, h, w]``, one per
    entry of ``crops``), drawn from the stream keyed by ``(seed, epoch, i, view)``.

    ``split``: a file-backed :class:`eval.datasets.ImageSplit` (read through ``split.read_bytes``);
    ``crops``: :class:`ViewCrop` per view, or ``(size, scale, ratio)`` tuples; ``rows``: the split row
    of each sample (a subset, repeated copies; default: every row once); ``channels``: 3 (grayscale
    repeated) or 1 (colour to luma). ``bad`` lists ``(row, reason)`` of the files that could not be read
    and were replaced by the next samples of ``rows``; ``views`` is None when :data:`MAX_REPLACEMENTS` in a row failed."""

    def __init__(self, split: ImageSplit, crops: list, seed: int, rows=None, channels: int = 3):
        self.split = split
        self.crops = [c if isinstance(c, ViewCrop) else _as_crop(c) for c in crops]
        self.seed = int(seed)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.channels = int(channels)

    def __len__(self) -> int:
        return len(self.split) if self.rows is None else len(self.rows)

    def row(self, i: int) -> int:
        return int(i) if self.rows is None else int(self.rows[i])

    def crops_of(self, epoch: int, i: int, row: int) -> tuple[list, tuple]:
        """Sample ``i``'s crops cut from split row ``row`` (and the size decoded)."""
        def boxes(height, width):
            return [crop_box(self.seed, epoch, i, v, height, width, c) for v, c in enumerate(self.crops)]
        return decode_crops(self.split.read_bytes(row), self.crops, boxes, self.channels)

    def __getitem__(self, key):
        epoch, i = key
        bad = []
        n = len(self)
        for k in range(MAX_REPLACEMENTS):
            row = self.row((i + k) % n)
            try:
                views, _ = self.crops_of(epoch, i, row)
                return views, int(i), bad
            except Exception as e:  # noqa: BLE001 -- PIL raises many types on bad bytes; the reason is logged
                msg = (str(e).strip().splitlines() or [""])[0][:160]
                bad.append((row, f"{type(e).__name__}: {msg}" if msg else type(e).__name__))
        return None, int(i), bad


def _as_crop(c) -> ViewCrop:
    size, scale, ratio = c[:3]
    size = (size, size) if isinstance(size, int) else tuple(size)
    return ViewCrop(size, tuple(scale), tuple(ratio), c[3] if len(c) > 3 else "bilinear")


def collate_crops(items: list) -> tuple:
    """``(views, indices, bad)``: one uint8 batch ``[B, C, h, w]`` per view, the sample indices, the
    unreadable rows met; ``views`` is None when a sample had no readable replacement."""
    indices = torch.tensor([it[1] for it in items], dtype=torch.int64)
    bad = [r for it in items for r in it[2]]
    if any(it[0] is None for it in items):
        return None, indices, bad
    n_views = len(items[0][0])
    return [torch.stack([it[0][v] for it in items]) for v in range(n_views)], indices, bad


class _KeyBatches:
    """The batch sampler: this rank's ``[(epoch, i), ...]`` of every step from ``start`` on."""

    def __init__(self, src: FileBatches):
        self.src = src

    def __iter__(self):
        s = self.src
        epoch, batch = s.start
        lo = s.rank * s.local_batch
        left = s.steps
        while left is None or left > 0:
            perm = epoch_permutation(s.n, s.seed, epoch)
            if s.sample_index is not None:
                perm = s.sample_index(perm)
            for b in range(batch, s.steps_per_epoch):
                if left is not None:
                    if left <= 0:
                        return
                    left -= 1
                start = b * s.batch_size + lo
                yield [(epoch, int(i)) for i in perm[start:start + s.local_batch]]
            epoch, batch = epoch + 1, 0


class _WorkerInit:
    """Each DataLoader worker: dies with the training process (Linux ``PR_SET_PDEATHSIG``, so a SIGKILLed
    run leaves no worker behind) and closes its inherited copies of ``fds`` (the run folder's lock, which
    would otherwise stay held until the last worker exits)."""

    def __init__(self, parent: int, fds: tuple):
        self.parent, self.fds = parent, fds

    def __call__(self, worker_id: int) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if sys.platform.startswith("linux"):
            try:
                import ctypes
                import signal

                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
            except (OSError, AttributeError):
                return
            if os.getppid() != self.parent:  # the parent died before prctl
                os._exit(1)


class FileBatches:
    """This rank's batches from ``start = (epoch, batch)`` on (``steps`` of them; None: without end): each item is
    ``(views, indices)``, ``views`` the list of uint8 batches (one per view, ``batch_size // world``
    samples). ``n`` samples per epoch (``dataset[(epoch, i)]`` for ``i < n``, unless ``sample_index``
    maps permutation entries to dataset indices), ``steps_per_epoch`` global batches of
    ``batch_size`` per epoch (the last partial batch dropped, as the in-memory path).

    ``workers`` DataLoader processes (0: in this process) decode and crop; one iterator spans every
    epoch. Unreadable files are logged once each with a running count (:attr:`bad`)."""

    def __init__(self, dataset: CropDataset, n: int, batch_size: int, seed: int, steps_per_epoch: int,
                 world: int = 1, rank: int = 0, workers: int = 0, start: tuple = (0, 0), pin_memory: bool = False,
                 prefetch: int = 2, sample_index=None, inherited_fds: list = (), steps: int | None = None):
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} is not divisible by world {world}")
        self.dataset, self.n, self.batch_size, self.seed = dataset, int(n), int(batch_size), int(seed)
        self.steps_per_epoch, self.world, self.rank = int(steps_per_epoch), int(world), int(rank)
        self.local_batch = self.batch_size // self.world
        self.workers, self.start, self.pin_memory, self.prefetch = int(workers), tuple(start), pin_memory, prefetch
        self.sample_index = sample_index
        self.inherited_fds = tuple(inherited_fds)
        self.steps = steps
        self.bad: dict = {}
        self._loader = None

    def _note_bad(self, rows: list) -> None:
        split = self.dataset.split
        for r, why in rows:
            if r in self.bad:
                continue
            name = split.paths[r] if split.paths is not None else f"{split.name}/{split.split} image {r}"
            self.bad[r] = name
            logger.warning(f"unreadable image {name} ({why}) skipped, replaced by the next sample; "
                           f"{len(self.bad)} unreadable image(s) so far")

    def __iter__(self):
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=_KeyBatches(self), num_workers=self.workers, collate_fn=collate_crops,
            pin_memory=self.pin_memory, prefetch_factor=self.prefetch if self.workers else None,
            persistent_workers=False, worker_init_fn=_WorkerInit(os.getpid(), self.inherited_fds))
        it = iter(loader)
        self._loader = it
        try:
            for views, indices, bad in it:
                if bad:
                    self._note_bad(bad)
                if views is None:
                    first = self.bad.get(bad[0][0], bad[0][0]) if bad else "?"
                    raise FileSourceError(f"{MAX_REPLACEMENTS} images in a row are unreadable, the first {first}; "
                                          f"check the data set (a truncated copy?) and --resume")
                yield views, indices
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self._loader = None


class ResizedImages(torch.utils.data.Dataset):
    """``dataset[j]`` -> ``(image, ok)``: split row ``rows[j]`` with its shorter side resized to ``size``
    (JPEG draft mode first) and centre-cropped to ``size`` x ``size``, uint8 ``[channels, size, size]``
    (the online kNN monitor's fixed-size images). An unreadable file gives zeros and ``ok=False``."""

    def __init__(self, split: ImageSplit, rows, size: int, channels: int = 3):
        self.split, self.rows, self.size, self.channels = split, np.asarray(rows, dtype=np.int64), int(size), channels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j):
        size = self.size

        def centre(height, width):
            side = min(height, width)
            return [((height - side) // 2, (width - side) // 2, side, side)]
        try:
            out, _ = decode_crops(self.split.read_bytes(int(self.rows[j])), [ViewCrop((size, size), (1.0, 1.0),
                                                                                      (1.0, 1.0))], centre, self.channels)
            return out[0], True
        except Exception:  # noqa: BLE001 -- an unreadable file is left out of the monitor
            return torch.zeros(self.channels, size, size, dtype=torch.uint8), False


def augment_cropped(aug: ViewAugment, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``aug`` without its crop on already cropped views ``x`` (uint8 ``[B, C, h, w]`` of ``aug``'s size):
    flip, jitter, grayscale, blur, solarize and normalise with per-sample parameters from ``generator``;
    the crop box is the whole view (an identity resample). Needs ``version=2``."""
    if aug.version != 2:
        raise ValueError("the file-backed source applies augment.version 2 ops after the crop; set augment.version=2")
    post = aug if aug.interpolation == "bilinear" else dataclasses.replace(aug, interpolation="bilinear")
    b, _, h, w = x.shape
    params = post.sample(x.shape, generator)
    params.boxes = (torch.zeros(b), torch.zeros(b), torch.full((b,), float(h)), torch.full((b,), float(w)))
    return post.apply(x, params)


def choose_source(split: ImageSplit, setting: str = "auto", channels: int = 3,
                  limit: int = AUTO_MEMORY_LIMIT_BYTES) -> tuple[str, str]:
    """``("memory" | "files", why)`` for ``data.source`` = ``auto`` / ``memory`` / ``files``.

    ``auto``: in-memory splits stay in memory; a file-backed split goes to files when the headers of
    up to 32 images spread over it show different sizes, or when ``len * channels * H * W`` (the
    decoded tensor) exceeds ``limit``; otherwise memory."""
    from PIL import Image

    if setting == "memory" or split.images is not None:
        if setting == "files":
            raise ValueError(f"{split.name}/{split.split} is held in memory; data.source=files needs a file-backed "
                             f"data set (folder:, pack:, imagenet, tinyimagenet)")
        return "memory", "in memory" if split.images is not None else "data.source=memory"
    if setting == "files":
        return "files", "data.source=files"
    n = len(split)
    probe = sorted({int(i) for i in np.linspace(0, n - 1, num=min(n, _PROBE))})
    sizes = set()
    for i in probe:
        try:
            with Image.open(io.BytesIO(split.read_bytes(i))) as im:
                sizes.add(im.size)
        except Exception:  # noqa: BLE001 -- an unreadable file: the file source skips it, memory would fail
            return "files", f"image {i} cannot be read"
    if len(sizes) > 1:
        return "files", f"image sizes differ ({len(sizes)} sizes among {len(probe)} sampled)"
    w, h = sizes.pop()
    need = n * channels * w * h
    if need > limit:
        return "files", f"the decoded set would take {need / 2**30:.1f} GiB (> {limit / 2**30:.0f} GiB)"
    return "memory", f"the decoded set takes {need / 2**30:.2f} GiB (<= {limit / 2**30:.0f} GiB)"
