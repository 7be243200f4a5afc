"""Converters: an upstream checkpoint -> a zoo folder (``sslzoo convert NAME --checkpoint PATH_OR_URL --out DIR``).

One converter per upstream format (``FORMATS``); each maps the upstream module layout onto
:func:`zoo.backbones.build_resnet` exactly as upstream builds it:

``dissl-torchhub``
    YannDubs/Invariant-Self-Supervised-Learning release files: a plain torchvision ResNet-50 state dict
    without ``fc.*``; the d8192 models add the expansion block as ``resizer.*``, which becomes ``avgpool.0.*``
    (upstream inserts it as ``resnet.avgpool = Sequential(resizer, avgpool)``).
``dcl-dataparallel``
    chingyaoc/DCL ``model_N.pth``: ``nn.DataParallel(Model()).state_dict()``, keys ``module.f.N.*`` and
    ``module.g.N.*``. ``f`` is ``Sequential(conv1 3x3 s1 p1, bn1, relu, layer1..4, avgpool)`` (torchvision's
    ResNet-50 children without maxpool and fc), so f.0 -> conv1, f.1 -> bn1, f.3..f.6 -> layer1..layer4;
    ``g`` (Linear-BN-ReLU-Linear projection) goes to ``heads.safetensors``.
``lightning-convnet``
    a PyTorch Lightning ``.ckpt`` whose module holds a torchvision ResNet as ``convnet`` (UvA tutorial 17):
    ``state_dict`` keys ``convnet.*``; ``convnet.fc.*`` (the SimCLR MLP) goes to the heads file.
``solo-learn``
    a solo-learn ``.ckpt`` (used by AdaInf): ``state_dict`` keys ``backbone.*`` (torchvision ResNet, fc removed;
    on CIFAR conv1 is 3x3 stride 1 **padding 2** and the max-pool is dropped); ``projector.*``,
    ``classifier.*``, ``momentum_*`` ... go to the heads file.
``sslzoo-checkpoint``
    this project's ``sslzoo train`` ``checkpoint.pt``: ``model`` (``backbone.*`` + method heads) and the recipe
    ``config``, which gives the architecture and preprocessing.
``flax-msgpack``
    a Flax/JAX checkpoint (``flax.serialization.to_bytes({'params': ..., 'batch_stats': ...})``, UvA tutorial 17's
    JAX notebook) of a flaxmodels ResNet-18/34: read as msgpack (no pickle, no jax needed) and mapped onto
    torchvision names by :mod:`zoo.flax`. A msgpack file given to a PyTorch format is answered with this name.

Loading is strict: every key of the checkpoint is consumed (backbone or heads) and every backbone parameter
is filled, else one line names the missing / unexpected keys. Prefixes are removed with ``str.removeprefix``.
Pickles are opened only with ``torch.load(weights_only=True)``; references to Lightning / omegaconf metadata
classes (hyper-parameter dicts, callback keys) are replaced by inert stand-ins whose code never runs, and any
other global (``os.system``, ``builtins.eval`` ...) refuses the file.

Output (written to a temporary folder beside ``--out``, then each file renamed into place, ``config.json``
last): ``model.safetensors`` (backbone only), ``config.json``, ``heads.safetensors`` when the checkpoint has
heads, ``README.md`` (card). Only these files (:data:`OUTPUT_NAMES`) are ever written into ``--out``: other
files there are never touched, and existing ones of these names are refused unless ``--overwrite``.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import json
import os
import pickle
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from . import flax as flax_ckpt
from .backbones import ARCHS, build_resnet
from .base import atomic_dir, atomic_path, home
from .io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    WeightsError,
    atomic_save_safetensors,
    atomic_write_text,
    read_config,
    save_folder,
    sha256_file,
)
from .preprocess import Preprocess

log = logging.getLogger(__name__)

HEADS_NAME = "heads.safetensors"
CARD_NAME = "README.md"
#: every file ``convert`` writes into ``--out`` (the only ones it may replace, with ``overwrite``)
OUTPUT_NAMES = (WEIGHTS_NAME, HEADS_NAME, CARD_NAME, CONFIG_NAME)


# ----------------------------------------------------------------------------- safe loading

# Metadata that Lightning / solo-learn checkpoints pickle next to the tensors. These globals are replaced by
# inert stand-ins (their code never runs); everything else that weights_only refuses stays refused.
_INERT_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "argparse.Namespace",
                   "typing.", "pathlib.", "numpy.")
_DICT_LIKE = ("AttributeDict",)  # dict subclasses pickled as NEWOBJ + SETITEMS: become plain dicts


class _Inert:
    """Stands in for a metadata class or function found in a checkpoint; records its arguments, runs nothing."""

    _path = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self._path}>"


def _standin(full_path: str):
    module, _, name = full_path.rpartition(".")
    if name in _DICT_LIKE:
        cls = type(name, (), {"__new__": staticmethod(lambda c, *a, **k: {})})
    else:
        cls = type(name, (_Inert,), {"_path": full_path})
    cls.__module__, cls.__qualname__ = module, name
    return cls, full_path


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def safe_torch_load(path: str | Path):
    """``torch.load(path, weights_only=True)``, with inert stand-ins for known checkpoint metadata classes.

    Returns ``(object, [stand-in global names])``. Raises :class:`WeightsError` (one line) for a pickle that
    needs any other global, and for a truncated or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    if flax_ckpt.is_msgpack_file(path):  # not a pickle at all: name the converter that reads it
        raise WeightsError(flax_ckpt.msgpack_hint(path))
    standins: dict[str, tuple] = {}
    while True:
        try:
            with torch.serialization.safe_globals(list(standins.values())):
                return torch.load(path, map_location="cpu", weights_only=True), sorted(standins)
        except pickle.UnpicklingError as e:
            msg = str(e)
            m = re.search(r"GLOBAL (\S+) was not an allowed global", msg) or re.search(
                r"unsupported GLOBAL (\S+) whose module", msg)
            name = m.group(1) if m else None
            if name and name.startswith(_INERT_PREFIXES) and name not in standins and len(standins) < 64:
                standins[name] = _standin(name)
                continue
            what = f"it references {name}" if name else _first_line(e).removeprefix("Weights only load failed. ")
            raise WeightsError(f"{path}: refusing to unpickle ({what}); ssl-zoo opens checkpoints with "
                               f"torch.load(weights_only=True) only, so a pickle that can run code is never "
                               f"loaded") from None
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
            raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({_first_line(e)}); it may be "
                               f"truncated or in another format") from None


