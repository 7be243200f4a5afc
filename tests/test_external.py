"""External encoders (zoo/external.py): timm:, hf-hub:, hf: and torchvision: specs through
zoo.hub.create_model and `sslzoo eval`, offline (random init, local weight files, a local HF cache)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sslzoo_runner import runner

from zoo.external import ExternalModelError, MissingExtraError, external_label, is_external, parse_spec
from zoo.hub import create_model
from zoo.io import WeightsError, sha256_file

timm = pytest.importorskip("timm", reason="timm is an optional extra (pip install ssl-zoo[timm]); CI installs it")

X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_spec_parsing_and_labels():
    assert parse_spec("torchvision:resnet18.IMAGENET1K_V1") == parse_spec("torchvision:resnet18.IMAGENET1K_V1")
    s = parse_spec("torchvision:resnet18.IMAGENET1K_V1")
    assert (s.library, s.name, s.weights) == ("torchvision", "resnet18", "IMAGENET1K_V1")
    s = parse_spec("timm:vit_small_patch16_224.dino")
    assert (s.library, s.name, s.weights) == ("timm", "vit_small_patch16_224.dino", None)
    assert parse_spec("hf-hub:timm/resnet18.a1_in1k").name == "timm/resnet18.a1_in1k"
    assert is_external("hf:facebook/dino-vits16") and not is_external("simclr_resnet18w16_fashion_mnist")
    assert external_label("torchvision:resnet18") == "torchvision:resnet18 (random init, seed 0)"
    assert external_label("torchvision:resnet18.DEFAULT") == "torchvision:resnet18.DEFAULT"
    assert external_label("timm:resnet18", "/x/r18.safetensors") == "timm:resnet18 (weights r18.safetensors)"
    with pytest.raises(ExternalModelError, match="hf-hub: takes a Hub repo id ORG/NAME"):
        parse_spec("hf-hub:resnet18")
    with pytest.raises(ExternalModelError, match="names no model"):
        parse_spec("timm:")


def test_timm_random_init_features_and_preprocessing():
    m = create_model("timm:resnet18", pretrained=False)
    torch.manual_seed(0)
    ref = timm.create_model("resnet18")  # random init = timm's model under seed 0, then the classifier removed
    ref.reset_classifier(0)
    ref.eval()
    with torch.no_grad():
        assert torch.equal(m(X), ref(X)) and m(X).shape == (2, 512)
    assert m.weights_sha256 is None and m.pretrained_cfg["feature_dim"] == 512
    assert m.pretrained_cfg["architecture"] == "resnet18"  # timm's own pretrained_cfg keys are kept
    # the preprocessing is timm's own eval transform: Resize(floor(224 / crop_pct)) -> CenterCrop -> Normalize
    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=ref))
    resize, crop, norm = tf.transforms[0], tf.transforms[1], tf.transforms[-1]
    p = m.preprocess
    assert (p.resize, p.crop, p.interpolation) == (resize.size, crop.size[0], resize.interpolation.value)
    assert np.allclose(p.mean, norm.mean.tolist()) and np.allclose(p.std, norm.std.tolist())
    # same spec, same encoder: random init is seeded and does not disturb the caller's RNG
    state = torch.get_rng_state()
    again = create_model("timm:resnet18", pretrained=False)
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        assert torch.equal(again(X), m(X))


def test_timm_local_weights_file_with_or_without_classifier(tmp_path):
    torch.manual_seed(3)
    ref = timm.create_model("resnet18")
    full = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, full)
    headless = tmp_path / "r18_headless.pth"
    torch.save({k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}, headless)
    ref.reset_classifier(0)
    ref.eval()
    with torch.no_grad():
        want = ref(X)
    for path in (full, headless):
        m = create_model("timm:resnet18", weights=path)
        assert m.weights_sha256 == sha256_file(path)
        with torch.no_grad():
            assert torch.equal(m(X), want)
    bad = tmp_path / "bad.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.w": torch.zeros(2)}, bad)
    with pytest.raises(WeightsError, match=r"does not fit the architecture: missing: .*unexpected: head\.w"):
        create_model("timm:resnet18", weights=bad)


def test_torchvision_features_preprocessing_and_weights_file(tmp_path, monkeypatch):
    import torchvision
    from torchvision.models import ResNet18_Weights

    m = create_model("torchvision:resnet18.IMAGENET1K_V1", pretrained=False)  # random init, the weights' transforms
    img = torch.randint(0, 256, (3, 300, 260), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    want = ResNet18_Weights.IMAGENET1K_V1.transforms()(img)
    assert m.preprocess(img).shape == want.shape == (3, 224, 224)
    # same geometry and normalisation; both resize the uint8 image, but round differently (zoo.preprocess:
    # torchvision.transforms.v2 on uint8; the weights' transforms: v1), so ~20% of values are one level apart
    diff = (m.preprocess(img) - want).abs()
    assert diff.max() <= 1 / 255 / min(m.preprocess.std) + 1e-6
    torch.manual_seed(5)
    ref = torchvision.models.resnet18()
    path = tmp_path / "tv_r18.pth"
    torch.save(ref.state_dict(), path)
    ref.fc = torch.nn.Identity()
    ref.eval()
    m = create_model("torchvision:resnet18", weights=path)
    with torch.no_grad():
        assert torch.equal(m(X), ref(X)) and m(X).shape == (2, 512)
    assert m.weights_sha256 == sha256_file(path)
    # named weights: torchvision's own loader from torch.hub's cache (offline here, so the file is put there)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    with pytest.raises(ExternalModelError, match=r"HF_HUB_OFFLINE is set and .*resnet18-f37072fd\.pth is not "
                                                 r"downloaded"):
        create_model("torchvision:resnet18.IMAGENET1K_V1")
    cached.parent.mkdir(parents=True)
    torch.save(torch.load(path, weights_only=True), cached)
    m = create_model("torchvision:resnet18.IMAGENET1K_V1")
    with torch.no_grad():
        assert torch.equal(m(X), ref(X))
    assert m.weights_sha256 == sha256_file(cached)
    # the feature before the classifier, for the other head layouts
    for name, dim in (("mobilenet_v3_small", 1024), ("vit_b_16", 768)):
        mm = create_model(f"torchvision:{name}", pretrained=False)
        assert mm.pretrained_cfg["feature_dim"] == dim


def _hf_cache_repo(cache, repo, files: dict) -> None:
    """A repo in huggingface_hub's cache layout (what hf_hub_download leaves behind)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    for name, write in files.items():
        write(snap / name)


