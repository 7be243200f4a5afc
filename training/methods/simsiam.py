"""SimSiam (Chen & He, CVPR 2021): a siamese network with a predictor and a stop-gradient; no
negatives, no momentum encoder.

With ``z_v = projector(f(x_v))``, ``p_v = predictor(z_v)`` and ``D(p, z) = -cos(p, stopgrad(z))``::

    loss = D(p_1, z_2) / 2 + D(p_2, z_1) / 2

Paper defaults (ImageNet): projector 3 layers ``Linear-BN-ReLU`` x2 then ``Linear-BN`` to 2048,
predictor ``Linear(2048,512)-BN-ReLU-Linear(512,2048)``; SGD lr 0.05 x batch/256, momentum 0.9,
wd 1e-4, cosine, batch 512, 100 epochs (the predictor keeps a fixed lr in the paper; here it
follows the schedule). CIFAR: a 2-layer projector (``proj_layers=2``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import Method, register_method
from .heads import mlp


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``-mean_b cos(p_b, z_b)`` with ``z`` detached (the stop-gradient). Computed in fp32."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


@register_method("simsiam", display_name="SimSiam", paper="Chen & He, CVPR 2021", position=60,
                 summary="SimSiam: stop-grad predictor",
                 losses=("simsiam_loss",),
                 tiny={"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 8})
class SimSiam(Method):
    def __init__(self, backbone, *, proj_hidden_dim: int = 2048, proj_dim: int = 2048, pred_hidden_dim: int = 512,
                 proj_layers: int = 3):
        super().__init__()
        if proj_layers < 2:
            raise ValueError(f"SimSiam proj_layers must be >= 2, got {proj_layers}")
        self.backbone = backbone
        self.projector = mlp([backbone.feature_dim] + [proj_hidden_dim] * (proj_layers - 1) + [proj_dim], last_bn=True)
        self.predictor = mlp([proj_dim, pred_hidden_dim, proj_dim])

    def forward(self, views):
        self._check_views(views, "SimSiam")
        b = views[0].shape[0]
        z = self.projector(self.backbone(torch.cat(views)))
        p = self.predictor(z)
        return (simsiam_loss(p[:b], z[b:]) + simsiam_loss(p[b:], z[:b])) / 2
