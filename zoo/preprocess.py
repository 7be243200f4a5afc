"""Per-model preprocessing: channel conversion -> resize (shorter side) -> centre crop -> normalise.

:class:`Preprocess` takes a PIL image (-> a batch of one, ``[1, C, H, W]``, ready for the model), a
list of PIL images or ``[C, H, W]`` tensors of any sizes (-> ``[B, C, H, W]``), a tensor ``[C, H, W]``
(-> ``[C, H, W]``) or a same-sized batch ``[B, C, H, W]`` (the batched path is what feature
extraction uses for in-memory datasets).

Pixel values are checked where they enter (:func:`as_pixels`), once: uint8 is 0..255; uint16 is
0..65535 (scaled, not clipped); other integer dtypes must hold 0..255 (8-bit values in a wider
type, e.g. int64) and are taken as such; floating point must lie in ``[0, 1]`` (values up to 255 in
a float tensor are refused with a one-line :class:`PixelError` saying to divide by 255, never
silently used). PIL images go through :func:`pil_to_uint8`: 16-bit modes (``I;16*``, and ``I``
holding 0..65535) are scaled to 8 bits, palette / CMYK / YCbCr / 1-bit images converted, ``F``
(32-bit float) refused. ``eval.datasets`` decodes image files with the same function.

:func:`normalise` (uint8 -> [0, 1] float, then per-channel ``(x - mean) / std``) and
:func:`resize_normalise` (that after a square bilinear resize, for models whose training fixed the
input size: fine-tuning, the trainer's kNN monitor) are the one implementation of inference-time
scaling and normalisation; :class:`Preprocess` uses :func:`normalise` after its resize + centre crop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

from .base import SSLZooError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PixelError", "Preprocess", "as_pixels", "normalise", "pil_to_uint8",
           "resize_normalise"]


class PixelError(SSLZooError, ValueError):
    """Images whose type, mode or value range cannot be read as pixels; one line saying what to do."""


_EIGHT_BIT = {"L": "L", "RGB": "RGB", "RGBA": "RGBA", "1": "L", "LA": "L", "La": "L", "P": "RGB", "PA": "RGBA",
              "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB", "RGBa": "RGB"}


def pil_to_uint8(img) -> torch.Tensor:
    """A PIL image -> uint8 ``[C, H, W]`` (C = 1, 3 or 4) with its pixel values mapped, not clipped.

    8-bit modes: ``L`` / ``RGB`` / ``RGBA`` as stored; ``1``, ``LA`` -> ``L``; ``P`` (palette) ->
    ``RGB`` (``PA`` -> ``RGBA``); ``CMYK``, ``YCbCr``, ... -> ``RGB``. 16-bit modes (``I;16``,
    ``I;16B``, ``I;16L``, ...) and ``I`` (32-bit integers, how older Pillow opens 16-bit PNGs) holding
    0..65535 are scaled ``round(v * 255 / 65535)``; ``I`` outside that range and ``F`` (32-bit float)
    are refused with a :class:`PixelError` (PIL's own ``convert`` clips them to black and white)."""
    mode = img.mode
    if mode in _EIGHT_BIT:
        target = _EIGHT_BIT[mode]
        if mode == "P" and "transparency" in img.info:
            target = "RGBA"
        arr = np.asarray(img if mode == target else img.convert(target))
    elif mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if mode == "I;16" or mode.startswith("I;16"):
            arr = arr.astype(np.uint32, copy=False)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise PixelError(f"a mode-{mode} image holds values {int(arr.min())}..{int(arr.max())}, outside 16 bits "
                             f"(0..65535); save it as an 8- or 16-bit image")
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif mode == "F":
        raise PixelError("a mode-F (32-bit float) image has no fixed value range; save it as an 8- or 16-bit image, "
                         "or pass a float tensor in [0, 1]")
    else:
        raise PixelError(f"PIL image mode {mode!r} is not supported; convert it to RGB or L first")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1)  # the layout of TF.pil_to_tensor


