"""Every method's loss against a plain-Python reference (explicit loops over rows, pairs and classes,
float64 via ``math``), plus the invariants each method depends on: stop-gradients, EMA updates,
queues, centring, multi-crop routing, and that the loss goes down on a fixed batch."""
import copy
import math

import pytest
import torch

from training.methods import (
    BYOL,
    CISSL,
    DCL,
    DINO,
    DISSL,
    METHODS,
    BarlowTwins,
    DINOLoss,
    KeyQueue,
    MoCoV2,
    SimSiam,
    barlow_twins_loss,
    byol_loss,
    cissl_loss,
    cosine_momentum,
    debiased_contrastive_loss,
    dino_loss,
    dissl_loss,
    ema_update_,
    marginal_entropy,
    moco_loss,
    nt_xent_loss,
    simsiam_loss,
)
from zoo.backbones import build_resnet


# ----------------------------------------------------------------------------- plain-Python helpers
def rows(t):
    return [[float(v) for v in r] for r in t.detach().double()]


def unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def softmax(v, temp=1.0):
    m = max(v)
    e = [math.exp((a - m) / temp) for a in v]
    s = sum(e)
    return [a / s for a in e]


def log_softmax(v, temp=1.0):
    m = max(a / temp for a in v)
    lse = m + math.log(sum(math.exp(a / temp - m) for a in v))
    return [a / temp - lse for a in v]


def tiny_backbone(width=4):
    return build_resnet("resnet18", stem="cifar", width=width, in_chans=1)


TINY = {name: cls.tiny for name, cls in METHODS.items()}  # each method's smoke settings, from its registration


def test_every_method_is_registered_with_tiny_settings():
    assert all(TINY[name] for name in METHODS), [name for name in METHODS if not TINY[name]]


# ----------------------------------------------------------------------------- DCL
def ref_dcl(z, t, tau_plus, clamp=True):
    u = [unit(r) for r in rows(z)]
    n = len(u)
    b, big_n = n // 2, n - 2
    total, clamped = 0.0, 0
    for i in range(n):
        p = (i + b) % n
        pos = math.exp(dot(u[i], u[p]) / t)
        neg = sum(math.exp(dot(u[i], u[j]) / t) for j in range(n) if j not in (i, p))
        ng = (-tau_plus * big_n * pos + neg) / (1 - tau_plus)
        if clamp and ng < big_n * math.exp(-1 / t):
            ng, clamped = big_n * math.exp(-1 / t), clamped + 1
        total += -math.log(pos / (pos + ng))
    return total / n, clamped


@pytest.mark.parametrize("t,tau_plus", [(0.5, 0.1), (0.2, 0.05), (0.5, 0.0), (0.1, 0.3)])
def test_dcl_matches_reference(t, tau_plus):
    torch.manual_seed(0)
    z = torch.randn(10, 6)
    expected, _ = ref_dcl(z, t, tau_plus)
    assert debiased_contrastive_loss(z, t, tau_plus).item() == pytest.approx(expected, rel=1e-5)


def test_dcl_clamp_is_the_n_exp_minus_one_over_t_floor():
    # views nearly identical and negatives spread: the debiased estimate goes below N e^{-1/t}
    torch.manual_seed(1)
    z1 = torch.randn(6, 4)
    z = torch.cat([z1, z1 + 0.01 * torch.randn(6, 4)])
    expected, clamped = ref_dcl(z, 0.5, 0.9)
    assert clamped > 0  # the floor is really exercised
    assert debiased_contrastive_loss(z, 0.5, 0.9).item() == pytest.approx(expected, rel=1e-5)
    unclamped = debiased_contrastive_loss(z, 0.5, 0.9, clamp=False)
    assert not torch.isfinite(unclamped) or unclamped.item() != pytest.approx(expected, rel=1e-3)


def test_dcl_tau_plus_zero_is_nt_xent():
    torch.manual_seed(2)
    for t in (0.5, 0.2, 0.07):
        z = torch.randn(16, 8)
        assert debiased_contrastive_loss(z, t, 0.0).item() == pytest.approx(nt_xent_loss(z, t).item(), rel=1e-5)


def test_dcl_small_temperature_is_finite_and_bad_tau_plus_refused():
    z = torch.randn(8, 4)
    assert torch.isfinite(debiased_contrastive_loss(z, 0.01, 0.1))
    with pytest.raises(ValueError, match="tau_plus"):
        debiased_contrastive_loss(z, 0.5, 1.0)
    with pytest.raises(ValueError, match="tau_plus"):
        DCL(tiny_backbone(), tau_plus=-0.1)


