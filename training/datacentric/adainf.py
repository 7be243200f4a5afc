"""AdaInf (Wang et al., ICLR 2024, "Do Generated Data Always Help Contrastive Learning?").

AdaInf is purely data-centric: no new loss. The trainer already mixes the data the upstream way
(``solo-learn/main_pretrain.py``): ``data.repeat`` (upstream ``data.dup``) copies of the real set,
then the images of ``data.extra`` (an npz with ``image`` ``[N, H, W, C]`` uint8 and ``label`` -1 for
generated images); images with label -1 never vote in the online kNN monitor. The copies are
virtual (an index map), so ``repeat: 10`` costs no memory. With ``optim.epochs: null`` the run
length is ``train.max_steps`` exactly, whatever the data size: inflation adds no computation.

This module adds (upstream's four augmentation files are
:data:`training.augmentation.presets.AUGMENT_PRESETS`, selected with ``augment.preset``):

* :func:`folder_to_npz` -- image folder -> inflation npz, decoded with PIL in **RGB** (upstream's
  ``generated_data.py`` reads with ``cv2.imread``, i.e. BGR, and writes that);
* :func:`channel_order_check` -- flags a BGR file by comparing per-channel statistics with the real set;
* stand-in generators that run here for experiments without a diffusion model:
  :func:`mixup_standin` (convex mixes of two real images plus Gaussian pixel noise) and
  :func:`gaussian_mixture_standin` (a Gaussian mixture fitted here in PCA space: a tiny generative
  model, nothing like a diffusion model's samples). Their output is named for what it is.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from zoo.base import SSLZooError

from zoo.io import atomic_write_bytes

from .kmeans import kmeans
from .subsets import SubsetError

class InflationError(SSLZooError, ValueError):
    """Bad inflation input (folder, npz, check); one line saying what to do."""


def _npz_bytes(images: np.ndarray, labels: np.ndarray, **extra) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, image=images, label=labels, **extra)
    return buf.getvalue()


def write_inflation_npz(path, images: np.ndarray, labels=None, **extra) -> Path:
    """Atomically write ``image`` (uint8 ``[N, H, W, C]``) and ``label`` (default all -1)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise InflationError(f"images must be uint8 [N,H,W] or [N,H,W,C], got {images.dtype} {list(images.shape)}")
    if images.ndim == 3:
        images = images[..., None]
    labels = np.full(len(images), -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(images),):
        raise InflationError(f"need one label per image: {len(labels)} labels, {len(images)} images")
    p = Path(path)
    atomic_write_bytes(p, _npz_bytes(np.ascontiguousarray(images), labels, **extra))
    return p


def folder_to_npz(folder, out, *, mode: str = "RGB", size: int | None = None, label: int = -1) -> Path:
    """Every image under ``folder`` (recursively, sorted paths) -> ``out`` npz, decoded with PIL in
    ``mode`` (``RGB``, or ``L`` for grayscale data), optionally resized to ``size`` x ``size``
    (bicubic). All images must end up the same size. Labels: ``label`` (default -1, generated)."""
    from PIL import Image

    from eval.datasets import IMAGE_EXTS

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InflationError(f"image folder {root} not found")
    if mode not in ("RGB", "L"):
        raise InflationError(f"mode must be RGB or L, got {mode!r}")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise InflationError(f"{root} holds no images ({', '.join(IMAGE_EXTS)})")
    arrs, shape = [], None
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                if size:
                    im = im.resize((size, size), Image.BICUBIC)
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as e:
            raise InflationError(f"{p} is not a readable image ({type(e).__name__}); remove or replace it") from None
        if shape is None:
            shape = a.shape
        elif a.shape != shape:
            raise InflationError(f"{p} is {a.shape[1]}x{a.shape[0]}, the first image {shape[1]}x{shape[0]}; "
                                 f"pass --size to resize them all")
        arrs.append(a)
    return write_inflation_npz(out, np.stack(arrs), np.full(len(arrs), int(label), dtype=np.int64))


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (on the 0-255 scale) of uint8 ``[N, H, W, C]`` images."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    flat = x.reshape(-1, x.shape[-1])
    return flat.mean(0), flat.std(0)


