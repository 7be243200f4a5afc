"""VICReg's reference test: the loss against a plain-Python computation of the paper's formula on
tiny inputs, its terms at their known extremes, and the method class end to end."""
import math

import pytest
import torch

from training.methods import METHODS
from training.methods.vicreg import VICReg, vicreg_loss
from zoo.backbones import build_resnet


def ref_vicreg(a, b, sim=25.0, std=25.0, cov=1.0, gamma=1.0, eps=1e-4):
    n, d = len(a), len(a[0])
    inv = sum((a[i][j] - b[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def centred(z):
        mu = [sum(z[i][j] for i in range(n)) / n for j in range(d)]
        return [[z[i][j] - mu[j] for j in range(d)] for i in range(n)]

    def std_term(z):
        c = centred(z)
        s = [math.sqrt(sum(c[i][j] ** 2 for i in range(n)) / (n - 1) + eps) for j in range(d)]
        return sum(max(0.0, gamma - x) for x in s) / d

    def cov_term(z):
        c = centred(z)
        return sum((sum(c[k][i] * c[k][j] for k in range(n)) / (n - 1)) ** 2
                   for i in range(d) for j in range(d) if i != j) / d

    return sim * inv + std * (std_term(a) + std_term(b)) / 2 + cov * (cov_term(a) + cov_term(b))


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_vicreg_matches_the_formula(scale):
    torch.manual_seed(21)
    z1, z2 = scale * torch.randn(7, 4, dtype=torch.float64), scale * torch.randn(7, 4, dtype=torch.float64)
    expected = ref_vicreg(z1.tolist(), z2.tolist())
    assert vicreg_loss(z1, z2).item() == pytest.approx(expected, rel=1e-5)
    assert vicreg_loss(z1, z2, 2.0, 3.0, 0.5).item() == pytest.approx(
        ref_vicreg(z1.tolist(), z2.tolist(), 2.0, 3.0, 0.5), rel=1e-5)


def test_vicreg_terms_at_their_extremes():
    # identical views, unit-std decorrelated features: every term ~ 0
    q, _ = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64))
    z = q - q.mean(0)
    z = z / z.std(0)
    assert vicreg_loss(z, z).item() < 1e-3
    # collapse (every row the same): no invariance or covariance cost, the variance hinge is gamma each
    c = torch.ones(16, 8)
    assert vicreg_loss(c, c).item() == pytest.approx(25.0 * (1 - math.sqrt(1e-4)), rel=1e-6)
    with pytest.raises(ValueError, match="vicreg_loss needs two"):
        vicreg_loss(torch.zeros(1, 4), torch.zeros(1, 4))


def test_vicreg_is_registered_and_trains_on_a_fixed_batch():
    assert METHODS["vicreg"] is VICReg and VICReg.cpu_recipe == "vicreg_fashion_mnist_cpu"
    torch.manual_seed(22)
    model = VICReg(build_resnet("resnet18", stem="cifar", width=8, in_chans=1), **VICReg.tiny)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.rand(16, 1, 12, 12)
    losses = []
    for _ in range(12):
        loss = model([x, x.flip(-1)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and min(losses[-3:]) < losses[0], losses
