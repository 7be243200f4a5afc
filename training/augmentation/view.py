"""The view transform :class:`ViewAugment` and its parameter record :class:`ViewParams` (see
:mod:`training.augmentation` for the two engines and the torchvision mapping)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import fastaug
from .legacy import legacy_view
from .ops import (
    gaussian_blur_per_sample,
    gaussian_kernels,
    color_jitter_per_sample,
    interpolation_name,
    jitter_range,
    luma,
    resized_crop,
    sample_crop_boxes,
    solarize_per_sample,
    to_float,
)

_CHUNK_BYTES = 8 << 20  # CPU working set of one chunk of ViewAugment.apply (one float32 copy of the images)

@dataclass
class ViewParams:
    """The random parameters of one :class:`ViewAugment` call (``version=2``), one entry per sample,
    on the CPU. ``boxes``: ``(top, left, h, w)`` float tensors (pixel units of the input);
    ``flip``, ``jitter``, ``gray``, ``blur``, ``solarize``: bool ``[B]`` (op applied);
    ``order``: ``[B, 4]`` op order of the colour jitter (0 brightness, 1 contrast, 2 saturation,
    3 hue); ``brightness``, ``contrast``, ``saturation``: factors, ``hue``: shift (``None`` for an op
    that is off); ``sigma``: blur sigma ``[B]``."""

    boxes: tuple
    flip: torch.Tensor
    jitter: torch.Tensor
    order: torch.Tensor
    brightness: torch.Tensor | None
    contrast: torch.Tensor | None
    saturation: torch.Tensor | None
    hue: torch.Tensor | None
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor

    def __len__(self) -> int:
        return int(self.flip.shape[0])

    def slice(self, start: int, stop: int) -> ViewParams:
        """The parameters of samples ``start:stop``."""
        return ViewParams(tuple(t[start:stop] for t in self.boxes),
                          *(None if t is None else t[start:stop]
                            for t in (self.flip, self.jitter, self.order, self.brightness, self.contrast,
                                      self.saturation, self.hue, self.gray, self.blur, self.sigma, self.solarize)))

    def sample(self, i: int) -> dict:
        """Parameters of sample ``i`` as Python numbers (e.g. to replay it through torchvision)."""
        def item(t):
            return None if t is None else t[i].item()
        top, left, h, w = (int(t[i]) for t in self.boxes)
        return {"top": top, "left": left, "height": h, "width": w, "flip": bool(self.flip[i]),
                "jitter": bool(self.jitter[i]), "order": self.order[i].tolist(), "brightness": item(self.brightness),
                "contrast": item(self.contrast), "saturation": item(self.saturation), "hue": item(self.hue),
                "gray": bool(self.gray[i]), "blur": bool(self.blur[i]), "sigma": float(self.sigma[i]),
                "solarize": bool(self.solarize[i])}


# ----------------------------------------------------------------------------- the view transform

@dataclass
class ViewAugment:
    """One SimCLR-style view: random resized crop -> flip -> colour jitter -> grayscale -> blur ->
    solarize -> normalise, with torchvision's parameter names (see the module docstring for the
    mapping and for the two engines selected by ``version``).

    For single-channel images the colour jitter reduces to brightness/contrast and grayscale is a
    no-op (as torchvision). ``jitter_p`` is the probability of ``RandomApply([ColorJitter])``;
    ``brightness`` / ``contrast`` / ``saturation`` / ``hue`` are read as torchvision's ``ColorJitter``
    reads them (``version=2`` also accepts ``(min, max)`` ranges). ``blur_kernel`` is an odd int (or
    ``(kx, ky)`` with ``version=2``). ``solarize_threshold`` is on the [0, 1] scale of the float
    images the engine works on (torchvision's ``RandomSolarize(threshold=128)`` on uint8 images is
    ``128 / 255``). ``interpolation``: ``"bilinear"`` (default), ``"bicubic"``, ``"nearest"``,
    ``"nearest-exact"`` (version 2 only) or a torchvision ``InterpolationMode``. ``size``: an int or
    ``(h, w)`` (version 2 only).

    ``version=1`` (default) reproduces the original engine bit for bit; ``version=2`` follows
    torchvision in every op. ``fused`` (version 2, CPU): use the C kernel of :mod:`training.augmentation.fastaug`
    when it builds (the same images, several times faster); ``False`` keeps to eager torch ops. Calling an instance draws the parameters from ``generator`` (CPU) and
    applies them; with ``version=2`` this is ``apply(x, sample(x.shape, generator))``.
    """

    size: int | tuple = 32
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float | tuple = 0.4
    contrast: float | tuple = 0.4
    saturation: float | tuple = 0.4
    hue: float | tuple = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_kernel: int | tuple = 3
    blur_sigma: tuple = (0.1, 2.0)
    mean: tuple = field(default_factory=lambda: (0.5,))
    std: tuple = field(default_factory=lambda: (0.5,))
    interpolation: str = "bilinear"
    antialias: bool = True
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    version: int = 1
    fused: bool = True

    def __post_init__(self):
        if self.version not in (1, 2):
            raise ValueError(f"version must be 1 (the original engine) or 2 (torchvision semantics), got {self.version!r}")
        self.interpolation = interpolation_name(self.interpolation)
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {tuple(self.scale)}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {tuple(self.ratio)}")
        ks = (self.blur_kernel,) * 2 if isinstance(self.blur_kernel, int) else tuple(self.blur_kernel)
        if len(ks) != 2 or any(int(k) != k or k < 1 or k % 2 == 0 for k in ks):
            raise ValueError(f"blur_kernel must be an odd positive int (or (kx, ky)), got {self.blur_kernel!r}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (min, max) with 0 < min <= max, got {tuple(self.blur_sigma)}")
        if not 0.0 <= self.solarize_threshold <= 1.0:
            raise ValueError(f"solarize_threshold is on the [0, 1] scale of float images, got {self.solarize_threshold}"
                             f" (for a uint8 threshold t use t / 255)")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        self._ranges = (jitter_range(self.brightness, "brightness"), jitter_range(self.contrast, "contrast"),
                        jitter_range(self.saturation, "saturation"),
                        jitter_range(self.hue, "hue", center=0.0, bound=(-0.5, 0.5), clip_first_on_zero=False))
        if self.version == 1:
            bad = [n for n in ("brightness", "contrast", "saturation", "hue", "blur_kernel", "size")
                   if not isinstance(getattr(self, n), (int, float))]
            if bad or self.interpolation == "nearest-exact":
                raise ValueError(f"{', '.join(bad) or 'interpolation=nearest-exact'}: ranges, (h, w) sizes and "
                                 f"nearest-exact need version=2")

    # ------------------------------------------------------------------ version 2
    def sample(self, shape, generator: torch.Generator | None = None) -> ViewParams:
        """Draw the per-sample parameters for a batch of ``shape`` ``[B, C, H, W]`` (``version=2``).

        Every field is drawn for every sample whatever the configuration, so the generator advances
        by the same amount for a given batch size."""
        b, _, H, W = shape
        g = generator
        boxes = sample_crop_boxes(b, H, W, tuple(self.scale), tuple(self.ratio), g)
        flip = torch.rand(b, generator=g) < self.flip_p
        jitter = torch.rand(b, generator=g) < self.jitter_p
        order = torch.rand(b, 4, generator=g).argsort(1)  # a uniformly random permutation per sample
        factors = []
        for rng in self._ranges:
            u = torch.empty(b).uniform_(0.0, 1.0, generator=g)
            factors.append(None if rng is None else u * (rng[1] - rng[0]) + rng[0])
        gray = torch.rand(b, generator=g) < self.grayscale_p
        blur = torch.rand(b, generator=g) < self.blur_p
        sigma = torch.empty(b).uniform_(*self.blur_sigma, generator=g)
        solar = torch.rand(b, generator=g) < self.solarize_p
        return ViewParams(boxes, flip, jitter, order, *factors, gray=gray, blur=blur, sigma=sigma, solarize=solar)

    def apply(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """Apply drawn parameters to ``x`` ``[B, C, H, W]`` (uint8 or float in [0, 1]) on its device.

        On the CPU with the fused kernel available this is one call into C for the whole batch.
        Otherwise the eager ops process the batch in chunks of about ``_CHUNK_BYTES`` of float32 working
        set on the CPU, so that the dozens of elementwise passes run in the cache (and large
        temporaries do not go through the allocator's mmap path, which zero-fills fresh pages on every
        call); each chunk writes its slice of the output. On CUDA the whole batch is one chunk."""
        if self.version != 2:
            raise RuntimeError("sample/apply are the version=2 engine; this ViewAugment has version=1")
        b, c, H, W = x.shape
        oh, ow = (self.size, self.size) if isinstance(self.size, int) else (int(self.size[0]), int(self.size[1]))
        lib = self._fused_kernel(x, oh, ow)
        if lib is not None:
            return self._apply_fused(lib, x, params, oh, ow)
        step = b if x.device.type != "cpu" else max(1, _CHUNK_BYTES // (4 * c * max(oh * ow, H * W)))
        out = torch.empty(b, c, oh, ow, device=x.device)
        for s in range(0, b, step):
            e = min(b, s + step)
            self._apply_chunk(x[s:e], params if (s, e) == (0, b) else params.slice(s, e), out[s:e])
        return out

    def _apply_chunk(self, x: torch.Tensor, params: ViewParams, out: torch.Tensor) -> None:
        x = self._crop_jitter_eager(x, params)
        dev = x.device
        if self.blur_p > 0:
            idx = torch.nonzero(params.blur).squeeze(1)
            if idx.numel():
                idx_d = idx.to(dev)
                x.index_copy_(0, idx_d, gaussian_blur_per_sample(x.index_select(0, idx_d), params.sigma[idx].to(dev),
                                                                 self.blur_kernel))
        if self.solarize_p > 0:
            x = solarize_per_sample(x, params.solarize, self.solarize_threshold)
        # (x - mean) / std as x * (1 / std) + (-mean / std): one pass, written into the output
        mean = torch.tensor(self.mean, device=dev).view(1, -1, 1, 1)
        inv_std = 1.0 / torch.tensor(self.std, device=dev).view(1, -1, 1, 1)
        torch.addcmul((-mean * inv_std).expand_as(out), x, inv_std, out=out)

    def _crop_jitter_eager(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        x = to_float(x)
        dev = x.device
        x = resized_crop(x, params.boxes, self.size, params.flip, self.interpolation, self.antialias).clamp_(0, 1)
        if self.jitter_p > 0:
            x = color_jitter_per_sample(x, params.jitter, params.order,
                                        (params.brightness, params.contrast, params.saturation, params.hue))
        if x.shape[1] == 3 and self.grayscale_p > 0:
            idx = torch.nonzero(params.gray).squeeze(1).to(dev)
            if idx.numel():
                x.index_copy_(0, idx, luma(x.index_select(0, idx)).expand(-1, 3, -1, -1))
        return x

    def _fused_kernel(self, x: torch.Tensor, oh: int, ow: int):
        """The C library of :mod:`training.augmentation.fastaug` when this call can use it (CPU, ``fused=True``, the
        library builds, the blur's reflect padding is valid), else ``None``."""
        if x.device.type != "cpu" or not self.fused:
            return None
        if self.blur_p > 0:
            kx, ky = (self.blur_kernel,) * 2 if isinstance(self.blur_kernel, int) else self.blur_kernel
            if kx // 2 >= ow or ky // 2 >= oh:
                return None  # the eager path raises torch's own error for this padding
        return fastaug.library()

    def _apply_fused(self, lib, x: torch.Tensor, params: ViewParams, oh: int, ow: int) -> torch.Tensor:
        """:meth:`apply` with the C kernel: one call for the batch, each image cropped (from uint8, when
        every box is enlarged bilinearly; else the eager crop runs first), jittered, blurred, solarised
        and normalised while it sits in the core's cache."""
        b, c = x.shape[:2]
        if fastaug.can_crop(x, params.boxes, (oh, ow), self.interpolation):
            out, x8 = torch.empty(b, c, oh, ow), x.contiguous()
        else:
            out = resized_crop(to_float(x), params.boxes, (oh, ow), params.flip, self.interpolation,
                               self.antialias).clamp_(0, 1).contiguous()
            x8 = None
        if self.jitter_p > 0:
            ops, fac = fastaug.jitter_codes(params.jitter, params.order, (params.brightness, params.contrast,
                                                                           params.saturation, params.hue), c)
        else:
            ops, fac = torch.full((b, 1), -1, dtype=torch.int32), torch.zeros(b, 1)
        off = torch.zeros(b, dtype=torch.bool)
        gray = params.gray if (c == 3 and self.grayscale_p > 0) else off
        if self.blur_p > 0:
            kxn, kyn = (self.blur_kernel,) * 2 if isinstance(self.blur_kernel, int) else self.blur_kernel
            blur, kx, ky = params.blur, gaussian_kernels(params.sigma, kxn), gaussian_kernels(params.sigma, kyn)
        else:
            blur, kx, ky = off, torch.ones(b, 1), torch.ones(b, 1)
        solar = params.solarize if self.solarize_p > 0 else off
        mean = torch.tensor(self.mean, dtype=torch.float32).expand(c)
        std = torch.tensor(self.std, dtype=torch.float32).expand(c)
        return fastaug.view(lib, out, x8, params.boxes, params.flip, ops, fac, gray, blur, kx, ky, solar,
                             self.solarize_threshold, 1.0 / std, -mean / std)

    # ------------------------------------------------------------------ both
    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.version == 2:
            return self.apply(x, self.sample(x.shape, generator))
        return legacy_view(self, x, generator)  # version 1: the original engine, unchanged
