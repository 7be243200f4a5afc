"""Frozen-feature extraction with an on-disk cache.

The cache key is the sha256 of (weights sha256 — or of the parameters when the model has no
weights file —, dataset fingerprint, split, the preprocessing, the precision and a format
version). Cached features live in ``$SSLZOO_HOME/features/<key>.safetensors`` (default
``~/.cache/sslzoo``), written atomically, so a killed run never leaves a half file behind, with the sha256 of their
content in the file's metadata, checked on every read (a flipped byte means recompute, never use).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from zoo.base import home
from zoo.io import WeightsError, atomic_save_safetensors

from .datasets import DatasetError, ImageSplit, default_workers

logger = logging.getLogger(__name__)

FEATURE_FORMAT = 2  # 2: the features' sha256 is recorded in the file's metadata and checked on read


def params_sha256(model: torch.nn.Module) -> str:
    """A fingerprint of a model's tensors, for models that came from no weights file."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    return getattr(model, "weights_sha256", None) or params_sha256(model)


def cache_key(model_fp: str, split: ImageSplit, preprocess, precision: str) -> str:
    payload = {"model": model_fp, "data": split.fingerprint(), "dataset": split.name, "split": split.split,
               "preprocess": preprocess.to_dict() if hasattr(preprocess, "to_dict") else repr(preprocess),
               "precision": precision, "format": FEATURE_FORMAT}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _check_input(model, split: ImageSplit, preprocess) -> None:
    need = preprocess.in_chans
    have = split.channels
    if have not in (need, 1, 3, 4):
        raise WeightsError(f"{split.name} images have {have} channels; the model takes {need}")


class DecodedBatches(torch.utils.data.Dataset):
    """Item ``k`` is batch ``batches[k]`` of a file-backed split: images ``b * batch_size ..`` decoded
    (:meth:`ImageSplit.get`) and preprocessed one by one, stacked. Run in DataLoader workers, one whole
    batch per worker call, so batch boundaries and order are those of in-process extraction whatever
    the number of workers. A file that cannot be decoded comes back as its one-line message (raised
    by :func:`iter_batches` in the main process), never as a worker traceback."""

    def __init__(self, split: ImageSplit, preprocess, batch_size: int, batches):
        self.split, self.preprocess, self.batch_size, self.batches = split, preprocess, int(batch_size), batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        b = self.batches[k]
        start, stop = b * self.batch_size, min(len(self.split), (b + 1) * self.batch_size)
        try:
            return b, self.split.batch(start, stop, self.preprocess)
        except DatasetError as e:
            return b, str(e)


def _worker_init(_):
    torch.set_num_threads(1)  # N workers x all cores would oversubscribe the CPU


