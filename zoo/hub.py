"""Model factory and weight resolution.

``create_model(name_or_folder, pretrained=True, weights=None)`` returns the encoder with
``.preprocess`` (a :class:`zoo.preprocess.Preprocess`), ``.pretrained_cfg`` (the record or folder
config), ``.weights_sha256`` and ``.weights_source`` attached. Weights resolve, in order:

1. ``weights=``: an explicit ``model.safetensors`` file or a zoo folder (a folder's ``config.json``
   sha256 is checked);
2. the copy bundled inside the package (``zoo/bundled/NAME``), sha256-checked;
3. the HF Hub mirror (only when the record has one) via ``huggingface_hub.hf_hub_download`` (repo id,
   filename, pinned revision; honours ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME``): ``config.json``
   first (the Hub counts a model's downloads by it; it must record the pinned sha256), then the weights,
   sha256 checked after download;
4. the upstream checkpoint: downloaded once, converted by :mod:`zoo.convert` into
   ``$SSLZOO_HOME/upstream/NAME`` and loaded from there afterwards. When the record pins no sha256 the
   weights are loaded with a warning that they are unverified.

Each step that fails says why in one line (a ``UserWarning``) and the next is tried; when all fail,
:class:`WeightsError` lists every reason. A sha256 mismatch is never loaded.

``from_pretrained("ORG/NAME")`` loads a published repository that is not (yet) in the registry, with
huggingface_hub's keyword conventions.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from . import flax as flax_ckpt
from .backbones import ArchError, build_resnet, check_arch
from .base import SSLZooError, home
from .external import create_external, is_external
from .io import CONFIG_NAME, WEIGHTS_NAME, WeightsError, load_safetensors, load_strict, read_config, sha256_file
from .preprocess import Preprocess
from .registry import BUNDLED_DIR, ModelRecord, get_record


#: Above this many values (256 MB in float32) a zoo folder's architecture must fit its weights file.
LARGE_MODEL_VALUES = 1 << 26
#: pretrained=False from a folder: the largest random model built without a weights file to back it.
MAX_RANDOM_VALUES = 1 << 30


def is_zoo_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / WEIGHTS_NAME).is_file() and (p / CONFIG_NAME).is_file()


def _from_hf(record: ModelRecord) -> Path:
    """``config.json`` then the weights of the record's mirror, at the pinned revision. The config is fetched
    (a mirror's download counter counts ``config.json``) and must describe the pinned weights."""
    w = record.weights
    if not w.hf_repo:
        raise WeightsError("no HF Hub mirror registered")
    if not w.hf_revision:
        raise WeightsError(f"HF Hub mirror {w.hf_repo} has no pinned revision in the registry")
    from huggingface_hub import hf_hub_download

    try:
        config = hf_hub_download(w.hf_repo, CONFIG_NAME, revision=w.hf_revision)
        path = hf_hub_download(w.hf_repo, w.hf_filename, revision=w.hf_revision)
    except Exception as e:  # offline, 404, auth, ...: one line, then the next source
        raise WeightsError(f"HF Hub {w.hf_repo}@{w.hf_revision[:12]}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    described = read_config(Path(config).parent).get("sha256")
    if w.sha256 and described and described != w.sha256:
        raise WeightsError(f"HF Hub {w.hf_repo}@{w.hf_revision[:12]}: its {CONFIG_NAME} describes weights with "
                           f"sha256 {described[:12]}…, the registry pins {w.sha256[:12]}…; pin the right revision")
    return Path(path)


def _from_upstream(record: ModelRecord) -> Path:
    """The upstream checkpoint converted into ``$SSLZOO_HOME/upstream/NAME`` (downloaded and converted on
    first use; the raw download is deleted afterwards). A cached conversion whose file no longer matches its
    ``config.json`` sha256 is refused."""
    from .convert import convert, download_path, is_url

    w = record.weights
    folder = home() / "upstream" / record.name
    if is_zoo_folder(folder):
        cfg = read_config(folder)
        if cfg.get("source", {}).get("upstream_url") == w.upstream_url:
            if sha256_file(folder / WEIGHTS_NAME) != cfg.get("sha256"):
                raise WeightsError(f"cached conversion {folder} was modified or truncated (sha256 differs from its "
                                   f"config.json); delete the folder to convert again")
            return folder / WEIGHTS_NAME
    try:
        convert(record.name, w.upstream_url, folder, expected_sha256=w.upstream_sha256, quiet=True, record=record,
                overwrite=True)  # our own cache folder: a stale conversion is replaced
    except WeightsError as e:
        note = f"; {w.upstream_note}" if w.upstream_note else ""
        raise WeightsError(f"{e}{note}; with the file at hand: sslzoo convert {record.name} --checkpoint FILE "
                           f"--out DIR, then weights=DIR") from None
    if is_url(w.upstream_url):
        download_path(w.upstream_url).unlink(missing_ok=True)  # converted and hashed: the pickle is not needed
    return folder / WEIGHTS_NAME


def resolve_weights(record: ModelRecord, weights: str | Path | None = None) -> tuple[Path, str]:
    """Return ``(path to model.safetensors, where it came from)`` for ``record``."""
    if weights is not None:
        p = Path(weights)
        if p.is_dir():
            if not is_zoo_folder(p):
                raise WeightsError(f"weights folder {weights} is not a zoo folder ({WEIGHTS_NAME} + {CONFIG_NAME})")
            pinned = read_config(p).get("sha256")
            p = p / WEIGHTS_NAME
            if pinned and sha256_file(p) != pinned:
                raise WeightsError(f"{p} does not match the sha256 in its {CONFIG_NAME}; the file was modified or "
                                   f"truncated")
        if not p.is_file():
            raise WeightsError(f"weights {weights} not found (give a model.safetensors file or a zoo folder)")
        with open(p, "rb") as f:
            head = f.read(4)
        if head[:2] == b"PK" or head[:1] == b"\x80":  # a torch.save zip or pickle, not safetensors
            raise WeightsError(f"{p} is a PyTorch checkpoint, not safetensors; convert it first: sslzoo convert "
                               f"{record.name} --checkpoint {p} --out DIR, then weights=DIR")
        if flax_ckpt.looks_like_msgpack(head):  # a Flax / JAX checkpoint
            raise WeightsError(f"{p} is a Flax/JAX msgpack checkpoint, not safetensors; convert it first: sslzoo "
                               f"convert {record.name} --checkpoint {p} --format {flax_ckpt.FORMAT} --out DIR, then "
                               f"weights=DIR")
        return p, f"explicit file {p}"
    reasons = []
    w = record.weights
    candidates = []
    if w.bundled:
        candidates.append(("bundled", lambda: BUNDLED_DIR / w.bundled / WEIGHTS_NAME))
    if w.hf_repo:
        candidates.append(("hf", lambda: _from_hf(record)))
    else:
        reasons.append("hf: no HF Hub mirror registered")
    if w.upstream_url:
        candidates.append(("upstream", lambda: _from_upstream(record)))
    for label, get in candidates:
        try:
            p = get()
            if not p.is_file():
                raise WeightsError(f"{p} is missing")
            if w.sha256:
                got = sha256_file(p)
                if got != w.sha256:
                    raise WeightsError(f"{p} has sha256 {got[:12]}…, the registry pins {w.sha256[:12]}…; refusing it")
            elif label == "hf":
                raise WeightsError(f"the registry pins no sha256 for the mirror {w.hf_repo}; refusing unverified "
                                   f"mirror weights")
            else:
                warnings.warn(f"{record.name}: weights converted from {w.upstream_url} are unverified (the registry "
                              f"pins no sha256); sha256 of the converted file: {sha256_file(p)}", stacklevel=3)
            return p, f"{label}: {p}"
        except WeightsError as e:
            reasons.append(f"{label}: {e}")
            warnings.warn(f"{record.name}: {label} weights unavailable ({e}); trying the next source", stacklevel=3)
    raise WeightsError(f"no usable weights for {record.name}: " + " | ".join(reasons))


class InputError(SSLZooError, ValueError):
    """Images the encoder cannot take (wrong rank, channel count, too small); one line saying what to do."""


def total_stride(model: torch.nn.Module) -> int | None:
    """How much a zoo ResNet downsamples (stem conv x max-pool x stages), or None for other modules."""
    try:
        s = model.conv1.stride[0] * (2 if isinstance(model.maxpool, torch.nn.MaxPool2d) else 1)
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            s *= int(getattr(layer[0], "stride", 1))
        return int(s)
    except (AttributeError, IndexError, TypeError):
        return None


class InputCheck:
    """Forward pre-hook of every zoo encoder: refuses, in one line, inputs that would fail deep inside
    the network (wrong rank or channel count) or silently give degenerate features (an image so small
    that the last stage sees a single pixel: ``min(H, W) <= total stride / 2``)."""

    def __init__(self, name: str, in_chans: int, stride: int | None, crop: int | None = None):
        self.name, self.in_chans, self.stride, self.crop = name, int(in_chans), stride, crop

    def __call__(self, module, args):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            return None
        c = self.in_chans
        if x.ndim != 4:
            raise InputError(f"{self.name} takes a batch of images [B, {c}, H, W], got a tensor of shape "
                             f"{tuple(x.shape)}" + ("; add a batch dimension with x[None]" if x.ndim == 3 else ""))
        if x.shape[1] != c:
            raise InputError(f"{self.name} takes {c}-channel images, got {x.shape[1]} channels (shape "
                             f"{tuple(x.shape)}); model.preprocess converts grayscale / RGB / RGBA images")
        if self.stride and min(x.shape[-2:]) <= self.stride // 2:
            hint = f"; model.preprocess resizes to {self.crop}x{self.crop}" if self.crop else ""
            raise InputError(f"{self.name}: {x.shape[-2]}x{x.shape[-1]} images are too small; the encoder "
                             f"downsamples {self.stride}x, so it needs more than {self.stride // 2} pixels per "
                             f"side{hint}")
        return None


def _finish(model: torch.nn.Module, preprocess: Preprocess, cfg, sha: str | None,
            source: str | None = None) -> torch.nn.Module:
    model.preprocess = preprocess
    model.pretrained_cfg = cfg
    model.weights_sha256 = sha
    model.weights_source = source
    name = getattr(cfg, "name", None) or (cfg.get("name") if isinstance(cfg, dict) else None) or "the encoder"
    model.register_forward_pre_hook(InputCheck(name, preprocess.in_chans, total_stride(model), preprocess.crop))
    model.eval()
    return model


def create_model(name_or_folder: str | Path, pretrained: bool = True, weights: str | Path | None = None,
                 **arch_overrides) -> torch.nn.Module:
    """Build a zoo encoder by registry name, or from a zoo folder (``model.safetensors`` +
    ``config.json``), or an external encoder from a ``timm:`` / ``hf-hub:`` / ``hf:`` / ``torchvision:``
    spec (:mod:`zoo.external`). The model is returned in eval mode."""
    if is_external(name_or_folder):
        if arch_overrides:
            raise WeightsError(f"{name_or_folder}: architecture overrides {sorted(arch_overrides)} apply to zoo "
                               f"ResNets only")
        return _finish(*create_external(name_or_folder, pretrained=pretrained, weights=weights))
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
        if not pretrained and weights is not None:  # explicit weights are loaded or refused, never ignored
            raise WeightsError(f"pretrained=False builds random weights, but weights={weights} was given; drop one")
        try:
            with torch.device("meta"):  # shapes only: memory is bounded before anything is allocated
                n_values = sum(v.numel() for v in build_resnet(**check_arch(arch)).state_dict().values())
        except ArchError as e:
            raise WeightsError(f"{folder}/{CONFIG_NAME}: {e}") from None
        wpath = Path(weights) if (pretrained and weights) else folder / WEIGHTS_NAME
        # a large model must be backed by a file that can hold it (2 bytes a value at least), so a config
        # that does not belong to its weights (width 4096) cannot allocate tens of GB before the check
        if n_values > LARGE_MODEL_VALUES and (not wpath.is_file() or 2 * n_values > wpath.stat().st_size) and (
                pretrained or n_values > MAX_RANDOM_VALUES):
            size = f"{wpath.stat().st_size:,} bytes" if wpath.is_file() else "missing"
            raise WeightsError(f"{folder}/{CONFIG_NAME} describes {n_values:,} weights, more than {wpath} "
                               f"({size}) can hold; the config does not belong to these weights")
        model = build_resnet(**arch)
        sha = None
        if pretrained:
            path = Path(weights) if weights else folder / WEIGHTS_NAME
            sha = sha256_file(path)
            if not weights and cfg.get("sha256") and cfg["sha256"] != sha:
                raise WeightsError(f"{path} has sha256 {sha[:12]}…, but {CONFIG_NAME} records "
                                   f"{cfg['sha256'][:12]}…; the file was modified or truncated")
            load_strict(model, load_safetensors(path), source=str(path))
        return _finish(model, pre, cfg, sha, f"folder {folder}" if pretrained else None)
    record = get_record(str(name_or_folder))
    if not pretrained and weights is not None:  # explicit weights are loaded or refused, never ignored
        raise WeightsError(f"pretrained=False builds random weights, but weights={weights} was given; drop one")
    arch = dict(record.arch)
    arch.update(arch_overrides)
    model = build_resnet(**arch)
    sha = src = None
    if pretrained:
        path, src = resolve_weights(record, weights)
        sha = sha256_file(path)
        if record.weights.sha256 and weights is None and sha != record.weights.sha256:  # changed since resolved
            raise WeightsError(f"{path} changed after its sha256 was checked; refusing it")
        load_strict(model, load_safetensors(path), source=f"{record.name} weights {path}")
    return _finish(model, record.preprocess, record, sha, src)


def from_pretrained(repo_id: str, *, revision: str | None = None, cache_dir: str | Path | None = None,
                    force_download: bool = False, token: str | bool | None = None, local_files_only: bool = False,
                    **arch_overrides) -> torch.nn.Module:
    """The encoder published as an HF model repository (``sslzoo publish``), with the keyword arguments of
    huggingface_hub's ``ModelHubMixin.from_pretrained``: ``from_pretrained("ORG/NAME")``. ``repo_id`` may carry
    the revision (``"ORG/NAME@SHA"``) or a ``hf-hub:`` prefix, as in timm; a local zoo folder works too.

    Fetches ``config.json`` and ``model.safetensors`` (``hf_hub_download``: honours ``HF_ENDPOINT``,
    ``HF_HUB_OFFLINE``, ``HF_HOME``) and builds the encoder from that folder, strictly, checking the weights
    against the sha256 in ``config.json``. Every architecture loads this way, also those timm cannot build
    (expansion block, CIFAR stem, other widths); for the others ``timm.create_model("hf-hub:ORG/NAME",
    pretrained=True)`` gives the same features. (ModelHubMixin itself is not subclassed: its ``from_pretrained``
    returns an instance of the mixin class, while a zoo encoder is a torchvision ResNet whose state-dict keys must
    stay torchvision's / timm's.)"""
    name = str(repo_id).removeprefix("hf-hub:")
    if is_zoo_folder(name):
        return create_model(Path(name), **arch_overrides)
    if "@" in name:
        name, _, at = name.partition("@")
        if revision and revision != at:
            raise WeightsError(f"{repo_id!r} names revision {at!r} but revision={revision!r}; give one")
        revision = at
    from huggingface_hub import hf_hub_download

    try:
        kw = dict(revision=revision, cache_dir=cache_dir, force_download=force_download, token=token,
                  local_files_only=local_files_only)
        config = Path(hf_hub_download(name, CONFIG_NAME, **kw))
        weights = Path(hf_hub_download(name, WEIGHTS_NAME, **kw))
    except Exception as e:  # offline, 404, auth, bad repo id: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise WeightsError(f"cannot download {name}@{revision or 'main'} ({type(e).__name__}: {first}); check the "
                           f"repo id and revision, HF_ENDPOINT and HF_HUB_OFFLINE") from None
    if config.parent != weights.parent:  # one snapshot folder per revision; the same commit gives the same one
        raise WeightsError(f"{name}: {CONFIG_NAME} and {WEIGHTS_NAME} came from different revisions; pin one")
    cfg = read_config(config.parent)
    if not {"arch", "preprocess", "sha256"} <= set(cfg):
        raise WeightsError(f"{name} is not an ssl-zoo repository: its {CONFIG_NAME} has no 'arch' / 'preprocess' / "
                           f"'sha256'" + (f"; it is a timm model: timm.create_model('hf-hub:{name}', "
                                          f"pretrained=True)" if "architecture" in cfg else ""))
    model = create_model(config.parent, **arch_overrides)
    model.weights_source = f"hf: {weights}"
    return model


def get_preprocessor(name_or_folder: str | Path) -> Preprocess:
    if is_external(name_or_folder):
        return create_external(name_or_folder, pretrained=False)[1]
    if is_zoo_folder(name_or_folder):
        return Preprocess.from_dict(read_config(name_or_folder)["preprocess"])
    return get_record(str(name_or_folder)).preprocess
