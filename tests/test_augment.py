import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import training.augmentation as A
from training.augmentation import (
    ViewAugment,
    color_jitter,
    gaussian_blur,
    resized_crop_flip,
    sample_crop_boxes,
)


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


# ============================================================================ version 1 is pinned
#
# ``tests/data/augment_v1_reference.npz`` holds outputs of the original engine (training/augmentation/ at
# commit d46bfb0, before version 2 existed), made by the script quoted in ``_reference_inputs``: a
# training run started with that code must resume with identical views.

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "augment_v1_reference.npz"


def _images(c, s, n, seed):
    """Smooth-ish uint8 images (random 1/4-resolution values upsampled), reproducible on any machine."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (n, c, s // 4, s // 4), generator=g).float()
    x = torch.nn.functional.interpolate(base, size=(s, s), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def _recipe_augment(name):
    a = yaml.safe_load((ROOT / "training" / "recipes" / f"{name}.yaml").read_text())["augment"]
    return {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()}


def _reference_inputs():
    """The cases of the reference file: (ViewAugment, input batch). Views: two calls on the uint8 batch,
    then one on the same batch as float, all from one generator seeded 1234."""
    recipe = _recipe_augment("simclr_fashion_mnist_cpu")
    return {
        "recipe": (ViewAugment(**recipe), _images(1, 28, 8, 0)),
        "rgb_default_blur": (ViewAugment(size=16, blur_p=0.5, blur_kernel=3, mean=(0.5,) * 3, std=(0.5,) * 3),
                             _images(3, 32, 6, 1)),
    }


def test_recipes_use_the_pinned_config():
    # Both running recipes share the augment section that the reference pins.
    assert _recipe_augment("simclr_fashion_mnist_cpu") == _recipe_augment("simclr_d1024_fashion_mnist_cpu")
    assert ViewAugment(**_recipe_augment("simclr_fashion_mnist_cpu")).version == 1  # default = original engine


@pytest.mark.parametrize("case", ["recipe", "rgb_default_blur"])
def test_version1_reproduces_the_original_engine(case):
    ref = np.load(REFERENCE)
    aug, x = _reference_inputs()[case]
    g = torch.Generator().manual_seed(1234)
    views = torch.stack([aug(x, g), aug(x, g), aug(x.float() / 255, g)]).numpy()
    # Same random draws (the generator advanced exactly as before) ...
    assert hashlib.sha256(g.get_state().numpy().tobytes()).digest() == ref[case + "_gen_after"].tobytes()
    # ... and the same pixels (float rounding of another CPU allowed for).
    np.testing.assert_allclose(views, ref[case], rtol=0, atol=1e-5)


def test_version1_recipe_ignores_new_options_at_their_defaults():
    aug, x = _reference_inputs()["recipe"]
    new = ViewAugment(**_recipe_augment("simclr_fashion_mnist_cpu"), antialias=False, solarize_threshold=0.3,
                      interpolation="bilinear", version=1)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.testing.assert_close(aug(x, g1), new(x, g2), rtol=0, atol=0)


# ============================================================================ version 2 == torchvision

tv = pytest.importorskip("torchvision.transforms.v2.functional")


def tv_replay(aug: ViewAugment, x: torch.Tensor, params) -> torch.Tensor:
    """torchvision.transforms.v2.functional applied image by image with the engine's drawn parameters,
    in the order of the SimCLR / BYOL pipelines."""
    outs = []
    size = [aug.size, aug.size] if isinstance(aug.size, int) else list(aug.size)
    for i in range(x.shape[0]):
        q = params.sample(i)
        img = x[i].float() / 255 if x.dtype == torch.uint8 else x[i]
        img = tv.resized_crop(img, q["top"], q["left"], q["height"], q["width"], size,
                              interpolation=tv.InterpolationMode(aug.interpolation), antialias=aug.antialias)
        img = img.clamp(0, 1)  # bicubic overshoot: the engine clamps (torchvision does for uint8 images)
        if q["flip"]:
            img = tv.horizontal_flip(img)
        if q["jitter"] and aug.jitter_p > 0:
            ops = {0: (tv.adjust_brightness, "brightness"), 1: (tv.adjust_contrast, "contrast"),
                   2: (tv.adjust_saturation, "saturation"), 3: (tv.adjust_hue, "hue")}
            for op in q["order"]:
                fn, name = ops[op]
                if q[name] is not None:
                    img = fn(img, q[name])
        if q["gray"] and aug.grayscale_p > 0:
            img = tv.rgb_to_grayscale(img, num_output_channels=img.shape[0])
        if q["blur"] and aug.blur_p > 0:
            img = tv.gaussian_blur(img, [aug.blur_kernel] * 2, [q["sigma"]] * 2)
        if q["solarize"] and aug.solarize_p > 0:
            img = tv.solarize(img, aug.solarize_threshold)
        c = img.shape[0]
        img = tv.normalize(img, list(aug.mean) * (c // len(aug.mean)), list(aug.std) * (c // len(aug.std)))
        outs.append(img)
    return torch.stack(outs)


FULL = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.3, "jitter_p": 0.8, "grayscale_p": 0.2,
        "blur_p": 0.5, "blur_kernel": 5, "solarize_p": 0.3, "solarize_threshold": 0.5, "mean": (0.4, 0.5, 0.6),
        "std": (0.5, 0.5, 0.5), "version": 2}


@pytest.mark.parametrize("interpolation,antialias", [("bilinear", True), ("bilinear", False), ("bicubic", True),
                                                     ("bicubic", False), ("nearest", True),
                                                     ("nearest-exact", True)])
@pytest.mark.parametrize("in_hw,size", [((40, 36), 24), ((16, 20), 28)])  # mostly shrinking / only enlarging
@pytest.mark.parametrize("fused", [True, False])  # the C kernel of training/augmentation/fastaug.py and the eager torch ops
def test_v2_equals_torchvision_per_image(interpolation, antialias, in_hw, size, fused):
    g = torch.Generator().manual_seed(hash((interpolation, antialias, size)) % 1000)
    x = torch.randint(0, 256, (48, 3, *in_hw), dtype=torch.uint8, generator=g)
    aug = ViewAugment(size=size, scale=(0.05, 1.0), interpolation=interpolation, antialias=antialias, fused=fused,
                      **FULL)
    params = aug.sample(x.shape, g)
    out = aug.apply(x, params)
    assert out.shape == (48, 3, size, size) and out.dtype == torch.float32
    torch.testing.assert_close(out, tv_replay(aug, x, params), rtol=0, atol=1e-4)
    # uint8 input is the float image / 255 (to float rounding: the fused kernel divides after interpolating)
    torch.testing.assert_close(aug.apply(x.float() / 255, params), out, rtol=0, atol=1e-5)


def test_v2_equals_torchvision_grayscale_and_rectangular_output():
    g = torch.Generator().manual_seed(3)
    x = _images(1, 28, 40, 7)
    aug = ViewAugment(size=(20, 30), scale=(0.2, 1.0), brightness=(0.5, 1.2), contrast=0.6, blur_p=0.5,
                      blur_kernel=3, solarize_p=0.5, solarize_threshold=0.6, mean=(0.3,), std=(0.4,), version=2)
    p = aug.sample(x.shape, g)
    torch.testing.assert_close(aug.apply(x, p), tv_replay(aug, x, p), rtol=0, atol=1e-4)


def test_v2_parameter_distributions():
    """The drawn parameters follow torchvision's distributions (checked against the parameters of the
    torchvision transforms themselves in the tests below); here: probabilities and ranges."""
    g = torch.Generator().manual_seed(0)
    n = 20000
    aug = ViewAugment(size=32, brightness=0.4, contrast=(0.5, 2.0), saturation=0.0, hue=0.1, jitter_p=0.8,
                      grayscale_p=0.2, blur_p=0.5, blur_sigma=(0.1, 2.0), solarize_p=0.2, version=2)
    p = aug.sample((n, 3, 32, 32), g)
    for name, prob in [("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("solarize", 0.2)]:
        assert abs(getattr(p, name).float().mean().item() - prob) < 0.015, name
    assert p.saturation is None  # saturation=0 switches the op off, as torchvision
    for t, lo, hi in [(p.brightness, 0.6, 1.4), (p.contrast, 0.5, 2.0), (p.hue, -0.1, 0.1), (p.sigma, 0.1, 2.0)]:
        assert t.min() >= lo and t.max() <= hi
        # uniform: mean and variance of U(lo, hi)
        assert abs(t.mean().item() - (lo + hi) / 2) < 0.01 * (hi - lo) + 1e-3
        assert abs(t.var().item() - (hi - lo) ** 2 / 12) < 0.05 * (hi - lo) ** 2 / 12
    # one uniformly random op order per image (torchvision: torch.randperm(4) per image)
    perms = torch.unique(p.order, dim=0, return_counts=True)[1]
    assert perms.numel() == 24 and perms.min() > 0.8 * n / 24 and perms.max() < 1.2 * n / 24


def test_v2_generator_consumption_does_not_depend_on_the_config():
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    ViewAugment(version=2).sample((7, 3, 32, 32), g1)
    ViewAugment(version=2, brightness=0, hue=0, blur_p=0.5, solarize_p=0.1, size=16).sample((7, 3, 32, 32), g2)
    assert torch.equal(g1.get_state(), g2.get_state())


# ---------------------------------------------------------------------------- output statistics vs torchvision
#
# The engine's outputs against torchvision's *transforms* (their own random draws), on fixed images:
# two-sample Kolmogorov-Smirnov tests of per-op statistics measured on the outputs. Seeds are fixed,
# so the tests are deterministic; the p-value floor 1e-3 leaves a wide margin.

stats = pytest.importorskip("scipy.stats")
tvt = pytest.importorskip("torchvision.transforms.v2")


def torchvision_outputs(transform, img, n, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.stack([transform(img) for _ in range(n)])


def tracer(h, w):
    """Channel 0 = row index, channel 1 = column index, channel 2 = 0 (scaled to [0, 1]). Bilinear
    resampling of a linear ramp is exact, so an enlarged crop's corners read back its box."""
    r = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w) / 255
    c = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w) / 255
    return torch.stack([r, c, torch.zeros(h, w)])


