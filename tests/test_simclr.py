import math

import pytest
import torch

from training.methods.simclr import SimCLR, nt_xent_loss
from zoo.backbones import build_resnet


def test_nt_xent_by_hand():
    # B = 2: rows 0,1 (view 1), rows 2,3 (view 2); unit vectors chosen so cosines are simple
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, -1.0]])
    t = 0.5
    # cos matrix: row0: [., 0, 1, 0]; row1: [0, ., 0, -1]; row2: [1, 0, ., 0]; row3: [0, -1, 0, .]
    e = math.exp
    l0 = -math.log(e(1 / t) / (e(0) + e(1 / t) + e(0)))
    l1 = -math.log(e(-1 / t) / (e(0) + e(0) + e(-1 / t)))
    l2 = l0
    l3 = l1
    expected = (l0 + l1 + l2 + l3) / 4
    assert nt_xent_loss(z, t).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_scale_invariant_and_odd_rows():
    z = torch.randn(6, 4)
    assert nt_xent_loss(z * 3.0).item() == pytest.approx(nt_xent_loss(z).item(), rel=1e-5)
    with pytest.raises(ValueError, match="even"):
        nt_xent_loss(torch.randn(5, 4))


def test_loss_decreases_on_fixed_batch():
    torch.manual_seed(0)
    model = SimCLR(build_resnet("resnet18", stem="cifar", width=8, in_chans=1), proj_hidden_dim=32, proj_dim=16,
                   temperature=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.rand(16, 1, 16, 16)
    views = [x, x.flip(-1)]
    losses = []
    for _ in range(15):
        loss = model(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