def test_hf_hub_timm_model_from_the_local_hf_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as C

    torch.manual_seed(7)
    ref = timm.create_model("resnet18")
    cfg = {"architecture": "resnet18", "num_classes": 1000, "num_features": 512,
           "pretrained_cfg": {"input_size": [3, 224, 224], "interpolation": "bilinear", "crop_pct": 0.875,
                              "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                              "num_classes": 1000, "classifier": "fc", "first_conv": "conv1"}}
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    _hf_cache_repo(tmp_path / "hub", "org/tiny-r18", {
        "config.json": lambda p: p.write_text(json.dumps(cfg)),
        "model.safetensors": lambda p: save_file(sd, p)})
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    m = create_model("hf-hub:org/tiny-r18")
    ref.reset_classifier(0)
    ref.eval()
    with torch.no_grad():
        assert torch.equal(m(X), ref(X))
    cached = next((tmp_path / "hub").rglob("model.safetensors"))
    assert m.weights_sha256 == sha256_file(cached)
    p = m.preprocess
    assert (p.resize, p.crop, p.interpolation, p.mean, p.std) == (256, 224, "bilinear", (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ExternalModelError, match=r"hf-hub:org/missing: cannot download its files \(HF_HUB_OFFLINE"):
        create_model("hf-hub:org/missing")


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(MissingExtraError, match=r"^timm:NAME needs the timm package: pip install ssl-zoo\[timm\]$"):
        create_model("timm:resnet18")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingExtraError, match=r"pip install ssl-zoo\[transformers\]$"):
        create_model("hf:facebook/dino-vits16")


def test_transformers_vit_cls_token_and_resnet_pooler(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is an optional extra")
    torch.manual_seed(11)
    vit = transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                       intermediate_size=64, image_size=32, patch_size=8))
    vit.save_pretrained(tmp_path / "vit")
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                   resample=3).save_pretrained(tmp_path / "vit")
    m = create_model(f"hf:{tmp_path / 'vit'}")
    x = torch.rand(2, 3, 32, 32)
    vit.eval()
    with torch.no_grad():
        assert torch.allclose(m(x), vit(pixel_values=x).last_hidden_state[:, 0], atol=1e-6)
    assert m.pretrained_cfg["feature"] == "cls" and m.model.pooler is None  # the dense pooler is dropped
    assert m.weights_sha256 == sha256_file(tmp_path / "vit" / "model.safetensors")
    p = m.preprocess
    assert (p.resize, p.crop, p.interpolation, p.mean) == (32, 32, "bicubic", (0.5,) * 3)

    rn = transformers.ResNetModel(transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    rn.save_pretrained(tmp_path / "rn")
    transformers.ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875).save_pretrained(tmp_path / "rn")
    m = create_model(f"hf:{tmp_path / 'rn'}")
    rn.eval()
    with torch.no_grad():
        assert torch.allclose(m(X), rn(pixel_values=X).pooler_output.flatten(1), atol=1e-6)
    assert m.pretrained_cfg["feature"] == "pooler" and m(X).shape == (2, 16)
    assert (m.preprocess.resize, m.preprocess.crop) == (73, 64)  # ConvNeXt rule: 64 / 0.875, then crop 64
    with pytest.raises(ExternalModelError, match="hf: takes no weights file"):
        create_model(f"hf:{tmp_path / 'rn'}", weights=tmp_path / "rn" / "model.safetensors")