def boxes_from_tracer(out):
    """(top, left, h, w, flipped) of every output of an enlarged bilinear crop of :func:`tracer`."""
    rows, cols = out[:, 0] * 255, out[:, 1] * 255
    top, bottom = rows[:, 0, 0], rows[:, -1, 0]
    a, b = cols[:, 0, 0], cols[:, 0, -1]
    flipped = a > b
    left, right = torch.minimum(a, b), torch.maximum(a, b)
    return top.round(), left.round(), (bottom - top + 1).round(), (right - left + 1).round(), flipped


@pytest.mark.parametrize("hw,scale,ratio", [((48, 48), (0.08, 1.0), (3 / 4, 4 / 3)),
                                             ((40, 64), (0.3, 1.0), (0.5, 1.0))])  # the latter falls back often
def test_random_resized_crop_box_distribution(hw, scale, ratio):
    n = 1500
    H, W = hw
    img = tracer(H, W)
    size = max(H, W)  # every box is enlarged: the tracer reads back exact boxes
    aug = ViewAugment(size=size, scale=scale, ratio=ratio, flip_p=0.5, jitter_p=0, grayscale_p=0, version=2,
                      mean=(0,), std=(1,))
    ours = boxes_from_tracer(aug(img.expand(n, -1, -1, -1), torch.Generator().manual_seed(1)))
    ref_t = tvt.Compose([tvt.RandomResizedCrop(size, scale=scale, ratio=ratio), tvt.RandomHorizontalFlip(0.5)])
    theirs = boxes_from_tracer(torchvision_outputs(ref_t, img, n))
    for (t, l, h, w, f) in (ours, theirs):
        assert (t >= 0).all() and (l >= 0).all() and (t + h <= H).all() and (l + w <= W).all()
    feats = {
        "area": lambda t, l, h, w, f: h * w / (H * W),
        "log_aspect": lambda t, l, h, w, f: torch.log(w / h),
        "centre_row": lambda t, l, h, w, f: (t + h / 2) / H,
        "centre_col": lambda t, l, h, w, f: (l + w / 2) / W,
    }
    for name, fn in feats.items():
        p = stats.ks_2samp(fn(*ours).numpy(), fn(*theirs).numpy()).pvalue
        assert p > 1e-3, f"{name}: KS p={p:.2g}"
    # fallback (no try fits): the same central box, as often
    full_ours = (ours[2] == H) | (ours[3] == W)
    full_theirs = (theirs[2] == H) | (theirs[3] == W)
    assert abs(full_ours.float().mean() - full_theirs.float().mean()) < 0.04
    assert abs(ours[4].float().mean() - 0.5) < 0.05  # flips


