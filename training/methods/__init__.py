"""One file per self-supervised method: its loss (importable on its own) and its heads.

``METHODS`` maps the recipe's ``method.name`` to the model class; the class's keyword arguments
are the recipe's ``method.*`` fields. See :mod:`training.methods.common` for the interface the
trainer uses (``forward(views) -> loss``, ``n_views``, ``multicrop``, step hooks).

``METHODS`` is derived: every module of this package is imported (in name order) and each method
class registers itself with :func:`~training.methods.common.register_method`, so adding a method
is adding its file (plus its recipe and its reference test); the imports below are conveniences.
:func:`method_rows` gives the method table (README, ``--methods all``).
"""
import importlib
import pkgutil

from .barlow import BarlowTwins, barlow_twins_loss
from .byol import BYOL, byol_loss
from .cissl import CISSL, cissl_loss
from .common import MomentumMethod, cosine_momentum, ema_update_, register_method, registered_methods
from .dcl import DCL, debiased_contrastive_loss
from .dino import DINO, DINOLoss, dino_loss
from .dissl import DISSL, dissl_loss, marginal_entropy
from .mocov2 import KeyQueue, MoCoV2, moco_loss
from .simclr import SimCLR, nt_xent_loss
from .simsiam import SimSiam, simsiam_loss

#: modules of this package that hold shared pieces, not methods
_SHARED = ("common", "heads")

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod not in _SHARED and not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")

#: recipe ``method.name`` -> method class, in table order (``position``, then name)
METHODS: dict = registered_methods()


def method_rows() -> list[dict]:
    """The method table, one row per registered method in ``METHODS`` order: ``{"name": recipe
    method.name, "display_name": ..., "paper": ..., "cpu_recipe": the Fashion-MNIST CPU recipe}``."""
    return [{"name": name, "display_name": cls.display_name, "summary": cls.summary, "losses": cls.losses,
             "paper": cls.paper, "cpu_recipe": cls.cpu_recipe, "module": cls.__module__}
            for name, cls in METHODS.items()]


def methods_markdown() -> str:
    """:func:`method_rows` as a Markdown table (header + one line per method, no trailing newline)."""
    lines = ["| `method.name` | method | loss function | paper | CPU recipe |", "|---|---|---|---|---|"]
    lines += [f"| `{r['name']}` | {r['summary']} | {', '.join(f'`{x}`' for x in r['losses'])} | {r['paper']} | "
              f"`{r['cpu_recipe']}` |" for r in method_rows()]
    return "\n".join(lines)


__all__ = [
    "BYOL",
    "CISSL",
    "DCL",
    "DINO",
    "DISSL",
    "METHODS",
    "MomentumMethod",
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
    "method_rows",
    "methods_markdown",
    "moco_loss",
    "nt_xent_loss",
    "register_method",
    "registered_methods",
    "simsiam_loss",
]
