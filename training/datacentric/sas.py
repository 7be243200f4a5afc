"""SAS: subsets of the data that matter most for contrastive learning (Joshi & Mirzasoleiman, ICML 2023).

The paper's criterion: keep, within each latent class, the examples whose augmentations are most
similar in expectation to the augmentations of the other members of the class. Three pieces:

1. **Approximate latent classes** (``{class: [indices]}``): :func:`kmeans_partition` on proxy features;
   :func:`linear_partition`, a logistic regression trained on a few labelled examples (upstream
   ``clip_approx`` trains it on CLIP features, 500 L-BFGS steps, weight decay 1e-3);
   :func:`clip_zero_shot_partition` from text prompts with a CLIP-style model available locally (per
   example: upstream's ``clip_0shot_approx`` keyed its dict by *batch* tensors); or
   :func:`label_partition` from true labels.
2. **A proxy encoder**: any zoo entry or zoo folder (:func:`load_proxy`), or a small SimCLR model
   trained by a recipe (:func:`train_proxy`).
3. **The score**, from :func:`proxy_embeddings`: each example's L2-normalised proxy embedding,
   averaged over ``n_augment`` random augmentations, ``m_i = mean_a z_i^a``. The expected
   augmentation similarity of two examples is then ``s_ij = E_{a,b} <z_i^a, z_j^b> = <m_i, m_j>``;
   for ``i = j`` the unbiased estimate over distinct augmentation pairs is used. ``n_augment = 0`` is
   upstream's computation: one forward pass of the plain image, ``s_ii = 1``. Similarities below
   ``threshold`` (default 0) are zeroed, as upstream does. Within each class, by name:

   * ``objective="upstream"``: what the released code computes (seeds.md 2.2): rank by the row sum
     ``sum_j s_ij``; ties -> larger index first (its max-heap). Its lazy greedy zeroes *rows* of the
     selected examples, so the redundancy term is always 0 and the greedy is this ranking.
   * ``objective="paper"``: greedy maximisation of
     ``F(S) = sum_{i in S} sum_{j in V_c} s_ij - sum_{i in S} sum_{j in S, j < i} s_ij``, i.e. the
     gain ``sum_j s_ij - sum_{j in S} s_ij`` that upstream's ``F.inc`` writes (with its row/column bug
     fixed): similarity to the class, minus redundancy with what is already kept. The paper's
     double-greedy refinement is not implemented.

   Each class keeps its ``floor(|c| f)`` best examples; classes are concatenated in sorted order.

Everything is seeded and runs in float64 where it ranks, so the same seed gives the same subset bit
for bit on one machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..augmentation import ViewAugment
from ..config import load_recipe
from ..trainer import Trainer
from .kmeans import kmeans
from .subsets import BaseSubsetDataset, SubsetError, check_fraction, check_partition, class_budget

OBJECTIVES = ("upstream", "paper")
PARTITIONS = ("kmeans", "linear", "zeroshot", "labels")
# upstream clip_0shot_approx's prompt templates
ZERO_SHOT_TEMPLATES = ("itap of the {}.", "a bad photo of the {}", "a origami {}.", "a photo of the large {}.",
                       "a {} in a video game.", "art of the {}.", "a photo of the small {}.")


# ----------------------------------------------------------------------------- images and encoders

def images_of(dataset) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` from an ImageSplit, a tensor, or a dataset of ``(image, label)`` items."""
    from eval.datasets import ImageSplit

    if isinstance(dataset, ImageSplit):
        return dataset.images_tensor()
    if isinstance(dataset, torch.Tensor):
        x = dataset
    else:
        items = [dataset[i] for i in range(len(dataset))]
        x = torch.stack([torch.as_tensor(it[0] if isinstance(it, (tuple, list)) else it) for it in items])
    if x.ndim != 4:
        raise SubsetError(f"images must be [N, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x


def load_proxy(spec: str | Path) -> torch.nn.Module:
    """A zoo entry name or a zoo folder (``model.safetensors`` + ``config.json``), in eval mode."""
    from zoo.hub import create_model

    return create_model(spec).eval()


def train_proxy(recipe: str, out: str | Path, steps: int, overrides: list | None = None,
                device: str | None = "cpu") -> torch.nn.Module:
    """Train a small proxy with a recipe (e.g. ``simclr_fashion_mnist_cpu``) for ``steps`` steps
    (resumable in ``out``) and load its export."""
    cfg = load_recipe(recipe, list(overrides or []) + [f"train.max_steps={int(steps)}"])
    out = Path(out)
    if not (out / "export" / "model.safetensors").is_file():
        Trainer(cfg, out, device=device).fit(resume=True)
    return load_proxy(out / "export")


def _model_device(model, device):
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@torch.no_grad()
def encode(proxy: torch.nn.Module, images: torch.Tensor, *, batch_size: int = 512, device: str | None = None,
           desc: str = "proxy features") -> torch.Tensor:
    """Proxy features ``[N, D]`` (float32) of the plain images, through ``proxy.preprocess``."""
    from tqdm.auto import tqdm

    dev = _model_device(proxy, device)
    proxy = proxy.to(dev).eval()
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False, dynamic_ncols=True):
        out.append(proxy(proxy.preprocess(images[i:i + batch_size]).to(dev)).float().cpu().reshape(
            min(batch_size, len(images) - i), -1))
    return torch.cat(out)