def test_crop_fallback_is_central_like_torchvision():
    # scale (1, 1) with aspect ratios >= 2 never fits a square image: always the fallback box.
    tv1 = pytest.importorskip("torchvision.transforms")
    top, left, h, w = sample_crop_boxes(4, 30, 30, (1.0, 1.0), (2.0, 3.0), torch.Generator().manual_seed(0))
    ref = tv1.RandomResizedCrop.get_params(torch.zeros(1, 30, 30), [1.0, 1.0], [2.0, 3.0])
    assert all(tuple(int(v) for v in box) == tuple(ref) for box in zip(top, left, h, w))


def _jitter_outputs(img, n, **jitter):
    aug = ViewAugment(size=img.shape[-1], scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0, jitter_p=1.0,
                      grayscale_p=0, mean=(0,), std=(1,), version=2,
                      **{k: jitter.get(k, 0) for k in ("brightness", "contrast", "saturation", "hue")})
    ours = aug(img.expand(n, -1, -1, -1), torch.Generator().manual_seed(2))
    theirs = torchvision_outputs(tvt.ColorJitter(**jitter), img, n)
    return ours, theirs


def _ks(a, b):
    """KS p-value; statistics rounded to 1e-5, so that point masses (e.g. every unjittered image has
    the same value) coincide despite float rounding differences between the two implementations."""
    return stats.ks_2samp(a.numpy().round(5), b.numpy().round(5)).pvalue


