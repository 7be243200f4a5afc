"""Recipes: YAML files of nested sections, validated against the defaults below.

``load_recipe(path_or_name, overrides)`` reads a recipe (a path, or a name in
``training/recipes/``), applies ``--set section.key=value`` overrides (values parsed as YAML), and
rejects unknown keys with the closest valid name, so a typo never silently trains the wrong thing.

The ``method`` section is validated against the chosen method: its fields are the keyword
arguments of the method's class (``training.methods.METHODS[name]``) with their defaults.
A recipe may start from another one with ``base: <recipe name or path>``: the base is read first
and the recipe's sections are merged over it (a recipe that changes ``method.name`` replaces the
base's whole ``method`` section).
"""
from __future__ import annotations

import copy
import math
import inspect
from pathlib import Path

import yaml

from zoo.base import SSLZooError, did_you_mean

from .augmentation.presets import AUGMENT_PRESETS
from .methods import METHODS

RECIPE_DIR = Path(__file__).parent / "recipes"


def method_defaults(name: str) -> dict:
    """The recipe fields of method ``name``: its class's keyword arguments and their defaults."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}{_closest_name(name, METHODS)}")
    sig = inspect.signature(METHODS[name].__init__)
    return {k: p.default for k, p in sig.parameters.items()
            if p.kind == p.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


DEFAULTS: dict = {
    "name": "run",
    "method": {"name": "simclr", "temperature": 0.5, "proj_hidden_dim": 512, "proj_dim": 128, "proj_bn": True},
    "model": {"arch": "resnet18", "stem": "imagenet", "stem_padding": 1, "maxpool": True, "width": 64,
              "in_chans": 3, "expand_dim": None, "expand_mid": 512},
    # extra: an additional train set appended to the data (e.g. AdaInf's generated images, labels -1);
    # repeat: copies of the real data (AdaInf's "dup").
    # subset: a subset index file (.pkl list / .json, see training/datacentric/subsets.py) applied to the real data
    # before it is repeated.
    # source: auto | memory | files (training/filesource.py): memory decodes the split into one uint8 tensor;
    # files decodes and crops in DataLoader workers; auto = memory for in-memory splits and small file-backed
    # sets of one image size, files when the decoded set would exceed 2 GiB or image sizes differ.
    # workers: DataLoader processes of the file source (null: min(8, CPUs); 0: in the training process).
    "data": {"dataset": "fashion-mnist", "root": None, "download": False, "split": "train", "extra": None,
             "repeat": 1, "subset": None, "source": "auto", "workers": None},
    # ViewAugment fields (training/augmentation/; version 2 = torchvision semantics), then the trainer's own:
    # small_*: multi-crop (2 large crops of ``size`` + ``small_crops`` crops of ``small_size`` with scale
    # ``small_scale``); view2: fields of the second large view that differ (asymmetric augmentation);
    # preset: one of training.augmentation.presets.AUGMENT_PRESETS, applied under the recipe's own augment fields.
    "augment": {"preset": None, "size": 32, "scale": [0.08, 1.0], "ratio": [0.75, 1.3333333], "flip_p": 0.5, "brightness": 0.4,
                "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "jitter_p": 0.8, "grayscale_p": 0.2,
                "blur_p": 0.0, "blur_kernel": 3, "blur_sigma": [0.1, 2.0], "mean": [0.5], "std": [0.5],
                "interpolation": "bilinear", "antialias": True, "solarize_p": 0.0, "solarize_threshold": 0.5,
                "version": 1, "fused": True,
                "small_crops": 0, "small_size": None, "small_scale": [0.05, 0.4], "view2": None},
    # name: sgd | adam | adamw | lars; schedule: warmup_cosine | constant; warmup_steps overrides
    # warmup_epochs; weight_decay_end: cosine weight-decay schedule (DINO); grad_clip_*: None = off.
    # epochs: null = a step budget: the run is train.max_steps steps whatever the data size (AdaInf).
    "optim": {"name": "sgd", "lr": 0.3, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
              "betas": [0.9, 0.999], "batch_size": 256, "epochs": 100, "warmup_epochs": 5,
              "min_lr_ratio": 0.0, "schedule": "warmup_cosine", "warmup_steps": None, "weight_decay_end": None,
              "lars_eta": 0.001, "lars_clip": False, "grad_clip_norm": None, "grad_clip_value": None},
    "train": {"seed": 0, "bf16": True, "channels_last": True, "threads": 0, "checkpoint_minutes": 3.0,
              "log_every": 20, "monitor_every_epochs": 5, "monitor_size": 10000, "monitor_val_size": 5000,
              "max_steps": None, "stop_at_step": None, "tensorboard": True,
              # under torchrun: BatchNorm statistics over every rank's batch (torch.nn.SyncBatchNorm on GPUs,
              # training.distributed.GlooSyncBatchNorm on CPUs); ignored in a single process
              "sync_bn": False,
              # the step's execution (training/compiled.py): auto | none | inductor | aot_eager; auto = inductor
              # on CUDA, eager on a CPU (measured not to pay there: benchmarks/train_step.py)
              "compile": "auto",
              # on a CPU (glibc): large blocks from malloc's heap and freed memory kept for the next step instead
              # of an mmap + page faults per tensor per step (training/heap.py); same arithmetic, steps 1.40x / 1.42x
              # at widths 16 / 64, higher peak RSS (benchmarks/train_step.py); false hands memory back after each peak
              "reuse_freed_memory": True},
    "export": {"preprocess": {"resize": None, "crop": None, "mean": None, "std": None, "interpolation": "bilinear"},
               "description": ""},
}


class ConfigError(SSLZooError, ValueError):
    """A recipe or override that cannot be used; one line saying what to change."""


#: The values of ``train.compile`` (see :mod:`training.compiled`); ``null`` means ``none``.
COMPILE_MODES = ("auto", "none", "inductor", "aot_eager")


def check_compile_mode(value) -> str:
    """The ``train.compile`` mode ``value`` names (``null``: ``none``); ConfigError naming the choices."""
    if value is None:
        return "none"
    if not isinstance(value, str) or value not in COMPILE_MODES:
        raise ConfigError(f"train.compile must be one of {', '.join(COMPILE_MODES)}, got {value!r}"
                          f"{did_you_mean(str(value), COMPILE_MODES, n=1, cutoff=0.5, quote=True, otherwise='')}")
    return value


def _closest_name(name, options) -> str:
    return did_you_mean(name, options, n=1, cutoff=0.5, quote=True, otherwise=f"; available: {', '.join(options)}")


def _closest(key: str, options) -> str:
    return did_you_mean(key, options, n=1, cutoff=0.5, quote=True,
                        otherwise=f"; valid keys: {', '.join(sorted(options))}")


def _merge_method(base: dict, new) -> dict:
    """Merge a ``method`` section; its valid fields are those of the (possibly new) method."""
    if not isinstance(new, dict):
        raise ConfigError("config key 'method' is a section; set its fields, e.g. method.<key>=...")
    name = new.get("name", base["name"])
    if not isinstance(name, str):
        raise ConfigError(f"config key 'method.name' must be a string, got {name!r}")
    defaults = {"name": name, **method_defaults(name)}
    if name == base["name"]:
        start = {**defaults, **base}
    else:  # a new method keeps the old values of the fields they share (e.g. temperature)
        start = {**defaults, **{k: v for k, v in base.items() if k in defaults and k != "name"}}
    return _merge(start, new, "method.")


# mappings that are values, not sections: set as a whole
_LEAF_MAPPINGS = ("augment.view2",)


def _merge(base: dict, new: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in (new or {}).items():
        path = f"{where}{k}"
        if k not in base:
            raise ConfigError(f"unknown config key {path!r}{_closest(k, base)}")
        if path == "method":
            out[k] = _merge_method(base[k], v)
        elif path in _LEAF_MAPPINGS:
            if v is not None and not isinstance(v, dict):
                raise ConfigError(f"config key {path!r} must be a mapping of fields or null, got {v!r}")
            out[k] = copy.deepcopy(v)
        elif isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"config key {path!r} is a section; set its fields, e.g. {path}.<key>=...")
            out[k] = _merge(base[k], v, path + ".")
        else:
            out[k] = _check_type(path, base[k], v)
    return out


def _check_type(path: str, default, value):
    """Reject values whose type cannot be what the default's type means (``optim.lr=abc``)."""
    if path == "train.compile":  # a choice: the message names the choices whatever the type
        check_compile_mode(value)
        return value
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        want = "true or false"
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        want = "a number"
    elif isinstance(default, list):
        ok = isinstance(value, list)
        want = "a list like [a, b]"
    else:
        ok = isinstance(value, str)
        want = "a string"
    if not ok:
        raise ConfigError(f"config key {path!r} must be {want}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {path!r} must be a finite number, got {value!r}")
    if (isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float)
            and path not in _FRACTIONAL_OK):
        if not value.is_integer():
            raise ConfigError(f"config key {path!r} must be a whole number, got {value!r}")
        value = int(value)
    return value


