"""The zoo's records. Add a model here and everything else (hub entry, CLI, card) follows."""
from __future__ import annotations

from .preprocess import Preprocess
from .records import Metric, ModelRecord, WeightSource

RECORDS: list[ModelRecord] = []  # in registry order

FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
_MEASURED = "measured here: `sslzoo eval`, 2026-11-24"
_MEASURED_D1024 = "measured here: `sslzoo eval` (README main job) from a clean clone at c461ae6, 2026-11-25"

RECORDS.append(ModelRecord(
    name="simclr_resnet18w16_fashion_mnist",
    description="SimCLR ResNet-18 (width 16, 3x3 stride-1 stem, max-pool kept) trained here on Fashion-MNIST",
    arch={"arch": "resnet18", "stem": "cifar", "stem_padding": 1, "maxpool": True, "width": 16, "in_chans": 1},
    feature_dim=128,
    method="simclr",
    recipe="simclr_fashion_mnist_cpu",
    train_data="Fashion-MNIST train (60,000 images, labels unused)",
    preprocess=Preprocess(resize=28, crop=28, mean=FMNIST_MEAN, std=FMNIST_STD, interpolation="bilinear", in_chans=1),
    weights=WeightSource(sha256="835d28b4b50c9769adef01cee625c47185a38275f1df252374fe52b21d8970c1",
                         bundled="simclr_resnet18w16_fashion_mnist"),
    # measured by the README main job: `sslzoo eval` (fp32 features; Fashion-MNIST test set; see README)
    metrics=(
        Metric("fashion-mnist", "linear (L2 chosen on a 10% val split of train, refit)", 87.81, _MEASURED),
        Metric("fashion-mnist", "knn k=20 T=0.07", 86.82, _MEASURED),
        Metric("fashion-mnist", "knn k=200 T=0.1", 84.95, _MEASURED),
        Metric("fashion-mnist", "few-shot k=10 (mean of seeds 0,1,2)", 76.21, _MEASURED),
    ),
    license="MIT",
    paper="https://arxiv.org/abs/2002.05709",
    tags=("bundled", "trained-here"),
))

RECORDS.append(ModelRecord(
    name="simclr_resnet18w16_d1024_fashion_mnist",
    description="SimCLR ResNet-18 (width 16, 3x3 stride-1 stem, max-pool kept) + DISSL expansion block "
                "(128 -> 1024, tiled identity) trained here on Fashion-MNIST",
    arch={"arch": "resnet18", "stem": "cifar", "stem_padding": 1, "maxpool": True, "width": 16, "in_chans": 1,
          "expand_dim": 1024, "expand_mid": 128},
    feature_dim=1024,
    method="simclr",
    recipe="simclr_d1024_fashion_mnist_cpu",
    train_data="Fashion-MNIST train (60,000 images, labels unused)",
    preprocess=Preprocess(resize=28, crop=28, mean=FMNIST_MEAN, std=FMNIST_STD, interpolation="bilinear", in_chans=1),
    weights=WeightSource(sha256="1298f271c3ddaaae07a129e453a71b97f510f0102b370dbcff4714518a29a7f2",
                         bundled="simclr_resnet18w16_d1024_fashion_mnist"),
    # measured by the README main job: `sslzoo eval` (fp32 features; Fashion-MNIST test set; see README)
    metrics=(
        Metric("fashion-mnist", "linear (L2 chosen on a 10% val split of train, refit)", 89.69, _MEASURED_D1024),
        Metric("fashion-mnist", "knn k=20 T=0.07", 87.25, _MEASURED_D1024),
        Metric("fashion-mnist", "knn k=200 T=0.1", 85.59, _MEASURED_D1024),
        Metric("fashion-mnist", "few-shot k=10 (mean of seeds 0,1,2)", 77.58, _MEASURED_D1024),
    ),
    license="MIT",
    paper="https://arxiv.org/abs/2002.05709",
    tags=("bundled", "trained-here", "default"),
))
