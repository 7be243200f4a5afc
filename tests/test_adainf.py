"""AdaInf (training/datacentric/adainf.py + the trainer's inflation): npz round trip keeps RGB, the BGR check,
`dup` copies and label -1, upstream augmentation presets, the step budget, the stand-in generators."""
import numpy as np
import pytest
import torch

from eval.datasets import load_split
from training.augmentation.presets import AUGMENT_PRESETS
from training.datacentric.adainf import (InflationError, channel_order_check, folder_to_npz, gaussian_mixture_standin,
                                         mixup_standin, write_inflation_npz)
from training.cli import main
from training.config import ConfigError, load_recipe
from training.trainer import Trainer



def _cfg(npz, *sets):
    return load_recipe("simclr_fashion_mnist_cpu", [
        f"data.dataset=npz:{npz}", "model.width=4", "model.in_chans=1", "augment.size=12", "optim.batch_size=16",
        "optim.epochs=1", "optim.warmup_epochs=0", "method.proj_hidden_dim=16", "method.proj_dim=8",
        "train.monitor_every_epochs=0", "train.tensorboard=false", "train.log_every=1", *sets])


def _warm_colours(n, rng):
    """RGB images with distinct channel statistics (red bright, blue dark), like most photo sets."""
    x = np.empty((n, 8, 8, 3), dtype=np.uint8)
    x[..., 0] = rng.integers(150, 250, (n, 8, 8))
    x[..., 1] = rng.integers(80, 160, (n, 8, 8))
    x[..., 2] = rng.integers(0, 60, (n, 8, 8))
    return x


