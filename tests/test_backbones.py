import pytest
import torch

from zoo.backbones import BottleneckExpand, build_resnet


@pytest.mark.parametrize("arch,width,dim", [("resnet18", 64, 512), ("resnet34", 16, 128), ("resnet50", 16, 512)])
def test_feature_dim_and_output(arch, width, dim):
    net = build_resnet(arch, width=width).eval()
    assert net.feature_dim == dim
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, dim)
    assert isinstance(net.fc, torch.nn.Identity)


def test_resnet50_default_matches_torchvision_keys_and_shapes():
    import torchvision

    ours = build_resnet("resnet50").state_dict()
    ref = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    assert ours.keys() == ref.keys()
    assert all(ours[k].shape == ref[k].shape for k in ref)


def test_cifar_stem_variants():
    net = build_resnet("resnet18", stem="cifar", stem_padding=2, maxpool=False, width=8, in_chans=1)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.padding == (2, 2)
    assert net.conv1.in_channels == 1
    assert isinstance(net.maxpool, torch.nn.Identity)
    # no downsampling in the stem: a 28 px input reaches layer4 at 4x4 (30 px with padding 2 -> 4)
    feats = {}
    net.layer4.register_forward_hook(lambda m, i, o: feats.update(l4=o.shape))
    net.eval()(torch.randn(1, 1, 28, 28))
    assert feats["l4"][-1] == 4
    kept = build_resnet("resnet18", stem="cifar", maxpool=True, width=8)
    assert isinstance(kept.maxpool, torch.nn.MaxPool2d)


def test_bad_arch_and_stem():
    with pytest.raises(ValueError, match="unknown arch"):
        build_resnet("resnet19")
    with pytest.raises(ValueError, match="unknown stem"):
        build_resnet("resnet18", stem="vit")


def test_dissl_expansion_block_tiles_identity():
    blk = BottleneckExpand(8, 4, 32).eval()
    for m in (blk.bn3,):
        torch.nn.init.zeros_(m.weight)  # residual branch off -> output = relu(tiled input)
        torch.nn.init.zeros_(m.bias)
    x = torch.randn(2, 8, 3, 3).relu()
    y = blk(x)
    assert y.shape == (2, 32, 3, 3)
    # channel c of the output is channel c % 8 of the input (whole-block tiling, not interleaving)
    torch.testing.assert_close(y[:, 8:16], x)
    torch.testing.assert_close(y[:, 24:32], x)


def test_dissl_resnet50_d8192_layout():
    net = build_resnet("resnet50", expand_dim=8192)
    assert net.feature_dim == 8192
    keys = net.state_dict().keys()
    assert "avgpool.0.conv1.weight" in keys and "avgpool.0.bn3.running_var" in keys
    assert net.state_dict()["avgpool.0.conv3.weight"].shape == (8192, 512, 1, 1)
