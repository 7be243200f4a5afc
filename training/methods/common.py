"""Pieces shared by the methods: the model interface, the method registry, the momentum (EMA teacher)
base class, EMA updates and schedules. Heads are in :mod:`training.methods.heads`.

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

A method registers itself with :func:`register_method` (its name in recipes, the name shown in
tables, its paper, its CPU recipe); :mod:`training.methods` imports every module of the package,
so a new method is one new file (plus its recipe and its reference test).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


class Method(nn.Module):
    """Base class: a backbone plus the interface above with no-op hooks."""

    n_views = 2
    multicrop = False
    #: the smallest ``optim.batch_size`` the loss means something at, and why (the trainer refuses less)
    min_batch_size = 2
    min_batch_reason = "its BatchNorm layers and batch statistics need at least 2 images per batch"

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


# ----------------------------------------------------------------------------- registry

#: recipe ``method.name`` -> class, in registration order (see :func:`registered_methods`)
REGISTRY: dict[str, type] = {}


def register_method(name: str, *, display_name: str, paper: str, position: int, cpu_recipe: str | None = None,
                    summary: str = "", losses: tuple = (), tiny: dict | None = None):
    """Class decorator: register a method class under the recipe name ``name``.

    ``display_name``: the name in tables; ``paper``: the reference (authors, venue, year);
    ``position``: the place of the method in the method table and in ``--methods all`` (ascending;
    ties by name); ``cpu_recipe``: its Fashion-MNIST CPU recipe (default ``<name>_fashion_mnist_cpu``);
    ``summary``: what the method is, in a few words; ``losses``: the names of its loss functions
    (importable from its module); ``tiny``: keyword arguments for a seconds-long smoke run (the
    every-method tests build each method with them). The values are kept on the class as
    ``method_name``, ``display_name``, ``paper``, ``position``, ``cpu_recipe``, ``summary``, ``losses``
    and ``tiny``."""
    def deco(cls):
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is registered twice ({REGISTRY[name].__name__}, {cls.__name__})")
        cls.method_name, cls.display_name, cls.paper = name, display_name, paper
        cls.position, cls.cpu_recipe = int(position), cpu_recipe or f"{name}_fashion_mnist_cpu"
        cls.summary, cls.losses, cls.tiny = summary or display_name, tuple(losses), dict(tiny or {})
        REGISTRY[name] = cls
        return cls
    return deco


def registered_methods() -> dict[str, type]:
    """The registered classes ordered by ``(position, name)``."""
    return dict(sorted(REGISTRY.items(), key=lambda kv: (kv[1].position, kv[0])))


# ----------------------------------------------------------------------------- momentum methods

class MomentumMethod(Method):
    """A method with EMA copies (momentum encoder / target / teacher) of some of its sub-modules.

    A subclass builds its online sub-modules, then calls :meth:`add_momentum_copies` with
    ``(online attribute, copy attribute)`` pairs; each copy is a :func:`frozen_copy` registered as
    a sub-module under its own attribute name (so the state-dict keys are the subclass's names,
    e.g. BYOL's ``target_backbone``). After every optimiser step, :meth:`on_train_step` moves each
    copy towards its online module with momentum :meth:`momentum` (``momentum_base`` ->
    ``momentum_final`` on a half cosine, BYOL eq. (A.1)), in the order of the pairs."""

    def __init__(self, *, momentum_base: float, momentum_final: float):
        super().__init__()
        self.momentum_base, self.momentum_final = momentum_base, momentum_final
        self.momentum_pairs: tuple[tuple[str, str], ...] = ()

    def add_momentum_copies(self, *pairs: tuple[str, str]) -> None:
        for online, copy_name in pairs:
            setattr(self, copy_name, frozen_copy(getattr(self, online)))
        self.momentum_pairs = self.momentum_pairs + tuple(pairs)

    def momentum(self, step: int, total_steps: int) -> float:
        return cosine_momentum(step, total_steps, self.momentum_base, self.momentum_final)

    @torch.no_grad()
    def on_train_step(self, step: int, total_steps: int) -> None:
        m = self.momentum(step, total_steps)
        for online, copy_name in self.momentum_pairs:
            ema_update_(getattr(self, copy_name), getattr(self, online), m)
