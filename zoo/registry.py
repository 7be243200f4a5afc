"""The registry: one :class:`ModelRecord` per zoo model, the single source of truth.

Hub entry points (``hubconf.py``), ``sslzoo list`` / ``info``, model cards and README tables are
all generated from these records. A model is named here and nowhere else.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .preprocess import Preprocess

BUNDLED_DIR = Path(__file__).parent / "bundled"


class UnknownModel(KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


@dataclass(frozen=True)
class Metric:
    """A reported or measured number and where it comes from."""

    dataset: str
    protocol: str  # e.g. "linear (val-selected L2, refit)", "knn k=20 T=0.07"
    value: float  # percent
    source: str  # "measured: <command>" or the upstream paper/README
    split: str = "test"

    @property
    def is_claim(self) -> bool:
        """A number the upstream authors report, not one measured here."""
        return self.source.startswith("upstream claim")


@dataclass(frozen=True)
class WeightSource:
    """Where the weights come from, in resolution order: bundled file, HF Hub mirror, upstream."""

    sha256: str | None = None  # of model.safetensors
    bundled: str | None = None  # folder under zoo/bundled/ holding model.safetensors + config.json
    hf_repo: str | None = None
    hf_filename: str = "model.safetensors"
    hf_revision: str | None = None  # a full commit sha: pinned
    upstream_url: str | None = None
    upstream_format: str | None = None  # converter name in zoo.convert.FORMATS
    upstream_sha256: str | None = None  # of the upstream checkpoint file, when someone has pinned it
    upstream_note: str | None = None  # e.g. "Google Drive: may need a manual download"

    @property
    def verified(self) -> bool:
        """True when the weights file is pinned by sha256; False for an upstream checkpoint nobody has
        converted and pinned yet (``pretrained=True`` then converts it and warns that it is unverified)."""
        return self.sha256 is not None


@dataclass(frozen=True)
class ModelRecord:
    name: str
    arch: dict  # keyword arguments of zoo.backbones.build_resnet
    feature_dim: int
    method: str
    train_data: str
    preprocess: Preprocess
    weights: WeightSource
    recipe: str | None = None  # training/recipes/<recipe>.yaml
    metrics: tuple = ()
    license: str = "unknown"
    paper: str | None = None
    description: str = ""
    tags: tuple = field(default_factory=tuple)

    def headline(self) -> str:
        if not self.metrics:
            return "no result recorded yet"
        m = self.metrics[0]
        claim = " [upstream claim]" if m.is_claim else ""
        return f"{m.value:.1f}% {m.dataset} {m.split}{claim} ({m.protocol}; {m.source})"

    def docstring(self) -> str:
        weights = ("sha256-pinned" if self.weights.verified else
                   "unverified (no sha256 pinned): the upstream checkpoint is downloaded and converted on first use")
        return (f"{self.description or self.name}\n\n"
                f"Method: {self.method}. Training data: {self.train_data}. Feature dim: {self.feature_dim}.\n"
                f"Headline: {self.headline()}.\n"
                f"Weights: {weights}.\n"
                f"Preprocessing: {self.preprocess.describe()}.\n\n"
                f"Args:\n    pretrained (bool): load the weights (default True).\n"
                f"    weights (str, optional): a model.safetensors file or zoo folder to load instead.\n"
                f"Returns: nn.Module mapping [B,{self.preprocess.in_chans},H,W] to [B,{self.feature_dim}].")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        return d


REGISTRY: dict[str, ModelRecord] = {}


def register(record: ModelRecord) -> ModelRecord:
    if record.name in REGISTRY:
        raise ValueError(f"model {record.name!r} is registered twice")
    REGISTRY[record.name] = record
    return record


def suggest(name: str, names=None, n: int = 3) -> list[str]:
    names = list(REGISTRY if names is None else names)
    return difflib.get_close_matches(name, names, n=n, cutoff=0.4)


def get_record(name: str) -> ModelRecord:
    if name in REGISTRY:
        return REGISTRY[name]
    close = suggest(name)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModel(f"unknown model {name!r}{hint} (`sslzoo list` shows all {len(REGISTRY)})")


def list_models() -> list[str]:
    return sorted(REGISTRY)


def _bundled_config(folder: str) -> dict:
    return json.loads((BUNDLED_DIR / folder / "config.json").read_text())


# ----------------------------------------------------------------------------- records

# registering modules: models (trained here), upstream (research models converted from upstream checkpoints)
from . import models, upstream  # noqa: F401
