"""The zoo's record types: what one model is (:class:`ModelRecord`), where its weights come from
(:class:`WeightSource`) and which numbers it carries (:class:`Metric`).

Plain frozen dataclasses importing nothing of the zoo but the preprocessing record, so that the
modules holding records (:mod:`zoo.models`, :mod:`zoo.upstream`) depend on this module only and
:mod:`zoo.registry` builds itself from them in a fixed order.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .preprocess import Preprocess

__all__ = ["BUNDLED_DIR", "Metric", "ModelRecord", "WeightSource", "Preprocess"]

BUNDLED_DIR = Path(__file__).parent / "bundled"  # folders holding model.safetensors + config.json


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

    def describe(self) -> str:
        """Where ``pretrained=True`` looks first, and whether the file is pinned by sha256."""
        where = ["bundled" if self.bundled else None, f"hf:{self.hf_repo}" if self.hf_repo else None,
                 f"upstream {self.upstream_format}" if self.upstream_url else None]
        return " > ".join(x for x in where if x) + ("" if self.verified else " (unverified)")

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
