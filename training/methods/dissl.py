"""DISSL: distillation ISSL (Dubois, Hashimoto, Ermon, Liang; NeurIPS 2022, "Improving
Self-Supervised Learning by Characterizing Idealized Representations").

One encoder, two heads on its representation ``z`` -- **no EMA and no stop-gradient anywhere**:
a *teacher* MLP giving ``t(M|z)`` over ``C`` equivalence classes and a *student* that is linear
(low rank), the family of the downstream linear probe, giving ``s(M|z)``. With the teacher's
logits over the large crops ``i`` and the student's over all crops ``j``::

    p_i    = softmax(teacher(z_i) / T_t)           T_t = T_s / 2 = 0.5
    logq_j = log_softmax(student(z_j) / T_s)       T_s = 1
    H_M        = mean_i  H( mean_batch p_i )                          (marginal entropy: maximality)
    CE_det_inv = mean_{i != i'}  mean_batch  -sum_M p_i log p_i'       (teacher agreement: invariance
                                                                         + determinism)
    CE_distill = mean_{i, j != i} mean_batch -sum_M p_i log q_j        (distillation)
    loss = w * CE_distill - lambda * H_M + beta * CE_det_inv

``w`` is 1, or a linear warm-up over ``distill_warmup_steps`` (the ImageNet/VISSL runs use 1000).
Because the teacher is not detached, ``CE_distill`` also pushes the teacher towards invariance, so
the effective beta is ``1 + beta``.

Defaults (``config/decodability/dissl.yaml``, TinyImageNet): C = 16384, lambda = 2.3 (tune in
[1.8, 2.8]), beta = 0.8 (tune in [0.4, 1.0]); ImageNet (VISSL): beta 0.6, teacher only on the two
large crops, student on all crops. Teacher head ``Linear(z,1024)-BN-ReLU-Linear(1024,512)-BN-
Linear(512,C)``; student ``Linear(z,512)-BN-Linear(512,C)``. ``teacher_head="residual"`` gives the
VISSL ImageNet teacher ``Linear(z,512)-BN-ReLU -> x + MLP(512,2048,2048,512)(x) -> Linear(512,C)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eval.distributed import is_distributed, world_size

from ..distributed import all_reduce_sum
from .common import Method, encode_crops, register_method, split_crops


def marginal_entropy(p: torch.Tensor, global_batch: bool = False) -> torch.Tensor:
    """Entropy (nats) of the batch marginal ``mean_b p[b]`` of probabilities ``p`` ``[B, C]``;
    maximal (``log C``) when the marginal is uniform. ``global_batch``: the marginal of the batch of
    every rank under torch.distributed (a sum all-reduced with gradients; equal per-rank batches).

    ``-sum pm log(max(pm, eps))``, like upstream's ``Categorical(probs=pm).entropy()`` (which clamps the
    probabilities before the log): the same value (exactly 0 for a collapsed marginal), and a finite
    gradient where a cluster's marginal probability underflows to 0 (``xlogy``'s gradient there is
    ``-inf``, which turns every weight into NaN while the loss itself stays finite)."""
    if global_batch and is_distributed():
        pm = all_reduce_sum(p.sum(0)) / (p.shape[0] * world_size())
    else:
        pm = p.mean(0)
    return -(pm * torch.log(pm.clamp(min=torch.finfo(pm.dtype).eps))).sum()


def dissl_loss(teacher_logits: list[torch.Tensor], student_logits: list[torch.Tensor], *, lam: float = 2.3,
               beta: float = 0.8, teacher_temp: float = 0.5, student_temp: float = 1.0,
               distill_weight: float = 1.0, return_terms: bool = False, global_marginal: bool = False):
    """DISSL loss. ``teacher_logits``: one ``[B, C]`` tensor per large crop; ``student_logits``: one
    per crop, the first ``len(teacher_logits)`` being the same crops as the teacher's. Computed in
    fp32. With ``return_terms`` also returns ``dict(H_M, CE_det_inv, CE_distill)`` (detached); with
    ``return_terms="attached"`` the same terms, in the graph.
    ``global_marginal``: ``H_M`` of the marginal over every rank's batch (torch.distributed); the
    other terms are per-example means, whose rank average DDP's gradient average already takes."""
    nt = len(teacher_logits)
    if nt < 2 or len(student_logits) < nt:
        raise ValueError(f"dissl_loss needs >= 2 teacher crops and at least as many student crops, got {nt} and "
                         f"{len(student_logits)}")
    p = [F.softmax(t.float() / teacher_temp, dim=-1) for t in teacher_logits]
    logp = [F.log_softmax(t.float() / teacher_temp, dim=-1) for t in teacher_logits]
    logq = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_logits]
    h_m = torch.stack([marginal_entropy(pi, global_marginal) for pi in p]).mean()
    det_inv = torch.stack([-(p[i] * logp[k]).sum(-1).mean() for i in range(nt) for k in range(nt) if k != i]).mean()
    distill = torch.stack([-(p[i] * logq[j]).sum(-1).mean() for i in range(nt) for j in range(len(logq))
                           if j != i]).mean()
    loss = distill_weight * distill - lam * h_m + beta * det_inv
    if return_terms == "attached":  # still in the graph (the trainer's gradient diagnosis)
        return loss, {"H_M": h_m, "CE_det_inv": det_inv, "CE_distill": distill}
    if return_terms:
        return loss, {"H_M": h_m.detach(), "CE_det_inv": det_inv.detach(), "CE_distill": distill.detach()}
    return loss


