"""Per-model preprocessing: channel conversion -> resize (shorter side) -> centre crop -> normalise.

Works on a PIL image, a uint8 tensor ``[C, H, W]`` or a same-sized uint8 batch ``[B, C, H, W]``
(the batched path is what feature extraction uses for in-memory datasets).

:func:`normalise` (uint8 -> [0, 1] float, then per-channel ``(x - mean) / std``) and
:func:`resize_normalise` (that after a square bilinear resize, for models whose training fixed the
input size: fine-tuning, the trainer's kNN monitor) are the one implementation of inference-time
scaling and normalisation; :class:`Preprocess` uses :func:`normalise` after its resize + centre crop.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocess", "normalise", "resize_normalise"]


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
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean/std need {self.in_chans} values, got {self.mean} / {self.std}")

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
        raise ValueError(f"images have {c} channels but the model takes {self.in_chans}; convert them to "
                         f"{'RGB' if self.in_chans == 3 else 'grayscale'} first")

    def geometry(self, img) -> torch.Tensor:
        """Channel conversion, resize and centre crop only: uint8 stays uint8 (what fine-tuning
        augments from); :meth:`__call__` is this followed by scaling and normalisation."""
        if not isinstance(img, torch.Tensor):
            img = TF.pil_to_tensor(img)
        if img.ndim not in (3, 4):
            raise ValueError(f"expected an image [C,H,W] or batch [B,C,H,W], got shape {tuple(img.shape)}")
        x = self._channels(img)
        interp = InterpolationMode(self.interpolation)
        if min(x.shape[-2:]) != self.resize:
            x = TF.resize(x, self.resize, interpolation=interp, antialias=True)
        if tuple(x.shape[-2:]) != (self.crop, self.crop):
            x = TF.center_crop(x, [self.crop, self.crop])
        return x

    def __call__(self, img) -> torch.Tensor:
        """PIL image / uint8 ``[C,H,W]`` / uint8 ``[B,C,H,W]`` -> float32 normalised tensor."""
        return normalise(self.geometry(img), self.mean, self.std)
