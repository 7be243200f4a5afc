"""The research encoders whose weights come from upstream checkpoints (converted by :mod:`zoo.convert`).

Sources (read from the upstream code; see ``reference/seeds.md``):

* DISSL (Dubois et al., 2022), YannDubs/Invariant-Self-Supervised-Learning: 7 ImageNet ResNet-50s, plain
  torch-hub state dicts on the GitHub release ``v1.0.0-alpha``. The ``d8192`` models insert a residual
  bottleneck (2048 -> 512 -> 8192, tiled shortcut) before the average pool. Upstream's hubconf has no entry
  for ``dissl_resnet50_d8192_e100_m6`` although its README lists the model and its file; it is here.
* DCL (Chuang et al., 2020), chingyaoc/DCL: 3 STL10 ResNet-50s (tau_plus 0 / 0.05 / 0.1), ``nn.DataParallel``
  state dicts on Google Drive; conv1 is 3x3 stride 1 padding 1, the max-pool and fc are dropped.
* SimCLR, UvA deep-learning tutorial 17 (phlippe/uvadlc_notebooks): a torchvision ResNet-18 (ImageNet stem)
  trained on STL10 unlabeled, saved as a PyTorch Lightning checkpoint (``convnet.*``).
* SimCLR, the same tutorial's JAX/Flax notebook (a separate training run, its own numbers): a flaxmodels
  ResNet-18 (torchvision's layout in NHWC) saved as a Flax msgpack checkpoint ``{params, batch_stats}``.

None of these files could be downloaded where this registry was written, so no sha256 is pinned:
``WeightSource.verified`` is False, ``pretrained=True`` downloads and converts the upstream file and warns
that it is unverified, and the card says so. Once someone runs ``sslzoo convert`` + ``sslzoo publish``, the
HF mirror (repo, revision, sha256) goes into the record and the weights become pinned.

Every number below is an **upstream claim** with the upstream protocol named; none was reproduced here.
"""
from __future__ import annotations

from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .records import Metric, ModelRecord, WeightSource

RECORDS: list[ModelRecord] = []  # in registry order

# ----------------------------------------------------------------------------- DISSL (ImageNet)

DISSL_RELEASE = "https://github.com/YannDubs/Invariant-Self-Supervised-Learning/releases/download/v1.0.0-alpha"
DISSL_SRC = "upstream claim: YannDubs/Invariant-Self-Supervised-Learning README (ImageNet table, commit d4548c4)"
DISSL_LINEAR = ("linear probe on frozen features, ImageNet-1k (upstream VISSL linear eval; "
                "the exact run config is not published)")
DISSL_PRE = Preprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")
_CROPS = {"m2": "2x224", "m6": "2x160 + 4x96", "m8": "2x224 + 6x96"}

# (dim, epochs, crops, top-1, top-5); the README table, ResNet-50, batch 2560
_DISSL = [
    (None, 100, "m2", 66.9, 87.5),
    (8192, 100, "m2", 68.9, 88.5),
    (8192, 100, "m6", 70.7, 88.5),
    (None, 400, "m2", 71.1, 90.2),
    (None, 400, "m6", 73.0, 91.3),
    (8192, 400, "m6", 74.0, 91.9),
    (8192, 800, "m8", 73.9, 91.9),
]

