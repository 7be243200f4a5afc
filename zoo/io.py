"""Zoo folders: ``model.safetensors`` (backbone state dict) + ``config.json`` (how to build it).

``config.json`` fields: ``name``, ``arch`` (keyword arguments of :func:`zoo.backbones.build_resnet`),
``feature_dim``, ``preprocess`` (resize, crop, mean, std, interpolation, in_chans), ``method``,
``training`` (free-form provenance), ``format_version``. Every write goes to a temporary file in
the target directory and is renamed into place, so a reader never sees a half-written file.

For every architecture timm can build (a plain torchvision-layout ResNet-18/34/50 with the ImageNet stem:
no expansion block, no CIFAR stem, base width 64) ``config.json`` also carries the keys timm's Hub loader
reads (:func:`timm_config`: ``architecture``, ``num_classes`` 0, ``num_features``, ``pretrained_cfg``, and
``model_args`` for a channel count other than 3), so a mirror of the folder loads with
``timm.create_model("hf-hub:ORG/NAME", pretrained=True)``: the state dict keys are already timm's.
"""
from __future__ import annotations

import hashlib
import math
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


TIMM_ARCHS = ("resnet18", "resnet34", "resnet50")  # zoo.backbones.ARCHS that timm builds with the same keys


def timm_config(arch: dict, preprocess: dict, feature_dim: int, license: str | None = None) -> dict | None:
    """The ``config.json`` keys timm reads (``timm.models.load_model_config_from_hf``) for a zoo encoder with
    ``arch`` (:func:`zoo.backbones.build_resnet` arguments) and ``preprocess`` (:class:`zoo.preprocess.Preprocess`
    fields), or None when timm has no model with the same layer layout (expansion block, CIFAR stem, other
    width): those load with :func:`zoo.hub.from_pretrained`. timm's model is headless (``num_classes`` 0), so
    its output is the pooled feature; its eval transform (resize ``crop / crop_pct``, centre crop) is ours."""
    if (arch.get("arch") not in TIMM_ARCHS or arch.get("stem", "imagenet") != "imagenet"
            or not arch.get("maxpool", True) or arch.get("width", 64) != 64 or arch.get("expand_dim")):
        return None
    crop, resize = int(preprocess["crop"]), int(preprocess["resize"])
    crop_pct = crop / resize
    while math.floor(crop / crop_pct) < resize:  # timm resizes to floor(crop / crop_pct): land on `resize`
        crop_pct = math.nextafter(crop_pct, 0.0)
    chans = int(preprocess.get("in_chans", arch.get("in_chans", 3)))
    pretrained_cfg = {"input_size": [chans, crop, crop], "interpolation": preprocess.get("interpolation", "bilinear"),
                      "crop_pct": crop_pct, "crop_mode": "center", "mean": list(preprocess["mean"]),
                      "std": list(preprocess["std"]), "num_classes": 0, "pool_size": [-(-crop // 32)] * 2,
                      "first_conv": "conv1", "classifier": "fc", "fixed_input_size": False}
    if license:
        pretrained_cfg["license"] = license.lower()
    keys = {"architecture": arch["arch"], "num_classes": 0, "num_features": int(feature_dim),
            "pretrained_cfg": pretrained_cfg}
    if chans != 3:
        keys["model_args"] = {"in_chans": chans}
    return keys


def save_folder(state_dict: dict, config: dict, out_dir: str | Path) -> Path:
    """Write a zoo folder; returns the weights path. Tensors are made contiguous and detached. ``config.json``
    gets timm's keys (:func:`timm_config`) when timm can represent the architecture."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_save_safetensors(tensors, out_dir / WEIGHTS_NAME,
                            {"format": "pt", "sslzoo_format_version": str(FORMAT_VERSION)})
    timm_keys = None
    if all(k in config for k in ("arch", "preprocess", "feature_dim")):
        timm_keys = timm_config(config["arch"], config["preprocess"], config["feature_dim"], config.get("license"))
    cfg = dict(timm_keys or {}, **config)
    cfg.update(format_version=FORMAT_VERSION, sha256=sha256_file(out_dir / WEIGHTS_NAME))
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
