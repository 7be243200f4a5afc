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
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.preprocess import resize_normalise

from .augmentation import ViewAugment
from .finetune_protocol import (  # noqa: F401  (the protocol's constants, re-exported)
    BATCH_SIZE, EPOCHS, FRACTIONS, LRS, PROTOCOL_NOTE, RECIPE, VAL_FRACTION, parse_fractions, parse_lrs,
    protocol_label)
from .optim import param_groups, warmup_cosine
from .trainer import TrainingError


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


@torch.no_grad()
def accuracy_of(model: nn.Module, x, y, size, mean, std, device, bf16, bs=512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        xb = resize_normalise(x[i:i + bs].to(device), size, mean, std)
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
                    raise TrainingError(f"fine-tuning loss is {loss.item()} at lr {lr}, epoch {epoch}; lower the lrs")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            acc = accuracy_of(model, xv, yv, size, mean, std, dev, bf16)
            if acc > best["val_accuracy"]:
                best = {"val_accuracy": acc, "lr": lr, "epoch": epoch + 1}
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    model = nn.Sequential(copy.deepcopy(encoder), nn.Linear(feat, n_classes)).to(dev)
    model.load_state_dict(best_state)
    test_acc = accuracy_of(model, test_x, test_y, size, mean, std, dev, bf16)
    return {"protocol": "finetune", "accuracy": test_acc, **best, "label_fraction": label_fraction,
            "n_labelled": len(lab_idx), "n_val": len(val_idx), "seed": seed}


# ----------------------------------------------------------------------------- the eval protocol

def _images(split, pre) -> torch.Tensor:
    """A split as uint8 ``[N, C, crop, crop]`` in the model's geometry (channels, resize, centre crop)."""
    if split.images is not None:
        x = split.as_tensor()
        return torch.cat([pre.geometry(x[i:i + 4096]) for i in range(0, len(x), 4096)]) if len(x) else x
    return torch.stack([pre.geometry(split.get(i)) for i in range(len(split))])


def _check_finetune_inputs(train, fractions, seeds, lrs, epochs, batch_size, val_fraction) -> None:
    if not seeds:
        raise ValueError("finetune needs at least one seed (--seeds 0,1,2)")
    if int(epochs) < 1:
        raise ValueError(f"finetune epochs must be >= 1, got {epochs}")
    if int(batch_size) < 1:
        raise ValueError(f"finetune batch size must be >= 1, got {batch_size}")
    if not (math.isfinite(val_fraction) and 0 < val_fraction < 1):
        raise ValueError(f"validation fraction must be in (0, 1), got {val_fraction:g}")
    y = np.asarray(train.targets)
    classes, counts = np.unique(y[y >= 0], return_counts=True)
    if len(classes) and counts.min() < 2:
        c = int(classes[int(np.argmin(counts))])
        raise ValueError(f"{train.name}: class {c} has 1 labelled train image; fine-tuning needs at least 2 per class "
                         f"(one for the validation split it selects on)")


def evaluate_finetune(model_spec, dataset: str, *, fractions=FRACTIONS, seeds=(0,), lrs=LRS, epochs: int = EPOCHS,
                      batch_size: int = BATCH_SIZE, val_fraction: float = VAL_FRACTION, precision: str = "bf16",
                      root: str | None = None, download: bool = False, device: str | None = None,
                      force: bool = False, save: bool = True, store=None, info: dict | None = None,
                      label: str | None = None, progress: bool = True) -> list[dict]:
    """The ``finetune`` protocol for a model (registry name or zoo folder) on a dataset: one result per
    label fraction x seed, stored in the results store (:mod:`eval.store`) like the frozen probes and
    reused when already there (``force`` recomputes). Returns the aggregated table rows (mean ± std
    over seeds, one row per fraction).

    ``precision`` bf16 trains under bf16 autocast (fp32 master weights), fp32 without autocast."""
    from tqdm.auto import tqdm

    from eval.datasets import load_split
    from eval.features import model_fingerprint
    from eval.run import check_inputs, data_fingerprint, dataset_label, model_label
    from eval.store import Result, ResultStore, aggregate
    from zoo.hub import create_model

    fractions = parse_fractions(fractions)
    lrs = parse_lrs(lrs)
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
    model = create_model(model_spec, pretrained=True)
    train = load_split(dataset, "train", root=root, download=download)
    test = load_split(dataset, "test", root=root, download=download)
    check_inputs(train, test, ["finetune"], [], seeds)
    _check_finetune_inputs(train, fractions, seeds, lrs, epochs, batch_size, val_fraction)
    pre = model.preprocess
    for split in (train, test):
        try:
            pre.geometry(split.get(0))
        except ValueError as e:
            raise ValueError(f"{split.name}/{split.split} does not fit {model_label(model_spec)}: {e}") from None
    name = label or model_label(model_spec)
    base = dict(model=name, weights_sha256=model_fingerprint(model), dataset=dataset_label(dataset, train),
                dataset_sha256=data_fingerprint(train, test), probe="finetune", accuracy=float("nan"))
    common = {"val_fraction": float(val_fraction), "lrs": list(lrs), "epochs": int(epochs),
              "batch_size": int(batch_size), "precision": precision, "preprocess": pre.to_dict(), "recipe": RECIPE}
    jobs = [Result(protocol=protocol_label(f), seed=s, params=dict(common, label_fraction=f), **base)
            for f in fractions for s in seeds]
    own = store is None
    if own:
        store = ResultStore()
    try:
        stored = {} if force else store.get_many(j.key for j in jobs)
        todo = [j for j in jobs if j.key not in stored]
        if todo:
            x_tr, x_te = _images(train, pre), _images(test, pre)
            y_tr, y_te = np.asarray(train.targets), np.asarray(test.targets)
            keep = y_tr >= 0
            x_tr, y_tr = x_tr[torch.from_numpy(keep)], y_tr[keep]
            for j in tqdm(todo, desc=f"{name}: finetune", unit="run", disable=not progress):
                t0 = time.perf_counter()
                r = finetune(model, x_tr, y_tr, x_te, y_te, size=pre.crop, mean=pre.mean, std=pre.std,
                             label_fraction=j.params["label_fraction"], val_fraction=val_fraction, lrs=lrs,
                             epochs=int(epochs), batch_size=int(batch_size), seed=j.seed, device=device,
                             bf16=precision == "bf16")
                j.accuracy = 100 * r["accuracy"]
                j.extra = {"lr": r["lr"], "epoch": r["epoch"], "val_accuracy": r["val_accuracy"],
                           "n_labelled": r["n_labelled"], "n_val": r["n_val"],
                           "wall_s": round(time.perf_counter() - t0, 2)}
                if save:  # one by one: an interrupted protocol keeps what it finished
                    store.put([j], replace=True)
        results = [stored.get(j.key, j) for j in jobs]
    finally:
        if own:
            store.close()
    if info is not None:
        info.update(reused=len(jobs) - len(todo), computed=len(todo))
    return aggregate(results)