def channel_order_check(generated: np.ndarray, real: np.ndarray, *, margin: float = 2.0) -> dict:
    """Compare per-channel means/stds of the generated images with the real ones as stored and with
    the channels reversed. ``verdict``: ``"rgb"``, ``"bgr"`` (the reversed order matches the real set
    at least ``margin`` times better and the stored order is off by more than 2 grey levels),
    ``"unclear"`` (channels too alike to tell) or ``"grayscale"``."""
    gm, gs = channel_stats(generated)
    rm, rs = channel_stats(real)
    if len(gm) != len(rm):
        raise InflationError(f"generated images have {len(gm)} channels, the real set {len(rm)}")
    out = {"generated_mean": gm.round(2).tolist(), "real_mean": rm.round(2).tolist(),
           "generated_std": gs.round(2).tolist(), "real_std": rs.round(2).tolist()}
    if len(gm) == 1:
        return {**out, "verdict": "grayscale", "distance_as_is": 0.0, "distance_swapped": 0.0}
    d_id = float(np.abs(gm - rm).sum() + np.abs(gs - rs).sum())
    d_sw = float(np.abs(gm[::-1] - rm).sum() + np.abs(gs[::-1] - rs).sum())
    if d_sw * margin < d_id and d_id > 2.0:
        verdict = "bgr"
    elif abs(d_id - d_sw) <= 1.0:  # red and blue statistics alike: the order cannot be told
        verdict = "unclear"
    else:
        verdict = "rgb"
    return {**out, "verdict": verdict, "distance_as_is": round(d_id, 3), "distance_swapped": round(d_sw, 3)}


def load_npz_images(path) -> np.ndarray:
    from eval.datasets import load_split

    return load_split(f"npz:{path}", "train").images


# ----------------------------------------------------------------------------- stand-in generators

def mixup_standin(real: np.ndarray, n: int, *, seed: int = 0, alpha: float = 0.4, noise: float = 8.0,
                  groups=None) -> np.ndarray:
    """``n`` images ``lam * a + (1 - lam) * b + N(0, noise^2)`` (lam ~ Beta(alpha, alpha), on the 0-255
    scale) from random pairs of real images -- pairs drawn within the same group when ``groups``
    (e.g. k-means clusters) is given. A stand-in for generated data, not a generative model."""
    rng = np.random.default_rng(seed)
    real = np.asarray(real)
    a = rng.integers(0, len(real), n)
    if groups is None:
        b = rng.integers(0, len(real), n)
    else:
        groups = np.asarray(groups)
        members = {g: np.flatnonzero(groups == g) for g in np.unique(groups)}
        b = np.array([rng.choice(members[groups[i]]) for i in a])
    lam = rng.beta(alpha, alpha, n).reshape(-1, *([1] * (real.ndim - 1)))
    out = lam * real[a].astype(np.float64) + (1 - lam) * real[b].astype(np.float64)
    out += rng.normal(0.0, noise, out.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def gaussian_mixture_standin(real: np.ndarray, n: int, *, seed: int = 0, components: int = 10, pca_dim: int = 64,
                             iters: int = 50) -> np.ndarray:
    """A Gaussian mixture fitted here: PCA to ``pca_dim`` dims, k-means into ``components`` clusters,
    one full-covariance Gaussian per cluster; ``n`` samples drawn from it and mapped back to pixels.
    A tiny generative model (blurry, low-fidelity samples) standing in for a diffusion model."""
    rng = np.random.default_rng(seed)
    real = np.asarray(real)
    shape = real.shape[1:]
    x = torch.as_tensor(real.reshape(len(real), -1), dtype=torch.float64)
    mu = x.mean(0)
    _, _, v = torch.linalg.svd((x - mu)[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:20000]],
                               full_matrices=False)
    basis = v[:pca_dim]
    z = (x - mu) @ basis.t()
    try:
        lab = kmeans(z, components, seed=seed, iters=iters).numpy()
    except ValueError as e:  # more components than images
        raise SubsetError(str(e)) from None
    counts = np.bincount(lab, minlength=components).astype(np.float64)
    pick = rng.choice(components, size=n, p=counts / counts.sum())
    zs = np.empty((n, pca_dim))
    for c in range(components):
        m = pick == c
        if not m.any():
            continue
        zc = z[torch.as_tensor(lab == c)].numpy()
        cov = np.cov(zc, rowvar=False) + 1e-3 * np.eye(pca_dim) if len(zc) > 1 else np.eye(pca_dim)
        zs[m] = rng.multivariate_normal(zc.mean(0), cov, size=int(m.sum()), method="cholesky")
    pix = torch.as_tensor(zs) @ basis + mu
    return np.clip(np.round(pix.numpy()), 0, 255).astype(np.uint8).reshape(n, *shape)


STANDINS = {"mixup": mixup_standin, "gmm": gaussian_mixture_standin}
