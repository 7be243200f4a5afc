"""The batched augmentation ops of the version 2 engine (torchvision semantics per sample), and the crop
box sampler both engines share. See :mod:`training.augmentation` for the engines."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def batch_view(t):
    """``[B]`` -> ``[B, 1, 1, 1]``: a per-sample value broadcast over an image batch."""
    return t.view(-1, 1, 1, 1)


def sample_crop_boxes(n, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=None, attempts=10):
    """Per-sample crop boxes ``(top, left, h, w)`` (float tensors ``[n]``) with torchvision's
    RandomResizedCrop rule: area ~ U(scale) * H * W, log aspect ratio ~ U(log ratio), the first of
    ``attempts`` tries that fits, placed uniformly; if none fits, the central crop of the whole image
    clamped to the ratio range. All tries are drawn at once (the tries are i.i.d., so the first
    fitting one has torchvision's distribution)."""
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
    # fallback: whole image, clamped to the ratio range, centred (torchvision's behaviour)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fh, fw = height, round(height * max(ratio))
    else:
        fw, fh = width, height
    bad = first < 0
    hh = torch.where(bad, torch.full_like(hh, fh), hh)
    ww = torch.where(bad, torch.full_like(ww, fw), ww)
    top = torch.floor(torch.rand(n, generator=generator) * (height - hh + 1))
    left = torch.floor(torch.rand(n, generator=generator) * (width - ww + 1))
    # The draws above are kept for the fallback samples too (same generator consumption either way).
    top = torch.where(bad, torch.floor((height - hh) / 2), top)
    left = torch.where(bad, torch.floor((width - ww) / 2), left)
    return top, left, hh, ww



# ----------------------------------------------------------------------------- version 2 ops
#
# Each op takes a float batch in [0, 1] and per-sample parameters already on the batch's device.

INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")
_PIL_CODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # torchvision also accepts PIL's integer codes
_MATRIX_ELEMENTS = 1 << 22  # resampling matrices are built for at most this many entries at a time


def interpolation_name(mode) -> str:
    """``"bilinear"`` etc. from a string, a ``torchvision.transforms.InterpolationMode`` or a PIL code."""
    m = getattr(mode, "value", mode)
    if isinstance(m, int) and not isinstance(m, bool):
        m = _PIL_CODES.get(m, m)
    m = str(m).lower()
    if m not in INTERPOLATIONS:
        raise ValueError(f"interpolation={mode!r} is not supported; use one of {', '.join(INTERPOLATIONS)}")
    return m


def _cubic(t: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' cubic convolution kernel with parameter ``a`` (PyTorch: -0.75 plain, -0.5 antialiased)."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = (((t - 5) * t + 8) * t - 4) * a
    return torch.where(t < 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def resample_matrix(start, length, in_size: int, out_size: int, mode: str = "bilinear",
                    antialias: bool = True) -> torch.Tensor:
    """Per-sample 1-D resampling matrices ``[B, out_size, in_size]``: row ``i`` of sample ``b`` holds
    the weights with which the input pixels make output pixel ``i`` when the segment
    ``[start[b], start[b] + length[b])`` of the axis is resized to ``out_size`` pixels.

    The weights are those of ``torch.nn.functional.interpolate(crop, align_corners=False,
    antialias=antialias)`` (what torchvision's ``resize`` calls on tensors), including its edge
    handling: pixels outside the segment get weight 0. Antialiased bilinear / bicubic use the
    triangle / Keys (a = -0.5) filter stretched by the scale factor when shrinking, and are
    normalised per row (PIL's resampling); without antialiasing, bilinear clamps the source
    coordinate to the segment and bicubic (a = -0.75) clamps its four taps; ``nearest`` takes pixel
    ``floor(i * scale)`` and ``nearest-exact`` ``floor((i + 0.5) * scale)``.
    """
    mode = interpolation_name(mode)
    start = torch.as_tensor(start, dtype=torch.float32)
    length = torch.as_tensor(length, dtype=torch.float32, device=start.device)
    dev = start.device
    L = length.view(-1, 1, 1)
    scale = L / out_size                                                    # input pixels per output pixel
    i = torch.arange(out_size, device=dev, dtype=torch.float32).view(1, -1, 1)
    q = torch.arange(in_size, device=dev, dtype=torch.float32).view(1, 1, -1) - start.view(-1, 1, 1)
    if mode in ("nearest", "nearest-exact"):
        src = torch.floor((i if mode == "nearest" else i + 0.5) * scale)
        w = (q == torch.minimum(src, L - 1)).float()
    elif antialias:
        half = 1.0 if mode == "bilinear" else 2.0                            # half the filter's support
        stretch = scale.clamp(min=1.0)                                       # widen the filter when shrinking
        center = scale * (i + 0.5)
        support = half * stretch
        lo = torch.floor(center - support + 0.5).clamp(min=0)
        hi = torch.minimum(torch.floor(center + support + 0.5), L)
        t = (q - center + 0.5) / stretch
        w = (1 - t.abs()).clamp(min=0) if mode == "bilinear" else _cubic(t, -0.5)
        w = w * ((q >= lo) & (q < hi))
        w = w / w.sum(-1, keepdim=True)
    elif mode == "bilinear":
        src = torch.minimum(((i + 0.5) * scale - 0.5).clamp(min=0), L - 1)
        w = (1 - (q - src).abs()).clamp(min=0)
    else:  # bicubic without antialiasing: four taps around floor(src), indices clamped to the segment
        src = (i + 0.5) * scale - 0.5
        f0 = torch.floor(src)
        frac = src - f0
        w = torch.zeros(start.shape[0], out_size, in_size, device=dev)
        for k in (-1, 0, 1, 2):
            tap = torch.minimum((f0 + k).clamp(min=0), L - 1)
            w = w + _cubic(frac - k, -0.75) * (q == tap)
    return w * ((q >= 0) & (q < L))


def _bilinear_upscale_grid(top, left, h, w, H, W, oh, ow, flip):
    """``grid_sample`` grid reproducing torchvision's bilinear resize of the box when it is enlarged
    along both axes (then antialiasing is a no-op): source coordinate ``(i + 0.5) * h / oh - 0.5``
    clamped to the box, in ``align_corners=False`` normalised coordinates."""
    dev = top.device
    iy = torch.arange(oh, device=dev, dtype=torch.float32).view(1, -1)
    ix = torch.arange(ow, device=dev, dtype=torch.float32).view(1, -1)
    sy = torch.minimum(((iy + 0.5) * (h / oh).view(-1, 1) - 0.5).clamp(min=0), (h - 1).view(-1, 1)) + top.view(-1, 1)
    sx = torch.minimum(((ix + 0.5) * (w / ow).view(-1, 1) - 0.5).clamp(min=0), (w - 1).view(-1, 1)) + left.view(-1, 1)
    if flip is not None:
        sx = torch.where(flip.view(-1, 1), sx.flip(1), sx)
    gy = (2 * sy + 1) / H - 1                                                # [n, oh]
    gx = (2 * sx + 1) / W - 1                                                # [n, ow]
    return torch.stack(torch.broadcast_tensors(gx.unsqueeze(1), gy.unsqueeze(2)), -1)  # [n, oh, ow, 2]


def resized_crop(x: torch.Tensor, boxes, size, flip=None, interpolation="bilinear", antialias: bool = True):
    """Crop every sample to its box ``(top, left, h, w)``, resize it to ``size`` (an int or ``(h, w)``)
    and mirror it where ``flip`` is true: torchvision's ``resized_crop`` (+ ``horizontal_flip``) per
    sample. Computed as ``Ry @ x @ Rx^T`` with the per-sample :func:`resample_matrix` of each axis;
    bilinear boxes that are enlarged along both axes (every box when the output is as large as the
    input) take the cheaper ``grid_sample`` route with the same source coordinates and weights."""
    b, c, H, W = x.shape
    oh, ow = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    dev = x.device
    top, left, h, w = (torch.as_tensor(t, dtype=torch.float32).to(dev) for t in boxes)
    if flip is not None:
        flip = torch.as_tensor(flip).to(dev)
    interpolation = interpolation_name(interpolation)
    up = (h <= oh) & (w <= ow) if interpolation == "bilinear" else torch.zeros(b, dtype=torch.bool, device=dev)
    if bool(up.all()):
        grid = _bilinear_upscale_grid(top, left, h, w, H, W, oh, ow, flip)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = torch.empty(b, c, oh, ow, device=dev)
    if bool(up.any()):
        sel = torch.nonzero(up).squeeze(1)
        grid = _bilinear_upscale_grid(top[sel], left[sel], h[sel], w[sel], H, W, oh, ow,
                                      None if flip is None else flip[sel])
        out[sel] = F.grid_sample(x[sel], grid, mode="bilinear", padding_mode="border", align_corners=False)
        rest = torch.nonzero(~up).squeeze(1)
        out[rest] = resized_crop(x[rest], (top[rest], left[rest], h[rest], w[rest]), (oh, ow),
                                 None if flip is None else flip[rest], interpolation, antialias)
        return out
    step = max(1, _MATRIX_ELEMENTS // max(oh * H + ow * W, 1))
    for s in range(0, b, step):
        e = min(b, s + step)
        n = e - s
        ry = resample_matrix(top[s:e], h[s:e], H, oh, interpolation, antialias)            # [n, oh, H]
        rx = resample_matrix(left[s:e], w[s:e], W, ow, interpolation, antialias)           # [n, ow, W]
        if flip is not None:
            rx = torch.where(flip[s:e].view(-1, 1, 1), rx.flip(1), rx)
        # channels folded into the matrix products: [n, oh, H] @ [n, H, C*W], then [n, oh*C, W] @ [n, W, ow]
        t = torch.bmm(ry, x[s:e].permute(0, 2, 1, 3).reshape(n, H, c * W))
        t = torch.bmm(t.view(n, oh * c, W), rx.transpose(1, 2))
        out[s:e] = t.view(n, oh, c, ow).permute(0, 2, 1, 3)
    return out


def luma(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` grayscale with torchvision's weights (0.2989, 0.587, 0.114); 1-channel input as is."""
    if x.shape[1] == 1:
        return x
    return x[:, 0:1] * 0.2989 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` RGB in [0, 1] -> HSV, hue in [0, 1) (the hexcone model of ``colorsys``); both engines."""
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


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`, elementwise: channel ``n`` in (R, G, B) = ``v - v s
    clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6`` for n = 5, 3, 1."""
    h, s, v = x.unbind(1)
    return _hexcone(h * 6.0, v, v * s)


# Channel n of the hexcone, clamp(min(k, 4 - k), 0, 1) with k = (n + h6) mod 6, equals
# clamp(2 - d, 0, 1) where d is the distance from h6 to 2 - n on the circle of circumference 6:
# R (n = 5) -> 3, G (n = 3) -> 5, B (n = 1) -> 1. No remainder (libm fmod is 10x slower than a
# multiply on this CPU) once h6 is wrapped to about [0, 6).
_HEXCONE_CENTRES = (3.0, 5.0, 1.0)


def _hexcone(h6, top, chroma):
    """RGB from hue ``h6`` (in sixths of a turn, any real), max ``top`` and chroma ``top - min``.
    Written with arithmetic only: ops that make or read bool tensors (``where``, comparisons,
    ``remainder``) run 5-30x slower than a multiply in this torch build on this CPU."""
    if float(h6.min()) < -1.0 or float(h6.max()) > 7.0:
        h6 = h6 - torch.floor(h6 * (1.0 / 6.0)) * 6.0
    out = torch.empty(top.shape[0], 3, *top.shape[1:], device=top.device)
    d = torch.empty_like(h6)
    for ch, centre in enumerate(_HEXCONE_CENTRES):
        # min(|h6 - c|, 6 - |h6 - c|) = 3 - ||h6 - c| - 3|, so clamp(2 - dist) = clamp(||h6 - c| - 3| - 1)
        torch.sub(h6, centre, out=d).abs_().sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
        torch.sub(top, d.mul_(chroma), out=out[:, ch])
    return out


def adjust_brightness(x, factor):
    """``clamp(f * x)`` per sample (torchvision ``adjust_brightness``); ``factor`` is ``[B]``."""
    return (x * batch_view(factor)).clamp_(0, 1)


def adjust_contrast(x, factor):
    """Blend with the per-sample mean of the grayscale image (torchvision ``adjust_contrast``)."""
    f = batch_view(factor)
    m = x.mean(dim=(2, 3))                                                   # [B, C]
    if x.shape[1] == 3:
        m = m[:, 0:1] * 0.2989 + m[:, 1:2] * 0.587 + m[:, 2:3] * 0.114
    else:
        m = m.mean(1, keepdim=True)
    return (x * f).add_(m.view(-1, 1, 1, 1) * (1 - f)).clamp_(0, 1)


def adjust_saturation(x, factor):
    """Blend with the grayscale image (torchvision ``adjust_saturation``); 1-channel input unchanged."""
    if x.shape[1] == 1:
        return x
    f = batch_view(factor)
    return (x * f).add_(luma(x).mul_(1 - f)).clamp_(0, 1)


def adjust_hue(x, shift):
    """Rotate the hue by ``shift`` (``[B]``, in [-0.5, 0.5] turns) in HSV space (torchvision
    ``adjust_hue``); 1-channel input unchanged. Value (max) and chroma (max - min) are kept, so only
    the hue is computed: ``h6 = (g - b) / c``, ``2 + (b - r) / c`` or ``4 + (r - g) / c`` by the
    channel that is the max (r before g before b, as torchvision), then :func:`_hexcone`."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    top = torch.maximum(torch.maximum(r, g), b)
    chroma = top - torch.minimum(torch.minimum(r, g), b)
    inv = chroma.clamp(min=1e-30).reciprocal_()                             # c = 0: the differences are 0 too
    # which channel is the max, as 0/1 floats (r before g before b); eq(out=float) is fast, where() is not
    mr = torch.eq(top, r, out=torch.empty_like(top))
    mg = torch.eq(top, g, out=torch.empty_like(top)).sub_(mr).clamp_(min=0.0)
    mb = (1.0 - mr).sub_(mg)
    h6 = (g - b).mul_(mr).add_((b - r).mul_(mg)).add_((r - g).mul_(mb)).mul_(inv)
    h6.add_(mg, alpha=2.0).add_(mb, alpha=4.0)                              # exactly one mask is 1 per pixel
    h6.add_(shift.view(-1, 1, 1) * 6.0)                                     # in [-4, 8)
    h6.sub_(torch.floor(h6 * (1.0 / 6.0)).mul_(6.0))                        # wrapped to [0, 6] (rounding)
    return _hexcone(h6, top, chroma)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
JITTER_OP_NAMES = ("brightness", "contrast", "saturation", "hue")


def jitter_range(value, name: str, center: float = 1.0, bound=(0.0, math.inf), clip_first_on_zero: bool = True):
    """torchvision ``ColorJitter``'s reading of a jitter argument: a number ``v`` means
    ``[max(0, center - v), center + v]`` (hue: ``[-v, v]``), a pair is the range itself; ``None`` for
    an op that is off (``0``, ``None`` or the range ``(center, center)``)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"If {name} is a single number, it must be non negative, got {value}")
        lo, hi = center - value, center + value
        if clip_first_on_zero:
            lo = max(lo, 0.0)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
    else:
        raise TypeError(f"{name}={value!r} should be a single number or a (min, max) pair")
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ValueError(f"{name} values should be between {bound} and increasing, got {(lo, hi)}")
    return None if lo == hi == center else (float(lo), float(hi))


def color_jitter_per_sample(x, apply, order, factors):
    """torchvision ``RandomApply([ColorJitter], p)`` with per-sample parameters.

    ``apply [B]`` (bool): samples that are jittered; ``order [B, 4]``: each sample's permutation of
    the ops (0 brightness, 1 contrast, 2 saturation, 3 hue); ``factors``: four ``[B]`` tensors, or
    ``None`` for an op that is off.

    Brightness, contrast and saturation are all ``clamp(a x + w_m mean(gray(x)) + w_l gray(x))``
    with per-sample ``(a, w_m, w_l)`` = ``(f, 0, 0)``, ``(f, 1 - f, 0)``, ``(f, 0, 1 - f)``, so step
    ``k`` of the random order is one batched pass over every sample whose ``k``-th op is one of them
    (``(1, 0, 0)``, i.e. unchanged, for the others); the hue op runs on the samples whose ``k``-th op
    it is. Four passes in all, with no gather / scatter except for hue. Returns the jittered batch
    (``x`` may be overwritten). Index computations happen on the CPU (the parameters live there).
    """
    dev = x.device
    apply, order = apply.cpu(), order.cpu()
    b, steps = order.shape
    bright, contrast, sat, hue = factors
    if x.shape[1] != 3:
        sat = hue = None
    op = torch.where(apply.view(-1, 1), order, torch.full_like(order, -1)).t()   # [steps, B]; -1: untouched
    # per-step blend weights (a, w_mean, w_luma), all steps at once
    a, wm, wl = torch.ones(steps, b), torch.zeros(steps, b), torch.zeros(steps, b)
    if bright is not None:
        a = torch.where(op == 0, bright, a)
    if contrast is not None:
        a, wm = torch.where(op == 1, contrast, a), torch.where(op == 1, 1 - contrast, wm)
    if sat is not None:
        a, wl = torch.where(op == 2, sat, a), torch.where(op == 2, 1 - sat, wl)
    blend = (a != 1).any(1).tolist()
    use_m, use_l = wm.any(1).tolist(), wl.any(1).tolist()
    a, wm, wl = a.to(dev), wm.to(dev), wl.to(dev)
    hue_idx = [torch.nonzero(op[k] == 3).squeeze(1) for k in range(steps)] if hue is not None else [None] * steps
    for k in range(steps):
        if blend[k]:
            x = _blend_step(x, a[k], wm[k] if use_m[k] else None, wl[k] if use_l[k] else None)
        idx = hue_idx[k]
        if idx is not None and idx.numel():
            idx_d = idx.to(dev)
            x.index_copy_(0, idx_d, adjust_hue(x.index_select(0, idx_d), hue[idx].to(dev)))
    return x


def _blend_step(x, a, wm, wl):
    """``clamp(a x + wm mean(gray(x)) + wl gray(x), 0, 1)`` per sample (``a``, ``wm``, ``wl``: ``[B]``;
    ``None`` for an all-zero weight): brightness, contrast and saturation in one pass, in place."""
    v = (lambda t: t.view(-1, 1, 1, 1))
    t = None
    if wl is not None:
        t = luma(x).mul_(v(wl))                                              # [B, 1, H, W]
    if wm is not None:
        m = x.mean(dim=(2, 3))                                               # [B, C]
        m = m[:, 0] * 0.2989 + m[:, 1] * 0.587 + m[:, 2] * 0.114 if x.shape[1] == 3 else m.mean(1)
        m = v(m * wm)
        t = m if t is None else t.add_(m)
    x.mul_(v(a))
    if t is not None:
        x.add_(t)
    return x.clamp_(0.0, 1.0)


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``[B, kernel_size]`` normalised 1-D Gaussians ``exp(-t^2 / (2 sigma^2))``, ``t = -(k-1)/2 ..
    (k-1)/2`` (torchvision's ``GaussianBlur`` kernel)."""
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=sigma.device)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    return k / k.sum(1, keepdim=True)


def gaussian_blur_per_sample(x, sigma, kernel_size):
    """Per-sample Gaussian blur with reflect padding (torchvision ``gaussian_blur``): the samples'
    kernels as one depthwise (grouped) convolution per axis. ``kernel_size``: odd int or
    ``(kx, ky)``; ``sigma [B]``."""
    kx, ky = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    b, c, H, W = x.shape
    px, py = kx // 2, ky // 2
    xp = F.pad(x, (px, px, py, py), mode="reflect") if (px or py) else x
    xp = xp.reshape(1, b * c, H + 2 * py, W + 2 * px)
    wx = gaussian_kernels(sigma, kx).repeat_interleave(c, 0).view(b * c, 1, 1, kx)
    wy = gaussian_kernels(sigma, ky).repeat_interleave(c, 0).view(b * c, 1, ky, 1)
    t = F.conv2d(xp, wx, groups=b * c) if kx > 1 else xp
    t = F.conv2d(t, wy, groups=b * c) if ky > 1 else t
    return t.view(b, c, H, W)


def solarize(x, threshold: float):
    """Invert pixels ``>= threshold`` (torchvision ``solarize`` on float images)."""
    return torch.where(x >= threshold, 1.0 - x, x)


def solarize_per_sample(x, apply, threshold: float):
    """:func:`solarize` on the samples where ``apply [B]`` is true, as ``x + m (1 - 2x)`` with a 0/1
    float mask ``m`` (a bool mask and ``where`` are several times slower on the CPU); samples not
    solarised get a threshold above 1, so ``m`` is 0 for all their pixels."""
    thr = torch.where(apply.cpu(), torch.tensor(float(threshold)), torch.tensor(2.0)).to(x.device).view(-1, 1, 1, 1)
    m = torch.ge(x, thr, out=torch.empty_like(x))
    return x.addcmul_(m, x.mul(-2.0).add_(1.0))