def default_augment(proxy: torch.nn.Module):
    """SimCLR-style views at the proxy's input size and normalisation (crop 0.2-1, flip, jitter
    0.4/0.4/0.4/0.1 p 0.8, grayscale p 0.2; torchvision semantics)."""
    pre = proxy.preprocess
    return ViewAugment(size=pre.crop, scale=(0.2, 1.0), mean=tuple(pre.mean), std=tuple(pre.std), version=2)


@dataclass
class ProxyEmbeddings:
    """``mean``: ``[N, D]`` float64, the average of the L2-normalised embeddings over augmentations;
    ``self_sim``: ``[N]`` the expected similarity of two independent augmentations of one example."""

    mean: torch.Tensor
    self_sim: torch.Tensor
    n_augment: int

    def __len__(self) -> int:
        return self.mean.shape[0]


@torch.no_grad()
def proxy_embeddings(proxy: torch.nn.Module, images: torch.Tensor, *, n_augment: int = 8, augment=None,
                     seed: int = 0, batch_size: int = 512, device: str | None = None) -> ProxyEmbeddings:
    """Expected-augmentation embeddings (module docstring). ``augment``: a
    :class:`training.augmentation.ViewAugment` producing the proxy's input (its size and normalisation);
    default :func:`default_augment`. Augmentations are drawn from ``torch.Generator().manual_seed(seed)``
    in a fixed order (augmentation-major, then batches)."""
    from tqdm.auto import tqdm

    n_augment = int(n_augment)
    if n_augment < 0:
        raise SubsetError(f"n_augment must be >= 0, got {n_augment}")
    images = images_of(images)
    if n_augment == 0:
        z = F.normalize(encode(proxy, images, batch_size=batch_size, device=device).double(), dim=1)
        return ProxyEmbeddings(z, torch.ones(len(z), dtype=torch.float64), 0)
    dev = _model_device(proxy, device)
    proxy = proxy.to(dev).eval()
    aug = augment or default_augment(proxy)
    gen = torch.Generator().manual_seed(int(seed))
    total = sq = None
    with tqdm(total=n_augment * len(images), desc="proxy embeddings", unit="img", leave=False,
              dynamic_ncols=True) as bar:
        for _ in range(n_augment):
            zs = []
            for i in range(0, len(images), batch_size):
                xb = proxy.preprocess._channels(images[i:i + batch_size])
                v = aug(xb, gen).to(dev)
                zs.append(F.normalize(proxy(v).float().cpu().reshape(len(v), -1).double(), dim=1))
                bar.update(len(v))
            z = torch.cat(zs)
            total = z if total is None else total + z
            sq = (z * z).sum(1) if sq is None else sq + (z * z).sum(1)
    mean = total / n_augment
    if n_augment >= 2:  # E over distinct pairs: (|sum z|^2 - sum |z|^2) / (A (A - 1))
        self_sim = ((total * total).sum(1) - sq) / (n_augment * (n_augment - 1))
    else:
        self_sim = torch.ones(len(mean), dtype=torch.float64)
    return ProxyEmbeddings(mean, self_sim, n_augment)