class _ResidualMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x):
        return x + self.net(x)


def dissl_teacher_head(in_dim: int, n_clusters: int, hidden_dim: int = 1024, bottleneck_dim: int = 512,
                       kind: str = "mlp") -> nn.Sequential:
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                             nn.Linear(hidden_dim, bottleneck_dim, bias=False), nn.BatchNorm1d(bottleneck_dim),
                             nn.Linear(bottleneck_dim, n_clusters))
    if kind == "residual":
        return nn.Sequential(nn.Linear(in_dim, bottleneck_dim, bias=False), nn.BatchNorm1d(bottleneck_dim), nn.ReLU(),
                             _ResidualMLP(bottleneck_dim, hidden_dim), nn.Linear(bottleneck_dim, n_clusters))
    raise ValueError(f"unknown DISSL teacher_head {kind!r}; use 'mlp' or 'residual'")


def dissl_student_head(in_dim: int, n_clusters: int, bottleneck_dim: int = 512) -> nn.Sequential:
    """Low-rank linear: ``Linear(in, bottleneck, bias=False) - BN - Linear(bottleneck, C)``."""
    return nn.Sequential(nn.Linear(in_dim, bottleneck_dim, bias=False), nn.BatchNorm1d(bottleneck_dim),
                         nn.Linear(bottleneck_dim, n_clusters))


@register_method("dissl", display_name="DISSL", paper="Dubois, Hashimoto, Ermon, Liang, NeurIPS 2022", position=90,
                 summary="distillation ISSL: teacher/student heads, C clusters, lambda, beta, no EMA/stop-grad",
                 losses=("dissl_loss", "marginal_entropy"),
                 tiny={"n_clusters": 32, "proj_hidden_dim": 16, "bottleneck_dim": 8})
class DISSL(Method):
    """Backbone + teacher / student heads; loss :func:`dissl_loss`. Multi-crop: the teacher sees the
    two large crops only, the student sees every crop."""

    multicrop = True

    def __init__(self, backbone, *, n_clusters: int = 16384, proj_hidden_dim: int = 1024, bottleneck_dim: int = 512,
                 lam: float = 2.3, beta: float = 0.8, teacher_temp: float = 0.5, student_temp: float = 1.0,
                 teacher_head: str = "mlp", distill_warmup_steps: int = 0):
        super().__init__()
        d = backbone.feature_dim
        self.backbone = backbone
        self.teacher = dissl_teacher_head(d, n_clusters, proj_hidden_dim, bottleneck_dim, teacher_head)
        self.student = dissl_student_head(d, n_clusters, bottleneck_dim)
        self.lam, self.beta = lam, beta
        self.teacher_temp, self.student_temp = teacher_temp, student_temp
        self.distill_warmup_steps = distill_warmup_steps

    def forward(self, views):
        self._check_views(views, "DISSL")
        large, small = split_crops(views, self.n_views)
        z = encode_crops(self.backbone, large + small)
        n_large = sum(v.shape[0] for v in large)
        t_logits = self.teacher(z[:n_large]).chunk(len(large))
        s_logits = self.student(z).split([v.shape[0] for v in views])
        w = 1.0
        if self.distill_warmup_steps:
            w = min(1.0, (self.step + 1) / self.distill_warmup_steps)
        loss, terms = dissl_loss(list(t_logits), list(s_logits), lam=self.lam, beta=self.beta,
                                 teacher_temp=self.teacher_temp, student_temp=self.student_temp, distill_weight=w,
                                 return_terms="attached", global_marginal=True)
        # the weighted terms that sum to the loss, in the graph: the trainer names the term of a non-finite gradient
        self.loss_terms = {"CE_distill": w * terms["CE_distill"], "H_M": -self.lam * terms["H_M"],
                           "CE_det_inv": self.beta * terms["CE_det_inv"]}
        self.last_logs = {k: v.detach() for k, v in terms.items()}  # the trainer reads them when it logs
        return loss
