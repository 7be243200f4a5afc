"""The version 1 augmentation engine: legacy, kept bit for bit.

``ViewAugment(version=1)`` (``augment.version: 1`` in a recipe, the default of the recipes written before
version 2) must reproduce the original engine's outputs and its consumption of the random generator, so
a training run started with it resumes identically. New recipes should pin ``augment.version: 2``
(:mod:`training.augmentation.ops`, torchvision semantics). Nothing here changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops import batch_view, rgb_to_hsv, sample_crop_boxes, solarize, to_float

# ----------------------------------------------------------------------------- version 1 ops
#
# The original engine's ops, unchanged: ``ViewAugment(version=1)`` must reproduce its outputs.

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
            new = (out * batch_view(f)).clamp_(0, 1)
        elif op == 1 and contrast:
            f = torch.empty(b).uniform_(max(0, 1 - contrast), 1 + contrast, generator=generator).to(dev)
            mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
            new = ((out - mean) * batch_view(f) + mean).clamp_(0, 1)
        elif op == 2 and saturation:
            f = torch.empty(b).uniform_(max(0, 1 - saturation), 1 + saturation, generator=generator).to(dev)
            g = _gray(out)
            new = ((out - g) * batch_view(f) + g).clamp_(0, 1)
        elif op == 3 and hue:
            f = torch.empty(b).uniform_(-hue, hue, generator=generator).to(dev)
            hsv = rgb_to_hsv(out)
            hsv = torch.cat([(hsv[:, :1] + batch_view(f)) % 1.0, hsv[:, 1:]], 1)
            new = _hsv_to_rgb(hsv)
        else:
            continue
        out = torch.where(batch_view(apply), new, out)
    return out


def random_grayscale(x, p=0.2, generator=None):
    if x.shape[1] == 1 or p <= 0:
        return x
    sel = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(batch_view(sel), _gray(x).expand_as(x), x)


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
    return torch.where(batch_view(sel.to(x.device)), y, x)


def legacy_view(aug, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One view of ``x`` by the version 1 engine, with the fields of ``aug`` (a
    :class:`~training.augmentation.view.ViewAugment` with ``version=1``): the original ops, the same
    generator consumption."""
    x = to_float(x)
    b, _, H, W = x.shape
    boxes = sample_crop_boxes(b, H, W, tuple(aug.scale), tuple(aug.ratio), generator)
    flip = torch.rand(b, generator=generator) < aug.flip_p
    x = resized_crop_flip(x, boxes, aug.size, flip, aug.interpolation).clamp_(0, 1)
    if aug.jitter_p > 0:
        x = color_jitter(x, aug.brightness, aug.contrast, aug.saturation, aug.hue, aug.jitter_p, generator)
    x = random_grayscale(x, aug.grayscale_p, generator)
    if aug.blur_p > 0:
        x = gaussian_blur(x, aug.blur_kernel, tuple(aug.blur_sigma), aug.blur_p, generator)
    if aug.solarize_p > 0:  # new op: draws only when enabled, so the original configs are unaffected
        sel = (torch.rand(b, generator=generator) < aug.solarize_p).to(x.device)
        x = torch.where(sel.view(-1, 1, 1, 1), solarize(x, aug.solarize_threshold), x)
    mean = torch.tensor(aug.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(aug.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