#: Integer-valued defaults that may still be set to a fraction.
_FRACTIONAL_OK = {"optim.warmup_epochs"}


def parse_override(item: str) -> dict:
    """``"optim.lr=0.1"`` -> ``{"optim": {"lr": 0.1}}`` (value parsed as YAML; ``null`` for None)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, _, raw = item.partition("=")
    if not raw.strip():
        raise ConfigError(f"override {item!r} has no value; write {key.strip()}=VALUE ({key.strip()}=null for none)")
    try:
        value = yaml.load(raw, Loader=RecipeLoader)
    except yaml.YAMLError:
        value = raw
    node: dict = {}
    cur = node
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: {key.strip()!r} is not a section.key name")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value
    return node


def resolve_recipe_path(recipe: str) -> Path:
    p = Path(recipe)
    if p.is_file():
        return p
    for cand in (RECIPE_DIR / recipe, RECIPE_DIR / f"{recipe}.yaml"):
        if cand.is_file():
            return cand
    names = sorted(q.stem for q in RECIPE_DIR.glob("*.yaml"))
    hint = did_you_mean(recipe, names, otherwise=f"; available: {', '.join(names)}")
    raise ConfigError(f"recipe {recipe!r} not found (a YAML path or a name in training/recipes/){hint}")


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would let the last one
    silently win), naming the file and both lines."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                hash(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error says so
            if key in seen:
                where = key_node.start_mark
                raise ConfigError(f"{where.name}, line {where.line + 1}: key {key!r} is given twice (first on line "
                                  f"{seen[key] + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    """A recipe file as a mapping; syntax errors and duplicate keys are one line with the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read recipe {path} ({getattr(e, 'strerror', None) or e})") from None
    try:
        raw = yaml.load(_named(text, path), Loader=RecipeLoader) or {}
    except yaml.MarkedYAMLError as e:
        mark, ctx = e.problem_mark or e.context_mark, e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = e.problem or e.context or "syntax error"
        if e.context and e.problem and ctx is not None:
            what += f"; {e.context} at line {ctx.line + 1}, column {ctx.column + 1}"
        raise ConfigError(f"{path}{where}: not valid YAML ({what}); fix the recipe") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (method, model, data, ...)")
    return raw


