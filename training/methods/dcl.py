"""Debiased Contrastive Learning (Chuang, Robinson, Lin, Torralba, Jegelka; NeurIPS 2020).

Not lightly's ``DCLLoss``, which is the different *Decoupled* Contrastive Learning (Yeh et al. 2021).

With ``u = normalize(z)`` for ``z = cat([z1, z2])`` of shape ``[2B, d]``, ``p(i) = (i + B) mod 2B``
and ``N = 2B - 2`` negatives per row::

    pos_i = exp(u_i . u_p(i) / t)
    neg_i = sum_{j not in {i, p(i)}} exp(u_i . u_j / t)
    Ng_i  = max( (neg_i - tau_plus * N * pos_i) / (1 - tau_plus),  N * e^{-1/t} )
    loss  = mean_i  -log( pos_i / (pos_i + Ng_i) )

``tau_plus`` is the class prior (probability that a "negative" shares the anchor's class);
``Ng_i`` is the debiased estimate of the negatives' term, clamped at its theoretical minimum
``N e^{-1/t}`` (``exp(sim / t) >= e^{-1/t}``). With ``tau_plus = 0`` the loss is NT-Xent exactly.

Paper / code defaults (chingyaoc/DCL ``main.py``): temperature 0.5, tau_plus 0.1, batch 256,
feature dim 128, Adam lr 1e-3 wd 1e-6, 500 epochs; head ``Linear(2048,512,bias=False)-BN-ReLU-
Linear(512,128)``. Upstream's ``--debiased False`` is parsed as True (``type=bool``); here the biased
baseline is simply ``tau_plus=0``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..distributed import gather_rows
from .common import Method, register_method
from .heads import ProjectionHead


def debiased_contrastive_loss(z: torch.Tensor, temperature: float = 0.5, tau_plus: float = 0.1,
                              clamp: bool = True, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Debiased contrastive loss over ``z = cat([z1, z2])`` ``[2B, d]``.

    Computed in float64 on ``exp((sim - 1) / t)`` (every term scaled by ``e^{-1/t}``, which leaves
    the loss unchanged) so small temperatures neither overflow nor underflow. ``rows``: only these
    anchors' terms (one rank's share under torch.distributed), every row still a candidate."""
    if not 0 <= tau_plus < 1:
        raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus}")
    n = z.shape[0]
    if n % 2 or n < 4:
        raise ValueError(f"debiased_contrastive_loss expects 2B rows (two views, B >= 2), got {n}")
    b = n // 2
    u = F.normalize(z.float(), dim=1)
    if rows is None:
        sim = (u @ u.t()).double()
        idx = torch.arange(n, device=z.device)
        pos_idx = idx.roll(b)
        cols = idx
    else:
        sim = (u[rows] @ u.t()).double()
        idx = torch.arange(len(rows), device=z.device)
        pos_idx = (rows + b) % n
        cols = rows
    e = torch.exp((sim - 1.0) / temperature)
    mask = torch.ones(sim.shape, dtype=torch.bool, device=z.device)
    mask[idx, cols] = False
    mask[idx, pos_idx] = False
    neg = (e * mask).sum(1)
    log_pos = (sim[idx, pos_idx] - 1.0) / temperature
    pos = torch.exp(log_pos)
    n_neg = n - 2
    if tau_plus > 0:
        ng = (neg - tau_plus * n_neg * pos) / (1.0 - tau_plus)
    else:
        ng = neg
    if clamp:
        ng = ng.clamp(min=n_neg * math.exp(-2.0 / temperature))  # N e^{-1/t}, times the e^{-1/t} shift
    return (torch.log(pos + ng) - log_pos).mean().float()


@register_method("dcl", display_name="DCL", paper="Chuang, Robinson, Lin, Torralba, Jegelka, NeurIPS 2020",
                 position=20,
                 summary="Debiased Contrastive Learning (not lightly's *Decoupled* CL); `tau_plus=0` is NT-Xent",
                 losses=("debiased_contrastive_loss",),
                 tiny={"proj_hidden_dim": 16, "proj_dim": 8})
class DCL(Method):
    """Backbone + SimCLR projection head; loss :func:`debiased_contrastive_loss` of two views."""

    min_batch_size = 2
    min_batch_reason = "a contrastive loss needs negatives: with 1 image per batch there are none"

    def __init__(self, backbone, *, proj_hidden_dim: int = 512, proj_dim: int = 128, temperature: float = 0.5,
                 tau_plus: float = 0.1, clamp: bool = True):
        super().__init__()
        if not 0 <= tau_plus < 1:
            raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus}")
        self.backbone = backbone
        self.head = ProjectionHead(backbone.feature_dim, proj_hidden_dim, proj_dim)
        self.temperature, self.tau_plus, self.clamp = temperature, tau_plus, clamp

    def forward(self, views):
        self._check_views(views, "DCL")
        z = self.head(self.backbone(torch.cat(views)))
        z, rows = gather_rows(z)  # (z, None) in a single process
        return debiased_contrastive_loss(z, self.temperature, self.tau_plus, self.clamp, rows)
