import torch

from training.augment import ViewAugment, color_jitter, gaussian_blur, resized_crop_flip, sample_crop_boxes


def test_crop_boxes_follow_scale_and_ratio():
    g = torch.Generator().manual_seed(0)
    top, left, h, w = sample_crop_boxes(5000, 64, 64, (0.2, 0.6), (0.75, 1.333), g)
    area = h * w / 64 ** 2
    assert (h <= 64).all() and (w <= 64).all() and (top + h <= 64).all() and (left + w <= 64).all()
    assert area.min() >= 0.18 and area.max() <= 0.62  # rounding slack
    assert 0.33 < area.mean() < 0.47  # uniform on [0.2, 0.6] -> mean 0.4
    r = w / h
    assert r.min() > 0.7 and r.max() < 1.42


def test_full_box_is_identity_and_flip_mirrors():
    x = torch.rand(3, 1, 8, 8)
    n = 3
    boxes = (torch.zeros(n), torch.zeros(n), torch.full((n,), 8.0), torch.full((n,), 8.0))
    same = resized_crop_flip(x, boxes, 8)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    flipped = resized_crop_flip(x, boxes, 8, flip=torch.tensor([True, False, True]))
    torch.testing.assert_close(flipped[0], x[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(flipped[1], x[1], atol=1e-5, rtol=0)


def test_crop_picks_the_right_region():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:, 4:] = 1.0  # bottom-right quadrant
    boxes = (torch.tensor([4.0]), torch.tensor([4.0]), torch.tensor([4.0]), torch.tensor([4.0]))
    out = resized_crop_flip(x, boxes, 4)
    torch.testing.assert_close(out, torch.ones(1, 1, 4, 4), atol=1e-5, rtol=0)


def test_jitter_is_per_sample_and_respects_p():
    g = torch.Generator().manual_seed(0)
    x = torch.full((400, 1, 4, 4), 0.5)
    out = color_jitter(x, brightness=0.4, contrast=0.0, saturation=0, hue=0, p=0.5, generator=g)
    factors = out[:, 0, 0, 0] / 0.5
    changed = (factors - 1).abs() > 1e-6
    assert 0.4 < changed.float().mean() < 0.6  # ~p of the samples
    f = factors[changed]
    assert f.min() >= 0.6 - 1e-5 and f.max() <= 1.4 + 1e-5 and f.std() > 0.15  # U[0.6, 1.4], not one factor


def test_rgb_jitter_preserves_range_and_grayscale_input_ok():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 3, 8, 8)
    out = color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=1.0, generator=g)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)


def test_blur_keeps_mean_and_smooths():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    y = gaussian_blur(x, 5, (1.0, 2.0), p=1.0, generator=g)
    assert y.var() < x.var()
    torch.testing.assert_close(y.mean(), x.mean(), atol=2e-2, rtol=0)


def test_view_augment_shapes_determinism():
    aug = ViewAugment(size=24, scale=(0.2, 1.0), mean=(0.5,), std=(0.5,))
    x = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == (10, 1, 24, 24) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert a.min() >= -1 - 1e-5 and a.max() <= 1 + 1e-5
