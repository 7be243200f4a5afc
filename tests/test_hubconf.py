"""torch.hub from a clone, with no network: every registry entry is an entry point, and the
bundled model's features are the ones the evaluation uses."""
import inspect
from pathlib import Path

import pytest
import torch

import hubconf
from zoo.registry import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = "simclr_resnet18w16_d1024_fashion_mnist"


def test_entry_points_are_the_registry():
    public = {n for n, f in vars(hubconf).items() if callable(f) and not n.startswith("_")
              and inspect.isfunction(f)}
    assert public == set(REGISTRY) | {"preprocessor"}
    assert hubconf.dependencies[:2] == ["torch", "torchvision"]
    doc = getattr(hubconf, BUNDLED).__doc__
    assert "Method: simclr" in doc and f"Feature dim: {REGISTRY[BUNDLED].feature_dim}" in doc and "Headline:" in doc
    assert REGISTRY[BUNDLED].feature_dim == 1024


def test_unknown_entry_suggests_closest_without_patching_torch_hub():
    """torch.hub has no hook for unknown names: hubconf leaves torch.hub untouched, and the suggestion
    comes from zoo.hub.create_model (what every entry calls) and from `sslzoo info`."""
    before = torch.hub._load_entry_from_hubconf
    with pytest.raises(RuntimeError, match="Cannot find callable"):
        torch.hub.load(str(ROOT), "simclr_resnet18w16_d1024_fashion_mnst", source="local")
    assert torch.hub._load_entry_from_hubconf is before

    from zoo.hub import create_model
    from zoo.registry import UnknownModel

    with pytest.raises(UnknownModel, match=f"did you mean {BUNDLED}"):
        create_model("simclr_resnet18w16_d1024_fashion_mnst")
    with pytest.raises(UnknownModel, match="did you mean simclr_resnet18w16_fashion_mnist"):
        create_model("simclr_resnet18w16_fashion_mnst")


def test_bundled_model_loads_offline_and_matches_eval_features(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = torch.hub.load(str(ROOT), BUNDLED, source="local", pretrained=True)
    rec = REGISTRY[BUNDLED]
    assert model.weights_sha256 == rec.weights.sha256  # the pinned file, nothing else
    pre = torch.hub.load(str(ROOT), "preprocessor", BUNDLED, source="local")
    imgs = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        feats = model(pre(imgs))
    assert feats.shape == (5, rec.feature_dim)

    from eval.datasets import ImageSplit
    from eval.features import extract

    split = ImageSplit("synthetic", "test", targets=torch.zeros(5, dtype=torch.int64).numpy(), classes=["a"],
                       images=imgs.permute(0, 2, 3, 1).numpy())
    ev, _ = extract(model, split, cache=False)
    torch.testing.assert_close(ev, feats, rtol=0, atol=0)
