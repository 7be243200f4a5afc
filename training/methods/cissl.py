"""CISSL: contrastive ISSL (Dubois, Hashimoto, Ermon, Liang; NeurIPS 2022, "Improving
Self-Supervised Learning by Characterizing Idealized Representations").

CISSL differs from SimCLR in two places (``issl/losses/contrastive.py``, ``is_pred_proj_same=False``,
``is_self_contrastive=True``):

1. two heads: the *student* (predictor) is linear, ``Linear(z, 128) + BatchNorm1d(128)`` -- the same
   family as the linear probe used downstream -- and the *teacher* (projector) is an unconstrained
   MLP ``Linear(z, 1024) - BN - ReLU - Linear(1024, 128) + BatchNorm1d(128)``;
2. no diagonal masking: every row keeps itself as a candidate and has two positives (itself and the
   other view), each with target probability 1/2.

With ``s = normalize(student(z))``, ``t = normalize(teacher(z))`` for ``z = cat([z1, z2])``
``[2B, d]`` and ``p(i) = (i + B) mod 2B``::

    logits = s @ t.T / T                      # [2B, 2B], nothing masked
    log_q  = log_softmax(logits, dim=1)
    loss   = mean_i  -(log_q[i, i] + log_q[i, p(i)]) / 2

Defaults (TinyImageNet config): T = 0.07, teacher hidden 1024, output 128; Adam lr 2e-3, wd 1e-6,
batch 512, 300 epochs, warmup 10 + cosine, gradient clipped by value at 2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eval.distributed import is_distributed

from ..distributed import gather_rows
from .common import Method, register_method
from .heads import mlp


def cissl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.07,
               rows: torch.Tensor | None = None) -> torch.Tensor:
    """CISSL loss; ``student`` and ``teacher`` are ``[2B, d]`` head outputs of the same ``2B``
    representations (view 1 rows first). Computed in fp32. ``rows``: only these anchors' terms (one
    rank's share under torch.distributed), every teacher row still a candidate."""
    n = student.shape[0]
    if n % 2 or teacher.shape[0] != n:
        raise ValueError(f"cissl_loss expects two [2B, d] tensors, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.float(), dim=1)
    if rows is not None:
        log_q = F.log_softmax(s[rows] @ t.t() / temperature, dim=1)
        idx = torch.arange(len(rows), device=student.device)
        return -(log_q[idx, rows] + log_q[idx, (rows + n // 2) % n]).mean() / 2
    log_q = F.log_softmax(s @ t.t() / temperature, dim=1)
    idx = torch.arange(n, device=student.device)
    return -(log_q[idx, idx] + log_q[idx, idx.roll(n // 2)]).mean() / 2


@register_method("cissl", display_name="CISSL", paper="Dubois, Hashimoto, Ermon, Liang, NeurIPS 2022", position=30,
                 summary="contrastive ISSL",
                 losses=("cissl_loss",),
                 tiny={"proj_hidden_dim": 16, "proj_dim": 8})
class CISSL(Method):
    """Backbone + linear student ``Linear-BN`` + MLP teacher; loss :func:`cissl_loss`."""

    min_batch_size = 2
    min_batch_reason = "a contrastive loss needs negatives: with 1 image per batch there are none"

    def __init__(self, backbone, *, proj_hidden_dim: int = 1024, proj_dim: int = 128, temperature: float = 0.07):
        super().__init__()
        d = backbone.feature_dim
        self.backbone = backbone
        self.student = nn.Sequential(nn.Linear(d, proj_dim), nn.BatchNorm1d(proj_dim))
        self.teacher = mlp([d, proj_hidden_dim, proj_dim], last_bn=True)
        self.temperature = temperature

    def forward(self, views):
        self._check_views(views, "CISSL")
        z = self.backbone(torch.cat(views))
        s, t = self.student(z), self.teacher(z)
        if is_distributed():  # every rank's rows, gathered with gradients
            d = s.shape[1]
            st, rows = gather_rows(torch.cat([s, t], 1))
            return cissl_loss(st[:, :d], st[:, d:], self.temperature, rows)
        return cissl_loss(s, t, self.temperature)