def test_folder_to_npz_keeps_rgb_and_writes_label_minus_one(tmp_path):
    from PIL import Image

    d = tmp_path / "gen" / "sub"
    d.mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(d / "red.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(d / "blue.png")
    Image.new("L", (8, 8), 100).save(tmp_path / "gen" / "gray.png")
    out = folder_to_npz(tmp_path / "gen", tmp_path / "gen.npz")
    split = load_split(f"npz:{out}", "train")  # the trainer's reader
    assert split.images.shape == (3, 8, 8, 3) and split.targets.tolist() == [-1, -1, -1]
    order = sorted(["sub/red.png", "sub/blue.png", "gray.png"])
    byname = dict(zip(order, split.images))
    assert byname["sub/red.png"][0, 0].tolist() == [255, 0, 0]  # RGB, not cv2's BGR
    assert byname["sub/blue.png"][0, 0].tolist() == [0, 0, 255]
    assert byname["gray.png"][0, 0].tolist() == [100, 100, 100]
    Image.new("RGB", (9, 8)).save(d / "odd.png")
    with pytest.raises(InflationError, match="--size"):
        folder_to_npz(tmp_path / "gen", tmp_path / "bad.npz")
    assert folder_to_npz(tmp_path / "gen", tmp_path / "ok.npz", size=8).is_file()


def test_channel_order_check_flags_bgr(tmp_path, capsys):
    rng = np.random.default_rng(0)
    real, gen = _warm_colours(200, rng), _warm_colours(100, rng)
    assert channel_order_check(gen, real)["verdict"] == "rgb"
    assert channel_order_check(gen[..., ::-1], real)["verdict"] == "bgr"
    assert channel_order_check(gen[..., :1], real[..., :1])["verdict"] == "grayscale"
    np.savez(tmp_path / "real.npz", train_image=real, train_label=np.zeros(200, dtype=np.int64))
    write_inflation_npz(tmp_path / "bgr.npz", np.ascontiguousarray(gen[..., ::-1]))
    assert main(["adainf", "check", str(tmp_path / "bgr.npz"), "--real", f"npz:{tmp_path / 'real.npz'}"]) == 1
    assert "looks BGR" in capsys.readouterr().out


def test_dup_copies_are_virtual_and_generated_labels_never_vote(tiny_npz, tmp_path):
    gen = write_inflation_npz(tmp_path / "gen.npz", np.full((20, 12, 12, 1), 7, dtype=np.uint8))
    t = Trainer(_cfg(tiny_npz, f"data.extra=npz:{gen}", "data.repeat=3"), tmp_path / "r", device="cpu")
    x, y = t.load_data()
    assert len(x) == 84 and t.epoch_size(x) == 3 * 64 + 20 and int((y == -1).sum()) == 20
    pos = torch.arange(t.epoch_size(x))
    materialised = torch.cat([x[:64]] * 3 + [x[64:]])  # upstream: [real] * dup + [generated]
    assert torch.equal(x[t.source_index(pos)], materialised)
    seen = {}
    t.embed = lambda xb: (seen.setdefault("n", len(xb)), torch.randn(len(xb), 4))[1]
    acc = t.monitor(x, y)
    assert 0.0 <= acc <= 1.0 and seen["n"] == 64  # each real image once, no generated image


def test_presets_hold_upstream_values_and_explicit_fields_win(tiny_npz):
    sym, ada = AUGMENT_PRESETS["symmetric"], AUGMENT_PRESETS["symmetric_adainf"]
    assert (sym["scale"][0], sym["jitter_p"], sym["brightness"], sym["hue"], sym["blur_p"]) == (0.08, 0.8, 0.8, 0.2, 0.5)
    assert (ada["scale"][0], ada["jitter_p"], ada["brightness"], ada["hue"]) == (0.2, 0.4, 0.4, 0.1)
    asy, asy_ada = AUGMENT_PRESETS["asymmetric"], AUGMENT_PRESETS["asymmetric_adainf"]
    assert (asy["saturation"], asy["blur_p"], asy["view2"]) == (0.2, 0.0, {"solarize_p": 0.2})
    assert (asy_ada["scale"][0], asy_ada["jitter_p"], asy_ada["saturation"]) == (0.2, 0.4, 0.2)
    cfg = _cfg(tiny_npz, "augment.jitter_p=0.7", "augment.preset=symmetric")
    # fields the recipe or --set name win (jitter_p from --set, brightness from the recipe), whatever the order;
    # the rest come from the preset
    assert cfg["augment"]["jitter_p"] == 0.7 and cfg["augment"]["brightness"] == 0.4
    assert cfg["augment"]["hue"] == 0.2 and cfg["augment"]["blur_p"] == 0.5
    assert _cfg(tiny_npz, "augment.preset=asymmetric_adainf")["augment"]["view2"] == {"solarize_p": 0.2}
    with pytest.raises(ConfigError, match="did you mean 'symmetric_adainf'"):
        _cfg(tiny_npz, "augment.preset=symetric_adainf")
    # the upstream AdaInf recipes use exactly these values
    for recipe, preset in (("adainf_simclr_cifar10", "symmetric_adainf"), ("adainf_byol_cifar10", "asymmetric_adainf")):
        a = load_recipe(recipe)["augment"]
        assert all(a[k] == v for k, v in AUGMENT_PRESETS[preset].items()), recipe
        assert load_recipe(recipe, [f"augment.preset={preset}"])["augment"] == {**a, "preset": preset}


def test_step_budget_is_the_same_compute_with_and_without_inflation(tiny_npz, tmp_path):
    gen = write_inflation_npz(tmp_path / "gen.npz", np.zeros((64, 12, 12, 1), dtype=np.uint8))
    steps = []
    for name, sets in (("none", []), ("adainf", [f"data.extra=npz:{gen}", "data.repeat=4"])):
        t = Trainer(_cfg(tiny_npz, "optim.epochs=null", "train.max_steps=5", *sets), tmp_path / name, device="cpu")
        t.fit()
        steps.append(t.step)
    assert steps == [5, 5]
    with pytest.raises(ConfigError, match="needs train.max_steps"):
        Trainer(_cfg(tiny_npz, "optim.epochs=null"), tmp_path / "x", device="cpu").fit()


def test_standin_generators_are_seeded_uint8(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (300, 6, 6), dtype=np.uint8)
    a, b = mixup_standin(real, 50, seed=1), mixup_standin(real, 50, seed=1)
    assert a.dtype == np.uint8 and a.shape == (50, 6, 6) and np.array_equal(a, b)
    g = gaussian_mixture_standin(real, 40, seed=0, components=3, pca_dim=8)
    assert g.shape == (40, 6, 6) and np.array_equal(g, gaussian_mixture_standin(real, 40, seed=0, components=3,
                                                                                  pca_dim=8))
