"""torch.hub entry points for ssl-zoo, generated from the registry (zoo/registry.py, zoo/models.py).

    torch.hub.load("<org>/ssl-zoo", "simclr_resnet18w16_d1024_fashion_mnist")    # from GitHub
    torch.hub.load(".", "simclr_resnet18w16_d1024_fashion_mnist", source="local")  # from a clone
    torch.hub.load(".", "preprocessor", "simclr_resnet18w16_d1024_fashion_mnist", source="local")

Each entry returns an encoder mapping images [B,C,H,W] to features [B,D], in eval mode, with
``.preprocess``, ``.pretrained_cfg`` and ``.weights_sha256`` attached.

A thin shell: nothing here but one function per registry entry. torch.hub offers no hook for an
unknown entry name (it answers "Cannot find callable X in hubconf"), so "did you mean" lives in
``sslzoo info NAME`` and ``zoo.hub.create_model(NAME)``; this file patches nothing.
"""
dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub"]

from zoo.hub import create_model as _create_model  # noqa: E402
from zoo.hub import get_preprocessor as _get_preprocessor  # noqa: E402
from zoo.registry import REGISTRY as _REGISTRY  # noqa: E402


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
