"""One file per self-supervised method: its loss (importable on its own) and its heads.

``METHODS`` maps the recipe's ``method.name`` to the model class; the class's keyword arguments
are the recipe's ``method.*`` fields. See :mod:`training.methods.common` for the interface the
trainer uses (``forward(views) -> loss``, ``n_views``, ``multicrop``, step hooks).
"""
from .barlow import BarlowTwins, barlow_twins_loss
from .byol import BYOL, byol_loss
from .cissl import CISSL, cissl_loss
from .common import cosine_momentum, ema_update_
from .dcl import DCL, debiased_contrastive_loss
from .dino import DINO, DINOLoss, dino_loss
from .dissl import DISSL, dissl_loss, marginal_entropy
from .mocov2 import KeyQueue, MoCoV2, moco_loss
from .simclr import SimCLR, nt_xent_loss
from .simsiam import SimSiam, simsiam_loss

METHODS = {
    "simclr": SimCLR,
    "dcl": DCL,
    "cissl": CISSL,
    "dissl": DISSL,
    "mocov2": MoCoV2,
    "byol": BYOL,
    "simsiam": SimSiam,
    "barlow": BarlowTwins,
    "dino": DINO,
}

__all__ = [
    "BYOL",
    "CISSL",
    "DCL",
    "DINO",
    "DISSL",
    "METHODS",
    "BarlowTwins",
    "DINOLoss",
    "KeyQueue",
    "MoCoV2",
    "SimCLR",
    "SimSiam",
    "barlow_twins_loss",
    "byol_loss",
    "cissl_loss",
    "cosine_momentum",
    "debiased_contrastive_loss",
    "dino_loss",
    "dissl_loss",
    "ema_update_",
    "marginal_entropy",
    "moco_loss",
    "nt_xent_loss",
    "simsiam_loss",
]