# ----------------------------------------------------------------------------- CISSL
def ref_cissl(s, t, temp):
    su, tu = [unit(r) for r in rows(s)], [unit(r) for r in rows(t)]
    n = len(su)
    total = 0.0
    for i in range(n):
        lq = log_softmax([dot(su[i], tu[j]) / temp for j in range(n)])
        total += -(lq[i] + lq[(i + n // 2) % n]) / 2
    return total / n


def test_cissl_matches_reference_and_keeps_the_diagonal():
    torch.manual_seed(3)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    assert cissl_loss(s, t, 0.07).item() == pytest.approx(ref_cissl(s, t, 0.07), rel=1e-5)
    # with student == teacher and both views equal, the two positives are the two best candidates:
    # the loss is at least log 2 (probability 1/2 each at best) and close to it when T is small
    z1 = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    z = torch.cat([z1, z1])
    assert cissl_loss(z, z, 0.01).item() == pytest.approx(math.log(2), abs=1e-3)


def test_cissl_heads_linear_student_mlp_teacher():
    m = CISSL(tiny_backbone(), proj_hidden_dim=16, proj_dim=8)
    assert [type(x).__name__ for x in m.student] == ["Linear", "BatchNorm1d"]
    assert any(isinstance(x, torch.nn.ReLU) for x in m.teacher)
    assert isinstance(m.teacher[-1], torch.nn.BatchNorm1d)


# ----------------------------------------------------------------------------- DISSL
def ref_dissl(tl, sl, lam, beta, tt, ts):
    p = [[softmax(r, tt) for r in rows(x)] for x in tl]
    logp = [[log_softmax(r, tt) for r in rows(x)] for x in tl]
    logq = [[log_softmax(r, ts) for r in rows(x)] for x in sl]
    nb, nc = len(p[0]), len(p[0][0])

    def ce(a, b):  # mean over the batch of -sum_c a log b
        return sum(-sum(a[k][c] * b[k][c] for c in range(nc)) for k in range(nb)) / nb

    hs = []
    for pi in p:
        marg = [sum(pi[k][c] for k in range(nb)) / nb for c in range(nc)]
        hs.append(-sum(m * math.log(m) for m in marg if m > 0))
    det = [ce(p[i], logp[j]) for i in range(len(p)) for j in range(len(p)) if i != j]
    dist = [ce(p[i], logq[j]) for i in range(len(p)) for j in range(len(logq)) if i != j]
    return sum(dist) / len(dist) - lam * sum(hs) / len(hs) + beta * sum(det) / len(det)


def test_dissl_matches_reference_with_multicrop():
    torch.manual_seed(4)
    tl = [torch.randn(3, 5) for _ in range(2)]
    sl = [torch.randn(3, 5) for _ in range(4)]  # 2 large + 2 small crops for the student
    got = dissl_loss(tl, sl, lam=2.3, beta=0.8, teacher_temp=0.5, student_temp=1.0)
    assert got.item() == pytest.approx(ref_dissl(tl, sl, 2.3, 0.8, 0.5, 1.0), rel=1e-5)


def test_dissl_marginal_entropy_is_maximal_for_uniform_assignment():
    c = 6
    uniform = torch.full((4, c), 1 / c)
    balanced = torch.eye(c)  # deterministic but balanced: marginal still uniform
    collapsed = torch.zeros(4, c)
    collapsed[:, 0] = 1
    random = torch.softmax(torch.randn(5, c) * 3, dim=1)
    assert marginal_entropy(uniform).item() == pytest.approx(math.log(c), rel=1e-6)
    assert marginal_entropy(balanced).item() == pytest.approx(math.log(c), rel=1e-6)
    assert marginal_entropy(collapsed).item() == pytest.approx(0.0, abs=1e-7)
    assert marginal_entropy(random).item() < math.log(c)


def test_dissl_terms_have_the_right_sign():
    c, b, big = 4, 4, 20.0
    onehot = torch.eye(c)[:b] * big
    collapsed = torch.zeros(b, c)
    collapsed[:, 0] = big
    shifted = torch.eye(c)[[1, 2, 3, 0]] * big
    kw = {"lam": 2.3, "beta": 0.8, "teacher_temp": 0.5, "student_temp": 1.0}
    balanced = dissl_loss([onehot, onehot], [onehot, onehot], **kw)
    # collapse is penalised by the maximality term: about lambda * log C more
    assert dissl_loss([collapsed, collapsed], [collapsed, collapsed], **kw).item() == pytest.approx(
        balanced.item() + 2.3 * math.log(c), abs=1e-3)
    # views assigned to different classes: the invariance (teacher agreement) term goes up
    assert dissl_loss([onehot, shifted], [onehot, shifted], **kw).item() > balanced.item() + 5
    _, terms = dissl_loss([onehot, shifted], [onehot, shifted], return_terms=True, **kw)
    assert terms["CE_det_inv"] > 0 and terms["CE_distill"] > 0 and terms["H_M"] > 0


def test_dissl_teacher_is_not_detached_and_sees_only_large_crops():
    torch.manual_seed(5)
    m = DISSL(tiny_backbone(), **TINY["dissl"])
    seen = []
    m.teacher.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    views = [torch.rand(4, 1, 12, 12), torch.rand(4, 1, 12, 12), torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)]
    m(views).backward()
    assert seen == [8]  # the 2 large crops x 4 images; the small crops never reach the teacher
    assert m.teacher[0].weight.grad is not None and m.teacher[0].weight.grad.abs().sum() > 0
    # distillation alone (lambda = beta = 0) still trains the teacher: no stop-gradient
    t = torch.randn(4, 6, requires_grad=True)
    dissl_loss([t, t.roll(1, 0)], [torch.randn(4, 6)] * 2, lam=0.0, beta=0.0).backward()
    assert t.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- MoCo v2
def test_moco_loss_matches_reference_and_keys_get_no_gradient():
    torch.manual_seed(6)
    q = torch.randn(3, 4, requires_grad=True)
    k = torch.randn(3, 4, requires_grad=True)
    queue = torch.randn(5, 4)
    qs, ks, qu = [unit(r) for r in rows(q)], [unit(r) for r in rows(k)], [unit(r) for r in rows(queue)]
    expected = 0.0
    for i in range(3):
        logits = [dot(qs[i], ks[i]) / 0.2] + [dot(qs[i], n) / 0.2 for n in qu]
        expected += -log_softmax(logits)[0]
    loss = moco_loss(q, k, queue, 0.2)
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)
    loss.backward()
    assert q.grad is not None and k.grad is None


def test_key_queue_enqueues_fifo_with_wrap_around():
    torch.manual_seed(7)
    qu = KeyQueue(5, 2)
    start = qu.keys.clone()
    a = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    qu.enqueue(a)
    assert int(qu.ptr) == 3
    assert torch.allclose(qu.keys[:3], torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]))
    assert torch.equal(qu.keys[3:], start[3:])
    b = torch.tensor([[0.0, -1.0], [-1.0, 0.0], [0.0, 5.0]])
    qu.enqueue(b)  # slots 3, 4, then 0 (the oldest)
    assert int(qu.ptr) == 1
    assert torch.allclose(qu.keys, torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="queue_size"):
        qu.enqueue(torch.randn(6, 2))