def _named(text: str, path: Path):
    """A stream whose marks carry the file name (PyYAML reads ``.name`` from the stream)."""
    import io

    stream = io.StringIO(text)
    stream.name = str(path)
    return stream


def _merge_raw(base: dict, new: dict) -> dict:
    """Deep-merge two unvalidated recipes (``new`` wins); a new method name replaces ``method``."""
    out = copy.deepcopy(base)
    for k, v in new.items():
        if (k == "method" and isinstance(v, dict) and isinstance(out.get(k), dict)
                and "name" in v and v["name"] != out[k].get("name", DEFAULTS["method"]["name"])):
            out[k] = copy.deepcopy(v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_raw(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _resolve_bases(raw: dict, here: Path | None, seen: tuple = ()) -> dict:
    """Follow ``base:`` links (a recipe name, or a path relative to the recipe that names it)."""
    if "base" not in raw:
        return raw
    raw = dict(raw)
    ref = raw.pop("base")
    if not isinstance(ref, str):
        raise ConfigError(f"'base' must be a recipe name or path, got {ref!r}")
    cand = (here / ref) if here is not None else None
    if cand is not None and not cand.is_file() and cand.with_suffix(".yaml").is_file():
        cand = cand.with_suffix(".yaml")
    path = cand if cand is not None and cand.is_file() else resolve_recipe_path(ref)
    key = str(path.resolve())
    if key in seen:
        raise ConfigError(f"recipe 'base' links form a cycle through {path}")
    base = _resolve_bases(read_yaml(path), path.parent, seen + (key,))
    return _merge_raw(base, raw)


def load_recipe(recipe: str | dict, overrides: list[str] | None = None) -> dict:
    if isinstance(recipe, dict):
        raw = _resolve_bases(recipe, None)
    else:
        path = resolve_recipe_path(recipe)
        raw = _resolve_bases(read_yaml(path), path.parent, (str(path.resolve()),))
    layers = [parse_override(item) for item in overrides or []]
    cfg = _merge(DEFAULTS, _preset_layer([raw] + layers))
    cfg = _merge(cfg, raw)
    for layer in layers:
        cfg = _merge(cfg, layer)
    check_compile_mode(cfg["train"]["compile"])
    return cfg


def check_trainable(cfg: dict) -> None:
    """Refuse, before anything is written, a recipe whose training would mean nothing: no steps
    (``train.max_steps``, ``train.stop_at_step`` or ``optim.epochs`` below 1), a learning rate that is
    not positive, or a batch too small for the method's loss (``min_batch_size`` of its class)."""
    t, o = cfg["train"], cfg["optim"]
    for path, value, none in (("train.max_steps", t["max_steps"], "null: no step limit"),
                              ("train.stop_at_step", t["stop_at_step"], "null: train to the end"),
                              ("optim.epochs", o["epochs"], "null: a step budget of train.max_steps")):
        if value is not None and value < 1:
            raise ConfigError(f"{path}={value} trains nothing; it must be >= 1 ({none})")
    if o["lr"] is None or not o["lr"] > 0:
        raise ConfigError(f"optim.lr={o['lr']} trains nothing; it must be > 0")
    if o["batch_size"] is None or o["batch_size"] < 1:
        raise ConfigError(f"optim.batch_size={o['batch_size']} must be >= 1")
    cls = METHODS.get(cfg["method"]["name"])
    need = getattr(cls, "min_batch_size", 1)
    if cls is not None and o["batch_size"] < need:
        raise ConfigError(f"optim.batch_size={o['batch_size']} is too small for {cfg['method']['name']}: "
                          f"{getattr(cls, 'min_batch_reason', 'its loss needs a larger batch')}; use >= {need}")


def _preset_layer(layers: list) -> dict:
    """The augment fields of the last ``augment.preset`` named in the recipe or the overrides; they are
    applied first, so every augment field the recipe or ``--set`` names explicitly wins."""
    name = None
    for layer in layers:
        a = layer.get("augment") if isinstance(layer, dict) else None
        if isinstance(a, dict) and "preset" in a:
            name = a["preset"]
    if name is None:
        return {}
    if not isinstance(name, str) or name not in AUGMENT_PRESETS:
        raise ConfigError(f"unknown augment.preset {name!r}{_closest_name(name, AUGMENT_PRESETS)}")
    return {"augment": copy.deepcopy(AUGMENT_PRESETS[name])}
