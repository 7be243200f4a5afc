"""VICReg (Bardes, Ponce, LeCun; ICLR 2022): Variance-Invariance-Covariance Regularisation.

With ``z^A, z^B`` ``[N, D]`` the two views' projections::

    inv  = mean_{b,d} (z^A_bd - z^B_bd)^2                                  (mean squared error)
    std  = ( mean_d relu(gamma - S(z^A)_d) + mean_d relu(gamma - S(z^B)_d) ) / 2,
           S(z)_d = sqrt(Var_b(z_bd) + eps)                                 (unbiased variance)
    cov  = sum_{i != j} C(z^A)_ij^2 / D + sum_{i != j} C(z^B)_ij^2 / D,
           C(z) = (z - mean_b z)^T (z - mean_b z) / (N - 1)
    loss = sim_coeff * inv + std_coeff * std + cov_coeff * cov

Paper defaults (ImageNet): ``sim_coeff = std_coeff = 25``, ``cov_coeff = 1``, ``gamma = 1``,
``eps = 1e-4``; expander ``Linear-BN-ReLU`` x2 then ``Linear`` with 8192 units; LARS, base lr
0.2 x batch / 256, wd 1e-6, batch 2048, 1000 epochs. No predictor, no stop-gradient, no negatives.
Under torch.distributed the statistics are taken over the global batch (the paper's code gathers
the embeddings of every rank).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather_rows
from .common import Method, register_method
from .heads import mlp


def _off_diagonal_sq_sum(c: torch.Tensor) -> torch.Tensor:
    return c.pow(2).sum() - torch.diagonal(c).pow(2).sum()


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg loss of two ``[N, D]`` projections (N >= 2). Computed in fp32."""
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(f"vicreg_loss needs two [N>=2, D] tensors of one shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    z1, z2 = z1.float(), z2.float()
    n, d = z1.shape
    inv = F.mse_loss(z1, z2)
    z1, z2 = z1 - z1.mean(0), z2 - z2.mean(0)
    std1, std2 = torch.sqrt(z1.var(0) + eps), torch.sqrt(z2.var(0) + eps)
    std = (F.relu(gamma - std1).mean() + F.relu(gamma - std2).mean()) / 2
    cov = (_off_diagonal_sq_sum(z1.t() @ z1 / (n - 1)) + _off_diagonal_sq_sum(z2.t() @ z2 / (n - 1))) / d
    return sim_coeff * inv + std_coeff * std + cov_coeff * cov


@register_method("vicreg", display_name="VICReg", paper="Bardes, Ponce, LeCun, ICLR 2022", position=75,
                 summary="VICReg: variance, invariance and covariance terms, no negatives or EMA",
                 losses=("vicreg_loss",),
                 tiny={"proj_hidden_dim": 16, "proj_dim": 16})
class VICReg(Method):
    """Backbone + expander; loss :func:`vicreg_loss` of two views."""

    def __init__(self, backbone, *, proj_hidden_dim: int = 8192, proj_dim: int = 8192, sim_coeff: float = 25.0,
                 std_coeff: float = 25.0, cov_coeff: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.projector = mlp([backbone.feature_dim, proj_hidden_dim, proj_hidden_dim, proj_dim])
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff

    def forward(self, views):
        self._check_views(views, "VICReg")
        z, _ = gather_rows(self.projector(self.backbone(torch.cat(views))))  # global batch under DDP
        z1, z2 = z.chunk(2)
        return vicreg_loss(z1, z2, self.sim_coeff, self.std_coeff, self.cov_coeff)
