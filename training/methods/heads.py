"""Projection / prediction heads shared by the methods. Method-specific heads (DINO's weight-normalised
head, DISSL's teacher and student) stay in their method's file."""
from __future__ import annotations

import itertools

from torch import nn


class ProjectionHead(nn.Sequential):
    """``Linear(in, hidden) - BN - ReLU - Linear(hidden, out)``; with ``bn=False`` the tutorial /
    original-SimCLR-code variant ``Linear(in, hidden) - ReLU - Linear(hidden, out)``."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, bn: bool = True):
        if bn:
            super().__init__(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                             nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
        else:
            super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def mlp(dims: list[int], *, bn: bool = True, last_bn: bool = False, last_bias: bool = True,
        act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``Linear - [BN] - act`` for every hidden layer, then a last ``Linear`` (+ BN if ``last_bn``).
    Hidden linears have no bias when followed by BN."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        last = i == len(dims) - 2
        if not last:
            layers += [nn.Linear(a, b, bias=not bn)] + ([nn.BatchNorm1d(b)] if bn else []) + [act()]
        else:
            layers.append(nn.Linear(a, b, bias=last_bias and not last_bn))
            if last_bn:
                layers.append(nn.BatchNorm1d(b))
    return nn.Sequential(*layers)
