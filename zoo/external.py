"""Encoders from timm, torchvision and transformers, evaluated beside the zoo's own.

:func:`zoo.hub.create_model` (and so ``sslzoo eval --model``) takes, besides registry names and zoo
folders, these specs:

=============================  ================================================================
``timm:NAME[.TAG]``            ``timm.create_model(NAME[.TAG], num_classes=0)``; pretrained: timm's
                               weights for that tag (its default tag when none is given)
``hf-hub:ORG/NAME``            timm's own hub form: a timm model on the HF Hub (``config.json`` with
                               ``architecture`` + ``model.safetensors``), built by timm
``hf:ORG/NAME`` / ``hf:DIR``   a transformers vision model (``AutoModel``) from the Hub or from a local
                               folder written by ``save_pretrained``
``torchvision:NAME[.WEIGHTS]`` ``torchvision.models.get_model(NAME, weights=WEIGHTS)``; without
                               ``.WEIGHTS`` it is torchvision's ``weights=None``: random init (seed 0)
=============================  ================================================================

Each becomes an ``nn.Module`` mapping ``[B, 3, H, W]`` to ``[B, D]``: the pooled feature before the
classifier (timm: ``num_classes=0``; torchvision: the classifier's last ``Linear`` replaced by
``Identity``; transformers: ``pooler_output`` when the pooler has no parameters of its own (average
pooling: ResNet, ConvNeXt, Swin; DINOv2's normalised CLS token), else the CLS token of the last hidden
state (ViT, DeiT, DINO: the pooler's dense layer, trained or not, is dropped), and the spatial mean of a
4-D last hidden state). Its preprocessing comes from the library's own config, expressed as a
:class:`zoo.preprocess.Preprocess` so the harness uses it unchanged:

* timm: ``timm.data.resolve_data_config`` -- resize ``floor(size / crop_pct)`` (shorter side),
  centre crop ``size``, timm's interpolation, mean and std;
* torchvision: ``weights.transforms()`` (resize, crop, mean, std, interpolation); the ImageNet defaults
  (256 -> 224, bilinear) for random init;
* transformers: ``AutoImageProcessor`` (``size`` / ``crop_size`` / ``crop_pct``, ``resample``,
  ``image_mean`` / ``image_std``). A processor that squashes to ``height x width`` is expressed as
  resize + centre crop to that size: the same image for square inputs.

Weights, in order: ``weights=FILE`` (a local ``.safetensors`` file, or a torch state dict read with
``torch.load(weights_only=True)``; loaded strictly, with or without the classifier's keys; not for
``hf:``, whose spec already takes a local folder); else with ``pretrained=True`` the library's own
download (HF Hub for timm / transformers, honouring ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the HF cache;
torchvision's URL into ``torch.hub``'s cache, not tried when ``HF_HUB_OFFLINE`` is set and the file is
not cached); with ``pretrained=False`` random init under seed 0, so the same spec gives the same
encoder every time. ``weights_sha256`` is the sha256 of the weights file read (the local file, the HF
cache's or torch.hub's copy), ``None`` for random init (the harness then fingerprints the parameters).

timm and transformers are optional extras (``pip install ssl-zoo[timm]`` / ``ssl-zoo[transformers]``);
a missing one is a one-line :class:`MissingExtraError`.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .base import SSLZooError, did_you_mean
from .io import WeightsError, load_safetensors, load_strict, sha256_file
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

__all__ = ["PREFIXES", "ExternalSpec", "ExternalModelError", "MissingExtraError", "HFEncoder", "is_external",
           "is_random_init", "parse_spec", "external_label", "create_external", "read_state_dict", "strip_classifier"]

logger = logging.getLogger(__name__)

PREFIXES = ("timm:", "hf-hub:", "hf:", "torchvision:")
EXTRAS = {"timm": "timm", "transformers": "transformers"}
RANDOM_SEED = 0


class ExternalModelError(SSLZooError, ValueError):
    """An external model spec that cannot be built or loaded; one line saying what to do."""


class MissingExtraError(SSLZooError, ImportError):
    """An optional package (timm, transformers) that a spec needs is not installed."""


@dataclass(frozen=True)
class ExternalSpec:
    """A parsed ``--model`` spec: ``library`` (timm, hf-hub, hf, torchvision), ``name`` (what the library
    is given) and ``weights`` (torchvision's weights enum name, or ``None``)."""

    spec: str
    library: str
    name: str
    weights: str | None = None


def is_external(spec) -> bool:
    """True for ``timm:`` / ``hf-hub:`` / ``hf:`` / ``torchvision:`` specs (an existing path never is)."""
    return isinstance(spec, str) and spec.startswith(PREFIXES) and not Path(spec).exists()


def parse_spec(spec: str) -> ExternalSpec:
    for prefix in PREFIXES:
        if spec.startswith(prefix):
            library, rest = prefix[:-1], spec[len(prefix):].strip()
            break
    else:
        raise ExternalModelError(f"{spec!r} is not an external model spec; use one of "
                                 f"{', '.join(p + 'NAME' for p in PREFIXES)}")
    if not rest:
        raise ExternalModelError(f"{spec!r} names no model; e.g. timm:resnet18, hf-hub:timm/resnet18.a1_in1k, "
                                 f"hf:facebook/dino-vits16, torchvision:resnet18.IMAGENET1K_V1")
    if library == "hf-hub" and rest.count("/") != 1:
        raise ExternalModelError(f"{spec!r}: hf-hub: takes a Hub repo id ORG/NAME (a timm model on the HF Hub)")
    weights = None
    if library == "torchvision" and "." in rest:
        rest, weights = rest.split(".", 1)
    return ExternalSpec(spec, library, rest, weights)


def external_label(spec: str, weights=None) -> str:
    """The model's name in the results store and tables: the spec, plus the weights file's name when
    one was given, or ``(random init, seed 0)`` when the spec names no weights (torchvision without
    ``.WEIGHTS``)."""
    if weights is not None:
        return f"{spec} (weights {Path(weights).name})"
    if is_random_init(spec):
        return f"{spec} (random init, seed {RANDOM_SEED})"
    return spec


def is_random_init(spec: str, weights=None) -> bool:
    """True when an external spec names no weights (torchvision without ``.WEIGHTS``) and no weights file is
    given: ``pretrained=True`` then still gives the library's random init (seed 0)."""
    if weights is not None or not is_external(spec):
        return False
    s = parse_spec(spec)
    return s.library == "torchvision" and s.weights is None


def _require(package: str, spec: str):
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingExtraError(f"{spec.split(':', 1)[0]}:NAME needs the {package} package: "
                                f"pip install ssl-zoo[{EXTRAS[package]}]") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _why(e: BaseException) -> str:
    """``Type: first sentence`` of an exception, at most 160 characters."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.split(". ")[0].rstrip(".")
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def _download_error(spec: str, e: BaseException) -> ExternalModelError:
    where = ("HF_HUB_OFFLINE is set and they are not in the local cache" if _offline() else
             f"no network, or not there: {_why(e)}")
    return ExternalModelError(f"{spec}: cannot download its files ({where}); run once with network to fill the "
                              f"cache, or give a local weights file: weights=FILE (sslzoo eval --weights FILE)")


# ----------------------------------------------------------------------------- state dicts


def read_state_dict(path) -> tuple[dict, str]:
    """``(state dict, sha256)`` of a local weights file: safetensors, or a torch pickle read with
    ``torch.load(weights_only=True)`` (a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper is opened)."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file {path} not found")
    sha = sha256_file(p)
    with open(p, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(f"{p} is not a readable PyTorch state dict ({_why(e)})") from None
        for key in ("state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict) and len(sd) <= 3:
                sd = sd[key]
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise WeightsError(f"{p} holds no state dict of tensors; save model.state_dict()")
        return sd, sha
    return load_safetensors(p), sha


def _last_linear(module: nn.Module):
    """(parent, attribute name) of the last ``nn.Linear`` inside ``module`` (itself included)."""
    if isinstance(module, nn.Linear):
        return None
    found = None
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            found = (module, name)
        else:
            sub = _last_linear(child)
            if sub is not None:
                found = sub
    return found


def strip_classifier(model: nn.Module, spec: str = "the model") -> nn.Module:
    """Replace a torchvision classifier's last ``Linear`` (in ``fc`` / ``classifier`` / ``heads`` /
    ``head``) by ``Identity``, so the model returns its pooled pre-logits feature."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if not isinstance(head, nn.Module):
            continue
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return model
        where = _last_linear(head)
        if where is not None:
            parent, name = where
            setattr(parent, name, nn.Identity())
            return model
    raise ExternalModelError(f"{spec}: found no classifier (fc / classifier / heads / head ending in a Linear) to "
                             f"remove; it is not an image classifier")


def _load_with_or_without_head(full: nn.Module, strip, sd: dict, source: str) -> nn.Module:
    """Strict loading into ``full`` (with its classifier) when the file has the classifier's keys, else into
    the headless model ``strip(full)``; a file that fits neither is refused, naming the keys."""
    own = set(full.state_dict())
    if set(sd) == own:
        load_strict(full, sd, source=source)
        return strip(full)
    headless = strip(full)
    if set(sd) == set(headless.state_dict()):
        load_strict(headless, sd, source=source)
        return headless
    load_strict(headless if len(set(sd) ^ set(headless.state_dict())) < len(set(sd) ^ own) else full, sd,
                source=source)  # raises, naming missing / unexpected keys
    return headless


class _Seeded:
    """Random init under a fixed seed, without touching the caller's RNG state."""

    def __enter__(self):
        self.rng = torch.random.fork_rng()
        self.rng.__enter__()
        torch.manual_seed(RANDOM_SEED)

    def __exit__(self, *exc):
        return self.rng.__exit__(*exc)


# ----------------------------------------------------------------------------- timm


def _timm_preprocess(model, spec: str) -> tuple[Preprocess, dict]:
    from timm.data import resolve_data_config

    dc = resolve_data_config({}, model=model)
    c, h, w = dc["input_size"]
    if h != w:
        logger.warning("%s: timm's input size is %dx%d; using a %dx%d centre crop", spec, h, w, min(h, w),
                       min(h, w))
    size = min(h, w)
    crop_pct = float(dc.get("crop_pct") or 0.875)
    if dc.get("crop_mode", "center") != "center":
        logger.warning("%s: timm's crop mode %r is taken as a centre crop", spec, dc.get("crop_mode"))
    interp = dc.get("interpolation", "bilinear")
    if interp not in ("nearest", "bilinear", "bicubic"):
        interp = "bicubic"
    pre = Preprocess(resize=math.floor(size / crop_pct), crop=size, mean=tuple(float(v) for v in dc["mean"]),
                     std=tuple(float(v) for v in dc["std"]), interpolation=interp, in_chans=int(c))
    return pre, dc


def _timm_cached_weights(model) -> Path | None:
    """The file timm read its pretrained weights from, when it came from the HF cache."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", cfg.get("hf_hub_filename"), "pytorch_model.bin"):
        if filename:
            p = try_to_load_from_cache(repo, filename)
            if isinstance(p, str) and Path(p).is_file():
                return Path(p)
    return None


def _build_timm(s: ExternalSpec, pretrained: bool, weights):
    timm = _require("timm", s.spec)
    name = f"hf-hub:{s.name}" if s.library == "hf-hub" else s.name
    if s.library == "timm" and "/" in s.name:
        raise ExternalModelError(f"{s.spec}: timm: takes a timm model name; for a timm model on the HF Hub use "
                                 f"hf-hub:{s.name}")
    if s.library == "timm":
        arch = s.name.split(".", 1)[0]
        if arch not in timm.list_models():
            names = timm.list_models()
            raise ExternalModelError(f"unknown timm model {arch!r}{did_you_mean(arch, names)} (timm.list_models() "
                                     f"lists all {len(names)})")
    load_pretrained = pretrained and weights is None
    sha = source = None
    try:
        if weights is not None or not pretrained:
            with _Seeded():
                full = timm.create_model(name, pretrained=False)
        else:
            full = timm.create_model(name, pretrained=True, num_classes=0)
    except RuntimeError as e:  # unknown model / invalid tag
        raise ExternalModelError(f"{s.spec}: {str(e).splitlines()[0].rstrip('.')}"
                                 + (f"; its tags: {', '.join(timm.list_pretrained(s.name.split('.')[0] + '.*'))}"
                                    if "tag" in str(e) else "")) from None
    except (OSError, ValueError) as e:  # not cached while offline, no network, 404, ...
        if s.library == "hf-hub" or load_pretrained:
            raise _download_error(s.spec, e) from None
        raise ExternalModelError(f"{s.spec}: {_why(e)}") from None

    def strip(m):
        m.reset_classifier(0)
        return m

    if weights is not None:
        sd, sha = read_state_dict(weights)
        model = _load_with_or_without_head(full, strip, sd, source=f"{s.spec} weights {weights}")
        source = f"explicit file {weights}"
    elif load_pretrained:
        model = full
        p = _timm_cached_weights(model)
        sha = sha256_file(p) if p else None
        source = f"timm pretrained: {p}" if p else "timm pretrained"
    else:
        model = strip(full)
    pre, _ = _timm_preprocess(model, s.spec)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    return model, pre, cfg, sha, source


# ----------------------------------------------------------------------------- torchvision


def _tv_preprocess(weights_enum) -> Preprocess:
    if weights_enum is None:
        return Preprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")
    t = weights_enum.transforms()
    interp = getattr(t, "interpolation", None)
    interp = getattr(interp, "value", interp) or "bilinear"
    resize, crop = getattr(t, "resize_size", None), getattr(t, "crop_size", None)
    if resize is None or crop is None or not hasattr(t, "mean"):
        raise ExternalModelError(f"{weights_enum}: its transforms ({type(t).__name__}) are not an image "
                                 f"classification preprocessing; not a classifier's weights")
    return Preprocess(resize=int(resize[0]), crop=int(crop[0]), mean=tuple(float(v) for v in t.mean),
                      std=tuple(float(v) for v in t.std), interpolation=str(interp))


def _tv_cached_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _build_torchvision(s: ExternalSpec, pretrained: bool, weights):
    import torchvision
    from torchvision.models import get_model, get_model_weights, list_models

    names = list_models(module=torchvision.models)
    if s.name not in names:
        raise ExternalModelError(f"unknown torchvision classification model {s.name!r}{did_you_mean(s.name, names)} "
                                 f"(torchvision.models.list_models() lists all {len(names)})")
    enum = get_model_weights(s.name)
    w = None
    if s.weights is not None:
        members = list(enum.__members__)
        if s.weights not in members:
            raise ExternalModelError(f"torchvision {s.name} has no weights {s.weights!r}"
                                     f"{did_you_mean(s.weights, members)}; its weights: {', '.join(members)}")
        w = enum[s.weights]
    sha = source = None
    with _Seeded():
        full = get_model(s.name, weights=None)

    def strip(m):
        return strip_classifier(m, s.spec)

    if weights is not None:
        sd, sha = read_state_dict(weights)
        model = _load_with_or_without_head(full, strip, sd, source=f"{s.spec} weights {weights}")
        source = f"explicit file {weights}"
    elif pretrained and w is not None:
        cached = _tv_cached_file(w.url)
        if _offline() and not cached.is_file():
            raise ExternalModelError(f"{s.spec}: HF_HUB_OFFLINE is set and {cached} is not downloaded; run once with "
                                     f"network, or give a local file: weights=FILE (sslzoo eval --weights FILE)")
        try:
            sd = w.get_state_dict(progress=False, check_hash=True, weights_only=True)
        except Exception as e:  # no network, hash mismatch, ...
            raise _download_error(s.spec, e) from None
        load_strict(full, sd, source=f"{s.spec} weights {w.url}")
        model = strip(full)
        sha = sha256_file(cached) if cached.is_file() else None
        source = f"torchvision: {cached}"
    else:
        model = strip(full)
    pre = _tv_preprocess(w)
    cfg = {"architecture": s.name, "weights": s.weights, "url": getattr(w, "url", None),
           "meta": {k: v for k, v in (w.meta if w is not None else {}).items() if k != "categories"}}
    return model, pre, cfg, sha, source


# ----------------------------------------------------------------------------- transformers


class HFEncoder(nn.Module):
    """A transformers vision model as an encoder ``[B, 3, H, W] -> [B, D]``: ``pooler_output`` when
    ``feature == "pooler"``, the CLS token (``last_hidden_state[:, 0]``) when ``"cls"``; a 4-D last hidden
    state is averaged over space."""

    def __init__(self, model: nn.Module, feature: str):
        super().__init__()
        self.model, self.feature = model, feature

    def forward(self, x):
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        if self.feature == "pooler" and pooled is not None:
            return pooled.flatten(1)
        h = out.last_hidden_state
        return h[:, 0] if h.ndim == 3 else h.mean(dim=tuple(range(2, h.ndim)))


_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "bicubic", 4: "bilinear", 5: "bicubic"}


def _hf_preprocess(proc, spec: str) -> Preprocess:
    size = dict(getattr(proc, "size", None) or {})
    crop = dict(getattr(proc, "crop_size", None) or {})
    do_crop = bool(getattr(proc, "do_center_crop", False)) and crop
    if "shortest_edge" in size:
        resize = int(size["shortest_edge"])
        crop_px = int(min(crop["height"], crop["width"])) if do_crop else resize
        crop_pct = getattr(proc, "crop_pct", None)
        if crop_pct and not do_crop and resize < 384:  # ConvNeXt: resize s / crop_pct, then crop s
            resize, crop_px = int(resize / crop_pct), resize
    elif "height" in size and "width" in size:
        resize = int(min(size["height"], size["width"]))
        crop_px = int(min(crop["height"], crop["width"])) if do_crop else resize
        if size["height"] != size["width"]:
            logger.warning("%s: the processor resizes to %sx%s; using a square %d crop", spec, size["height"],
                           size["width"], crop_px)
    else:
        raise ExternalModelError(f"{spec}: cannot read the image processor's size {size or '(none)'}; not an image "
                                 f"model's processor")
    if getattr(proc, "do_normalize", True):
        mean, std = tuple(float(v) for v in proc.image_mean), tuple(float(v) for v in proc.image_std)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    resample = getattr(proc, "resample", 2)
    interp = _PIL_RESAMPLE.get(int(getattr(resample, "value", resample) if resample is not None else 2), "bilinear")
    return Preprocess(resize=resize, crop=crop_px, mean=mean, std=std, interpolation=interp, in_chans=len(mean))


def _hf_weights_file(name: str) -> Path | None:
    local = Path(name)
    for filename in ("model.safetensors", "pytorch_model.bin"):
        if local.is_dir():
            if (local / filename).is_file():
                return local / filename
            continue
        from huggingface_hub import try_to_load_from_cache

        p = try_to_load_from_cache(name, filename)
        if isinstance(p, str) and Path(p).is_file():
            return Path(p)
    return None


def _build_hf(s: ExternalSpec, pretrained: bool, weights):
    transformers = _require("transformers", s.spec)
    if weights is not None:
        raise ExternalModelError(f"{s.spec}: hf: takes no weights file; give the folder written by save_pretrained "
                                 f"as the spec itself: hf:PATH/TO/FOLDER")
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(s.name)
        if pretrained:
            model = transformers.AutoModel.from_pretrained(s.name)
        else:
            config = transformers.AutoConfig.from_pretrained(s.name)
            with _Seeded():
                model = transformers.AutoModel.from_config(config)
    except (OSError, ValueError, KeyError) as e:
        if _offline() or "connect" in str(e).lower():
            raise _download_error(s.spec, e) from None
        raise ExternalModelError(f"{s.spec}: transformers cannot load it ({_why(e)})") from None
    pooler = getattr(model, "pooler", None)
    if isinstance(pooler, nn.Module) and any(p.numel() for p in pooler.parameters()):
        model.pooler = None  # a dense layer on the CLS token, often untrained: the CLS token is the feature
        feature = "cls"
    else:
        feature = "pooler"
    enc = HFEncoder(model, feature)
    pre = _hf_preprocess(proc, s.spec)
    sha = source = None
    if pretrained:
        p = _hf_weights_file(s.name)
        sha = sha256_file(p) if p else None
        source = f"transformers: {p or s.name}"
    cfg = {"architecture": type(model).__name__, "feature": feature, "config": model.config.to_dict()}
    return enc, pre, cfg, sha, source


# ----------------------------------------------------------------------------- entry point


def create_external(spec: str, pretrained: bool = True, weights=None):
    """Build an external encoder; returns ``(model, preprocess, cfg, weights_sha256, weights_source)``
    (:func:`zoo.hub.create_model` attaches them to the model and adds the zoo's input check).

    ``cfg`` is the library's own config (timm's ``pretrained_cfg`` keys kept, so timm's helpers still
    work on the model) plus ``name`` (the spec), ``library``, ``feature_dim`` and ``preprocess``."""
    s = parse_spec(spec)
    build = {"timm": _build_timm, "hf-hub": _build_timm, "torchvision": _build_torchvision, "hf": _build_hf}
    model, pre, cfg, sha, source = build[s.library](s, pretrained, weights)
    model.eval()
    with torch.no_grad():
        dim = int(model(torch.zeros(1, pre.in_chans, pre.crop, pre.crop)).reshape(1, -1).shape[1])
    cfg = dict(cfg, name=spec, library=s.library, feature_dim=dim, preprocess=pre.to_dict())
    logger.debug("%s: %d-d features, %s", spec, dim, pre.describe())
    return model, pre, cfg, sha, source
