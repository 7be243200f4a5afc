"""Evaluation protocols that train the encoder, registered from above.

The frozen-feature probes (linear, few-shot, kNN) live in :mod:`eval.run`. A protocol that trains the
encoder (fine-tuning, :mod:`training.finetune`) belongs to the training layer, which eval must not
import; it registers a :class:`TrainedProtocol` here instead, and ``sslzoo eval --probes NAME`` runs it
beside the probes. ``python -m eval`` alone (nothing registered) offers the frozen probes only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TrainedProtocol", "PROTOCOLS", "register_protocol"]


@dataclass(frozen=True)
class TrainedProtocol:
    name: str  # the value of --probes
    add_arguments: Callable  # (argparse parser of `sslzoo eval`) -> None: the protocol's own options
    prepare: Callable  # (parsed args) -> dict of keyword arguments for evaluate; checks them before any work
    evaluate: Callable  # (model, dataset, *, seeds, root, download, force, info, **prepared) -> result rows
    note: str  # the protocol line printed under the table


PROTOCOLS: dict[str, TrainedProtocol] = {}


def register_protocol(protocol: TrainedProtocol) -> TrainedProtocol:
    PROTOCOLS[protocol.name] = protocol
    return protocol
