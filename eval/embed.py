"""Features of a folder of images (or any data set spec) to a file people can open: ``sslzoo embed``.

    sslzoo embed --model NAME_OR_DIR --data PHOTOS/ --out feats.npy
    np.load("feats.npy")                                   # float32 [N, D], one row per image
    json.load(open("feats.npy.index.json"))["files"]       # the image of each row, in row order

``--data`` is a folder of images (read recursively, no class structure needed: every file with an
image suffix below it, hidden files and folders skipped, in sorted path order) or any data set spec
``sslzoo eval`` takes (catalogue name, ``folder:PATH``, ``npz:PATH``) with ``--split``. The output is
chosen by its suffix: ``.npy`` (``numpy.load``) or ``.safetensors`` (tensor ``features``; the model,
weights sha256 and data in its metadata). Beside it, ``OUT.index.json`` names each row's image
(relative path, or ``split/i`` for in-memory data sets), with the labels when the data has any, and
records what was computed (model, weights sha256, data fingerprint, preprocessing, precision).

Streaming and resumable: the rows are written batch by batch into ``.OUT.partial`` (already in the
final format, memory-mapped) and the number of finished rows into ``.OUT.partial.json`` after each
batch. Rerunning the same command after an interruption continues where it stopped; a partial file
of another job (other model, data or settings) is started over. The finished file is renamed onto
``OUT``, so ``OUT`` is never half-written; an existing ``OUT`` holding other features is replaced only
with ``overwrite=True`` (``--overwrite``), the same features are not recomputed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from zoo.base import SSLZooError, UsageError, atomic_write_text, check_out_path, current_umask, fsync_dir, one_line
from zoo.hub import create_model

from .datasets import IMAGE_EXTS, DatasetError, DatasetNotFound, ImageSplit, list_images, load_split
from .features import model_fingerprint
from .run import model_label

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "EMBED_VERSION", "EmbedError", "load_image_folder", "index_path", "partial_paths", "embed"]

#: Output suffix -> format.
FORMATS = {".npy": "npy", ".safetensors": "safetensors"}
EMBED_VERSION = 1


class EmbedError(SSLZooError, ValueError):
    """An output that cannot be written as asked (an existing different file, a bad partial file)."""


# ----------------------------------------------------------------------------- reading an unlabelled folder


def load_image_folder(path) -> ImageSplit:
    """Every image below ``path`` (suffixes :data:`eval.datasets.IMAGE_EXTS`, case-insensitive;
    hidden files and folders skipped), sorted by relative path, as a file-backed split with label -1."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetNotFound(f"image folder {root} not found; give a folder of images or a data set spec "
                              f"(fashion-mnist, folder:PATH, npz:PATH)")
    found = list_images(root)
    if not found:
        raise DatasetError(f"no images in {root} (looked for {', '.join(IMAGE_EXTS)} in it and its sub-folders); "
                           f"give a folder that holds images")
    return ImageSplit(root.name, "all", np.full(len(found), -1, dtype=np.int64), [], paths=found, source=str(root))


def _names(split: ImageSplit) -> list[str]:
    if split.paths is None:
        return [f"{split.split}/{i}" for i in range(len(split))]
    base = Path(split.source) if split.source else None
    out = []
    for p in split.paths:
        p = Path(p)
        try:
            out.append(p.relative_to(base).as_posix() if base else str(p))
        except ValueError:
            out.append(str(p))
    return out


# ----------------------------------------------------------------------------- files


def index_path(out) -> Path:
    """``OUT.index.json``: the rows' image names and what was computed."""
    out = Path(out)
    return out.with_name(out.name + ".index.json")


