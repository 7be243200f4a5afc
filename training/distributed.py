"""Training on torch.distributed: DDP wrapping, SyncBatchNorm, collectives with gradients.

Launch ``sslzoo train`` with ``torchrun`` (``docs/distributed.md``); outside torchrun (or with one
process) none of this runs and training is exactly the single-process trainer.

* :func:`gather_rows` -- contrastive losses (SimCLR, DCL, CISSL) see the projections of every rank:
  ``torch.distributed.nn.functional.all_gather`` (autograd-aware: its backward sums the gradients
  of every rank's copy back to the owner) builds the global ``[2B, d]`` matrix in single-process
  row order; each rank computes the loss of its own anchor rows against all columns. With DDP
  averaging gradients over ranks, the gradient is that of the single-process loss over the global
  batch.
* :func:`all_reduce_sum` -- a sum over ranks with gradients (``torch.distributed.nn.functional.
  all_reduce``): DISSL's batch marginal ``mean_b p[b]`` over the global batch.
* :class:`GlooSyncBatchNorm` -- batch statistics over all ranks on CPU (gloo): torch's
  :class:`torch.nn.SyncBatchNorm` supports GPUs only, and is used there. Same parameters, buffers
  and state-dict keys as ``BatchNorm*d``, so checkpoints and exports are unchanged.
"""
from __future__ import annotations

import inspect
import warnings

import torch
import torch.distributed as dist
from torch import nn

from eval.distributed import is_distributed, rank, world_size

__all__ = ["GlooSyncBatchNorm", "all_gather_nograd", "all_reduce_mean", "all_reduce_sum", "broadcast_state_",
           "convert_sync_batchnorm", "gather_rows", "wrap_ddp"]


def _quiet(fn, *args):
    """torch >= 2.10 marks ``torch.distributed.nn.functional`` deprecated in favour of a private
    module; it is the public autograd-aware API and still correct, so call it without the warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return fn(*args)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks, differentiable (backward: the sum of every rank's gradient)."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_reduce

    return _quiet(all_reduce, x)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks, no gradient (statistics, logging)."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / world_size()


@torch.no_grad()
def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """``cat`` of every rank's ``x`` in rank order, no gradient (queues)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def gather_rows(z: torch.Tensor, n_views: int = 2) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Global rows for a contrastive loss and this rank's anchor rows among them.

    ``z`` is this rank's ``cat([z_view1, ..., z_viewV])`` (``V * b`` rows). Returns ``(z_all, rows)``
    with ``z_all`` the ``V * B`` rows of the global batch (``B = world * b``) in single-process order
    -- view 1 of rank 0, rank 1, ..., then view 2 of every rank -- gathered with gradients, and
    ``rows`` the indices of this rank's own rows in ``z_all``. Single process: ``(z, None)``."""
    if not is_distributed():
        return z, None
    from torch.distributed.nn.functional import all_gather

    w, r = world_size(), rank()
    if z.shape[0] % n_views:
        raise ValueError(f"gather_rows: {z.shape[0]} rows is not a multiple of {n_views} views")
    b = z.shape[0] // n_views
    parts = [p.chunk(n_views) for p in _quiet(all_gather, z.contiguous())]
    z_all = torch.cat([parts[q][v] for v in range(n_views) for q in range(w)])
    big_b = w * b
    rows = torch.cat([torch.arange(v * big_b + r * b, v * big_b + (r + 1) * b, device=z.device)
                      for v in range(n_views)])
    return z_all, rows


# ----------------------------------------------------------------------------- SyncBatchNorm on CPU

class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the batch of every rank, for CPU process groups (gloo).

    Training: ``mean = sum_ranks sum x / N``, ``var = sum_ranks sum (x - mean)^2 / N`` (two
    differentiable all-reduces, so the gradient is that of BatchNorm over the global batch); running
    statistics get the global mean and unbiased variance, as ``nn.BatchNorm``. Evaluation, or a
    single process: plain ``F.batch_norm``."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float32, device=x.device)
        packed = all_reduce_sum(torch.cat([xf.sum(dims), count]))
        n = packed[-1].detach()
        mean = packed[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce_sum((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every ``BatchNorm*d`` of ``module`` as a synchronised one: torch's :class:`nn.SyncBatchNorm`
    on GPUs, :class:`GlooSyncBatchNorm` on CPUs. Parameters are kept (same objects), buffers copied."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        out = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module


# ----------------------------------------------------------------------------- DDP, state

def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)``: rank 0's parameters and buffers broadcast at construction,
    gradients averaged over ranks. Methods whose parameters may get no gradient in a step (DINO's
    frozen last layer) set ``ddp_find_unused_parameters = True``."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    # buffers: synced at construction, not before every forward (queues and centres are kept equal by
    # the methods' own collectives, BatchNorm statistics by SyncBatchNorm or broadcast_state_)
    kw = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
          else {"broadcast_buffers": False})
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=bool(getattr(model, "ddp_find_unused_parameters", False)), **kw)


@torch.no_grad()
def broadcast_state_(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s frozen parameters (EMA teachers, momentum encoders) and buffers (BatchNorm
    statistics, queues, centres) to every rank, so they cannot drift apart."""
    if not is_distributed():
        return
    for p in model.parameters():
        if not p.requires_grad:
            dist.broadcast(p.data, src)
    for b in model.buffers():
        dist.broadcast(b, src)

