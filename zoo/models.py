"""The zoo's records. Add a model here and everything else (hub entry, CLI, card) follows."""
from __future__ import annotations

from .preprocess import Preprocess
from .registry import Metric, ModelRecord, WeightSource, register

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)

register(ModelRecord(
    name="simclr_resnet18w16_fashion_mnist",
    description="SimCLR ResNet-18 (width 16, 3x3 stride-1 stem, max-pool kept) trained here on Fashion-MNIST",
    arch={"arch": "resnet18", "stem": "cifar", "stem_padding": 1, "maxpool": True, "width": 16, "in_chans": 1},
    feature_dim=128,
    method="simclr",
    recipe="simclr_fashion_mnist_cpu",
    train_data="Fashion-MNIST train (60,000 images, labels unused)",
    preprocess=Preprocess(resize=28, crop=28, mean=FMNIST_MEAN, std=FMNIST_STD, interpolation="bilinear", in_chans=1),
    weights=WeightSource(sha256=None, bundled="simclr_resnet18w16_fashion_mnist"),
    metrics=(),
    license="MIT",
    paper="https://arxiv.org/abs/2002.05709",
    tags=("bundled", "trained-here"),
))
