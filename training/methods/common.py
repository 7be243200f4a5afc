"""Pieces shared by the methods: the model interface, EMA targets, schedules and small heads.

The trainer talks to a method through a small interface (every part but ``forward`` optional):

* ``forward(views) -> loss``: ``views`` is a list of image batches, first the ``n_views`` large
  crops, then the small crops when the recipe asks for them (``augment.small_crops``);
* ``n_views``: how many large crops the method takes (2 for every method here);
* ``multicrop``: True when the method accepts extra small crops after the large ones;
* ``on_step_start(step, total_steps, steps_per_epoch)``: before the forward pass of optimiser
  step ``step`` (0-based): schedules the forward pass needs (DINO's teacher temperature, frozen
  last layer, DISSL's distillation warm-up);
* ``on_train_step(step, total_steps)``: after the optimiser step ``step``: EMA / momentum-encoder
  updates and queue updates. Everything these hooks change lives in ``state_dict()`` (buffers and
  frozen sub-modules), so a checkpoint holds it and a resumed run is exact;
* ``export_backbone()``: the encoder to monitor and export (default ``backbone``).
"""
from __future__ import annotations

import copy
import itertools
import math

import torch
from torch import nn


class Method(nn.Module):
    """Base class: a backbone plus the interface above with no-op hooks."""

    n_views = 2
    multicrop = False

    def __init__(self):
        super().__init__()
        self.step = 0
        self.total_steps = 1
        self.steps_per_epoch = 1
        self.last_logs: dict[str, torch.Tensor] = {}  # extra values to log (detached), set by forward

    def on_step_start(self, step: int, total_steps: int, steps_per_epoch: int = 1) -> None:
        self.step, self.total_steps, self.steps_per_epoch = int(step), int(total_steps), max(1, int(steps_per_epoch))

    def on_train_step(self, step: int, total_steps: int) -> None:
        pass

    def export_backbone(self) -> nn.Module:
        return self.backbone

    def _check_views(self, views, name: str) -> None:
        if len(views) < self.n_views or (len(views) > self.n_views and not self.multicrop):
            want = f"{self.n_views} large crops" + (" (+ optional small crops)" if self.multicrop else "")
            raise ValueError(f"{name} takes {want}, got {len(views)} views")


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False`` everywhere: an EMA target / momentum encoder."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``theta_target <- m * theta_target + (1 - m) * theta_online`` for every parameter.

    Buffers (BatchNorm running statistics) are not averaged: the target keeps the statistics of its
    own forward passes, as in BYOL, MoCo and DINO."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach().to(t.dtype), alpha=1.0 - momentum)


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """EMA momentum rising from ``base`` at step 0 to ``final`` at ``total_steps`` on a half cosine
    (BYOL eq. (A.1)): ``final - (final - base) * (cos(pi * step / total) + 1) / 2``."""
    t = min(1.0, max(0.0, step / max(1, total_steps)))
    return final - (final - base) * (math.cos(math.pi * t) + 1) / 2


def split_crops(views: list[torch.Tensor], n_large: int = 2) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return list(views[:n_large]), list(views[n_large:])


def encode_crops(backbone: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Features of all crops ``[sum B_i, D]`` in the order given, one forward per resolution."""
    out, i = [], 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
            j += 1
        out.append(backbone(torch.cat(views[i:j])))
        i = j
    return torch.cat(out)


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