def partial_paths(out) -> tuple[Path, Path]:
    """``(.OUT.partial, .OUT.partial.json)``: the unfinished file and its progress record."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.partial.json")


def _safetensors_header(n: int, d: int, metadata: dict) -> bytes:
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()},
              "features": {"dtype": "F32", "shape": [n, d], "data_offsets": [0, n * d * 4]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def _create_partial(path: Path, fmt: str, n: int, d: int, metadata: dict) -> None:
    if fmt == "npy":
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
        del mm
    else:
        header = _safetensors_header(n, d, metadata)
        with open(path, "wb") as f:
            f.write(header)
            f.truncate(len(header) + n * d * 4)


def _open_partial(path: Path, fmt: str, n: int, d: int, metadata: dict) -> np.memmap:
    if fmt == "npy":
        mm = np.load(path, mmap_mode="r+")
        if mm.shape != (n, d) or mm.dtype != np.float32:
            raise EmbedError(f"{path}: shape {mm.shape} {mm.dtype}, expected ({n}, {d}) float32")
        return mm
    offset = len(_safetensors_header(n, d, metadata))
    if path.stat().st_size != offset + n * d * 4:
        raise EmbedError(f"{path}: {path.stat().st_size} bytes, expected {offset + n * d * 4}")
    return np.memmap(path, dtype=np.float32, mode="r+", offset=offset, shape=(n, d))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- the job


def _load_data(data: str, split: str, root, download) -> tuple[ImageSplit, str]:
    p = Path(data).expanduser()
    if not data.startswith(("folder:", "npz:")) and (p.is_dir() or os.sep in data or data.startswith(".")):
        return load_image_folder(p), str(p.resolve())
    s = load_split(data, split, root=root, download=download)
    return s, f"{data} ({split})"


@torch.no_grad()
def embed(model_spec: str, data: str, out, *, split: str = "train", batch_size: int = 256, precision: str = "fp32",
          overwrite: bool = False, root: str | None = None, download: bool = False, device: str | None = None) -> dict:
    """Features of every image of ``data`` under ``model_spec`` to ``out`` (``.npy`` or
    ``.safetensors``) + ``out.index.json``; resumable (see the module docstring). Returns the index
    (without the file names) plus ``resumed_from`` (rows found done) and ``computed`` (rows computed now)."""
    out = Path(out).expanduser()
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(f"--out {out}: cannot tell the file format from {out.suffix or 'no suffix'!r}; "
                         f"use .npy (numpy) or .safetensors")
    check_out_path(out)
    if precision not in ("fp32", "bf16"):
        raise UsageError(f"precision must be fp32 or bf16, not {precision!r}")
    if int(batch_size) < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    model = create_model(model_spec, pretrained=True)
    images, data_desc = _load_data(str(data), split, root, download)
    if len(images) == 0:
        raise DatasetError(f"{data_desc} holds no images")
    pre = model.preprocess
    try:
        x0 = pre(images.get(0))
    except ValueError as e:
        raise DatasetError(f"{data_desc} does not fit {model_label(model_spec)}: {one_line(str(e))}") from None
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(dev).eval()
    d = int(model(x0[None].to(dev)).reshape(1, -1).shape[1])
    n = len(images)
    job = {"version": EMBED_VERSION, "model": model_label(model_spec), "weights_sha256": model_fingerprint(model),
           "data": data_desc, "data_sha256": images.fingerprint(), "preprocess": pre.to_dict(),
           "precision": precision, "format": fmt, "rows": n, "dim": d}
    job_id = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()
    meta = {"model": job["model"], "weights_sha256": job["weights_sha256"], "data": data_desc,
            "data_sha256": job["data_sha256"], "job": job_id, "index": index_path(out).name}
    partial, progress = partial_paths(out)

    state = _read_json(progress) if progress.exists() else None
    ours = isinstance(state, dict) and state.get("job") == job_id
    if ours and not partial.exists():  # a run stopped after the rename: only the progress record is left
        progress.unlink()
        ours, state = False, None
    if not ours and out.exists():
        idx = _read_json(index_path(out))
        if isinstance(idx, dict) and idx.get("job") == job_id:
            logger.debug("%s already holds these features (%d x %d); nothing to do", out, n, d)
            return dict(idx, files=None, resumed_from=n, computed=0)
        if not overwrite:
            raise EmbedError(f"--out {out} exists and holds other features (or no {index_path(out).name}); "
                             f"pass --overwrite to replace it, or choose another --out")
    start = 0
    if ours:
        try:
            mm = _open_partial(partial, fmt, n, d, meta)
            start = min(max(int(state.get("done", 0)), 0), n)
        except (EmbedError, OSError, ValueError) as e:
            logger.warning("warning: %s is unusable (%s); starting over", partial, one_line(str(e)))
            ours = False
    if not ours:
        if partial.exists() or progress.exists():
            logger.info("%s belongs to another job (model, data or settings changed); starting over", partial)
        _create_partial(partial, fmt, n, d, meta)
        atomic_write_text(progress, json.dumps({"job": job_id, "done": 0, "rows": n}))
        mm = _open_partial(partial, fmt, n, d, meta)
    if start:
        logger.info("resuming %s at row %d of %d", out, start, n)
    try:
        with tqdm(total=n, initial=start, desc=f"embed {job['model']}", unit="img", dynamic_ncols=True,
                  leave=False) as bar:
            for i in range(start, n, batch_size):
                j = min(n, i + batch_size)
                xb = images.batch(i, j, pre).to(dev)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    f = model(xb)
                f = f.float().cpu().reshape(j - i, -1)
                if not torch.isfinite(f).all():
                    raise EmbedError(f"{job['model']}: features of rows {i}..{j - 1} contain NaN/inf; the weights "
                                     f"are probably corrupt")
                mm[i:j] = f.numpy()
                mm.flush()
                atomic_write_text(progress, json.dumps({"job": job_id, "done": j, "rows": n}))
                bar.update(j - i)
    except (DatasetError, EmbedError):  # bad data: the partial file is of no use once the data is fixed
        del mm
        partial.unlink(missing_ok=True)
        progress.unlink(missing_ok=True)
        raise
    del mm
    index = dict(job, job=job_id, files=_names(images))
    labelled = np.asarray(images.targets) >= 0
    if labelled.any():
        index["labels"] = [int(v) for v in images.targets]
        index["classes"] = [str(c) for c in images.classes]
    with open(partial, "rb") as fh:
        os.fsync(fh.fileno())
    atomic_write_text(index_path(out), json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    os.chmod(partial, 0o666 & ~current_umask())
    os.replace(partial, out)
    fsync_dir(out.parent)
    progress.unlink(missing_ok=True)
    logger.debug("wrote %s (%d x %d float32) and %s", out, n, d, index_path(out).name)
    return dict(index, files=None, resumed_from=start, computed=n - start)

