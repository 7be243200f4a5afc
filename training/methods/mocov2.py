"""MoCo v2 (He et al., CVPR 2020; Chen, Fan, Girshick, He, arXiv 2003.04297).

A query encoder ``f_q`` (backbone + MLP head) is trained; the key encoder ``f_k`` is its momentum
copy, ``theta_k <- m theta_k + (1 - m) theta_q`` after every step, and receives no gradient. A
queue of the last ``K`` keys supplies the negatives. With ``q = normalize(f_q(x1))``,
``k = normalize(f_k(x2))`` (no gradient) and the queue ``Q`` ``[K, d]``::

    logits = [ q . k,  q @ Q.T ] / T          # [B, 1 + K]
    loss   = cross_entropy(logits, 0)           # the positive is column 0

then ``k`` is enqueued (the oldest keys are dequeued). ``symmetric=True`` (MoCo v2+, solo-learn)
averages the loss over both assignments ``(x1 -> x2, x2 -> x1)`` and enqueues both key sets.

Paper defaults: K = 65536, T = 0.2, m = 0.999, head ``Linear(d,2048)-ReLU-Linear(2048,128)``,
SGD lr 0.03 per 256, wd 1e-4, 200 epochs, cosine. solo-learn's CIFAR MoCo v2+: K = 32768,
256-d output, m 0.99 -> 0.999 on a cosine (``momentum_base`` -> ``momentum_final``).
Shuffling BN across GPUs is a multi-GPU device and is not done here (one device, one batch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_gather_nograd
from .common import MomentumMethod, register_method
from .heads import mlp


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE of queries ``q`` ``[B, d]`` against their keys ``k`` ``[B, d]`` (positives) and the
    queue ``[K, d]`` (negatives); keys and queue get no gradient. Computed in fp32."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    queue = F.normalize(queue.detach().float(), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class KeyQueue(nn.Module):
    """FIFO of ``size`` L2-normalised keys, kept as buffers (``keys``, ``ptr``) so checkpoints hold it.
    Starts as random unit vectors, as in MoCo."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """Write ``k`` over the oldest entries (wrapping around the end)."""
        n, size = k.shape[0], self.keys.shape[0]
        if n > size:
            raise ValueError(f"cannot enqueue {n} keys into a queue of {size}; raise method.queue_size")
        idx = (self.ptr + torch.arange(n, device=self.keys.device)) % size
        self.keys[idx] = F.normalize(k.detach().float(), dim=1).to(self.keys.dtype)
        self.ptr.fill_((int(self.ptr) + n) % size)


@register_method("mocov2", display_name="MoCo v2", paper="Chen, Fan, Girshick, He, arXiv 2003.04297 (2020)",
                 position=40,
                 summary="MoCo v2: queue + momentum encoder",
                 losses=("moco_loss",),
                 tiny={"proj_hidden_dim": 16, "proj_dim": 8, "queue_size": 64})
class MoCoV2(MomentumMethod):
    """Query encoder (backbone + head), momentum key encoder, key queue."""

    def __init__(self, backbone, *, proj_hidden_dim: int = 2048, proj_dim: int = 128, queue_size: int = 65536,
                 temperature: float = 0.2, momentum_base: float = 0.999, momentum_final: float = 0.999,
                 symmetric: bool = False):
        super().__init__(momentum_base=momentum_base, momentum_final=momentum_final)
        self.backbone = backbone
        self.head = mlp([backbone.feature_dim, proj_hidden_dim, proj_dim], bn=False)
        self.add_momentum_copies(("backbone", "momentum_backbone"), ("head", "momentum_head"))
        self.queue = KeyQueue(queue_size, proj_dim)
        self.temperature = temperature
        self.symmetric = symmetric
        self._pending: torch.Tensor | None = None

    def forward(self, views):
        self._check_views(views, "MoCo v2")
        b = views[0].shape[0]
        x = torch.cat(views) if self.symmetric else views[0]
        q = self.head(self.backbone(x))
        with torch.no_grad():
            k = self.momentum_head(self.momentum_backbone(torch.cat(views) if self.symmetric else views[1]))
        queue = self.queue.keys.clone()
        if self.symmetric:
            loss = (moco_loss(q[:b], k[b:], queue, self.temperature) +
                    moco_loss(q[b:], k[:b], queue, self.temperature)) / 2
        else:
            loss = moco_loss(q, k, queue, self.temperature)
        if self.training:
            # enqueued after the optimiser step (on_train_step); under torch.distributed the keys of
            # every rank, in rank order, so every rank's queue stays the same
            self._pending = all_gather_nograd(k.detach())
        return loss

    @torch.no_grad()
    def on_train_step(self, step: int, total_steps: int) -> None:
        super().on_train_step(step, total_steps)  # the momentum encoder
        if self._pending is not None:
            self.queue.enqueue(self._pending)
            self._pending = None
