"""DINO (Caron et al., ICCV 2021): self-distillation with no labels. A student (backbone + DINO
head) matches an EMA teacher's centred and sharpened output over ``K`` dimensions; multi-crop, the
teacher sees only the large (global) crops, the student sees every crop.

With student outputs ``s_j`` (all crops ``j``) and teacher outputs ``t_i`` (large crops ``i``, no
gradient) and the centre ``c``::

    P_t,i = softmax((t_i - c) / T_t)            T_t: 0.04 (warm-up to 0.07 for long runs)
    log P_s,j = log_softmax(s_j / T_s)           T_s = 0.1
    loss = mean over pairs (i, j != i) of  mean_batch -sum_K P_t,i log P_s,j
    c  <- m c + (1 - m) mean_{batch, i} t_i     m = 0.9     (after the loss)
    theta_t <- tau theta_t + (1 - tau) theta_s  tau: 0.996 -> 1 on a cosine

Head: ``Linear(D, 2048)-GELU-Linear(2048, 2048)-GELU-Linear(2048, 256)``, L2-normalise, then a
weight-normalised ``Linear(256, K)`` with unit norm (``norm_last_layer``); K = 65536. The last
layer gets no gradient during the first epoch (``freeze_last_layer_epochs``). Paper defaults:
multi-crop 2 x 224 (scale 0.4-1) + 10 x 96 (0.05-0.4) for ViT, 2 + 6 for ResNet-50; LARS/SGD
for ResNet-50; gradient clipping 3.0; weight decay 0.04 -> 0.4 (cosine). The teacher is the
encoder DINO evaluates, so :meth:`DINO.export_backbone` returns it.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_mean
from .common import MomentumMethod, encode_crops, register_method, split_crops


def dino_loss(student_out: list[torch.Tensor], teacher_out: list[torch.Tensor], center: torch.Tensor,
              teacher_temp: float = 0.04, student_temp: float = 0.1) -> torch.Tensor:
    """DINO cross-entropy between the centred, sharpened teacher outputs (one ``[B, K]`` per large
    crop; no gradient) and the student outputs (one per crop, the first ``len(teacher_out)`` being
    the same crops). Pairs of the same crop are skipped. Computed in fp32."""
    t = [F.softmax((x.detach().float() - center) / teacher_temp, dim=-1) for x in teacher_out]
    s = [F.log_softmax(x.float() / student_temp, dim=-1) for x in student_out]
    terms = [-(t[i] * s[j]).sum(-1).mean() for i in range(len(t)) for j in range(len(s)) if j != i]
    if not terms:
        raise ValueError("dino_loss needs at least 2 crops")
    return torch.stack(terms).mean()


class DINOLoss(nn.Module):
    """:func:`dino_loss` with the centre kept as a buffer and updated (in training mode) after
    each call: ``c <- m c + (1 - m) mean(teacher outputs)``."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out, teacher_out, teacher_temp: float = 0.04) -> torch.Tensor:
        loss = dino_loss(student_out, teacher_out, self.center, teacher_temp, self.student_temp)
        if self.training:
            self.update_center(teacher_out)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_out) -> None:
        # the mean over every rank's batch under torch.distributed (equal per-rank batches)
        batch_center = all_reduce_mean(torch.cat([t.detach().float() for t in teacher_out]).mean(0, keepdim=True))
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


class NormalizedLinear(nn.Module):
    """``x @ (W / ||W||_row).T``: weight normalisation with the gain fixed at 1 (DINO's
    ``norm_last_layer=True``). ``frozen=True`` in forward lets no gradient reach ``W``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x, frozen: bool = False):
        w = self.weight.detach() if frozen else self.weight
        # fp32 even under bf16 autocast: the outputs are cosines sharpened by T = 0.04
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), F.normalize(w.float(), dim=1))


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 n_layers: int = 3, use_bn: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers += ([nn.BatchNorm1d(b)] if use_bn else []) + [nn.GELU()]
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = NormalizedLinear(bottleneck_dim, out_dim)

    def forward(self, x, freeze_last: bool = False):
        return self.last_layer(F.normalize(self.mlp(x).float(), dim=-1), frozen=freeze_last)


@register_method("dino", display_name="DINO", paper="Caron et al., ICCV 2021", position=80,
                 summary="DINO: centring, sharpening, EMA teacher, multi-crop",
                 losses=("dino_loss",),
                 tiny={"out_dim": 32, "proj_hidden_dim": 16, "bottleneck_dim": 8, "freeze_last_layer_epochs": 0})
class DINO(MomentumMethod):
    multicrop = True
    ddp_find_unused_parameters = True  # the last layer gets no gradient while it is frozen

    def __init__(self, backbone, *, out_dim: int = 65536, proj_hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 use_bn: bool = False, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 warmup_teacher_temp: float = 0.04, warmup_teacher_temp_epochs: float = 0.0,
                 center_momentum: float = 0.9, momentum_base: float = 0.996, momentum_final: float = 1.0,
                 freeze_last_layer_epochs: float = 1.0):
        super().__init__(momentum_base=momentum_base, momentum_final=momentum_final)
        self.backbone = backbone
        self.head = DINOHead(backbone.feature_dim, out_dim, proj_hidden_dim, bottleneck_dim, use_bn=use_bn)
        self.add_momentum_copies(("backbone", "teacher_backbone"), ("head", "teacher_head"))
        self.loss = DINOLoss(out_dim, student_temp, center_momentum)
        self.teacher_temp, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.freeze_last_layer_epochs = freeze_last_layer_epochs

    def current_teacher_temp(self) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp`` over the first epochs."""
        warm = self.warmup_teacher_temp_epochs * self.steps_per_epoch
        if warm > 0 and self.step < warm:
            return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * self.step / warm
        return self.teacher_temp

    def last_layer_frozen(self) -> bool:
        return self.step < self.freeze_last_layer_epochs * self.steps_per_epoch

    def forward(self, views):
        self._check_views(views, "DINO")
        large, small = split_crops(views, self.n_views)
        sizes = [v.shape[0] for v in views]
        s = self.head(encode_crops(self.backbone, large + small), freeze_last=self.last_layer_frozen())
        with torch.no_grad():
            t = self.teacher_head(self.teacher_backbone(torch.cat(large)))
        tt = self.current_teacher_temp()
        self.last_logs = {"teacher_temp": torch.tensor(tt)}
        return self.loss(list(s.split(sizes)), list(t.chunk(len(large))), tt)

    def export_backbone(self):
        return self.teacher_backbone