def test_moco_momentum_encoder_gets_no_gradient_and_follows_the_ema():
    torch.manual_seed(8)
    m = MoCoV2(tiny_backbone(), proj_hidden_dim=16, proj_dim=8, queue_size=64, momentum_base=0.9,
               momentum_final=0.9)
    views = [torch.rand(4, 1, 12, 12), torch.rand(4, 1, 12, 12)]
    queue_before = m.queue.keys.clone()
    m(views).backward()
    assert all(p.grad is None and not p.requires_grad for p in m.momentum_backbone.parameters())
    assert all(p.grad is None for p in m.momentum_head.parameters())
    assert m.backbone.conv1.weight.grad is not None
    assert torch.equal(m.queue.keys, queue_before)  # nothing enqueued before the optimiser step
    with torch.no_grad():
        for p in list(m.backbone.parameters()) + list(m.head.parameters()):
            p.add_(1.0)
    old = [p.clone() for p in m.momentum_backbone.parameters()]
    online = [p.clone() for p in m.backbone.parameters()]
    m.on_train_step(0, 10)
    for t, o, new in zip(old, online, m.momentum_backbone.parameters()):
        assert torch.allclose(new, 0.9 * t + 0.1 * o, atol=1e-6)
    assert int(m.queue.ptr) == 4 and not torch.equal(m.queue.keys[:4], queue_before[:4])
    assert torch.allclose(m.queue.keys[:4].norm(dim=1), torch.ones(4))