def smooth_colour_image(h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(h, w), mode="bilinear",
                                           align_corners=False)[0] * 0.5 + 0.25   # in [0.25, 0.75]


def test_brightness_distribution_matches_torchvision():
    img = torch.full((3, 8, 8), 0.5)
    ours, theirs = _jitter_outputs(img, 2000, brightness=0.4)
    ratio = lambda o: o.mean((1, 2, 3)) / 0.5
    assert _ks(ratio(ours), ratio(theirs)) > 1e-3
    assert ratio(ours).min() >= 0.6 - 1e-5 and ratio(ours).max() <= 1.4 + 1e-5


def test_contrast_distribution_matches_torchvision():
    img = smooth_colour_image()  # no clipping for factors <= 1.5
    ours, theirs = _jitter_outputs(img, 2000, contrast=0.5)
    ratio = lambda o: o.std((1, 2, 3)) / img.std()
    assert _ks(ratio(ours), ratio(theirs)) > 1e-3


def test_saturation_distribution_matches_torchvision():
    img = smooth_colour_image(seed=1)
    ours, theirs = _jitter_outputs(img, 2000, saturation=0.6)
    chroma = lambda o: (o.amax(-3) - o.amin(-3)).mean((-1, -2))
    ratio = lambda o: chroma(o) / chroma(img)
    assert _ks(ratio(ours), ratio(theirs)) > 1e-3


