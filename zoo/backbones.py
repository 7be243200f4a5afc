"""ResNet backbones with the variants the zoo's models need.

Every backbone is a torchvision ResNet whose ``fc`` is removed (``nn.Identity``), so the
forward pass returns the globally pooled feature ``[B, D]``. Variants are explicit arguments:

* ``stem``: ``"imagenet"`` (7x7 stride-2 conv + 3x3 max-pool, torchvision default) or ``"cifar"``
  (3x3 stride-1 conv; ``stem_padding`` 1 or 2; ``maxpool`` kept or dropped).
* ``width``: base width (64 in torchvision). Width 16 gives a ResNet-18 with 1/16 of the FLOPs.
* ``in_chans``: number of input channels (1 for Fashion-MNIST / MNIST).
* ``expand_dim``: the DISSL "resizer", a residual bottleneck inserted *before* the average pool
  that expands 2048 -> ``expand_dim`` channels (tiled identity shortcut), stored as
  ``avgpool.0`` so upstream DISSL state dicts (``resizer.*`` renamed) load strictly.
"""
from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from .base import SSLZooError, did_you_mean

__all__ = ["ARCHS", "ArchError", "BottleneckExpand", "build_resnet", "check_arch"]


class ArchError(SSLZooError, ValueError):
    """An architecture description (a zoo folder's ``config.json`` ``arch``) that cannot be built."""

ARCHS = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
}


class BottleneckExpand(nn.Module):
    """Residual bottleneck ``in_ch -> mid_ch -> out_ch`` whose shortcut tiles the input.

    ``out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + x.repeat(1, out_ch // in_ch, 1, 1))``

    This is the block DISSL (Dubois et al., 2022) puts before the ResNet-50 average pool to get
    8192-d representations (2048 -> 512 -> 8192, expansion 4).
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, is_residual: bool = True):
        super().__init__()
        if out_ch % in_ch:
            raise ValueError(f"expand dim {out_ch} must be a multiple of the trunk dim {in_ch}")
        self.expansion = out_ch // in_ch
        self.is_residual = is_residual
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, mid_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_ch)
        self.conv3 = nn.Conv2d(mid_ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        nn.init.normal_(self.conv1.weight, std=1 / math.sqrt(mid_ch))  # JL-style init of the projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.is_residual:
            out = out + x.repeat(1, self.expansion, 1, 1)
        return self.relu(out)


def build_resnet(
    arch: str = "resnet18",
    *,
    stem: str = "imagenet",
    stem_padding: int = 1,
    maxpool: bool = True,
    width: int = 64,
    in_chans: int = 3,
    expand_dim: int | None = None,
    expand_mid: int = 512,
) -> nn.Module:
    """Build a headless ResNet encoder mapping ``[B, in_chans, H, W]`` to ``[B, feature_dim]``."""
    check_arch(dict(arch=arch, stem=stem, stem_padding=stem_padding, maxpool=maxpool, width=width, in_chans=in_chans,
                    expand_dim=expand_dim, expand_mid=expand_mid))
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"unknown stem {stem!r}; choose 'imagenet' or 'cifar'")
    block, layers = ARCHS[arch]
    # torchvision's `width_per_group` scales only the bottleneck inner width; the stage widths
    # are 64 * 2**i and fixed, so build the stages ourselves by setting `inplanes` per stage.
    net = tv_resnet.ResNet(block, layers, num_classes=1)
    net.inplanes = width
    net.conv1 = nn.Conv2d(in_chans, width, 7, 2, 3, bias=False)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(in_chans, width, 3, 1, stem_padding, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    if not maxpool:
        net.maxpool = nn.Identity()
    net.layer1 = net._make_layer(block, width, layers[0])
    net.layer2 = net._make_layer(block, width * 2, layers[1], stride=2)
    net.layer3 = net._make_layer(block, width * 4, layers[2], stride=2)
    net.layer4 = net._make_layer(block, width * 8, layers[3], stride=2)
    feat = width * 8 * block.expansion
    if expand_dim is not None:
        net.avgpool = nn.Sequential(BottleneckExpand(feat, expand_mid, expand_dim), nn.AdaptiveAvgPool2d(1))
        feat = expand_dim
    net.fc = nn.Identity()
    for m in net.modules():  # torchvision's init, re-applied to the rebuilt layers
        if isinstance(m, nn.Conv2d) and m is not getattr(getattr(net.avgpool, "0", None), "conv1", None):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    net.feature_dim = feat
    return net


#: Per argument of :func:`build_resnet`: accepted values, described.
_INT_ARGS = {"width": 1, "in_chans": 1, "stem_padding": 0, "expand_mid": 1, "expand_dim": 1}


def check_arch(arch: dict) -> dict:
    """Check ``arch`` (keyword arguments of :func:`build_resnet`, as a ``config.json`` holds them)
    against the builder's real parameters before anything is built: unknown keys (with "did you
    mean"), wrong types and out-of-range values are one :class:`ArchError` line. Returns ``arch``."""
    if not isinstance(arch, dict):
        raise ArchError(f"'arch' must be an object of build_resnet arguments, got {type(arch).__name__}")
    params = [p for p in inspect.signature(build_resnet).parameters]
    for key in arch:
        if key not in params:
            raise ArchError(f"unknown arch key {key!r}{did_you_mean(key, params, quote=True)} "
                            f"(build_resnet takes {', '.join(params)})")
    a = arch.get("arch", "resnet18")
    if a not in ARCHS:
        raise ArchError(f"unknown arch {a!r}{did_you_mean(a, ARCHS, quote=True)} (choose one of {', '.join(sorted(ARCHS))})")
    if arch.get("stem", "imagenet") not in ("imagenet", "cifar"):
        raise ArchError(f"unknown stem {arch.get('stem')!r}; choose 'imagenet' or 'cifar'")
    if not isinstance(arch.get("maxpool", True), bool):
        raise ArchError(f"arch maxpool must be true or false, got {arch.get('maxpool')!r}")
    for key, low in _INT_ARGS.items():
        if key not in arch or (key == "expand_dim" and arch[key] is None):  # expand_dim null: no expansion
            continue
        v = arch[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low or v > 1 << 16:
            raise ArchError(f"arch {key} must be an integer in {low}..{1 << 16}, got {v!r}")
    if arch.get("expand_dim") is not None:
        trunk = arch.get("width", 64) * 8 * ARCHS[a][0].expansion
        if arch["expand_dim"] % trunk:
            raise ArchError(f"arch expand_dim {arch['expand_dim']} must be a multiple of the trunk dim {trunk}")
    return arch