# ----------------------------------------------------------------------------- latent classes

def partition_from_preds(preds) -> dict:
    """``{class: [indices]}`` from one prediction per example (a list, array or tensor, or a list of
    per-batch tensors, which is flattened in order -- upstream's bug was keying by those tensors)."""
    if isinstance(preds, (list, tuple)) and preds and isinstance(preds[0], (torch.Tensor, np.ndarray)):
        preds = np.concatenate([np.asarray(p).reshape(-1) for p in preds])
    p = np.asarray(preds).reshape(-1).astype(np.int64)
    return {int(c): np.flatnonzero(p == c).tolist() for c in np.unique(p)}


def label_partition(labels) -> dict:
    """True labels -> partition (labels < 0, e.g. generated images, are left out)."""
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    return {int(c): np.flatnonzero(y == c).tolist() for c in np.unique(y) if c >= 0}


def kmeans_partition(features, num_classes: int, seed: int = 0) -> dict:
    """Upstream ``kmeans_approx``: k-means with ``num_classes`` clusters on proxy features."""
    try:
        labels = kmeans(torch.as_tensor(features), int(num_classes), seed=seed)
    except ValueError as e:  # k out of range: the caller's subset input
        raise SubsetError(str(e)) from None
    return partition_from_preds(labels)


def linear_partition(features, labeled_indices, labeled_labels, num_classes: int, l2: float = 2e-3,
                     max_iter: int = 500) -> dict:
    """Upstream ``clip_approx`` on any features: a linear classifier (L-BFGS, ``max_iter`` steps,
    ``mean CE + l2/2 ||W||^2``, i.e. upstream's ``CE + 1e-3 ||W||^2``) fitted on the labelled examples
    (features standardised), then ``argmax`` for every example."""
    from eval.probes import LinearProbe

    x = torch.as_tensor(features, dtype=torch.float32)
    idx = torch.as_tensor(list(labeled_indices), dtype=torch.int64)
    y = torch.as_tensor(list(labeled_labels), dtype=torch.int64)
    if len(idx) != len(y) or len(idx) == 0:
        raise SubsetError(f"need one label per labelled index, got {len(idx)} indices and {len(y)} labels")
    if idx.min() < 0 or idx.max() >= len(x):
        raise SubsetError(f"labelled index out of range 0..{len(x) - 1}")
    if y.min() < 0 or y.max() >= num_classes:
        raise SubsetError(f"labels must be in 0..{num_classes - 1}")
    probe = LinearProbe(num_classes, l2, max_iter=max_iter).fit(x[idx], y)
    return partition_from_preds(probe.predict(x))


