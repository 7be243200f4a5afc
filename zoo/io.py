"""Zoo folders: ``model.safetensors`` (backbone state dict) + ``config.json`` (how to build it).

``config.json`` fields: ``name``, ``arch`` (keyword arguments of :func:`zoo.backbones.build_resnet`),
``feature_dim``, ``preprocess`` (resize, crop, mean, std, interpolation, in_chans), ``method``,
``training`` (free-form provenance), ``format_version``. Every write goes to a temporary file in
the target directory and is renamed into place, so a reader never sees a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .base import SSLZooError, atomic_path, atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class WeightsError(SSLZooError, ValueError):
    """Weights that cannot be used (missing, corrupt, mismatched); one line saying what to do."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonicalise_safetensors_header(path: str | Path) -> None:
    """Rewrite, in place, the JSON header of the safetensors file ``path`` with its ``__metadata__``
    keys sorted, so the same tensors and metadata always give the same bytes (same sha256).

    ``safetensors.save_file`` writes the metadata from a hash map, in an order that changes from
    process to process (four conversions of one checkpoint gave two sha256); the tensor entries and
    data are already in a fixed order. The header is compact JSON, so reordering keeps its length and
    every data offset."""
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
        header = json.loads(raw)
        meta = header.pop("__metadata__", None)
        ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}) | header
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:  # not the compact header safetensors writes: leave the file as it is
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def atomic_save_safetensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """``safetensors.save_file`` to a temporary file beside ``path``, its header made canonical
    (:func:`canonicalise_safetensors_header`: byte-reproducible), then renamed into place."""
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
        canonicalise_safetensors_header(tmp)


def save_folder(state_dict: dict, config: dict, out_dir: str | Path) -> Path:
    """Write a zoo folder; returns the weights path. Tensors are made contiguous and detached."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_save_safetensors(tensors, out_dir / WEIGHTS_NAME,
                            {"format": "pt", "sslzoo_format_version": str(FORMAT_VERSION)})
    cfg = dict(config, format_version=FORMAT_VERSION, sha256=sha256_file(out_dir / WEIGHTS_NAME))
    atomic_write_text(out_dir / CONFIG_NAME, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out_dir / WEIGHTS_NAME


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise WeightsError(f"{folder} has no {CONFIG_NAME}; a zoo folder holds {WEIGHTS_NAME} + {CONFIG_NAME}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def load_safetensors(path: str | Path, expected_sha256: str | None = None) -> dict:
    """Read a safetensors file, checking its sha256 first when one is expected."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if expected_sha256:
        got = sha256_file(path)
        if got != expected_sha256:
            raise WeightsError(f"{path}: sha256 {got[:12]}… does not match the pinned {expected_sha256[:12]}…; "
                               f"delete it and download again")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises SafetensorError / OSError on corrupt headers
        raise WeightsError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); re-download it") from None


def load_strict(module: torch.nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with a one-line message naming missing / unexpected keys
    and shape mismatches."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    dtypes = [f"{k} {str(state_dict[k].dtype).removeprefix('torch.')}" for k, v in own.items()
              if k in state_dict and v.is_floating_point() and not state_dict[k].is_floating_point()]
    if dtypes and not (missing or unexpected or shapes):  # copy_ would cast them silently: chance-level features
        more = f" (+{len(dtypes) - 3} more)" if len(dtypes) > 3 else ""
        raise WeightsError(f"{source} holds integer tensors for float parameters ({', '.join(dtypes[:3])}{more}); "
                           f"export the weights as floating point")
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
                parts.append(f"{label}: {', '.join(items[:3])}{more}")
        raise WeightsError(f"{source} does not fit the architecture: {'; '.join(parts)}")
    module.load_state_dict(state_dict, strict=True)