def test_hue_distribution_matches_torchvision():
    img = torch.tensor([0.8, 0.4, 0.2]).view(3, 1, 1).expand(3, 4, 4).clone()  # one saturated colour
    ours, theirs = _jitter_outputs(img, 2000, hue=0.3)
    h0 = A.rgb_to_hsv(img[None])[0, 0, 0, 0]
    shift = lambda o: torch.remainder(A.rgb_to_hsv(o)[:, 0, 0, 0] - h0 + 0.5, 1.0) - 0.5
    assert _ks(shift(ours), shift(theirs)) > 1e-3
    assert shift(ours).abs().max() <= 0.3 + 1e-4


def test_jitter_order_is_drawn_per_image():
    # Brightness then contrast differs from contrast then brightness once values clip: the outputs of
    # one batch must show both orders (the original engine drew one order per call).
    img = smooth_colour_image(seed=2) * 1.6 - 0.2
    img = img.clamp(0, 1)
    ours, theirs = _jitter_outputs(img, 1000, brightness=(1.5, 1.5), contrast=(0.2, 0.2))
    key = lambda o: o.mean((1, 2, 3)).round(decimals=4)
    ko, kt = key(ours), key(theirs)
    assert torch.unique(ko).numel() == 2 and torch.equal(torch.unique(ko), torch.unique(kt))
    first = torch.unique(ko)[0]
    assert abs((ko == first).float().mean() - (kt == first).float().mean()) < 0.08


def test_grayscale_blur_solarize_match_torchvision_statistics():
    img = smooth_colour_image(16, 16, seed=3)
    n = 1500
    aug = ViewAugment(size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0, jitter_p=0, grayscale_p=0.3, blur_p=0.6,
                      blur_kernel=5, blur_sigma=(0.3, 2.0), solarize_p=0.4, solarize_threshold=0.6, mean=(0,),
                      std=(1,), version=2)
    ours = aug(img.expand(n, -1, -1, -1), torch.Generator().manual_seed(4))
    ref = tvt.Compose([tvt.RandomGrayscale(0.3), tvt.RandomApply([tvt.GaussianBlur(5, (0.3, 2.0))], p=0.6),
                       tvt.RandomSolarize(0.6, p=0.4)])
    theirs = torchvision_outputs(ref, img, n)
    gray = lambda o: (o.amax(1) - o.amin(1)).amax((1, 2)) < 1e-6
    assert abs(gray(ours).float().mean() - gray(theirs).float().mean()) < 0.05
    # blur strength: high-frequency energy; solarize: share of pixels above the threshold
    hf = lambda o: (o[..., 1:] - o[..., :-1]).abs().mean((1, 2, 3))
    assert _ks(hf(ours), hf(theirs)) > 1e-3
    assert _ks(o := ours.mean((1, 2, 3)), theirs.mean((1, 2, 3))) > 1e-3 and o.numel() == n


# ---------------------------------------------------------------------------- engine properties

def test_v2_resample_matrices_match_interpolate():
    # A box covering the whole image is a plain resize: rows of the matrices reproduce F.interpolate.
    x = torch.rand(2, 3, 13, 17)
    for mode in ("bilinear", "bicubic", "nearest", "nearest-exact"):
        for aa in (True, False):
            for size in ((7, 9), (26, 40)):
                if aa and mode.startswith("nearest"):
                    continue
                boxes = (torch.zeros(2), torch.zeros(2), torch.full((2,), 13.0), torch.full((2,), 17.0))
                ours = A.resized_crop(x, boxes, size, interpolation=mode, antialias=aa)
                ref = torch.nn.functional.interpolate(x, size=size, mode=mode, antialias=aa,
                                                      align_corners=False if mode in ("bilinear", "bicubic") else None)
                torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5, msg=f"{mode} aa={aa} {size}")


