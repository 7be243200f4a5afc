"""BYOL (Grill et al., NeurIPS 2020): online network (backbone + projector + predictor) regresses
the projection of an EMA target network (backbone + projector), which receives no gradient.

With ``p_v = predictor(projector(f(x_v)))`` and target projections ``z'_v`` (no gradient)::

    L(p, z') = 2 - 2 * <p / ||p||, z' / ||z'||>          (mean over the batch)
    loss     = L(p_1, z'_2) + L(p_2, z'_1)                  (symmetrised, as in the paper)
    theta'   <- tau theta' + (1 - tau) theta               after each step,
    tau      = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2  (tau_base -> 1)

Paper defaults (ImageNet): projector and predictor ``Linear(., 4096)-BN-ReLU-Linear(4096, 256)``,
tau_base 0.996, LARS lr 0.2 x batch/256, wd 1.5e-6, batch 4096, 1000 epochs, asymmetric
augmentation (blur 1.0 / 0.1, solarisation 0 / 0.2). solo-learn CIFAR: tau 0.99 -> 1.0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import MomentumMethod, register_method
from .heads import mlp


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``mean_b (2 - 2 cos(p_b, z_b))``; ``z`` (the target) is detached. Computed in fp32."""
    p = F.normalize(p.float(), dim=1)
    z = F.normalize(z.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(1)).mean()


@register_method("byol", display_name="BYOL", paper="Grill et al., NeurIPS 2020", position=50,
                 summary="BYOL: EMA target + predictor",
                 losses=("byol_loss",),
                 tiny={"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 16})
class BYOL(MomentumMethod):
    def __init__(self, backbone, *, proj_hidden_dim: int = 4096, proj_dim: int = 256, pred_hidden_dim: int = 4096,
                 momentum_base: float = 0.996, momentum_final: float = 1.0):
        super().__init__(momentum_base=momentum_base, momentum_final=momentum_final)
        self.backbone = backbone
        self.projector = mlp([backbone.feature_dim, proj_hidden_dim, proj_dim])
        self.predictor = mlp([proj_dim, pred_hidden_dim, proj_dim])
        self.add_momentum_copies(("backbone", "target_backbone"), ("projector", "target_projector"))

    def forward(self, views):
        self._check_views(views, "BYOL")
        b = views[0].shape[0]
        x = torch.cat(views)
        p = self.predictor(self.projector(self.backbone(x)))
        with torch.no_grad():
            z = self.target_projector(self.target_backbone(x))
        return byol_loss(p[:b], z[b:]) + byol_loss(p[b:], z[:b])