for _dim, _ep, _m, _top1, _top5 in _DISSL:
    _name = f"dissl_resnet50_d{_dim}_e{_ep}_{_m}"
    _metrics = [Metric("imagenet", f"{DISSL_LINEAR}; top-1", _top1, DISSL_SRC, split="val"),
                Metric("imagenet", f"{DISSL_LINEAR}; top-5", _top5, DISSL_SRC, split="val")]
    if _name == "dissl_resnet50_dNone_e400_m6":
        _metrics.append(Metric("stl10", "LinearSVC on frozen features, C in logspace(-3,0,7) chosen on the test set "
                                        "(upstream notebook, images upsampled 96->224)", 96.00,
                               "upstream claim: YannDubs/Invariant-Self-Supervised-Learning notebooks/torchhub.ipynb"))
    _expand = (f", then the DISSL expansion block (residual bottleneck 2048->512->{_dim}, tiled shortcut) "
               f"before the average pool") if _dim else ""
    RECORDS.append(ModelRecord(
        name=_name,
        description=(f"DISSL ResNet-50, ImageNet-1k, {_ep} epochs, {_CROPS[_m]} crops, {_dim or 2048}-d "
                     f"representation{_expand}. Upstream torch-hub weights, converted."
                     + (" Upstream's hubconf has no entry for this model (its README lists it)."
                        if _name == "dissl_resnet50_d8192_e100_m6" else "")),
        arch={"arch": "resnet50", "stem": "imagenet", "maxpool": True,
              **({"expand_dim": _dim, "expand_mid": 512} if _dim else {})},
        feature_dim=_dim or 2048,
        method="dissl",
        train_data="ImageNet-1k train (1.28M images, labels unused)",
        preprocess=DISSL_PRE,
        weights=WeightSource(upstream_url=f"{DISSL_RELEASE}/{_name}.torch", upstream_format="dissl-torchhub"),
        recipe=_name,  # training/recipes/: the VISSL configuration, for reproducing it here
        metrics=tuple(_metrics),
        license="MIT",
        paper="https://arxiv.org/abs/2209.06235",
        tags=("upstream", "imagenet"),
    ))

# ----------------------------------------------------------------------------- DCL (STL10)

# DCL's linear.py: Adam 100 epochs on *augmented* 32-px crops of STL10 train with the frozen encoder's BN
# statistics still updating (net.train()); test on 96-px test images; the reported number is a test accuracy.
DCL_LINEAR = ("linear probe (upstream linear.py: Adam, 100 epochs on augmented 32-px crops of STL10 train, "
              "encoder BN statistics updating; 96-px test images; test accuracy reported, no held-out selection)")
DCL_SRC = "upstream claim: chingyaoc/DCL README (model_400-style checkpoints, batch 256, latent dim 128)"
# test transform upstream: ToTensor + Normalize with CIFAR-10 statistics, images kept at 96 px
DCL_PRE = Preprocess(resize=96, crop=96, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
                     interpolation="bilinear")
_DRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"

for _suffix, _tau, _acc, _drive_id, _recipe in [
        ("0", 0.0, 80.15, "1qQE03ztnQCK4dtG-GPwCvF66nq_Mk_mo", "dcl_stl10_biased"),
        ("0p05", 0.05, 81.85, "1pA4Hpcug8tbgH9O6PCu-447vJzxbbR5I", "dcl_stl10_tau005"),
        ("0p1", 0.1, 84.26, "1d8nfGHsHIuJYjU7mHtCtSXf98IbWMFAa", "dcl_stl10")]:
    RECORDS.append(ModelRecord(
        name=f"dcl_resnet50_stl10_tauplus{_suffix}",
        description=(f"Debiased contrastive learning (DCL), tau_plus={_tau}"
                     + (" (i.e. the biased SimCLR-style baseline)" if _tau == 0 else "")
                     + ", ResNet-50 with a 3x3 stride-1 stem and no max-pool, trained on STL10 train+unlabeled "
                       "at 32 px; 2048-d features before the projection head. Upstream DataParallel "
                       "checkpoint, converted."),
        arch={"arch": "resnet50", "stem": "cifar", "stem_padding": 1, "maxpool": False},
        feature_dim=2048,
        method="dcl",
        train_data="STL10 train+unlabeled (105,000 images, labels unused), random-resized crops to 32 px",
        preprocess=DCL_PRE,
        weights=WeightSource(upstream_url=_DRIVE.format(_drive_id), upstream_format="dcl-dataparallel",
                             upstream_note=f"Google Drive file {_drive_id}: large files may answer with a "
                                           f"confirmation page; download it by hand if so and run `sslzoo convert`"),
        recipe=_recipe,
        metrics=(Metric("stl10", DCL_LINEAR, _acc, DCL_SRC),),
        license="MIT",
        paper="https://arxiv.org/abs/2007.00224",
        tags=("upstream", "stl10"),
    ))

# ----------------------------------------------------------------------------- SimCLR, UvA tutorial 17 (STL10)

