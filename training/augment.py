"""Batched tensor augmentations with per-sample random parameters.

Per-image PIL pipelines are the bottleneck for small images on a 2-core CPU, so the whole batch
is augmented at once: random resized crop + horizontal flip are one ``affine_grid`` /
``grid_sample`` call with a per-sample affine matrix; colour jitter, grayscale and blur are
vectorised over the batch with per-sample factors. Parameter names and distributions follow
torchvision's transforms (``RandomResizedCrop(scale, ratio)``, ``ColorJitter(brightness,
contrast, saturation, hue)``, ``RandomGrayscale(p)``, ``GaussianBlur(kernel_size, sigma)``), so
recipes translate one to one.

Input: ``uint8`` or float tensor ``[B, C, H, W]`` (uint8 is scaled to [0, 1]).
Output: float32 ``[B, C, size, size]``, normalised with ``mean`` / ``std``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def sample_crop_boxes(n, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None, attempts=10):
    """Per-sample crop boxes ``(top, left, h, w)`` with torchvision's RandomResizedCrop rule:
    area ~ U(scale) * H * W, log aspect ratio ~ U(log ratio), first of ``attempts`` tries that
    fits, otherwise the central crop clamped to ``ratio``."""
    area = height * width
    s = torch.empty(n, attempts).uniform_(*scale, generator=generator) * area
    logr = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(logr)
    w = torch.round(torch.sqrt(s * r))
    h = torch.round(torch.sqrt(s / r))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    idx = first.clamp(min=0)
    hh = h.gather(1, idx[:, None]).squeeze(1)
    ww = w.gather(1, idx[:, None]).squeeze(1)
    # fallback: whole image, clamped to the ratio range (torchvision's behaviour)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    bad = first < 0
    hh = torch.where(bad, torch.full_like(hh, fh), hh)
    ww = torch.where(bad, torch.full_like(ww, fw), ww)
    top = torch.floor(torch.rand(n, generator=generator) * (height - hh + 1))
    left = torch.floor(torch.rand(n, generator=generator) * (width - ww + 1))
    return top, left, hh, ww


def resized_crop_flip(x, boxes, size, flip=None, mode="bilinear"):
    """Crop each sample to its box, resize to ``size`` and optionally mirror it, in one
    ``grid_sample`` call (align_corners=False pixel-centre convention, like torchvision)."""
    b, _, H, W = x.shape
    top, left, h, w = (t.to(x.device, torch.float32) for t in boxes)
    sx = w / W
    sy = h / H
    cx = (left + w / 2) / W * 2 - 1
    cy = (top + h / 2) / H * 2 - 1
    if flip is not None:
        sx = torch.where(flip.to(x.device), -sx, sx)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (b, x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def _gray(x):
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _rgb_to_hsv(x):
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    v = maxc
    delta = maxc - minc
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    dz = torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / dz, (maxc - g) / dz, (maxc - b) / dz
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta == 0, torch.zeros_like(h), h)
    h = (h / 6.0) % 1.0
    return torch.stack([h, s, v], 1)


def _hsv_to_rgb(x):
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack([
        torch.stack([v, q, p, p, t, v], 1),
        torch.stack([t, v, v, q, p, p], 1),
        torch.stack([p, p, t, v, v, q], 1),
    ], 1)  # [B,3,6,H,W]
    return choices.gather(2, i[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)


def _bview(t):
    return t.view(-1, 1, 1, 1)


def color_jitter(x, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8, generator=None):
    """torchvision ColorJitter semantics, per sample: factors ~ U[max(0, 1-s), 1+s] (hue ~ U[-h, h]),
    the four ops in a random order per batch (torchvision draws one order per image; here one
    permutation is drawn per call), applied to a fraction ``p`` of the samples. Saturation and hue
    are skipped for single-channel input."""
    b = x.shape[0]
    dev = x.device
    apply = (torch.rand(b, generator=generator) < p).to(dev)
    out = x
    ops = [0, 1, 2, 3] if x.shape[1] == 3 else [0, 1]
    order = torch.randperm(len(ops), generator=generator).tolist()
    for k in order:
        op = ops[k]
        if op == 0 and brightness:
            f = torch.empty(b).uniform_(max(0, 1 - brightness), 1 + brightness, generator=generator).to(dev)
            new = (out * _bview(f)).clamp_(0, 1)
        elif op == 1 and contrast:
            f = torch.empty(b).uniform_(max(0, 1 - contrast), 1 + contrast, generator=generator).to(dev)
            mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
            new = ((out - mean) * _bview(f) + mean).clamp_(0, 1)
        elif op == 2 and saturation:
            f = torch.empty(b).uniform_(max(0, 1 - saturation), 1 + saturation, generator=generator).to(dev)
            g = _gray(out)
            new = ((out - g) * _bview(f) + g).clamp_(0, 1)
        elif op == 3 and hue:
            f = torch.empty(b).uniform_(-hue, hue, generator=generator).to(dev)
            hsv = _rgb_to_hsv(out)
            hsv = torch.cat([(hsv[:, :1] + _bview(f)) % 1.0, hsv[:, 1:]], 1)
            new = _hsv_to_rgb(hsv)
        else:
            continue
        out = torch.where(_bview(apply), new, out)
    return out


def random_grayscale(x, p=0.2, generator=None):
    if x.shape[1] == 1 or p <= 0:
        return x
    sel = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(_bview(sel), _gray(x).expand_as(x), x)


def gaussian_blur(x, kernel_size, sigma=(0.1, 2.0), p=0.5, generator=None):
    """Per-sample sigma ~ U(sigma), applied to a fraction ``p`` of the samples; separable
    depthwise convolution with reflect padding (as torchvision)."""
    b, c, h, w = x.shape
    sel = torch.rand(b, generator=generator) < p
    if not sel.any():
        return x
    sig = torch.empty(b).uniform_(*sigma, generator=generator)
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, dtype=torch.float32)
    k = torch.exp(-(t[None] ** 2) / (2 * sig[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)
    k = k.repeat_interleave(c, 0).to(x.device)  # [B*C, K]
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    y = y.reshape(b, c, h, w)
    return torch.where(_bview(sel.to(x.device)), y, x)


@dataclass
class ViewAugment:
    """One SimCLR-style view: random resized crop -> flip -> colour jitter -> grayscale -> blur ->
    normalise. For single-channel images colour jitter reduces to brightness/contrast and
    grayscale is a no-op."""

    size: int = 32
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_kernel: int = 3
    blur_sigma: tuple = (0.1, 2.0)
    mean: tuple = field(default_factory=lambda: (0.5,))
    std: tuple = field(default_factory=lambda: (0.5,))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = _to_float(x)
        b, c, H, W = x.shape
        boxes = sample_crop_boxes(b, H, W, tuple(self.scale), tuple(self.ratio), generator)
        flip = torch.rand(b, generator=generator) < self.flip_p
        x = resized_crop_flip(x, boxes, self.size, flip).clamp_(0, 1)
        if self.jitter_p > 0:
            x = color_jitter(x, self.brightness, self.contrast, self.saturation, self.hue, self.jitter_p, generator)
        x = random_grayscale(x, self.grayscale_p, generator)
        if self.blur_p > 0:
            x = gaussian_blur(x, self.blur_kernel, tuple(self.blur_sigma), self.blur_p, generator)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std
