"""Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny; ICML 2021): make the cross-correlation of the
two views' projections the identity.

With ``z^A, z^B`` ``[N, D]`` standardised along the batch (``(z - mean) / sqrt(var + eps)``,
biased variance: ``BatchNorm1d(affine=False)`` in training mode)::

    C_ij = sum_b z^A_bi z^B_bj / N
    loss = scale * ( sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2 )

Paper defaults (ImageNet): projector ``Linear-BN-ReLU`` x2 then ``Linear`` with 8192 units,
lambda = 0.0051 (about 1/D), LARS lr 0.2 (weights) / 0.0048 (biases, BN), wd 1.5e-6, batch 2048,
1000 epochs. solo-learn CIFAR: projector 2048/2048, ``scale_loss`` 0.1.
"""
from __future__ import annotations

import torch

from .common import Method, register_method
from .heads import mlp


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins loss of two ``[N, D]`` projections (N >= 2). Computed in fp32."""
    if z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError(f"barlow_twins_loss needs two [N>=2, D] tensors of one shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    n = z1.shape[0]

    def standardise(z):
        z = z.float()
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    c = standardise(z1).t() @ standardise(z2) / n
    diag = torch.diagonal(c)
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off


@register_method("barlow", display_name="Barlow Twins", paper="Zbontar, Jing, Misra, LeCun, Deny, ICML 2021",
                 position=70,
                 summary="Barlow Twins",
                 losses=("barlow_twins_loss",),
                 tiny={"proj_hidden_dim": 16, "proj_dim": 16})
class BarlowTwins(Method):
    min_batch_size = 2
    min_batch_reason = "the cross-correlation is normalised over the batch: 1 image has no variance"

    def __init__(self, backbone, *, proj_hidden_dim: int = 8192, proj_dim: int = 8192, lambd: float = 0.0051,
                 scale_loss: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.projector = mlp([backbone.feature_dim, proj_hidden_dim, proj_hidden_dim, proj_dim], last_bias=False)
        self.lambd, self.scale_loss = lambd, scale_loss

    def forward(self, views):
        self._check_views(views, "Barlow Twins")
        b = views[0].shape[0]
        z = self.projector(self.backbone(torch.cat(views)))
        return self.scale_loss * barlow_twins_loss(z[:b], z[b:], self.lambd)
