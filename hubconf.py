"""torch.hub entry points for ssl-zoo, generated from the registry (zoo/registry.py, zoo/models.py).

    torch.hub.load("<org>/ssl-zoo", "simclr_resnet18w16_d1024_fashion_mnist")    # from GitHub
    torch.hub.load(".", "simclr_resnet18w16_d1024_fashion_mnist", source="local")  # from a clone
    torch.hub.load(".", "preprocessor", "simclr_resnet18w16_d1024_fashion_mnist", source="local")

Each entry returns an encoder mapping images [B,C,H,W] to features [B,D], in eval mode, with
``.preprocess``, ``.pretrained_cfg`` and ``.weights_sha256`` attached.
"""
dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub"]

import torch as _torch  # noqa: E402

from zoo.hub import create_model as _create_model  # noqa: E402
from zoo.hub import get_preprocessor as _get_preprocessor  # noqa: E402
from zoo.registry import REGISTRY as _REGISTRY  # noqa: E402
from zoo.registry import suggest as _suggest  # noqa: E402


def _entry(name):
    def entry(pretrained=True, weights=None, **kwargs):
        return _create_model(name, pretrained=pretrained, weights=weights, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = _REGISTRY[name].docstring()
    return entry


for _name in _REGISTRY:
    globals()[_name] = _entry(_name)


def preprocessor(name):
    """The preprocessing of zoo model ``name`` (a callable: PIL image or uint8 tensor -> normalised
    float tensor; resize -> centre crop -> channel conversion -> mean/std)."""
    return _get_preprocessor(name)


# torch.hub answers an unknown entry with "Cannot find callable X in hubconf"; add the closest
# registry names to that message (same exception type, so callers catching RuntimeError still work).
_orig_load_entry = getattr(_torch.hub, "_load_entry_from_hubconf", None)
if _orig_load_entry is not None and not getattr(_orig_load_entry, "_sslzoo", False):
    def _load_entry_with_hint(m, model):
        try:
            return _orig_load_entry(m, model)
        except RuntimeError as e:
            if isinstance(model, str) and "_REGISTRY" in dir(m):
                close = _suggest(model, list(m._REGISTRY) + ["preprocessor"])
                if close:
                    raise RuntimeError(f"{e}; did you mean {', '.join(close)}?") from None
            raise

    _load_entry_with_hint._sslzoo = True
    _torch.hub._load_entry_from_hubconf = _load_entry_with_hint