def as_pixels(x) -> torch.Tensor:
    """A tensor of images -> uint8 (values 0..255) or float32 in ``[0, 1]``, refusing in one line what
    would give a silently wrong number: ``bool`` / complex; floats outside ``[0, 1]`` (0..255 values in
    a float tensor: divide by 255), NaN or inf; integers outside 0..255 (except ``uint16``, whose
    0..65535 is scaled to ``[0, 1]``)."""
    if not isinstance(x, torch.Tensor):
        raise PixelError(f"expected a PIL image or a tensor, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        return x
    if x.dtype == torch.bool or x.is_complex():
        raise PixelError(f"images of dtype {str(x.dtype).removeprefix('torch.')} are not pixels; give uint8 "
                         f"(0..255) or float in [0, 1]")
    if x.dtype == getattr(torch, "uint16", None):
        return x.to(torch.float32) / 65535.0
    if x.is_floating_point():
        if x.numel():
            if not bool(torch.isfinite(x).all()):
                raise PixelError("images contain NaN or inf; give finite values in [0, 1]")
            lo, hi = float(x.min()), float(x.max())
            if lo < 0.0 or hi > 1.0:
                hint = "; 0..255 values: divide by 255 (or pass uint8)" if hi <= 255.0 and lo >= 0.0 else ""
                raise PixelError(f"float images must lie in [0, 1], these span {lo:g}..{hi:g}{hint}")
        return x if x.dtype == torch.float32 else x.to(torch.float32)
    if x.numel():  # other integer dtypes: 8-bit values in a wider type
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise PixelError(f"{str(x.dtype).removeprefix('torch.')} images must hold 8-bit values 0..255, these "
                             f"span {lo}..{hi}; scale them to 0..255 (16-bit data: pass torch.uint16)")
    return x.to(torch.uint8)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Images ``[..., C, H, W]`` -> float32 ``(x - mean) / std`` per channel; uint8 is first scaled to
    ``[0, 1]`` (``/ 255``), float input is taken to be in ``[0, 1]`` already."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return TF.normalize(x, list(mean), list(std))


def resize_normalise(x: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """A batch ``[B, C, H, W]`` (uint8 or float in ``[0, 1]``) -> float32 ``[B, C, size, size]``:
    scaled to ``[0, 1]``, resized bilinearly (antialiased) to ``size x size`` unless it already is,
    then normalised (:func:`normalise`)."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return normalise(x, mean, std)


@dataclass(frozen=True)
class Preprocess:
    resize: int
    crop: int
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"
    in_chans: int = 3

    def __post_init__(self):
        for key in ("resize", "crop", "in_chans"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PixelError(f"preprocess {key} must be a positive integer, got {v!r}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise PixelError(f"mean/std need {self.in_chans} values, got {self.mean} / {self.std}")
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 for v in self.std):
            raise PixelError(f"preprocess std values must be positive numbers, got {list(self.std)}")

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def describe(self) -> str:
        return (f"resize {self.resize} ({self.interpolation}) -> center crop {self.crop} -> "
                f"{self.in_chans}-channel, mean {list(self.mean)}, std {list(self.std)}")

    def _channels(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-3]
        if c == self.in_chans:
            return x
        if c == 1 and self.in_chans == 3:
            return x.expand(*x.shape[:-3], 3, *x.shape[-2:])
        if c == 3 and self.in_chans == 1:
            return TF.rgb_to_grayscale(x, num_output_channels=1)
        if c == 4 and self.in_chans in (1, 3):
            return self._channels(x[..., :3, :, :])
        raise PixelError(f"images have {c} channels but the model takes {self.in_chans}; convert them to "
                         f"{'RGB' if self.in_chans == 3 else 'grayscale'} first")

    def geometry(self, img) -> torch.Tensor:
        """Channel conversion, resize and centre crop only: uint8 stays uint8 (what fine-tuning
        augments from), float stays float in ``[0, 1]``; :meth:`__call__` is this followed by scaling
        and normalisation. A PIL image gives ``[C, H, W]`` here."""
        img = pil_to_uint8(img) if _is_pil(img) else as_pixels(img)
        if img.ndim not in (3, 4):
            raise PixelError(f"expected an image [C,H,W] or batch [B,C,H,W], got shape {tuple(img.shape)}")
        if min(img.shape[-2:]) < 1:
            raise PixelError(f"images of size {img.shape[-2]}x{img.shape[-1]} have no pixels")
        x = self._channels(img)
        interp = InterpolationMode(self.interpolation)
        if min(x.shape[-2:]) != self.resize:
            x = TF.resize(x, self.resize, interpolation=interp, antialias=True)
        if tuple(x.shape[-2:]) != (self.crop, self.crop):
            x = TF.center_crop(x, [self.crop, self.crop])
        return x

    def __call__(self, img) -> torch.Tensor:
        """PIL image -> ``[1, C, H, W]``; list of PIL images / ``[C,H,W]`` tensors -> ``[B, C, H, W]``;
        tensor ``[C,H,W]`` -> ``[C, H, W]``; batch ``[B,C,H,W]`` -> ``[B, C, H, W]``; float32, normalised."""
        if _is_pil(img):
            return normalise(self.geometry(img), self.mean, self.std).unsqueeze(0)
        if isinstance(img, (list, tuple)):
            if not img:
                raise PixelError("an empty list of images")
            parts = [self.geometry(im) for im in img]
            if any(p.ndim != 3 for p in parts):
                raise PixelError("a list of images holds PIL images or [C, H, W] tensors, not batches")
            return normalise(torch.stack([p.float() / 255.0 if p.dtype == torch.uint8 else p for p in parts]),
                             self.mean, self.std)
        return normalise(self.geometry(img), self.mean, self.std)


def _is_pil(img) -> bool:
    return type(img).__module__.startswith("PIL.") and hasattr(img, "mode") and hasattr(img, "getbands")
