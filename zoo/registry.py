"""The registry: one :class:`~zoo.records.ModelRecord` per zoo model, the single source of truth.

Built once, in a fixed order, from the record modules: :mod:`zoo.models` (models trained here), then
:mod:`zoo.upstream` (research models converted from upstream checkpoints). Hub entry points
(``hubconf.py``), ``sslzoo list`` / ``info``, model cards and the README's zoo table are all generated
from it. A model is named in its record module and nowhere else.
"""
from __future__ import annotations

from . import models, upstream
from .base import SSLZooError, did_you_mean
from .base import suggest as _close_names
from .records import BUNDLED_DIR, Metric, ModelRecord, WeightSource

__all__ = ["REGISTRY", "BUNDLED_DIR", "Metric", "ModelRecord", "WeightSource", "UnknownModel", "get_record",
           "list_models", "register", "suggest"]

RECORD_MODULES = (models, upstream)  # the registry's order: each module's RECORDS in turn


class UnknownModel(SSLZooError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


REGISTRY: dict[str, ModelRecord] = {}


def register(record: ModelRecord) -> ModelRecord:
    """Add ``record`` (the record modules' RECORDS are added at import; tests and plug-ins add more)."""
    if record.name in REGISTRY:
        raise ValueError(f"model {record.name!r} is registered twice")
    REGISTRY[record.name] = record
    return record


for _module in RECORD_MODULES:
    for _record in _module.RECORDS:
        register(_record)


def suggest(name: str, names=None, n: int = 3) -> list[str]:
    """Registry names (or ``names``) close to ``name``."""
    return _close_names(name, list(REGISTRY if names is None else names), n=n, cutoff=0.4)


def get_record(name: str) -> ModelRecord:
    if name in REGISTRY:
        return REGISTRY[name]
    hint = did_you_mean(name, REGISTRY, cutoff=0.4)
    raise UnknownModel(f"unknown model {name!r}{hint} (`sslzoo list` shows all {len(REGISTRY)})")


def list_models() -> list[str]:
    return sorted(REGISTRY)