# ----------------------------------------------------------------------------- fetching

def is_url(s: str) -> bool:
    return urllib.parse.urlparse(str(s)).scheme in ("http", "https", "file")


def download_path(url: str, dest_dir: str | Path | None = None) -> Path:
    """Where :func:`download` keeps ``url``: ``<dest_dir>/<sha256(url)[:12]>-<file name>``."""
    dest_dir = Path(dest_dir) if dest_dir else home() / "downloads"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(urllib.parse.urlparse(url).path).name) or "checkpoint"
    return dest_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"


def download(url: str, dest_dir: str | Path | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` once into ``dest_dir`` (default ``$SSLZOO_HOME/downloads``): streamed to a temporary
    file, then renamed, so a partial download never looks complete. An HTML answer (a login or confirmation
    page instead of the file) is refused."""
    dest = download_path(url, dest_dir)
    dest_dir = dest.parent
    if dest.is_file():
        return dest
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "ssl-zoo"})
        with atomic_path(dest, suffix=".part") as tmp, open(tmp, "wb") as f, \
                urllib.request.urlopen(req, timeout=timeout) as r:
            ctype = r.headers.get("Content-Type", "") if hasattr(r, "headers") else ""
            if ctype.startswith("text/html"):
                raise WeightsError(f"{url} answered with an HTML page, not a checkpoint (a login or confirmation "
                                   f"page?); download the file by hand and pass it with --checkpoint")
            shutil.copyfileobj(r, f, length=1 << 20)
    except WeightsError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise WeightsError(f"download of {url} failed ({type(e).__name__}: {_first_line(e)})") from None
    return dest


def fetch(checkpoint: str | Path, expected_sha256: str | None = None) -> tuple[Path, str]:
    """A local path, or a URL downloaded once. Returns ``(path, sha256)``; a pinned sha256 must match."""
    if is_url(str(checkpoint)):
        path = download(str(checkpoint))
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise WeightsError(f"checkpoint {checkpoint} not found (give a file path or an http(s) URL)")
    sha = sha256_file(path)
    if expected_sha256 and sha != expected_sha256:
        if is_url(str(checkpoint)):
            path.unlink(missing_ok=True)  # a wrong download is not kept
        raise WeightsError(f"{checkpoint}: sha256 {sha[:12]}… does not match the pinned {expected_sha256[:12]}…; "
                           f"refusing it")
    return path, sha


# ----------------------------------------------------------------------------- architecture inference

_BUILD_DEFAULTS = {k: p.default for k, p in inspect.signature(build_resnet).parameters.items()
                   if p.default is not inspect.Parameter.empty}


def normalize_arch(arch: Mapping) -> dict:
    """``arch`` with :func:`build_resnet`'s defaults filled in, for comparing two architectures."""
    return {**_BUILD_DEFAULTS, **dict(arch)}


def infer_resnet_arch(sd: Mapping, *, cifar_padding: int = 1, cifar_maxpool: bool = False) -> dict:
    """Architecture of a headless torchvision-layout ResNet state dict (block type and counts, width, input
    channels, stem kernel, DISSL expansion block). Stem padding and max-pool are not visible in the weights:
    the caller says what upstream used for a 3x3 stem."""
    if "conv1.weight" not in sd:
        raise WeightsError("no conv1.weight among the backbone keys: not a torchvision-layout ResNet "
                           f"(first keys: {', '.join(list(sd)[:3])})")
    width, in_chans, k, _ = sd["conv1.weight"].shape
    counts = []
    for i in range(1, 5):
        blocks = {int(key.split(".")[1]) for key in sd if key.startswith(f"layer{i}.") and key.split(".")[1].isdigit()}
        counts.append(len(blocks))
    bottleneck = "layer1.0.conv3.weight" in sd
    arch = next((name for name, (blk, layers) in ARCHS.items()
                 if layers == counts and (blk.expansion == 4) == bottleneck), None)
    if arch is None:
        raise WeightsError(f"unsupported ResNet layout: blocks per stage {counts}, "
                           f"{'bottleneck' if bottleneck else 'basic'} blocks (supported: {', '.join(ARCHS)})")
    out = {"arch": arch, "width": int(width), "in_chans": int(in_chans)}
    if k == 7:
        out.update(stem="imagenet", maxpool=True)
    elif k == 3:
        out.update(stem="cifar", stem_padding=cifar_padding, maxpool=cifar_maxpool)
    else:
        raise WeightsError(f"unsupported stem: conv1 kernel {k}x{k} (7x7 ImageNet or 3x3 CIFAR stems)")
    if "avgpool.0.conv3.weight" in sd:
        out.update(expand_dim=int(sd["avgpool.0.conv3.weight"].shape[0]),
                   expand_mid=int(sd["avgpool.0.conv1.weight"].shape[0]))
    return out


# ----------------------------------------------------------------------------- formats

def _tensor_dict(obj, what: str) -> dict:
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"expected {what} (a dict of named tensors), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"expected {what}, but these entries are not tensors: {', '.join(bad[:3])}")
    return dict(obj)


def _lightning_state_dict(obj, fmt: str) -> dict:
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        keys = ", ".join(list(obj)[:4]) if isinstance(obj, Mapping) else type(obj).__name__
        raise WeightsError(f"not a Lightning checkpoint (no 'state_dict' entry; found {keys}); is --format {fmt} "
                           f"right?")
    return _tensor_dict(obj["state_dict"], "a Lightning state_dict")


def _json_safe(x, depth: int = 0):
    if depth > 6:
        return repr(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in x]
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    return repr(x)


def _lightning_meta(obj: Mapping) -> dict:
    meta = {k: _json_safe(obj[k]) for k in ("epoch", "global_step", "pytorch-lightning_version") if k in obj}
    if "hyper_parameters" in obj:
        meta["hyper_parameters"] = _json_safe(obj["hyper_parameters"])
    return meta


def split_dissl(obj) -> tuple[dict, dict, dict]:
    if isinstance(obj, Mapping) and "state_dict" in obj:
        raise WeightsError("this is a wrapped checkpoint, not a DISSL torch-hub state dict; try --format solo-learn "
                           "or lightning-convnet")
    sd = _tensor_dict(obj, "a DISSL torch-hub state dict")
    out = {}
    for k, v in sd.items():
        out["avgpool.0." + k.removeprefix("resizer.") if k.startswith("resizer.") else k] = v
    return out, {}, {}


_DCL_F = {"0": "conv1", "1": "bn1", "3": "layer1", "4": "layer2", "5": "layer3", "6": "layer4"}


def split_dcl(obj) -> tuple[dict, dict, dict]:
    sd = _tensor_dict(obj, "a DCL state dict (module.f.* / module.g.*)")
    backbone, heads = {}, {}
    for k, v in sd.items():
        key = k.removeprefix("module.")  # nn.DataParallel wrapper
        if key.startswith("g."):
            heads[key] = v
        elif key.startswith("f.") and key.split(".")[1] in _DCL_F:
            idx, rest = key.removeprefix("f.").split(".", 1)
            backbone[f"{_DCL_F[idx]}.{rest}"] = v
        else:
            backbone[key] = v  # reported as unexpected by the strict load
    return backbone, heads, {"wrapper": "nn.DataParallel" if all(k.startswith("module.") for k in sd) else "none"}


def split_lightning_convnet(obj) -> tuple[dict, dict, dict]:
    sd = _lightning_state_dict(obj, "lightning-convnet")
    backbone, heads = {}, {}
    for k, v in sd.items():
        key = k.removeprefix("convnet.") if k.startswith("convnet.") else k
        (heads if key.startswith("fc.") and k.startswith("convnet.") else backbone)[key] = v
    return backbone, heads, _lightning_meta(obj)


def split_solo_learn(obj) -> tuple[dict, dict, dict]:
    sd = _lightning_state_dict(obj, "solo-learn")
    backbone = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    if not backbone:
        raise WeightsError(f"no backbone.* keys in this solo-learn checkpoint (first keys: {', '.join(list(sd)[:3])})")
    heads = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    return backbone, heads, _lightning_meta(obj)


def split_sslzoo(obj) -> tuple[dict, dict, dict]:
    if not isinstance(obj, Mapping) or "model" not in obj or "config" not in obj:
        raise WeightsError("not an `sslzoo train` checkpoint (needs 'model' and 'config' entries)")
    sd = _tensor_dict(obj["model"], "an sslzoo model state dict")
    # the exported encoder, as training.methods' ``export_backbone()``: DINO's teacher, else the backbone
    prefix = "teacher_backbone." if any(k.startswith("teacher_backbone.") for k in sd) else "backbone."
    backbone = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    heads = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    if not backbone:
        raise WeightsError("no backbone.* keys in this sslzoo checkpoint")
    return backbone, heads, {"step": obj.get("step"), "epoch": obj.get("epoch"), "backbone_prefix": prefix,
                             "recipe": _json_safe(obj["config"])}


def _sslzoo_arch(backbone, obj) -> dict:
    return dict(obj["config"]["model"])


def _sslzoo_preprocess(arch, obj) -> Preprocess:
    """The preprocessing ``sslzoo train`` exports: the recipe's export section, falling back to the
    augmentation's size and statistics."""
    cfg = obj["config"]
    pre, a = dict(cfg.get("export", {}).get("preprocess", {})), cfg.get("augment", {})
    try:
        return Preprocess(resize=pre.get("resize") or a["size"], crop=pre.get("crop") or a["size"],
                          mean=tuple(pre.get("mean") or a["mean"]), std=tuple(pre.get("std") or a["std"]),
                          interpolation=pre.get("interpolation") or "bilinear", in_chans=arch.get("in_chans", 3))
    except (KeyError, TypeError) as e:
        raise WeightsError(f"the checkpoint's recipe has no usable preprocessing ({e}); pass --preprocess") from None


def _upstream_pre(name: str) -> Callable:
    def get(arch, obj):
        from . import upstream

        return getattr(upstream, name)
    return get


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    split: Callable  # checkpoint object -> (backbone state dict, heads state dict, provenance)
    arch: Callable  # (backbone state dict, checkpoint object) -> build_resnet kwargs
    preprocess: Callable | None  # (arch, checkpoint object) -> Preprocess, or None: must be given
    heads_layout: str = ""
    load: Callable = safe_torch_load  # path -> (checkpoint object, names of inert stand-ins used)


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("dissl-torchhub", "DISSL torch-hub state dict (resizer.* -> avgpool.0.*)", split_dissl,
           lambda sd, obj: infer_resnet_arch(sd), _upstream_pre("DISSL_PRE")),
    Format("dcl-dataparallel", "DCL nn.DataParallel state dict (module.f.N / module.g.N)", split_dcl,
           lambda sd, obj: infer_resnet_arch(sd, cifar_padding=1, cifar_maxpool=False), _upstream_pre("DCL_PRE"),
           heads_layout="g: Linear(2048,512,bias=False) - BatchNorm1d(512) - ReLU - Linear(512,128)"),
    Format("lightning-convnet", "PyTorch Lightning .ckpt with a torchvision ResNet as `convnet` (UvA tutorial 17)",
           split_lightning_convnet, lambda sd, obj: infer_resnet_arch(sd),
           lambda arch, obj: Preprocess(96, 96, (0.5,) * 3, (0.5,) * 3),
           heads_layout="fc: Linear(512,512) - ReLU - Linear(512,128) (SimCLR projection head)"),
    Format("solo-learn", "solo-learn Lightning .ckpt (backbone.*; CIFAR stem 3x3 padding 2, no max-pool)",
           split_solo_learn, lambda sd, obj: infer_resnet_arch(sd, cifar_padding=2, cifar_maxpool=False), None,
           heads_layout="solo-learn module attributes (projector, predictor, classifier, momentum_*), names kept"),
    Format("sslzoo-checkpoint", "`sslzoo train` checkpoint.pt (model backbone.* + heads, recipe config)",
           split_sslzoo, _sslzoo_arch, _sslzoo_preprocess, heads_layout="the method's heads, names as in training"),
    Format(flax_ckpt.FORMAT, "Flax/JAX msgpack {params, batch_stats} of a flaxmodels ResNet-18/34 (UvA tutorial 17, JAX)",
           flax_ckpt.split_flax_resnet, lambda sd, obj: infer_resnet_arch(sd),
           lambda arch, obj: Preprocess(96, 96, (0.5,) * 3, (0.5,) * 3),
           heads_layout=flax_ckpt.HEADS_LAYOUT, load=lambda path: (flax_ckpt.read_checkpoint(path), [])),
]}


# ----------------------------------------------------------------------------- conversion

def _parse_json_arg(value, what: str) -> dict:
    if isinstance(value, Mapping):
        return dict(value)
    text = value
    if not str(value).lstrip().startswith("{"):
        try:
            text = Path(value).read_text()
        except OSError as e:
            raise WeightsError(f"--{what}: {value!r} is neither JSON nor a readable file ({e.strerror})") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise WeightsError(f"--{what} must be JSON or a JSON file ({e.msg} at char {e.pos})") from None
    if not isinstance(d, dict):
        raise WeightsError(f"--{what} must be a JSON object")
    return d


def check_convert_out(out: Path, overwrite: bool = False) -> None:
    """Refuse, before any work, an ``--out`` that is a file or already holds converted files (unless
    ``overwrite``): ``convert`` never replaces a file it did not write in this run without being told."""
    if out.exists() and not out.is_dir():
        raise WeightsError(f"--out {out} is a file; give a folder (it will hold {WEIGHTS_NAME}, {CONFIG_NAME}, "
                           f"{CARD_NAME})")
    if out.is_dir() and not overwrite:
        found = [n for n in OUTPUT_NAMES if (out / n).exists()]
        if found:
            raise WeightsError(f"--out {out} already holds {', '.join(found)}; pass --overwrite to replace them "
                               f"(other files there are kept) or choose another --out")


def _place_files(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished files of ``tmp`` into ``out`` one by one (``config.json`` last, so a folder
    with the new config has the new weights). Files of ``out`` that are not :data:`OUTPUT_NAMES` are
    never touched; with ``overwrite`` a stale ``heads.safetensors`` of an earlier conversion goes."""
    check_convert_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in OUTPUT_NAMES if (tmp / n).is_file()]
    for n in names:
        os.replace(tmp / n, out / n)
    if overwrite:
        for n in OUTPUT_NAMES:
            if n not in names and (out / n).is_file():
                (out / n).unlink()


def folder_card(config: dict) -> str:
    """README.md for a converted / published folder: the registry card when the name is registered (so
    ``model-index`` carries the reported results), else one built from ``config.json``; then provenance."""
    from .cards import render_card, render_config_card
    from .registry import REGISTRY

    rec = REGISTRY.get(config.get("name", ""))
    same = rec and not config.get("reproduction_of") and normalize_arch(rec.arch) == normalize_arch(config["arch"])
    text = render_card(rec) if same else render_config_card(config)
    src = config.get("source", {})
    lines = ["## This folder", "", f"- `{WEIGHTS_NAME}` sha256: `{config.get('sha256', '(see config.json)')}`"]
    if src:
        lines.append(f"- converted by `sslzoo convert` from `{src.get('checkpoint')}` (format `{src.get('format')}`, "
                     f"sha256 `{src.get('checkpoint_sha256')}`)")
    if config.get("heads"):
        h = config["heads"]
        lines.append(f"- `{HEADS_NAME}`: {h['layout'] or 'training heads'} ({h['tensors']} tensors, sha256 "
                     f"`{h['sha256']}`); not loaded by the encoder")
    return text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"


def convert(name: str, checkpoint: str | Path, out: str | Path, fmt: str | None = None,
            preprocess=None, arch=None, expected_sha256: str | None = None, quiet: bool = False,
            record=None, overwrite: bool = False) -> Path:
    """Convert ``checkpoint`` (path or URL) of model ``name`` into the zoo folder ``out``; returns ``out``.

    ``name`` is a registry name (format, architecture and preprocessing come from its record) or, with
    ``fmt``, a new name (architecture from the checkpoint; preprocessing from the format or ``preprocess``).
    ``record`` overrides the registry lookup (weight resolution passes the record it is resolving).
    ``overwrite``: replace the converted files already in ``out`` (never any other file there); without
    it they are refused before any work.
    """
    from .io import load_strict
    from .registry import REGISTRY, suggest

    record = record if record is not None else REGISTRY.get(name)
    explicit_fmt = fmt
    fmt = fmt or (record.weights.upstream_format if record else None) or (
        "sslzoo-checkpoint" if record and record.recipe else None)
    if fmt is None:
        close = suggest(name)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise WeightsError(f"{name!r} is not in the registry; {hint}to convert a new model pass --format "
                           f"(one of {', '.join(FORMATS)})")
    if fmt not in FORMATS:
        raise WeightsError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_convert_out(Path(out).expanduser(), overwrite)  # before any download or conversion
    path, ck_sha = fetch(checkpoint, expected_sha256)
    obj, standins = FORMATS[fmt].load(path)
    if explicit_fmt is None and isinstance(obj, Mapping) and {"model", "config", "optimizer"} <= set(obj):
        fmt = "sslzoo-checkpoint"  # this project's own training checkpoint of a registered model
    conv = FORMATS[fmt]
    backbone_sd, heads_sd, meta = conv.split(obj)

    if arch is not None:
        arch_d = _parse_json_arg(arch, "arch")
    elif record is not None:
        arch_d = dict(record.arch)
        if fmt == "sslzoo-checkpoint" and normalize_arch(_sslzoo_arch(backbone_sd, obj)) != normalize_arch(arch_d):
            raise WeightsError(f"the checkpoint was trained with model {_sslzoo_arch(backbone_sd, obj)}, but {name} "
                               f"is {record.arch}")
    else:
        arch_d = conv.arch(backbone_sd, obj)
    try:
        with torch.device("meta"):  # shapes and names only: no time spent initialising weights
            model = build_resnet(**arch_d)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"cannot build architecture {arch_d}: {e}") from None
    with warnings.catch_warnings():  # loading into meta tensors is a (warned) no-op: only the check matters
        warnings.simplefilter("ignore", UserWarning)
        load_strict(model, backbone_sd, source=f"{checkpoint} ({fmt})")  # every key consumed, every tensor filled
    own = model.state_dict()
    backbone_sd = {k: backbone_sd[k].detach().to(dtype=own[k].dtype, device="cpu").contiguous() for k in own}

    if preprocess is not None:
        try:
            pre = Preprocess.from_dict({"interpolation": "bilinear", "in_chans": arch_d.get("in_chans", 3),
                                        **_parse_json_arg(preprocess, "preprocess")})
        except (TypeError, ValueError) as e:
            raise WeightsError(f"--preprocess is not valid ({e}); give resize, crop, mean, std") from None
    elif record is not None:
        pre = record.preprocess
    elif conv.preprocess is not None:
        pre = conv.preprocess(arch_d, obj)
    else:
        raise WeightsError(f"format {fmt} does not say how images were normalised; pass --preprocess "
                           f"'{{\"resize\": 32, \"crop\": 32, \"mean\": [...], \"std\": [...]}}'")

    # our own training run of a model whose registered weights come from upstream: a reproduction, not them
    reproduction = fmt == "sslzoo-checkpoint" and record is not None and bool(record.weights.upstream_url)
    source = {"format": fmt, "checkpoint": str(checkpoint), "checkpoint_sha256": ck_sha, **(
        {"upstream_url": record.weights.upstream_url} if record and record.weights.upstream_url
        and fmt != "sslzoo-checkpoint" else {}), "upstream": meta}
    if standins:
        source["inert_metadata_globals"] = standins
    config = {"name": name, "arch": arch_d, "feature_dim": int(model.feature_dim), "preprocess": pre.to_dict(),
              "method": record.method if record else (meta.get("recipe", {}).get("method", {}).get("name")
                                                      if fmt == "sslzoo-checkpoint" else None),
              "license": record.license if record else "unknown", "source": source}
    if reproduction:
        config.update(reproduction_of=name, paper=record.paper,
                      description=f"ssl-zoo reproduction of {name} (recipe {meta.get('recipe', {}).get('name')}, "
                                  f"{meta.get('step')} steps); the registered weights and results of {name} are "
                                  f"upstream's and do not describe this model")
    elif record is not None:
        config.update(train_data=record.train_data, paper=record.paper, description=record.description)

    out = Path(out).expanduser()
    with atomic_dir(out, place=lambda tmp, dest: _place_files(tmp, dest, overwrite)) as tmp:
        if heads_sd:
            tensors = {k: v.detach().clone().contiguous().cpu() for k, v in heads_sd.items()}
            atomic_save_safetensors(tensors, tmp / HEADS_NAME, {"format": "pt", "sslzoo_heads_of": name})
            config["heads"] = {"file": HEADS_NAME, "sha256": sha256_file(tmp / HEADS_NAME), "tensors": len(tensors),
                               "modules": sorted({k.split(".")[0] for k in tensors}), "layout": conv.heads_layout}
        save_folder(backbone_sd, config, tmp)
        atomic_write_text(tmp / CARD_NAME, folder_card(read_config(tmp)))
    if not quiet:
        cfg = read_config(out)
        log.info(f"converted {checkpoint} ({fmt}, sha256 {ck_sha[:12]}…) -> {out}")
        log.info(f"  {WEIGHTS_NAME}: {len(backbone_sd)} tensors, {cfg['feature_dim']}-d features, sha256 {cfg['sha256']}")
        if heads_sd:
            log.info(f"  {HEADS_NAME}: {len(heads_sd)} tensors ({', '.join(config['heads']['modules'])})")
        if standins:
            log.info(f"  metadata read through inert stand-ins: {', '.join(standins)}")
    return out


# ----------------------------------------------------------------------------- CLI

# the parser: zoo.cli.add_convert_parser


def run_convert(args) -> int:
    convert(args.name, args.checkpoint, args.out, fmt=args.fmt, preprocess=args.preprocess, arch=args.arch,
            expected_sha256=args.sha256, overwrite=args.overwrite)
    return 0