def test_v2_flip_and_rectangular_box():
    x = torch.rand(2, 1, 10, 12)
    boxes = (torch.tensor([2.0, 2.0]), torch.tensor([3.0, 3.0]), torch.tensor([5.0, 5.0]), torch.tensor([6.0, 6.0]))
    out = A.resized_crop(x, boxes, (5, 6), flip=torch.tensor([False, True]))
    torch.testing.assert_close(out[0], x[0, :, 2:7, 3:9], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1], x[1, :, 2:7, 3:9].flip(-1), rtol=0, atol=1e-6)


def test_multi_crop_from_several_instances():
    x = _images(3, 32, 6, 2)
    g = torch.Generator().manual_seed(0)
    global_v = ViewAugment(size=32, scale=(0.4, 1.0), mean=(0.5,) * 3, std=(0.5,) * 3, version=2)
    local_v = ViewAugment(size=16, scale=(0.05, 0.4), mean=(0.5,) * 3, std=(0.5,) * 3, version=2)
    views = [global_v(x, g) for _ in range(2)] + [local_v(x, g) for _ in range(4)]
    assert [tuple(v.shape[-2:]) for v in views] == [(32, 32)] * 2 + [(16, 16)] * 4
    assert all(v.abs().max() <= 1 + 1e-5 for v in views)