# ----------------------------------------------------------------------------- BYOL / SimSiam
def test_byol_loss_matches_reference():
    torch.manual_seed(9)
    p, z = torch.randn(4, 6), torch.randn(4, 6)
    expected = sum(2 - 2 * dot(unit(a), unit(b)) for a, b in zip(rows(p), rows(z))) / 4
    assert byol_loss(p, z).item() == pytest.approx(expected, rel=1e-5)


def test_byol_target_gets_no_gradient_and_ema_update():
    torch.manual_seed(10)
    m = BYOL(tiny_backbone(), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, momentum_base=0.99,
             momentum_final=1.0)
    m([torch.rand(4, 1, 12, 12), torch.rand(4, 1, 12, 12)]).backward()
    target = list(m.target_backbone.parameters()) + list(m.target_projector.parameters())
    assert all(p.grad is None and not p.requires_grad for p in target)
    assert m.predictor[0].weight.grad is not None and m.backbone.conv1.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.mul_(2.0)
    old = [p.clone() for p in m.target_backbone.parameters()]
    online = [p.clone() for p in m.backbone.parameters()]
    mom = m.momentum(5, 10)
    assert mom == pytest.approx(1 - 0.01 * (math.cos(math.pi * 0.5) + 1) / 2)
    m.on_train_step(5, 10)
    for t, o, new in zip(old, online, m.target_backbone.parameters()):
        assert torch.allclose(new, mom * t + (1 - mom) * o, atol=1e-6)


def test_simsiam_loss_reference_and_stop_gradient():
    torch.manual_seed(11)
    p = torch.randn(4, 6, requires_grad=True)
    z = torch.randn(4, 6, requires_grad=True)
    expected = -sum(dot(unit(a), unit(b)) for a, b in zip(rows(p), rows(z))) / 4
    loss = simsiam_loss(p, z)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert p.grad is not None and z.grad is None
    m = SimSiam(tiny_backbone(), **TINY["simsiam"])
    assert isinstance(m.projector[-1], torch.nn.BatchNorm1d)  # the projector output is batch-normalised


