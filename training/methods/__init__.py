"""One file per self-supervised method: its loss (importable on its own) and its heads."""
from .simclr import SimCLR, nt_xent_loss

METHODS = {"simclr": SimCLR}

__all__ = ["METHODS", "SimCLR", "nt_xent_loss"]