def test_interpolation_names_and_validation():
    tv1 = pytest.importorskip("torchvision.transforms")
    assert ViewAugment(interpolation=tv1.InterpolationMode.BICUBIC, version=2).interpolation == "bicubic"
    assert ViewAugment(interpolation=3, version=2).interpolation == "bicubic"  # PIL code, as torchvision accepts
    bad = [{"version": 3}, {"blur_kernel": 4}, {"hue": 0.6}, {"brightness": -1}, {"solarize_threshold": 128},
           {"interpolation": "lanczos"}, {"scale": (0.5, 0.2)}, {"flip_p": 1.5},
           {"brightness": (0.5, 1.5)},                 # ranges need version 2
           {"interpolation": "nearest-exact"}]         # so does nearest-exact
    for kw in bad:
        with pytest.raises(ValueError):
            ViewAugment(**kw)
    with pytest.raises(RuntimeError, match="version=2"):
        ViewAugment().apply(torch.zeros(1, 1, 4, 4), None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("version", [1, 2])
def test_cuda_matches_cpu(version):
    x = _images(3, 32, 16, 5)
    aug = ViewAugment(size=24, blur_p=0.5, solarize_p=0.2, mean=(0.5,) * 3, std=(0.5,) * 3, version=version)
    cpu = aug(x, torch.Generator().manual_seed(0))
    gpu = aug(x.cuda(), torch.Generator().manual_seed(0))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------- benchmark scripts run

def _load_benchmark(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_augment_speed_benchmark_smoke(tmp_path):
    """benchmarks/augment_speed.py runs end to end on tiny sizes and writes its JSON (no timing claims)."""
    import json

    out = tmp_path / "aug.json"
    bench = _load_benchmark("augment_speed")
    assert bench.main(["--n", "12", "--batch", "8", "--repeats", "1", "--workers", "0", "--versions", "2",
                       "--no-cuda", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["machine"]["torch"] == torch.__version__
    rows = {(r["recipe"], r["row"]) for r in res["results"]}
    assert ("cifar32", "torchvision PIL, 1 process") in rows and ("stl96", "engine v2, 1 thread") in rows
    ratios = [r for r in res["results"] if r["row"].startswith("ratios")]
    assert all(r["per_core_engine_1thread_over_torchvision_1process"] > 0 for r in ratios)


def test_train_speed_benchmark_smoke(tmp_path):
    """benchmarks/train_speed.py runs end to end on tiny sizes (lightly row included when installed)."""
    import json

    out = tmp_path / "train.json"
    bench = _load_benchmark("train_speed")
    assert bench.main(["--n", "32", "--batch", "8", "--steps", "1", "--warmup", "0", "--widths", "8",
                       "--workers", "0", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    ratios = [r for r in res["results"] if r["row"] == "ratios"]
    assert len(ratios) == 1 and ratios[0]["zoo_over_bare"] > 0


# ---------------------------------------------------------------------------- fused C kernel

def _need_kernel():
    from training.augmentation import fastaug

    if fastaug.find_compiler() is None:
        pytest.skip("no C compiler: the fused kernel cannot be built here (the eager path is what runs)")
    lib = fastaug.library()
    assert lib is not None, "a C compiler exists but training/augmentation/_fastaug.c did not build (see stderr)"
    return lib


def _edge_images(n, s, seed):
    """Images with flat colours (chroma 0), pure primaries, 0 / 255 extremes and ties between channels
    (the hue's case analysis), beside smooth random ones."""
    x = _images(3, s, n, seed)
    x[0] = 128                                   # gray: chroma 0
    x[1, 0], x[1, 1], x[1, 2] = 255, 0, 0        # red
    x[2, 0], x[2, 1], x[2, 2] = 0, 255, 255      # cyan: g == b == max
    x[3, :, : s // 2] = 0
    x[3, :, s // 2:] = 255
    x[4, 0] = x[4, 1]                            # r == g ties everywhere
    return x


FUSED_CASES = {
    # every box enlarged, bilinear, uint8: the kernel crops too
    "stl96-like": dict(in_hw=(48, 48), size=48, channels=3,
                       kw=dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5, blur_kernel=5,
                               mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.2435, 0.2616))),
    "all-ops": dict(in_hw=(32, 32), size=32, channels=3, kw=dict(FULL, hue=0.5, blur_p=1.0, solarize_p=0.5)),
    # shrinking boxes / other interpolations / float input: the eager crop, then the kernel
    "shrink-bicubic": dict(in_hw=(40, 36), size=24, channels=3, kw=dict(FULL, interpolation="bicubic")),
    "float-input": dict(in_hw=(24, 24), size=24, channels=3, float_input=True, kw=dict(FULL)),
    "rect-kernel": dict(in_hw=(28, 40), size=(20, 30), channels=3,
                        kw=dict(FULL, blur_kernel=(3, 5), blur_p=1.0, mean=(0.3,), std=(0.4,))),
    "gray-images": dict(in_hw=(28, 28), size=28, channels=1,
                        kw=dict(brightness=(0.5, 1.5), contrast=0.7, saturation=0.5, hue=0.3, blur_p=0.5,
                                blur_kernel=3, solarize_p=0.5, mean=(0.5,), std=(0.5,))),
    "no-jitter-all-gray": dict(in_hw=(16, 16), size=16, channels=3,
                               kw=dict(jitter_p=0.0, grayscale_p=1.0, mean=(0.5,) * 3, std=(0.25,) * 3)),
    "some-ops-off": dict(in_hw=(16, 16), size=16, channels=3,
                         kw=dict(brightness=0.0, contrast=0.4, saturation=0.0, hue=0.1, jitter_p=1.0)),
}


@pytest.mark.parametrize("case", sorted(FUSED_CASES))
def test_fused_kernel_equals_eager(case):
    """The C kernel (one pass per image: crop, jitter in each image's own order, grayscale, blur,
    solarize, normalise) computes what the eager torch ops compute, on the same drawn parameters."""
    _need_kernel()
    c = FUSED_CASES[case]
    g = torch.Generator().manual_seed(sorted(FUSED_CASES).index(case))
    x = _edge_images(24, c["in_hw"][0], 11) if c["channels"] == 3 and c["in_hw"][0] == c["in_hw"][1] else \
        torch.randint(0, 256, (24, c["channels"], *c["in_hw"]), dtype=torch.uint8, generator=g)
    if c.get("float_input"):
        x = x.float() / 255
    kw = dict(c["kw"], version=2)
    fused, eager = ViewAugment(size=c["size"], fused=True, **kw), ViewAugment(size=c["size"], fused=False, **kw)
    params = fused.sample(x.shape, g)
    a, b = fused.apply(x, params), eager.apply(x, params)
    assert a.shape == b.shape and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    # and the drawn ops really ran: the output is not just the normalised crop
    plain = ViewAugment(size=c["size"], jitter_p=0, grayscale_p=0, blur_p=0, solarize_p=0, fused=False,
                        mean=kw.get("mean", (0.5,)), std=kw.get("std", (0.5,)), version=2)
    assert (a - plain.apply(x, params)).abs().max() > 1e-2


def test_fused_kernel_threads_give_the_same_images():
    _need_kernel()
    x = _images(3, 32, 40, 2)
    aug = ViewAugment(size=32, blur_p=0.5, solarize_p=0.3, version=2)
    p = aug.sample(x.shape, torch.Generator().manual_seed(0))
    one = aug.apply(x, p)
    torch.set_num_threads(2)
    assert torch.equal(aug.apply(x, p), one)


def test_fused_kernel_off_or_unbuildable_falls_back_to_eager(monkeypatch, tmp_path, caplog):
    from training.augmentation import fastaug

    x = _images(3, 16, 8, 4)
    aug = ViewAugment(size=16, blur_p=0.5, version=2)
    p = aug.sample(x.shape, torch.Generator().manual_seed(0))
    want = ViewAugment(size=16, blur_p=0.5, version=2, fused=False).apply(x, p)
    try:
        monkeypatch.setenv("SSLZOO_FASTAUG", "0")
        fastaug.reset()
        caplog.clear()
        assert fastaug.library() is None and not caplog.records  # switched off: silent
        torch.testing.assert_close(aug.apply(x, p), want, rtol=0, atol=0)
        monkeypatch.delenv("SSLZOO_FASTAUG")
        bad = tmp_path / "cc"
        bad.write_text("#!/bin/sh\necho 'cc: error: no such compiler' >&2\nexit 1\n")
        bad.chmod(0o755)
        monkeypatch.setenv("CC", str(bad))
        fastaug.reset()
        assert fastaug.library() is None
        err = [r.getMessage() for r in caplog.records if r.name == "training.augmentation.fastaug"]
        assert len(err) == 1 and "unavailable" in err[0] and "no such compiler" in err[0]
        assert caplog.records[-1].levelname == "WARNING"
        torch.testing.assert_close(aug.apply(x, p), want, rtol=0, atol=0)
        assert not list((tmp_path / "sslzoo_home").rglob("*.so*"))  # nothing half-written
    finally:
        monkeypatch.undo()
        fastaug.reset()


@pytest.mark.parametrize("fused", [True, False])
def test_v2_hue_edge_cases_match_torchvision(fused):
    """Flat colours, primaries, 0/255 extremes and channel ties through the full jitter (hue range
    0.5, i.e. every shift) match torchvision image by image on both paths."""
    x = _edge_images(16, 24, 5)
    aug = ViewAugment(size=24, scale=(0.5, 1.0), brightness=0.4, contrast=0.4, saturation=0.9, hue=0.5, jitter_p=1.0,
                      grayscale_p=0.2, mean=(0.5,) * 3, std=(0.5,) * 3, version=2, fused=fused)
    p = aug.sample(x.shape, torch.Generator().manual_seed(9))
    torch.testing.assert_close(aug.apply(x, p), tv_replay(aug, x, p), rtol=0, atol=1e-4)


def test_fused_kernel_refuses_boxes_outside_the_image():
    _need_kernel()
    x = _images(3, 16, 2, 1)
    aug = ViewAugment(size=16, version=2)
    p = aug.sample(x.shape, torch.Generator().manual_seed(0))
    top, left, h, w = p.boxes
    p.boxes = (top, left + 16, h, w)  # every box shifted off the right edge
    with pytest.raises(ValueError, match="inside the 16x16 images"):
        aug.apply(x, p)
