"""SimCLR (Chen et al., 2020): two augmented views, projection head, NT-Xent loss.

NT-Xent for a batch of ``B`` images with projections ``z`` of shape ``[2B, d]`` (view 1 rows
``0..B-1``, view 2 rows ``B..2B-1``), after L2 normalisation ``u_i = z_i / ||z_i||``::

    l_i = -log( exp(u_i . u_p(i) / T) / sum_{j != i} exp(u_i . u_j / T) ),   p(i) = (i + B) mod 2B
    loss = mean_i l_i

Paper defaults: temperature 0.5 (ImageNet, batch 4096); 0.2 is better for short runs and small
batches (SimCLR appendix B.9); the projection head is Linear-BN-ReLU-Linear to 128 d.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_rows
from .common import register_method
from .heads import ProjectionHead


def nt_xent_loss(z: torch.Tensor, temperature: float = 0.5, rows: torch.Tensor | None = None) -> torch.Tensor:
    """NT-Xent over ``z`` = ``cat([z1, z2])`` of shape ``[2B, d]``; computed in fp32.

    ``rows``: only these anchors' terms (mean over them), every row still a candidate -- one rank's
    share of the global loss under torch.distributed (:func:`training.distributed.gather_rows`)."""
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0]
    if n % 2:
        raise ValueError(f"nt_xent_loss expects an even number of rows (two views), got {n}")
    b = n // 2
    if rows is not None:
        logits = z[rows] @ z.t() / temperature
        logits[torch.arange(len(rows), device=z.device), rows] = float("-inf")
        return F.cross_entropy(logits, (rows + b) % n)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.arange(n, device=z.device).roll(b)
    return F.cross_entropy(logits, target)


@register_method("simclr", display_name="SimCLR", paper="Chen, Kornblith, Norouzi, Hinton, ICML 2020", position=10,
                 summary="SimCLR (NT-Xent)",
                 losses=("nt_xent_loss",),
                 tiny={"proj_hidden_dim": 16, "proj_dim": 8})
class SimCLR(nn.Module):
    """Backbone + projection head; ``forward(views)`` returns the NT-Xent loss of two views."""

    min_batch_size = 2
    min_batch_reason = "a contrastive loss needs negatives: with 1 image per batch it is 0 and trains nothing"

    n_views = 2

    def __init__(self, backbone: nn.Module, *, proj_hidden_dim: int = 512, proj_dim: int = 128,
                 temperature: float = 0.5, proj_bn: bool = True):
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.feature_dim, proj_hidden_dim, proj_dim, bn=proj_bn)
        self.temperature = temperature

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        if len(views) != 2:
            raise ValueError(f"SimCLR takes 2 views, got {len(views)}")
        z = self.head(self.backbone(torch.cat(views)))
        z, rows = gather_rows(z)  # (z, None) in a single process
        return nt_xent_loss(z, self.temperature, rows)
