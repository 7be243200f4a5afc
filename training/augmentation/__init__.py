"""Batched tensor augmentations with per-sample random parameters.

Per-image PIL pipelines are the bottleneck for small images on a 2-core CPU, so the whole batch is
augmented at once, on the device the batch lives on (CPU or CUDA), with every random parameter
drawn per sample. Parameter names and distributions follow torchvision's transforms, so a recipe
translates one to one:

=====================================  ===========================================================
torchvision                            :class:`ViewAugment` field
=====================================  ===========================================================
``RandomResizedCrop(size, scale,       ``size``, ``scale``, ``ratio``, ``interpolation``,
ratio, interpolation, antialias)``     ``antialias``
``RandomHorizontalFlip(p)``            ``flip_p``
``RandomApply([ColorJitter(b, c, s,    ``brightness``, ``contrast``, ``saturation``, ``hue`` (a
h)], p)``                              number or a ``(min, max)`` range, as torchvision), ``jitter_p``
``RandomGrayscale(p)``                 ``grayscale_p``
``RandomApply([GaussianBlur(k,         ``blur_kernel``, ``blur_sigma``, ``blur_p``
sigma)], p)``
``RandomSolarize(threshold, p)``       ``solarize_threshold`` (on the [0, 1] scale), ``solarize_p``
``Normalize(mean, std)``               ``mean``, ``std``
=====================================  ===========================================================

The ops run in that order (the SimCLR / BYOL / lightly order). Multi-crop is several
:class:`ViewAugment` instances (different ``size`` / ``scale``) applied to the same batch.

Two engines, chosen with ``ViewAugment(version=...)``:

* ``version=1`` (default) is the original engine, kept bit for bit (same outputs and the same
  consumption of the random generator for a given generator state), so a training run started with
  it resumes identically. It differs from torchvision in details: one jitter order per call instead
  of per image; the crop is resampled by ``grid_sample`` from the whole image (at the box edges the
  bilinear taps reach half an output pixel beyond the box; no antialiasing when shrinking); grayscale
  weights 0.299/0.587/0.114. ``antialias`` has no effect there.
* ``version=2`` is torchvision's semantics for every op: a random jitter order per image; the crop is
  resampled from the box only, exactly as ``torchvision.transforms.v2.functional.resized_crop``
  (bilinear / bicubic with antialiasing, nearest, nearest-exact) via two per-sample interpolation
  matrices; grayscale / contrast / saturation use torchvision's luma weights 0.2989/0.587/0.114.
  Parameters are drawn by :meth:`ViewAugment.sample` into a :class:`ViewParams` record and applied
  by :meth:`ViewAugment.apply`, so one image can be replayed through torchvision with the same
  parameters (the tests do, and match it per image to float rounding).

On the CPU, ``version=2`` runs the whole view of each image in one C function when it can
(``fused=True``, the default): crop from uint8 (bilinear, every box enlarged) + flip, the colour jitter
in the image's own order, grayscale, blur, solarize and normalisation, one image at a time so every
pass stays in the core's cache, images spread over torch's threads (OpenMP). The C source is
``training/augmentation/_fastaug.c``, compiled at first use with the system compiler
(:mod:`training.augmentation.fastaug`);
without a compiler, or with ``SSLZOO_FASTAUG=0`` or ``fused=False``, the eager torch ops below run
(processed in cache-sized chunks). Both compute the same images to float rounding (the tests compare
them with each other and with torchvision image by image). Shrinking boxes, bicubic / nearest and float
input take the eager crop, then the kernel.

Random parameters are always drawn on the CPU from ``generator`` (a CPU ``torch.Generator`` or the
global RNG), whatever the device of the batch, so a seed gives the same views on CPU and CUDA.

Input: ``uint8`` or float tensor ``[B, C, H, W]`` (uint8 is scaled to [0, 1]; float input is taken to
be in [0, 1]). The ops run in float32; torchvision on uint8 tensors or PIL images rounds to 8 bits
after every op, which this engine does not (differences of at most a few 1/255 steps).
Output: float32 ``[B, C, size, size]``, normalised with ``mean`` / ``std``.

Modules: :mod:`~training.augmentation.view` (:class:`ViewAugment`, :class:`ViewParams`),
:mod:`~training.augmentation.ops` (the version 2 ops and the crop-box sampler),
:mod:`~training.augmentation.legacy` (the version 1 engine, kept bit for bit),
:mod:`~training.augmentation.fastaug` (the fused C kernel), :mod:`~training.augmentation.presets`
(``augment.preset`` names).
"""
from .legacy import color_jitter, gaussian_blur, random_grayscale, resized_crop_flip
from .ops import (
    INTERPOLATIONS,
    JITTER_OP_NAMES,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter_per_sample,
    gaussian_blur_per_sample,
    gaussian_kernels,
    hsv_to_rgb,
    interpolation_name,
    jitter_range,
    luma,
    resample_matrix,
    resized_crop,
    rgb_to_hsv,
    sample_crop_boxes,
    solarize,
    solarize_per_sample,
)
from .presets import AUGMENT_PRESETS
from .view import ViewAugment, ViewParams

__all__ = [
    "AUGMENT_PRESETS",
    "INTERPOLATIONS",
    "JITTER_OP_NAMES",
    "ViewAugment",
    "ViewParams",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "color_jitter",
    "color_jitter_per_sample",
    "gaussian_blur",
    "gaussian_blur_per_sample",
    "gaussian_kernels",
    "hsv_to_rgb",
    "interpolation_name",
    "jitter_range",
    "luma",
    "random_grayscale",
    "resample_matrix",
    "resized_crop",
    "resized_crop_flip",
    "rgb_to_hsv",
    "sample_crop_boxes",
    "solarize",
    "solarize_per_sample",
]