def few_labels(labels, per_class: int | None = None, total: int | None = None, seed: int = 0) -> np.ndarray:
    """Seeded draw of the labelled examples for :func:`linear_partition`: ``per_class`` of each class,
    or ``total`` uniformly at random (upstream's README draws 500 at random)."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if per_class is not None:
        return np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y[y >= 0])])
    return rng.permutation(np.flatnonzero(y >= 0))[:int(total or 500)]


def zero_shot_partition(image_features, text_features) -> dict:
    """Zero-shot assignment per example: ``argmax_c <img_i, txt_c>`` on L2-normalised features."""
    img = F.normalize(torch.as_tensor(image_features, dtype=torch.float32), dim=1)
    txt = F.normalize(torch.as_tensor(text_features, dtype=torch.float32), dim=1)
    return partition_from_preds((100.0 * img @ txt.t()).argmax(1))


def load_clip(model: str | None = None, pretrained: str | None = None):
    """A CLIP-style model available locally: ``open_clip`` (``model``, default ViT-B-32, with
    ``pretrained`` a local checkpoint path or a tag already in its cache; no download is attempted),
    or OpenAI's ``clip`` package with a local file. Returns ``(encode_image, encode_text, tokenize,
    preprocess)``; raises :class:`SubsetError` in one line when none is available."""
    import importlib.util
    import os

    name = model or "ViT-B-32"
    if importlib.util.find_spec("open_clip") is not None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import open_clip

        try:
            m, _, pre = open_clip.create_model_and_transforms(name, pretrained=pretrained or "openai")
        except Exception as e:  # noqa: BLE001 -- missing weights, unknown model: one line
            raise SubsetError(f"open_clip has no local weights for {name} ({type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:120]}); pass --clip-weights PATH") from None
        return m.eval(), open_clip.get_tokenizer(name), pre
    if importlib.util.find_spec("clip") is not None and pretrained and Path(pretrained).is_file():
        import clip

        m, pre = clip.load(pretrained, device="cpu")
        return m.eval(), clip.tokenize, pre
    raise SubsetError("zero-shot latent classes need a CLIP-style model available locally: install open_clip_torch "
                      "(or OpenAI's clip) and pass its weights with --clip-weights; none is installed here")


@torch.no_grad()
def clip_zero_shot_partition(images, class_names, *, model: str | None = None, pretrained: str | None = None,
                             templates=ZERO_SHOT_TEMPLATES, batch_size: int = 256) -> dict:
    """Upstream ``clip_0shot_approx`` done per example: class embeddings = the normalised mean of the
    normalised prompt embeddings over ``templates``; each image goes to its most similar class."""
    from PIL import Image

    clip_model, tokenize, pre = load_clip(model, pretrained)
    w = []
    for c in class_names:
        t = F.normalize(clip_model.encode_text(tokenize([tp.format(c) for tp in templates])).float(), dim=1)
        w.append(F.normalize(t.mean(0), dim=0))
    text = torch.stack(w)
    x = images_of(images)
    feats = []
    for i in range(0, len(x), batch_size):
        ims = [Image.fromarray(im.permute(1, 2, 0).squeeze(-1).numpy()).convert("RGB") for im in x[i:i + batch_size]]
        feats.append(clip_model.encode_image(torch.stack([pre(im) for im in ims])).float())
    return zero_shot_partition(torch.cat(feats), text)


# ----------------------------------------------------------------------------- scoring and selection

def _class_similarity_blocks(m: torch.Tensor, self_sim: torch.Tensor, threshold: float, block: int = 1024):
    """Yield ``(start, S_block)``: rows of the thresholded expected-similarity matrix of one class."""
    for s in range(0, m.shape[0], block):
        sb = m[s:s + block] @ m.t()
        r = torch.arange(sb.shape[0])
        sb[r, r + s] = self_sim[s:s + block]
        yield s, sb * (sb >= threshold)


def rank_class(m: torch.Tensor, self_sim: torch.Tensor, k: int, objective: str = "upstream",
               threshold: float = 0.0) -> np.ndarray:
    """Positions (within the class) of the ``k`` examples kept by ``objective``, best first."""
    n = m.shape[0]
    if objective == "upstream":
        score = np.empty(n, dtype=np.float64)
        for s, sb in _class_similarity_blocks(m, self_sim, threshold):
            score[s:s + sb.shape[0]] = sb.sum(1).numpy()
        order = np.lexsort((-np.arange(n), -score))  # score desc, ties: larger index first
        return order[:k]
    if objective == "paper":
        S = torch.empty(n, n, dtype=torch.float32)
        for s, sb in _class_similarity_blocks(m, self_sim, threshold):
            S[s:s + sb.shape[0]] = sb.float()
        gain = S.double().sum(1).numpy() if n <= 4096 else np.concatenate(
            [S[s:s + 4096].double().sum(1).numpy() for s in range(0, n, 4096)])
        taken = np.zeros(n, dtype=bool)
        out = np.empty(k, dtype=np.int64)
        Sn = S.numpy()
        for t in range(k):
            g = np.where(taken, -np.inf, gain)
            i = n - 1 - int(np.argmax(g[::-1]))  # ties: larger index first, as the upstream ranking
            out[t] = i
            taken[i] = True
            gain -= Sn[:, i]  # S is symmetric: similarity of every candidate to the newly kept example
        return out
    raise SubsetError(f"unknown SAS objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def sas_subset(embeddings: ProxyEmbeddings, partition: dict, fraction: float, objective: str = "upstream",
               threshold: float = 0.0) -> list:
    """Per class (sorted), the ``floor(|c| f)`` kept examples best first, concatenated."""
    f = check_fraction(fraction)
    if objective not in OBJECTIVES:
        raise SubsetError(f"unknown SAS objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    part = check_partition(partition, len(embeddings))
    out = []
    for c, idx in part.items():
        idx = np.asarray(idx, dtype=np.int64)
        k = class_budget(len(idx), f)
        if k == 0:
            continue
        t = torch.as_tensor(idx)
        keep = rank_class(embeddings.mean[t], embeddings.self_sim[t], k, objective, threshold)
        out += idx[keep].tolist()
    return out


def sas_partition(kind: str, *, proxy=None, images=None, features=None, labels=None, num_classes: int | None = None,
                  seed: int = 0, labeled_per_class: int | None = None, labeled_total: int | None = None,
                  class_names=None, clip_model: str | None = None, clip_weights: str | None = None) -> dict:
    """One entry point for the four kinds of latent classes (:data:`PARTITIONS`)."""
    if kind == "labels":
        if labels is None:
            raise SubsetError("partition 'labels' needs the true labels")
        return label_partition(labels)
    if kind == "zeroshot":
        if class_names is None:
            raise SubsetError("partition 'zeroshot' needs class names")
        return clip_zero_shot_partition(images, class_names, model=clip_model, pretrained=clip_weights)
    if kind not in ("kmeans", "linear"):
        raise SubsetError(f"unknown partition {kind!r}; choose one of {', '.join(PARTITIONS)}")
    if features is None:
        if proxy is None or images is None:
            raise SubsetError(f"partition {kind!r} needs proxy features (a proxy model and the images)")
        features = encode(proxy, images_of(images))
    if num_classes is None:
        raise SubsetError(f"partition {kind!r} needs the number of classes")
    if kind == "kmeans":
        return kmeans_partition(features, num_classes, seed=seed)
    if labels is None:
        raise SubsetError("partition 'linear' needs labels to draw the few labelled examples from")
    lab = few_labels(labels, labeled_per_class, labeled_total, seed)
    return linear_partition(features, lab, np.asarray(labels)[lab], num_classes)


class SASSubsetDataset(BaseSubsetDataset):
    """The SAS subset (:func:`sas_subset`): per approximate latent class, the
    ``floor(|c| f)`` examples ranked best by ``objective`` (``"upstream"``: sum of positive expected
    augmentation similarities to the class; ``"paper"``: greedy on the paper's objective), from the
    proxy embeddings averaged over ``n_augment`` augmentations (0 = the plain image, as upstream).

    ``dataset``: an :class:`eval.datasets.ImageSplit`, a uint8 tensor ``[N, C, H, W]``, or a dataset
    whose items are ``(image, label)`` with uint8 / float-in-[0, 1] tensor images. Pass
    ``embeddings`` (from :func:`proxy_embeddings`) to reuse them across fractions.
    """

    def __init__(self, dataset, subset_fraction: float, approx_latent_class_partition: dict, proxy_model=None, *,
                 objective: str = "upstream", n_augment: int = 8, augment=None, threshold: float = 0.0, seed: int = 0,
                 device: str | None = None, batch_size: int = 512, embeddings=None, verbose: bool = False):
        super().__init__(dataset, check_fraction(subset_fraction), verbose)
        if embeddings is None:
            if proxy_model is None:
                raise SubsetError("SASSubsetDataset needs proxy_model (a zoo encoder) or precomputed embeddings")
            images = images_of(dataset)
            embeddings = proxy_embeddings(proxy_model, images, n_augment=n_augment, augment=augment, seed=seed,
                                              device=device, batch_size=batch_size)
        self.embeddings = embeddings
        self.subset_indices = sas_subset(embeddings, approx_latent_class_partition, subset_fraction,
                                             objective=objective, threshold=threshold)
        self.meta = {"method": "sas", "objective": objective, "fraction": subset_fraction, "seed": seed,
                     "n_augment": n_augment, "threshold": threshold, "dataset_size": len(dataset)}
        self.initialization_complete()
