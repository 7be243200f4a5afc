"""Fine-tuning protocol: train an encoder end to end with a linear head on a fraction of the labels.

Protocol ``finetune`` (name it in every table):

1. a stratified validation split (``val_fraction`` of train, seeded) is carved from the *train*
   split; the test split is used once, at the end;
2. a stratified ``label_fraction`` (1%, 10%, 100%) of the rest is the labelled set (at least one
   image per class);
3. for each learning rate of the grid, a copy of the encoder and a zero-initialised linear head are
   trained end to end: SGD (momentum 0.9, Nesterov), linear warm-up then cosine, no weight decay
   on biases and normalisation parameters, random-resized-crop + flip augmentation on the batched
   tensors, bf16 autocast; after every epoch the model is scored on the validation split;
4. the (learning rate, epoch) with the best validation accuracy is selected and evaluated on test.

This is the SimCLR / BYOL semi-supervised fine-tuning protocol with model selection moved from the
test split (common upstream, see seeds.md 6.3) to a held-out part of train.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import ViewAugment
from .optim import param_groups, warmup_cosine


def stratified_subset(y, fraction: float, seed: int, min_per_class: int = 1) -> np.ndarray:
    """Sorted indices of a per-class ``fraction`` of ``y`` (rounded, at least ``min_per_class``)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(len(idx), max(min_per_class, round(fraction * len(idx))))
        out.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(out))


def _prepare(x: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


@torch.no_grad()
def _accuracy(model: nn.Module, x, y, size, mean, std, device, bf16, bs=512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        xb = _prepare(x[i:i + bs].to(device), size, mean, std)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model(xb).float().argmax(1)
        correct += int((pred.cpu() == y[i:i + bs]).sum())
    return correct / max(1, len(x))


def finetune(encoder: nn.Module, train_x: torch.Tensor, train_y, test_x: torch.Tensor, test_y, *,
             size: int, mean, std, label_fraction: float = 0.1, val_fraction: float = 0.1,
             lrs=(0.01, 0.03, 0.1), epochs: int = 30, batch_size: int = 256, weight_decay: float = 0.0,
             warmup_epochs: int = 1, crop_scale=(0.25, 1.0), flip_p: float = 0.5, seed: int = 0,
             device: str | None = None, bf16: bool = True) -> dict:
    """Run the ``finetune`` protocol; ``encoder`` maps ``[B, C, size, size]`` to ``[B, encoder.feature_dim]``
    (every zoo model does) and is not modified. Images are uint8 ``[N, C, H, W]``.

    Returns ``dict(protocol, accuracy, val_accuracy, lr, epoch, label_fraction, n_labelled, n_val, seed)``;
    ``accuracy`` is on test, measured once for the selected model."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_y = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    test_y = torch.as_tensor(np.asarray(test_y), dtype=torch.long)
    if (train_y < 0).any():
        raise ValueError("finetune needs labelled train images (labels >= 0)")
    n_classes = int(max(train_y.max(), test_y.max() if len(test_y) else 0)) + 1
    val_idx = stratified_subset(train_y.numpy(), val_fraction, seed)
    rest = np.setdiff1d(np.arange(len(train_y)), val_idx)
    lab_idx = rest[stratified_subset(train_y[rest].numpy(), label_fraction, seed + 1)]
    xl, yl = train_x[lab_idx], train_y[lab_idx]
    xv, yv = train_x[val_idx], train_y[val_idx]
    aug = ViewAugment(size=size, scale=tuple(crop_scale), flip_p=flip_p, jitter_p=0.0, grayscale_p=0.0,
                      blur_p=0.0, mean=tuple(mean), std=tuple(std))
    feat = getattr(encoder, "feature_dim", None)
    if feat is None:
        raise ValueError("the encoder needs a feature_dim attribute (every zoo model has one)")
    bs = min(batch_size, len(xl))
    steps_per_epoch = max(1, len(xl) // bs)
    total, warmup = steps_per_epoch * epochs, steps_per_epoch * warmup_epochs
    best = {"val_accuracy": -1.0}
    best_state = None
    for lr in lrs:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed + 2)
        head = nn.Linear(feat, n_classes)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        model = nn.Sequential(copy.deepcopy(encoder), head).to(dev)
        opt = torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=0.9, nesterov=True)
        step = 0
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(len(xl), generator=gen)
            for b in range(steps_per_epoch):
                idx = perm[b * bs:(b + 1) * bs]
                for g in opt.param_groups:
                    g["lr"] = lr * warmup_cosine(step, total, warmup)
                xb = aug(xl[idx].to(dev), gen)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(model(xb).float(), yl[idx].to(dev))
                if not math.isfinite(loss.item()):
                    raise RuntimeError(f"fine-tuning loss is {loss.item()} at lr {lr}, epoch {epoch}; lower the lrs")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            acc = _accuracy(model, xv, yv, size, mean, std, dev, bf16)
            if acc > best["val_accuracy"]:
                best = {"val_accuracy": acc, "lr": lr, "epoch": epoch + 1}
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    model = nn.Sequential(copy.deepcopy(encoder), nn.Linear(feat, n_classes)).to(dev)
    model.load_state_dict(best_state)
    test_acc = _accuracy(model, test_x, test_y, size, mean, std, dev, bf16)
    return {"protocol": "finetune", "accuracy": test_acc, **best, "label_fraction": label_fraction,
            "n_labelled": len(lab_idx), "n_val": len(val_idx), "seed": seed}
