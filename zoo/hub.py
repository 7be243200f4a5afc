"""Model factory and weight resolution.

``create_model(name_or_folder, pretrained=True, weights=None)`` returns the encoder with
``.preprocess`` (a :class:`zoo.preprocess.Preprocess`), ``.pretrained_cfg`` (the record or folder
config) and ``.weights_sha256`` attached. Weights resolve, in order:

1. ``weights=``: an explicit ``model.safetensors`` file or a zoo folder;
2. the copy bundled inside the package (``zoo/bundled/NAME``), sha256-checked;
3. the HF Hub mirror via ``huggingface_hub.hf_hub_download`` (repo id, filename, pinned revision;
   honours ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME``), sha256 checked after download;
4. the upstream checkpoint, converted (converters arrive with the research models).

Each step that fails says why in one line (a ``UserWarning``) and the next is tried; when all fail,
:class:`WeightsError` lists every reason. A sha256 mismatch is never loaded.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .backbones import build_resnet
from .io import CONFIG_NAME, WEIGHTS_NAME, WeightsError, load_safetensors, load_strict, read_config, sha256_file
from .preprocess import Preprocess
from .registry import BUNDLED_DIR, ModelRecord, get_record


def is_zoo_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / WEIGHTS_NAME).is_file() and (p / CONFIG_NAME).is_file()


def _from_hf(record: ModelRecord) -> Path:
    w = record.weights
    if not w.hf_repo:
        raise WeightsError("no HF Hub mirror registered")
    if not w.hf_revision:
        raise WeightsError(f"HF mirror {w.hf_repo} has no pinned revision in the registry")
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(w.hf_repo, w.hf_filename, revision=w.hf_revision)
    except Exception as e:  # offline, 404, auth, ...: one line, then the next source
        raise WeightsError(f"HF Hub {w.hf_repo}@{w.hf_revision[:12]}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return Path(path)


def resolve_weights(record: ModelRecord, weights: str | Path | None = None) -> tuple[Path, str]:
    """Return ``(path to model.safetensors, where it came from)`` for ``record``."""
    if weights is not None:
        p = Path(weights)
        p = p / WEIGHTS_NAME if p.is_dir() else p
        if not p.is_file():
            raise WeightsError(f"weights {weights} not found (give a model.safetensors file or a zoo folder)")
        return p, f"explicit file {p}"
    reasons = []
    w = record.weights
    candidates = []
    if w.bundled:
        candidates.append(("bundled", lambda: BUNDLED_DIR / w.bundled / WEIGHTS_NAME))
    candidates.append(("hf", lambda: _from_hf(record)))
    for label, get in candidates:
        try:
            p = get()
            if not p.is_file():
                raise WeightsError(f"{p} is missing")
            if w.sha256:
                got = sha256_file(p)
                if got != w.sha256:
                    raise WeightsError(f"{p} has sha256 {got[:12]}…, the registry pins {w.sha256[:12]}…; refusing it")
            return p, f"{label}: {p}"
        except WeightsError as e:
            reasons.append(f"{label}: {e}")
            warnings.warn(f"{record.name}: {label} weights unavailable ({e}); trying the next source", stacklevel=3)
    if w.upstream_url:
        reasons.append(f"upstream: converting {w.upstream_url} ({w.upstream_format}) is not available yet")
    raise WeightsError(f"no usable weights for {record.name}: " + " | ".join(reasons))


def _finish(model: torch.nn.Module, preprocess: Preprocess, cfg, sha: str | None) -> torch.nn.Module:
    model.preprocess = preprocess
    model.pretrained_cfg = cfg
    model.weights_sha256 = sha
    model.eval()
    return model


def create_model(name_or_folder: str | Path, pretrained: bool = True, weights: str | Path | None = None,
                 **arch_overrides) -> torch.nn.Module:
    """Build a zoo encoder by registry name, or from a zoo folder (``model.safetensors`` +
    ``config.json``). The model is returned in eval mode."""
    folder = Path(name_or_folder)
    if folder.exists() or isinstance(name_or_folder, Path) or "/" in str(name_or_folder):
        if not is_zoo_folder(folder):
            raise WeightsError(f"{folder} is not a zoo folder: it needs {WEIGHTS_NAME} + {CONFIG_NAME} "
                               f"(as written by `sslzoo train` or `sslzoo convert`)")
        cfg = read_config(folder)
        try:
            arch, pre = dict(cfg["arch"]), Preprocess.from_dict(cfg["preprocess"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{folder}/{CONFIG_NAME} lacks a valid 'arch'/'preprocess' section ({e})") from None
        arch.update(arch_overrides)
        model = build_resnet(**arch)
        sha = None
        if pretrained:
            path = Path(weights) if weights else folder / WEIGHTS_NAME
            sha = sha256_file(path)
            if not weights and cfg.get("sha256") and cfg["sha256"] != sha:
                raise WeightsError(f"{path} has sha256 {sha[:12]}…, but {CONFIG_NAME} records "
                                   f"{cfg['sha256'][:12]}…; the file was modified or truncated")
            load_strict(model, load_safetensors(path), source=str(path))
        return _finish(model, pre, cfg, sha)
    record = get_record(str(name_or_folder))
    arch = dict(record.arch)
    arch.update(arch_overrides)
    model = build_resnet(**arch)
    sha = None
    if pretrained:
        path, _ = resolve_weights(record, weights)
        sha = sha256_file(path)
        load_strict(model, load_safetensors(path), source=f"{record.name} weights {path}")
    return _finish(model, record.preprocess, record, sha)


def get_preprocessor(name_or_folder: str | Path) -> Preprocess:
    if is_zoo_folder(name_or_folder):
        return Preprocess.from_dict(read_config(name_or_folder)["preprocess"])
    return get_record(str(name_or_folder)).preprocess