# ----------------------------------------------------------------------------- Barlow Twins
def test_barlow_twins_matches_reference():
    torch.manual_seed(12)
    z1, z2 = torch.randn(6, 3), torch.randn(6, 3)
    a, b = rows(z1), rows(z2)
    n, d, eps = 6, 3, 1e-5

    def std(cols):
        out = []
        for j in range(d):
            col = [r[j] for r in cols]
            mu = sum(col) / n
            var = sum((x - mu) ** 2 for x in col) / n
            out.append([(x - mu) / math.sqrt(var + eps) for x in col])
        return out  # [d][n]

    sa, sb = std(a), std(b)
    c = [[sum(sa[i][k] * sb[j][k] for k in range(n)) / n for j in range(d)] for i in range(d)]
    expected = sum((1 - c[i][i]) ** 2 for i in range(d)) + 0.0051 * sum(
        c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    assert barlow_twins_loss(z1, z2, 0.0051).item() == pytest.approx(expected, rel=1e-5)
    # identical views with decorrelated features: cross-correlation = identity, loss ~ 0
    q, _ = torch.linalg.qr(torch.randn(8, 3))
    z = q * math.sqrt(8) - (q * math.sqrt(8)).mean(0)
    assert barlow_twins_loss(z, z).item() < 0.05


# ----------------------------------------------------------------------------- DINO
def test_dino_loss_matches_reference():
    torch.manual_seed(13)
    s = [torch.randn(3, 5) for _ in range(4)]
    t = [torch.randn(3, 5) for _ in range(2)]
    center = torch.randn(1, 5)
    c = [float(v) for v in center[0]]
    pt = [[softmax([x - cc for x, cc in zip(r, c)], 0.04) for r in rows(x)] for x in t]
    ls = [[log_softmax(r, 0.1) for r in rows(x)] for x in s]
    terms = [sum(-sum(pt[i][k][m] * ls[j][k][m] for m in range(5)) for k in range(3)) / 3
             for i in range(2) for j in range(4) if j != i]
    assert dino_loss(s, t, center, 0.04, 0.1).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_dino_center_update():
    torch.manual_seed(14)
    loss = DINOLoss(5, center_momentum=0.9)
    loss.center.copy_(torch.randn(1, 5))
    c0 = loss.center.clone()
    t = [torch.randn(3, 5), torch.randn(3, 5)]
    loss([torch.randn(3, 5)] * 2, t)
    assert torch.allclose(loss.center, 0.9 * c0 + 0.1 * torch.cat(t).mean(0, keepdim=True), atol=1e-6)
    loss.eval()
    c1 = loss.center.clone()
    loss([torch.randn(3, 5)] * 2, t)
    assert torch.equal(loss.center, c1)  # evaluation leaves the centre alone


def test_dino_teacher_sees_large_crops_only_and_schedules():
    torch.manual_seed(15)
    m = DINO(tiny_backbone(), out_dim=32, proj_hidden_dim=16, bottleneck_dim=8, freeze_last_layer_epochs=1,
             warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=2)
    teacher_in, student_in = [], []
    m.teacher_backbone.register_forward_hook(lambda mod, inp, out: teacher_in.append(tuple(inp[0].shape)))
    m.backbone.register_forward_hook(lambda mod, inp, out: student_in.append(tuple(inp[0].shape)))
    views = [torch.rand(4, 1, 12, 12)] * 2 + [torch.rand(4, 1, 8, 8)] * 3
    m.on_step_start(0, 100, steps_per_epoch=10)
    assert m.current_teacher_temp() == pytest.approx(0.04)
    m(views).backward()
    assert teacher_in == [(8, 1, 12, 12)]
    assert student_in == [(8, 1, 12, 12), (12, 1, 8, 8)]
    assert m.head.last_layer.weight.grad is None  # frozen during the first epoch
    assert m.head.mlp[0].weight.grad is not None
    assert all(p.grad is None for p in m.teacher_head.parameters())
    m.zero_grad()
    m.on_step_start(10, 100, steps_per_epoch=10)
    assert m.current_teacher_temp() == pytest.approx(0.055)
    m(views).backward()
    assert m.head.last_layer.weight.grad is not None
    m.on_step_start(30, 100, steps_per_epoch=10)
    assert m.current_teacher_temp() == pytest.approx(0.07)
    assert m.export_backbone() is m.teacher_backbone
    with pytest.raises(ValueError, match="DINO takes 2 large crops"):
        m(views[:1])


# ----------------------------------------------------------------------------- shared pieces
def test_ema_update_and_cosine_momentum():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    a0 = copy.deepcopy(a)
    ema_update_(a, b, 0.75)
    for pa, p0, pb in zip(a.parameters(), a0.parameters(), b.parameters()):
        assert torch.allclose(pa, 0.75 * p0 + 0.25 * pb)
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(100, 100, 0.99, 0.999) == pytest.approx(0.999)


def test_two_view_methods_refuse_small_crops():
    m = BarlowTwins(tiny_backbone(), **TINY["barlow"])
    with pytest.raises(ValueError, match="takes 2 large crops, got 3"):
        m([torch.rand(4, 1, 12, 12)] * 3)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_decreases_on_a_fixed_batch(name):
    torch.manual_seed(16)
    model = METHODS[name](tiny_backbone(8), **TINY[name])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    x = torch.rand(16, 1, 12, 12)
    views = [x, x.flip(-1)]
    if getattr(model, "multicrop", False):
        views += [x[..., 2:10, 2:10], x[..., 4:12, 0:8]]
    losses = []
    for step in range(12):
        if hasattr(model, "on_step_start"):
            model.on_step_start(step, 12, 1)
        loss = model(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if name == "mocov2":
            # on a fixed batch the queue would fill with keys of these very images, i.e. with copies
            # of the positives, and the loss would rightly rise; keep the random queue instead
            model._pending = None
        if hasattr(model, "on_train_step"):
            model.on_train_step(step, 12)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[-3:]) < losses[0], losses


def test_the_method_registry_describes_real_code():
    """Each registered method names loss functions that exist in its module and a CPU recipe that
    exists and trains that method; the README table and --methods all come from these rows."""
    import importlib
    from pathlib import Path

    import yaml

    from training.methods import METHODS, method_rows

    rows = method_rows()
    assert [r["name"] for r in rows] == list(METHODS) and len(rows) >= 9
    recipes = Path(__file__).resolve().parent.parent / "training" / "recipes"
    for r in rows:
        module = importlib.import_module(r["module"])
        assert r["losses"] and all(callable(getattr(module, fn)) for fn in r["losses"]), r
        recipe = yaml.safe_load((recipes / f"{r['cpu_recipe']}.yaml").read_text())
        assert recipe["method"]["name"] == r["name"], r