def iter_batches(split: ImageSplit, preprocess, batch_size: int, *, workers: int | None = None, batches=None):
    """``(b, x)`` for batch ``b`` of ``batches`` (default all: ``range(ceil(N / batch_size))``) in order, ``x``
    the preprocessed images ``b * batch_size ..`` as one tensor. In-memory splits: sliced and
    preprocessed as one batch in this process (``workers`` ignored). File-backed splits (folders,
    ``imagenet``, ``pack:``): decoded + preprocessed in ``workers`` DataLoader processes (default
    :func:`eval.datasets.default_workers`; 0: in this process); the batches are identical for any
    ``workers``."""
    n = len(split)
    batch_size = int(batch_size)
    if batches is None:
        batches = range(-(-n // batch_size))
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: decode in this process), got {workers}")
    if split.images is not None or workers == 0 or len(batches) < 2:
        for b in batches:
            yield b, split.batch(b * batch_size, min(n, (b + 1) * batch_size), preprocess)
        return
    loader = torch.utils.data.DataLoader(DecodedBatches(split, preprocess, batch_size, batches), batch_size=None,
                                         shuffle=False, num_workers=min(workers, len(batches)),
                                         worker_init_fn=_worker_init, prefetch_factor=2, persistent_workers=False)
    for b, x in loader:
        if isinstance(x, str):
            raise DatasetError(x)
        yield b, x


@torch.no_grad()
def extract(model: torch.nn.Module, split: ImageSplit, *, preprocess=None, batch_size: int = 512,
            precision: str = "fp32", device: str | None = None, cache: bool = True,
            desc: str | None = None, workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[N, D]`` (float32) and labels ``[N]`` of ``split`` under ``model``.

    File-backed splits are decoded in ``workers`` DataLoader processes (:func:`iter_batches`; the
    features do not depend on ``workers``).

    ``precision`` is ``fp32`` (default; bit-stable) or ``bf16`` (autocast; about 2x faster on CPUs
    with AVX-512 bf16)."""
    preprocess = preprocess or model.preprocess
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
    labels = torch.as_tensor(np.asarray(split.targets), dtype=torch.int64)
    key = cache_key(model_fingerprint(model), split, preprocess, precision)
    path = home() / "features" / f"{key}.safetensors"
    if cache and path.is_file():
        feats = _read_cached(path, len(split))
        if feats is not None:
            return feats, labels
    _check_input(model, split, preprocess)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(dev).eval()
    out = []
    with tqdm(total=len(split), desc=desc or f"features {split.name}/{split.split}", unit="img",
              dynamic_ncols=True, leave=False) as bar:
        for _, xb in iter_batches(split, preprocess, batch_size, workers=workers):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                f = model(xb.to(dev))
            out.append(f.float().cpu().reshape(len(xb), -1))
            bar.update(len(xb))
    feats = torch.cat(out) if out else torch.empty(0, 0)
    if cache:
        feats = feats.contiguous()
        atomic_save_safetensors({"features": feats}, path, metadata={"sha256": _tensor_sha256(feats)})
    return feats, labels


def _tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def _read_cached(path: Path, n: int) -> torch.Tensor | None:
    """The cached features if the file is intact (readable, ``n`` rows, content sha256 equal to the
    one recorded when it was written); otherwise ``None`` after one warning line, and the caller
    recomputes and overwrites the entry. A truncated file or a flipped byte is never used. The warning
    goes to the ``eval.features`` logger (no handler configured: Python prints it to stderr)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get("sha256")
            feats = f.get_tensor("features")
    except Exception as e:  # unreadable header / truncated data
        logger.warning("warning: feature cache %s is unreadable (%s); recomputing", path, type(e).__name__)
        return None
    if feats.shape[0] != n or recorded is None or _tensor_sha256(feats) != recorded:
        logger.warning("warning: feature cache %s does not match its recorded sha256 or size; recomputing", path)
        return None
    return feats


#: The raw-pixel baseline is the preprocessed image average-pooled to at most this side. A 224 px model's
#: input is 150,528 values per image (36 GB of features for 60,000 images: more than most machines hold),
#: and an image upsampled to 224 px holds no more than its native pixels; at or below this side (the
#: Fashion-MNIST models' 28 px) the features are the preprocessed pixels themselves, as before.
PIXELS_MAX_SIDE = 32


class Pixels(torch.nn.Module):
    """The raw-pixel baseline: the preprocessed image, flattened; average-pooled to
    :data:`PIXELS_MAX_SIDE` first when the preprocessing crops larger (``label`` and ``weights_sha256``
    then say so: ``pixels (pooled to 32 px)`` / ``pixels-pool32``, so results and cached features of the
    two kinds never mix)."""

    feature_dim = None

    def __init__(self, preprocess, max_side: int = PIXELS_MAX_SIDE):
        super().__init__()
        self.preprocess = preprocess
        crop = getattr(preprocess, "crop", None)
        self.side = int(max_side) if crop is not None and crop > max_side else None
        self.weights_sha256 = "pixels" if self.side is None else f"pixels-pool{self.side}"
        self.label = "pixels" if self.side is None else f"pixels (pooled to {self.side} px)"

    def forward(self, x):
        if self.side is not None:
            x = torch.nn.functional.adaptive_avg_pool2d(x, self.side)
        return x.flatten(1)
