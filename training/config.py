"""Recipes: YAML files of nested sections, validated against the defaults below.

``load_recipe(path_or_name, overrides)`` reads a recipe (a path, or a name in
``training/recipes/``), applies ``--set section.key=value`` overrides (values parsed as YAML), and
rejects unknown keys with the closest valid name, so a typo never silently trains the wrong thing.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

RECIPE_DIR = Path(__file__).parent / "recipes"

DEFAULTS: dict = {
    "name": "run",
    "method": {"name": "simclr", "temperature": 0.5, "proj_hidden_dim": 512, "proj_dim": 128},
    "model": {"arch": "resnet18", "stem": "imagenet", "stem_padding": 1, "maxpool": True, "width": 64,
              "in_chans": 3, "expand_dim": None, "expand_mid": 512},
    "data": {"dataset": "fashion-mnist", "root": None, "download": False, "split": "train"},
    "augment": {"size": 32, "scale": [0.08, 1.0], "ratio": [0.75, 1.3333333], "flip_p": 0.5, "brightness": 0.4,
                "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "jitter_p": 0.8, "grayscale_p": 0.2,
                "blur_p": 0.0, "blur_kernel": 3, "blur_sigma": [0.1, 2.0], "mean": [0.5], "std": [0.5]},
    "optim": {"name": "sgd", "lr": 0.3, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
              "betas": [0.9, 0.999], "batch_size": 256, "epochs": 100, "warmup_epochs": 5,
              "min_lr_ratio": 0.0},
    "train": {"seed": 0, "bf16": True, "channels_last": True, "threads": 0, "checkpoint_minutes": 3.0,
              "log_every": 20, "monitor_every_epochs": 5, "monitor_size": 10000, "monitor_val_size": 5000,
              "max_steps": None, "stop_at_step": None},
    "export": {"preprocess": {"resize": None, "crop": None, "mean": None, "std": None, "interpolation": "bilinear"},
               "description": ""},
}


class ConfigError(ValueError):
    """A recipe or override that cannot be used; one line saying what to change."""


def _closest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(options))}"


def _merge(base: dict, new: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in (new or {}).items():
        path = f"{where}{k}"
        if k not in base:
            raise ConfigError(f"unknown config key {path!r}{_closest(k, base)}")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"config key {path!r} is a section; set its fields, e.g. {path}.<key>=...")
            out[k] = _merge(base[k], v, path + ".")
        else:
            out[k] = _check_type(path, base[k], v)
    return out


def _check_type(path: str, default, value):
    """Reject values whose type cannot be what the default's type means (``optim.lr=abc``)."""
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
    return value


def parse_override(item: str) -> dict:
    """``"optim.lr=0.1"`` -> ``{"optim": {"lr": 0.1}}`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, _, raw = item.partition("=")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node: dict = {}
    cur = node
    parts = key.strip().split(".")
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
    close = difflib.get_close_matches(recipe, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(names)}"
    raise ConfigError(f"recipe {recipe!r} not found (a YAML path or a name in training/recipes/){hint}")


def load_recipe(recipe: str | dict, overrides: list[str] | None = None) -> dict:
    if isinstance(recipe, dict):
        raw = recipe
    else:
        path = resolve_recipe_path(recipe)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (method, model, data, ...)")
    cfg = _merge(DEFAULTS, raw)
    for item in overrides or []:
        cfg = _merge(cfg, parse_override(item))
    return cfg