UVA_SRC = "upstream claim: phlippe/uvadlc_notebooks tutorial17 SimCLR.ipynb (PyTorch notebook outputs)"
RECORDS.append(ModelRecord(
    name="simclr_resnet18_stl10_uva_tutorial",
    description=("SimCLR ResNet-18 (torchvision, ImageNet stem with max-pool) trained on STL10 unlabeled at 96 px for "
                 "500 epochs, from the UvA deep-learning tutorial 17; 512-d features before the MLP head. Upstream "
                 "PyTorch Lightning checkpoint, converted."),
    arch={"arch": "resnet18", "stem": "imagenet", "maxpool": True},
    feature_dim=512,
    method="simclr",
    train_data="STL10 unlabeled (100,000 images, labels unused)",
    preprocess=Preprocess(resize=96, crop=96, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear"),
    weights=WeightSource(upstream_url="https://raw.githubusercontent.com/phlippe/saved_models/main/tutorial17/SimCLR.ckpt",
                         upstream_format="lightning-convnet"),
    recipe="simclr_stl10_uva_tutorial",
    metrics=tuple(Metric("stl10", f"few-shot logistic regression, first k={k} train images per class (upstream: "
                                  f"AdamW 100 epochs, checkpoint with the best test accuracy kept)", v, UVA_SRC)
                  for k, v in ((10, 62.79), (20, 68.60), (50, 74.44), (100, 77.20), (200, 79.06), (500, 81.33))),
    license="MIT",
    paper="https://arxiv.org/abs/2002.05709",
    tags=("upstream", "stl10", "tutorial"),
))

# The JAX notebook (docs/tutorial_notebooks/JAX/tutorial17/SimCLR.ipynb) is a separate training run of the same
# recipe: flaxmodels.ResNet18(output='activations', normalize=False, num_classes=512), saved with
# flax.training.checkpoints.save_checkpoint(target={'params', 'batch_stats'}) (legacy msgpack); features are
# block4_1 mean-pooled; images x/255*2-1 at 96 px. Its logistic regression (LGTrainer): Dense(10) on precomputed
# features of the first k train images per class, optax.adamw lr 1e-3 wd 1e-3, lr x0.1 at 60% and 80% of 100
# epochs, batch 64, evaluated on the test set every 10 epochs and the best test accuracy kept.
UVA_JAX_SRC = "upstream claim: phlippe/uvadlc_notebooks JAX/tutorial17 SimCLR.ipynb (JAX notebook outputs)"
RECORDS.append(ModelRecord(
    name="simclr_resnet18_stl10_uva_tutorial_jax",
    description=("SimCLR ResNet-18 (flaxmodels ResNet18 = torchvision's layout, ImageNet stem with max-pool) trained "
                 "on STL10 unlabeled at 96 px for 500 epochs with JAX/Flax, from the UvA deep-learning tutorial 17 "
                 "(JAX version; a separate run from the PyTorch notebook's model); 512-d features (block4_1 "
                 "mean-pooled) before the MLP head. Upstream Flax msgpack checkpoint, converted. flaxmodels' "
                 "BatchNorm momentum 0.1 (Flax convention) makes the stored running statistics those of the last "
                 "training batches."),
    arch={"arch": "resnet18", "stem": "imagenet", "maxpool": True},
    feature_dim=512,
    method="simclr",
    train_data="STL10 unlabeled (100,000 images, labels unused)",
    preprocess=Preprocess(resize=96, crop=96, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear"),
    weights=WeightSource(
        upstream_url="https://raw.githubusercontent.com/phlippe/saved_models/main/JAX/tutorial17/SimCLR.ckpt",
        upstream_format="flax-msgpack"),
    recipe=None,  # training/recipes/simclr_stl10_uva_tutorial.yaml follows the PyTorch notebook (its augmentations)
    metrics=tuple(Metric("stl10", f"few-shot logistic regression, first k={k} train images per class (upstream JAX "
                                  f"notebook: AdamW 100 epochs, checkpoint with the best test accuracy kept)", v,
                         UVA_JAX_SRC)
                  for k, v in ((10, 62.21), (20, 68.54), (50, 73.65), (100, 76.84), (200, 78.97), (500, 81.05))),
    license="MIT",
    paper="https://arxiv.org/abs/2002.05709",
    tags=("upstream", "stl10", "tutorial", "jax"),
))
