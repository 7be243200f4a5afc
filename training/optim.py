"""Optimisers and schedules for the recipes: SGD, Adam, AdamW, LARS; warm-up + cosine.

Parameters are split in two groups: weights (``ndim > 1``: weight decay, LARS adaptation) and
biases / normalisation parameters (``ndim <= 1``: neither), the usual SSL practice. Frozen
parameters (EMA targets, momentum encoders) are left out.
"""
from __future__ import annotations

import math

import torch

from .config import ConfigError


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup from ~0 to 1 over ``warmup`` steps, then cosine to
    ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def lr_multiplier(schedule: str, step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """``warmup_cosine`` (default) or ``constant`` (after the same linear warm-up)."""
    if schedule == "warmup_cosine":
        return warmup_cosine(step, total, warmup, min_ratio)
    if schedule == "constant":
        return (step + 1) / warmup if warmup > 0 and step < warmup else 1.0
    raise ConfigError(f"unknown optim.schedule {schedule!r}; use warmup_cosine or constant")


def cosine_value(step: int, total: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at ``total`` on a half cosine (DINO's weight-decay schedule)."""
    t = min(1.0, step / max(1, total))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017).

    For each parameter ``w`` with gradient ``g`` in a group with ``lars=True``::

        d     = g + wd * w
        trust = eta * ||w|| / (||g|| + wd * ||w||)      (1 if either norm is 0)
        trust = min(trust / lr, 1)  if clip (LARC "clip" mode, solo-learn's ``clip_lr``)
        d     = trust * d
        buf   = momentum * buf + d ;  w <- w - lr * (d + momentum * buf  if nesterov else  buf)

    Groups with ``lars=False`` (biases, BatchNorm: ``exclude_bias_n_norm``) take the plain SGD step.
    ``eta`` is the trust coefficient (1e-3 in the paper and VISSL's LARC, 0.02 in solo-learn).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3,
                 clip: bool = False, nesterov: bool = False, lars: bool = True):
        if lr < 0 or eta <= 0:
            raise ValueError(f"LARS needs lr >= 0 and eta > 0, got lr={lr}, eta={eta}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "clip": clip, "nesterov": nesterov,
                        "lars": lars}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            lr, mom, wd = g["lr"], g["momentum"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if wd:
                    d = d.add(p, alpha=wd)
                if g["lars"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(p.grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        g["eta"] * w_norm / (g_norm + wd * w_norm), torch.ones_like(w_norm))
                    if g["clip"]:
                        trust = torch.clamp(trust / lr, max=1.0) if lr > 0 else torch.ones_like(trust)
                    d = d * trust
                if mom:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(mom).add_(d)
                    d = d.add(buf, alpha=mom) if g["nesterov"] else buf
                p.add_(d, alpha=-lr)
        return loss


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """[weights (decay), biases + norm parameters (no decay)]; frozen parameters are skipped."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg["optim"]
    groups = param_groups(model, o["weight_decay"])
    name = o["name"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]))
    if name == "adam":  # L2 weight decay added to the gradient (torch.optim.Adam), as the DCL / ISSL code
        return torch.optim.Adam(groups, lr=o["lr"], betas=tuple(o["betas"]))
    if name == "lars":
        groups[0]["lars"] = True
        groups[1]["lars"] = False
        return LARS(groups, lr=o["lr"], momentum=o["momentum"], eta=o["lars_eta"], clip=o["lars_clip"],
                    nesterov=o["nesterov"])
    raise ConfigError(f"unknown optimizer {name!r}; use sgd, adam, adamw or lars")