def _gray_npz(path):
    rng = np.random.default_rng(0)
    y_tr, y_te = np.repeat(np.arange(2), 6), np.repeat(np.arange(2), 3)

    def img(y):  # 1-channel 28 x 28, like Fashion-MNIST: dark class 0, light class 1
        return np.clip(np.where(y[:, None, None] == 0, 50, 200) + rng.normal(0, 25, (len(y), 28, 28)), 0,
                       255).astype(np.uint8)

    np.savez(path, train_image=img(y_tr), train_label=y_tr, test_image=img(y_te), test_label=y_te)
    return f"npz:{path}"


def test_cli_eval_external_models_beside_a_zoo_model(tmp_path):
    from test_bad_inputs import model_folder

    data = _gray_npz(tmp_path / "gray.npz")
    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in timm.create_model("mobilenetv3_small_050").state_dict().items()},
              tmp_path / "mnv3.safetensors")
    env = {"SSLZOO_HOME": str(tmp_path / "home")}
    common = ["--dataset", data, "--probes", "knn", "--batch-size", "8"]
    r = runner().run("eval", "--model", "torchvision:mobilenet_v3_small", *common, env=env)  # default baselines
    assert r.returncode == 0, r.stderr
    assert "torchvision:mobilenet_v3_small (random init, seed 0)" in r.stdout and "pixels" in r.stdout
    r = runner().run("eval", "--model", "timm:mobilenetv3_small_050", "--weights", tmp_path / "mnv3.safetensors",
                     *common, "--baselines", "random-init", env=env)
    assert r.returncode == 0, r.stderr
    r = runner().run("eval", "--model", model_folder(tmp_path / "zoo_tiny"), *common, "--baselines", "none", env=env)
    assert r.returncode == 0, r.stderr
    lb = runner().run("leaderboard", "--format", "json", env=env)
    assert lb.returncode == 0, lb.stderr
    rows = json.loads(lb.stdout)
    by = {(x["model"], x["protocol"]): x for x in rows}
    # the DINO setting k=20, labelled with the k it really uses (12 train images here)
    knn20 = next(p for _, p in by if p.startswith("knn k=") and p.endswith(" T=0.07"))
    # the 224 px model's pixel baseline is pooled to 32 px (150,528 values per image would not fit in memory at scale)
    assert {x["model"] for x in rows} == {"torchvision:mobilenet_v3_small (random init, seed 0)", "pixels (pooled to 32 px)",
                                            "timm:mobilenetv3_small_050 (weights mnv3.safetensors)",
                                            "timm:mobilenetv3_small_050 (random init, seed 0)", "zoo_tiny"}
    sha = sha256_file(tmp_path / "mnv3.safetensors")
    assert by[("timm:mobilenetv3_small_050 (weights mnv3.safetensors)", knn20)]["weights_sha256"] == sha
    assert by[("timm:mobilenetv3_small_050 (random init, seed 0)", knn20)]["weights_sha256"] != sha
    assert all(x["dataset"] == "npz:gray.npz" and 0 <= x["accuracy_mean"] <= 100 for x in rows)
    assert by[("pixels (pooled to 32 px)", knn20)]["accuracy_mean"] == 100.0  # light vs dark: separable from pixels
    assert by[("pixels (pooled to 32 px)", knn20)]["weights_sha256"] == "pixels-pool32"


def test_pixel_baseline_is_bounded_for_large_inputs():
    """A 224 px model's pixel baseline is the input average-pooled to 32 px (3,072 values, not 150,528);
    a 28 px model's is its preprocessed pixels unchanged, under the old name and key."""
    from eval.features import Pixels
    from zoo.preprocess import Preprocess

    big = Pixels(Preprocess(256, 224, (0.5,) * 3, (0.5,) * 3))
    x = torch.rand(2, 3, 224, 224)
    f = big(x)
    assert f.shape == (2, 3 * 32 * 32) and big.weights_sha256 == "pixels-pool32"
    assert torch.allclose(f.view(2, 3, 32, 32)[:, :, 0, 0], x[:, :, :7, :7].mean((2, 3)), atol=1e-6)
    small = Pixels(Preprocess(28, 28, (0.5,), (0.5,), in_chans=1))
    y = torch.rand(2, 1, 28, 28)
    assert torch.equal(small(y), y.flatten(1)) and small.weights_sha256 == "pixels" and small.label == "pixels"
