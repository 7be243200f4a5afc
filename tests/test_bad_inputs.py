"""The catalogue of bad inputs: each one, run as an `sslzoo` command in its own process, must end
with exit code != 0, exactly ONE line on stderr that names the problem (no traceback), and nothing
half-written: the output folder stays empty, no temporary file is left anywhere, and the results
store holds no result.

Cases that are only reachable from Python (the encoder's input check) are tested in-process at the
end. tests/test_cli.py has a few more (unknown model name, missing mnist, folder without test/,
unknown config key) that are not repeated here.
"""
import json
import os
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sslzoo_runner import Runner, runner

from zoo.backbones import build_resnet
from zoo.io import save_folder

ARCH = {"arch": "resnet18", "stem": "cifar", "width": 4, "in_chans": 1}
PRE = {"resize": 12, "crop": 12, "mean": [0.5], "std": [0.5], "interpolation": "bilinear", "in_chans": 1}
BUNDLED = "simclr_resnet18w16_fashion_mnist"

# ----------------------------------------------------------------------------- builders


def model_folder(path: Path, arch=None, pre=None, state=None) -> Path:
    arch, pre = dict(ARCH, **(arch or {})), dict(PRE, **(pre or {}))
    torch.manual_seed(0)
    sd = state if state is not None else build_resnet(**arch).state_dict()
    save_folder(sd, {"name": "tiny", "arch": arch, "feature_dim": 32, "preprocess": pre}, path)
    return path


def images(n, size=12, c=None, seed=0):
    shape = (n, size, size) if c is None else (n, size, size, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def good_arrays():
    y = np.repeat(np.arange(3), 8)
    return dict(train_image=images(24), train_label=y, test_image=images(9, seed=1),
                test_label=np.repeat(np.arange(3), 3))


def npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def image_folder(root: Path, train=None, test=None, size=(12, 12)) -> str:
    train = train or {"a": 3, "b": 3}
    test = {"a": 2, "b": 2} if test is None else test
    for split, classes in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for c, n in classes.items():
            (root / split / c).mkdir(exist_ok=True)
            for i in range(n):
                Image.fromarray(images(1, seed=i)[0]).resize(size).save(root / split / c / f"{i}.png")
    return f"folder:{root}"


# ----------------------------------------------------------------------------- the catalogue

CASES = {}


def case(pattern, cmd="eval", xfail=None):
    """Register ``fn(tmp) -> argv`` (after the subcommand): stderr must match ``pattern``. ``xfail``: why
    the case still fails (a known defect in code owned elsewhere); strict, so a fix makes it fail loudly."""
    def deco(fn):
        CASES[fn.__name__] = (cmd, pattern, fn, xfail)
        return fn
    return deco


def _eval(tmp, model=None, data=None, *extra):
    model = model or model_folder(tmp / "model")
    data = data or npz(tmp / "good.npz", **good_arrays())
    return ["--model", str(model), "--dataset", data, "--shots", "1,2", "--seeds", "0,1", "--baselines", "none",
            "--out", str(tmp / "out" / "table"), *extra]


# --- models and weights

@case(r"unknown model 'simclr_resnet18w16_fmnist'; did you mean simclr_resnet18w16_fashion_mnist")
def unknown_model_suggests(tmp):
    return _eval(tmp, model="simclr_resnet18w16_fmnist")


@case(r"is not a zoo folder: it needs model\.safetensors \+ config\.json")
def model_folder_without_config(tmp):
    f = model_folder(tmp / "m")
    (f / "config.json").unlink()
    return _eval(tmp, model=f)


@case(r"is not a zoo folder")
def model_path_is_a_file(tmp):
    return _eval(tmp, model=model_folder(tmp / "m") / "model.safetensors")


@case(r"config\.json is not valid JSON")
def model_config_not_json(tmp):
    f = model_folder(tmp / "m")
    (f / "config.json").write_text("{arch: resnet18")
    return _eval(tmp, model=f)


@case(r"lacks a valid 'arch'/'preprocess' section")
def model_config_without_arch(tmp):
    f = model_folder(tmp / "m")
    cfg = json.loads((f / "config.json").read_text())
    del cfg["arch"]
    (f / "config.json").write_text(json.dumps(cfg))
    return _eval(tmp, model=f)


@case(r"sha256 .* but config\.json records .*modified or truncated")
def weights_flipped_byte(tmp):
    f = model_folder(tmp / "m")
    data = bytearray((f / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (f / "model.safetensors").write_bytes(bytes(data))
    return _eval(tmp, model=f)


@case(r"sha256 .* but config\.json records .*modified or truncated")
def weights_truncated(tmp):
    f = model_folder(tmp / "m")
    data = (f / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes(data[: len(data) // 3])
    return _eval(tmp, model=f)


@case(r"is not a readable safetensors file")
def weights_corrupt_safetensors(tmp):
    f = model_folder(tmp / "m")
    (f / "model.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"not\": \"a header\"" + b"\0" * 64)
    cfg = json.loads((f / "config.json").read_text())
    del cfg["sha256"]  # no pin: the file itself must be refused
    (f / "config.json").write_text(json.dumps(cfg))
    return _eval(tmp, model=f)


@case(r"does not fit the architecture: .*shape mismatch: conv1\.weight \(8, 1, 3, 3\) vs \(4, 1, 3, 3\)")
def state_dict_of_another_width(tmp):
    wide = build_resnet(**dict(ARCH, width=8)).state_dict()
    return _eval(tmp, model=model_folder(tmp / "m", state=wide))


@case(r"does not fit the architecture: missing: layer4\.1\.bn2\.running_var; unexpected: head\.weight")
def state_dict_missing_and_extra_keys(tmp):
    sd = build_resnet(**ARCH).state_dict()
    sd.pop("layer4.1.bn2.running_var")
    sd["head.weight"] = torch.zeros(2, 2)
    return _eval(tmp, model=model_folder(tmp / "m", state=sd))


@case(r"m: 1 probe feature vector\(s\) contain NaN/inf; the weights are probably corrupt")
def weights_with_nan(tmp):
    sd = build_resnet(**ARCH).state_dict()
    sd["bn1.weight"] = torch.full_like(sd["bn1.weight"], float("nan"))
    return _eval(tmp, model=model_folder(tmp / "m", state=sd))


@case(r"good/train does not fit m: images have 1 channels but the model takes 2")
def channels_that_cannot_convert(tmp):
    f = model_folder(tmp / "m", arch={"in_chans": 2}, pre={"in_chans": 2, "mean": [0.5] * 2, "std": [0.5] * 2})
    return _eval(tmp, model=f)


# --- datasets

@case(r"unknown dataset 'fashion-mnsit'; did you mean fashion-mnist")
def unknown_dataset_suggests(tmp):
    return _eval(tmp, data="fashion-mnsit")


@case(r"cifar10 train not found: put cifar-10-batches-py/ .* in .*data.*cifar10, or pass --download")
def dataset_missing_offline(tmp):
    return _eval(tmp, data="cifar10")


@case(r"npz file .*nothere\.npz not found")
def npz_missing(tmp):
    return _eval(tmp, data=f"npz:{tmp / 'nothere.npz'}")


@case(r"is not a readable \.npz")
def npz_not_a_zip(tmp):
    (tmp / "bad.npz").write_bytes(b"PK\x03\x04 this is not really a zip")
    return _eval(tmp, data=f"npz:{tmp / 'bad.npz'}")


@case(r"has no arrays for split 'train': expected keys train_image \+ train_label .*found x, y")
def npz_wrong_keys(tmp):
    return _eval(tmp, data=npz(tmp / "d.npz", x=images(4), y=np.zeros(4, np.int64)))


@case(r"key 'test_label' is missing")
def npz_missing_label_key(tmp):
    a = good_arrays()
    del a["test_label"]
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case(r"'train_image' has dtype float32, expected uint8 .*scale floats")
def npz_float_images(tmp):
    a = good_arrays()
    a["train_image"] = a["train_image"].astype(np.float32) / 255
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case(r"'train_image' has shape \[24, 1, 12, 12\].*looks channels-first")
def npz_channels_first(tmp):
    a = good_arrays()
    a["train_image"] = a["train_image"][:, None]
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case(r"'train_image' has shape \[24, 12, 12, 2\]")
def npz_two_channels(tmp):
    a = good_arrays()
    a["train_image"] = images(24, c=2)
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case(r"'train_label' has 23 labels but 'train_image' has 24 images")
def npz_label_count_mismatch(tmp):
    a = good_arrays()
    a["train_label"] = a["train_label"][:-1]
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case(r"'train_label' has dtype float64 and shape \[24\], expected integer \[N\]")
def npz_float_labels(tmp):
    a = good_arrays()
    a["train_label"] = a["train_label"].astype(np.float64)
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case(r"'train_label' has dtype int64 and shape \[24, 1\]")
def npz_2d_labels(tmp):
    a = good_arrays()
    a["train_label"] = a["train_label"][:, None]
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case(r"object \(pickled\) array; store plain numeric arrays")
def npz_pickled_array(tmp):
    a = good_arrays()
    a["train_label"] = np.array([{"label": i % 3} for i in range(24)], dtype=object)  # needs allow_pickle
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case(r"'test_label' has negative labels")
def npz_negative_test_labels(tmp):
    a = good_arrays()
    a["test_label"] = a["test_label"] - 1
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case(r"test has classes \[7\] that train lacks")
def npz_test_class_not_in_train(tmp):
    a = good_arrays()
    a["test_label"][0] = 7
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case(r"train has a single class \('0'\); probes need at least 2")
def npz_single_class(tmp):
    a = good_arrays()
    a["train_label"][:] = 0
    a["test_label"][:] = 0
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case(r"train has no labelled images")
def npz_all_train_unlabelled(tmp):
    a = good_arrays()
    a["train_label"][:] = -1
    a["test_label"][:] = 0
    a["classes"] = np.array(["a", "b"])
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case(r"train has no class sub-folders \(it is empty\)")
def image_folder_empty(tmp):
    (tmp / "imgs" / "train").mkdir(parents=True)
    (tmp / "imgs" / "test").mkdir()
    return _eval(tmp, data=f"folder:{tmp / 'imgs'}")


@case(r"holds 2 images directly; move them into class folders")
def image_folder_flat(tmp):
    data = image_folder(tmp / "imgs")
    for i in range(2):
        Image.fromarray(images(1)[0]).save(tmp / "imgs" / "train" / f"flat{i}.png")
    for c in ("a", "b"):
        for p in (tmp / "imgs" / "train" / c).iterdir():
            p.unlink()
        (tmp / "imgs" / "train" / c).rmdir()
    return _eval(tmp, data=data)


@case(r"class 'b' has no test images")
def image_folder_class_missing_from_test(tmp):
    return _eval(tmp, data=image_folder(tmp / "imgs", test={"a": 2}))


@case(r"class folder 'c' is not a class of train/")
def image_folder_test_class_not_in_train(tmp):
    return _eval(tmp, data=image_folder(tmp / "imgs", test={"a": 2, "b": 2, "c": 1}))


@case(r"image folder .*nowhere not found")
def image_folder_missing(tmp):
    return _eval(tmp, data=f"folder:{tmp / 'nowhere'}")


@case(r"z\.png is not a readable image \(OSError: Truncated File Read\)")
def image_folder_corrupt_image(tmp):
    data = image_folder(tmp / "imgs", train={"a": 3, "b": 3})
    (tmp / "imgs" / "train" / "b" / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)  # decoded last
    return _eval(tmp, data=data)


@case(r"c\.jpg is not a readable image \(UnidentifiedImageError")
def image_folder_file_that_is_not_an_image(tmp):
    data = image_folder(tmp / "imgs")
    (tmp / "imgs" / "test" / "b" / "c.jpg").write_text("just text with an image extension")
    return _eval(tmp, data=data)


# --- protocol arguments

@case(r"few-shot k=50 exceeds the smallest train class \('b' has 3 labelled images\); use --shots with every k <= 3")
def fewshot_k_larger_than_smallest_class(tmp):
    args = _eval(tmp, data=image_folder(tmp / "imgs", train={"a": 5, "b": 3}))
    args[args.index("--shots") + 1] = "1,50"
    return args


@case(r"few-shot k must be >= 1, got 0")
def fewshot_k_zero(tmp):
    args = _eval(tmp)
    args[args.index("--shots") + 1] = "0,1"
    return args


@case(r"--shots expects comma-separated integers, got '1,five'")
def shots_not_integers(tmp):
    args = _eval(tmp)
    args[args.index("--shots") + 1] = "1,five"
    return args


@case(r"few-shot needs at least one seed")
def no_seeds(tmp):
    args = _eval(tmp)
    args[args.index("--seeds") + 1] = ","
    return args


@case(r"unknown probe\(s\) svm; choose from linear, fewshot, knn, finetune")
def unknown_probe(tmp):
    return _eval(tmp) + ["--probes", "linear,svm"]


@case(r"unknown baseline 'pixel'; choose from pixels, random-init")
def unknown_baseline(tmp):
    args = _eval(tmp)
    args[args.index("--baselines") + 1] = "pixel"
    return args


@case(r"batch size must be >= 1, got 0")
def batch_size_zero(tmp):
    return _eval(tmp) + ["--batch-size", "0"]


# --- output paths and the results store

@case(r"--out .*: folder .*missing does not exist; create it first")
def out_parent_missing(tmp):
    args = _eval(tmp)
    args[args.index("--out") + 1] = str(tmp / "out" / "missing" / "table")
    return args


@case(r"--out .*: .*afile is not a folder")
def out_parent_is_a_file(tmp):
    (tmp / "afile").write_text("x")
    args = _eval(tmp)
    args[args.index("--out") + 1] = str(tmp / "afile" / "table")
    return args


@case(r"--out .*adir\.csv is a folder; give a file path")
def out_is_a_folder(tmp):
    (tmp / "adir.csv").mkdir()
    args = _eval(tmp)
    args[args.index("--out") + 1] = str(tmp / "adir")
    return args


@case(r"cannot create the results store folder .*; set SSLZOO_HOME to a writable folder")
def sslzoo_home_is_a_file(tmp):
    (tmp / "home").write_text("not a folder")
    return _eval(tmp)


@case(r"results store .*results\.sqlite3 is unreadable .*move it away", cmd="leaderboard")
def leaderboard_store_corrupt(tmp):
    (tmp / "home").mkdir()
    (tmp / "home" / "results.sqlite3").write_bytes(b"garbage, not SQLite " * 200)
    return ["--out", str(tmp / "out" / "lb.md")]


@case(r"--plot .*curves\.jpg: the plot is a PNG image", cmd="leaderboard")
def leaderboard_plot_not_png(tmp):
    return ["--plot", str(tmp / "out" / "curves.jpg")]


@case(r"no few-shot results to plot", cmd="leaderboard")
def leaderboard_plot_without_fewshot_results(tmp):
    return ["--plot", str(tmp / "out" / "curves.png"), "--out", str(tmp / "out" / "lb.md")]


@case(r"--out .*lb\.txt: cannot tell the table format; use a \.md, \.csv or \.json suffix", cmd="leaderboard")
def leaderboard_out_unknown_suffix(tmp):
    return ["--out", str(tmp / "out" / "lb.txt")]


@case(r"unknown model 'nope'", cmd="info")
def info_unknown_model(tmp):
    return ["nope"]


# --- training

def _train(tmp, *sets, recipe="simclr_fashion_mnist_cpu", data=None):
    data = data or npz(tmp / "good.npz", **good_arrays())
    args = [recipe, "--out", str(tmp / "out" / "run"), "--set", f"data.dataset={data}", "--set", "model.width=4"]
    for s in sets:
        args += ["--set", s]
    return args


@case(r"recipe 'simclr_fashion_mnist' not found .*did you mean simclr_fashion_mnist_cpu", cmd="train")
def train_unknown_recipe(tmp):
    return _train(tmp, recipe="simclr_fashion_mnist")


@case(r"config key 'optim\.lr' must be a number, got 'abc'", cmd="train")
def train_value_of_wrong_type(tmp):
    return _train(tmp, "optim.lr=abc")


@case(r"override 'optim\.lr' must look like section\.key=value", cmd="train")
def train_override_without_equals(tmp):
    return _train(tmp, "optim.lr")


@case(r"config key 'optim' is a section", cmd="train")
def train_override_of_a_section(tmp):
    return _train(tmp, "optim=3")


@case(r"unknown method 'simclrr'.*simclr", cmd="train")
def train_unknown_method(tmp):
    return _train(tmp, "method.name=simclrr")


@case(r"has 3 channels but model\.in_chans=1; set model\.in_chans=3", cmd="train")
def train_channels_mismatch(tmp):
    a = good_arrays()
    a["train_image"] = images(24, c=3)
    a["test_image"] = images(9, c=3)
    return _train(tmp, data=npz(tmp / "rgb.npz", **a))


@case(r"svhn train not found: put train_32x32\.mat in .*, or pass --download", cmd="train")
def train_dataset_missing_offline(tmp):
    return _train(tmp, data="svhn")


@case(r"batch_size 512 is larger than the dataset \(24 images\); lower optim\.batch_size", cmd="train")
def train_batch_larger_than_dataset(tmp):
    return _train(tmp, "optim.batch_size=512")


@case(r"cannot read checkpoint .*checkpoint\.pt \(.*\); delete it", cmd="train")
def train_resume_from_corrupt_checkpoint(tmp):
    (tmp / "run").mkdir()
    (tmp / "run" / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated checkpoint")
    args = _train(tmp, "optim.batch_size=8")
    args[args.index("--out") + 1] = str(tmp / "run")
    return args + ["--resume"]


# --- embed and the HTML leaderboard (issue 19)

def _embed(tmp, data, out="feats.npy"):
    return ["--model", str(model_folder(tmp / "model")), "--data", str(data), "--out", str(tmp / "out" / out),
            "--batch-size", "2"]


def _photos(tmp, n=3) -> Path:
    root = tmp / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(images(1, seed=i)[0]).save(root / "sub" / f"{i}.png")
    return root


@case(r"photos/zz\.png is not a readable image \(UnidentifiedImageError: .*\); replace or remove it", cmd="embed")
def embed_unreadable_image(tmp):
    root = _photos(tmp)
    (root / "zz.png").write_bytes(b"not a png at all")  # sorted last: fails after the first batches are written
    return _embed(tmp, root)


@case(r"no images in .*photos \(looked for \.png, .* in it and its sub-folders\)", cmd="embed")
def embed_empty_folder(tmp):
    (tmp / "photos" / "sub").mkdir(parents=True)
    (tmp / "photos" / "readme.txt").write_text("no images here")
    return _embed(tmp, tmp / "photos")


@case(r"--out .*feats\.csv: cannot tell the file format from '\.csv'; use \.npy \(numpy\) or \.safetensors",
      cmd="embed")
def embed_out_unknown_suffix(tmp):
    return _embed(tmp, _photos(tmp), out="feats.csv")


@case(r"--format html writes a folder with index\.html; give it with --out DIR", cmd="leaderboard")
def leaderboard_html_without_out(tmp):
    return ["--format", "html"]


@case(r"--out .*page\.html is a file; the HTML leaderboard is a folder", cmd="leaderboard")
def leaderboard_html_out_is_a_file(tmp):
    (tmp / "page.html").write_text("<p>mine</p>")
    return ["--format", "html", "--out", str(tmp / "page.html")]


# ----------------------------------------------------------------------------- the checks


PROGRESS = re.compile(r"^.*\d+%\|.*\| *\d+/\d+ \[.*\]\s*$")  # a tqdm bar: progress, not a message


def error_lines(stderr: str) -> list:
    """stderr without blank lines and tqdm progress bars (drawn with \\r while features are computed)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not PROGRESS.match(ln)]


def _files(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=c[3])) if c[3] else n
                                  for n, c in CASES.items()])
def test_bad_input(name, tmp_path):
    cmd, pattern, build, _ = CASES[name]
    (tmp_path / "out").mkdir()
    argv = build(tmp_path)
    before = set(_files(tmp_path))
    env = {"SSLZOO_HOME": str(tmp_path / "home"), "SSLZOO_DATA": str(tmp_path / "data")}
    r = runner().run(cmd, *argv, env=env)
    lines = error_lines(r.stderr)
    assert r.returncode != 0, f"exit 0 for {name}: {r.stdout[-500:]}"
    assert len(lines) == 1, f"{name}: stderr is not one line:\n{r.stderr[-3000:]}"
    assert re.search(pattern, lines[0]), f"{name}: {lines[0]!r} does not match {pattern!r}"
    assert lines[0].startswith(f"sslzoo {cmd}: error: ")
    # nothing half-written: the output folder is empty, no temporary file anywhere, no result stored
    assert os.listdir(tmp_path / "out") == [], f"{name} wrote {os.listdir(tmp_path / 'out')}"
    new = set(_files(tmp_path)) - before
    assert not [f for f in new if f.endswith(".tmp") or "/." in f or f.startswith(".")], new
    db = tmp_path / "home" / "results.sqlite3"
    if db.is_file() and cmd == "eval":
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0
    if os.environ.get("SSLZOO_BAD_INPUTS_LOG"):  # collect the messages for docs/bad-inputs.md
        with open(os.environ["SSLZOO_BAD_INPUTS_LOG"], "a") as f:
            f.write(json.dumps({"case": name, "command": cmd, "rc": r.returncode,
                                "message": lines[0].replace(str(tmp_path), "<tmp>")}) + "\n")


def test_every_case_is_documented():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md").read_text()
    missing = [name for name in CASES if f"`{name}`" not in doc]
    assert not missing, f"docs/bad-inputs.md lacks {missing}; regenerate it (see its header)"


def test_catalogue_is_large():
    assert len(CASES) >= 45


def test_the_fork_runner_behaves_like_a_fresh_python(tmp_path):
    """The fast runner forks a pre-imported driver; a fresh `python -m training` gives the same result."""
    args = ["eval", "--model", "nope_model", "--dataset", "npz:/nonexistent.npz"]
    env = {"SSLZOO_HOME": str(tmp_path / "home")}
    fresh = Runner(fresh=True)
    try:
        a = fresh.run(*args, env=env)
    finally:
        fresh.close()
    b = runner().run(*args, env=env)
    assert (a.returncode, a.stderr, a.stdout) == (b.returncode, b.stderr, b.stdout)
    assert a.returncode == 2 and "unknown model 'nope_model'" in a.stderr


# ----------------------------------------------------------------------------- the encoder's own input check


@pytest.fixture
def encoder(tmp_path):
    from zoo.hub import create_model

    return create_model(model_folder(tmp_path / "m"))


def test_encoder_refuses_wrong_channels(encoder):
    from zoo.hub import InputError

    with pytest.raises(InputError, match=r"tiny takes 1-channel images, got 3 channels .*model\.preprocess"):
        encoder(torch.rand(2, 3, 12, 12))


def test_encoder_refuses_unbatched_and_tiny_images(encoder):
    from zoo.hub import InputError, total_stride

    with pytest.raises(InputError, match=r"batch of images \[B, 1, H, W\].*x\[None\]"):
        encoder(torch.rand(1, 12, 12))
    assert total_stride(encoder) == 16  # 3x3 stride-1 stem, max-pool, three stride-2 stages
    with pytest.raises(InputError, match=r"8x8 images are too small; the encoder downsamples 16x"):
        encoder(torch.rand(2, 1, 8, 8))
    assert encoder(torch.rand(2, 1, 9, 9)).shape == (2, 32)  # just large enough


def test_encoder_input_check_survives_pickling(encoder):
    import io

    buf = io.BytesIO()
    torch.save(encoder, buf)  # a hook must not make the module unpicklable
    assert buf.tell() > 0


def _write_doc(log_path: str) -> str:
    """``python tests/test_bad_inputs.py LOG.jsonl > docs/bad-inputs.md``: the catalogue as Markdown, from
    the messages a run with ``SSLZOO_BAD_INPUTS_LOG=LOG.jsonl`` collected."""
    seen = {}
    for line in Path(log_path).read_text().splitlines():
        rec = json.loads(line)
        seen[rec["case"]] = rec
    out = ["# Bad inputs and what `sslzoo` answers", "",
           "Every row is a test case in `tests/test_bad_inputs.py`: the command runs in its own process and must "
           "exit with a non-zero status, print exactly this one line on stderr (no traceback) and leave nothing "
           "half-written (empty output folder, no temporary file, no result in the store). Paths are shown as "
           "`<tmp>`. Regenerate with",
           "", "    SSLZOO_BAD_INPUTS_LOG=/tmp/bad.jsonl pytest tests/test_bad_inputs.py",
           "    python tests/test_bad_inputs.py /tmp/bad.jsonl > docs/bad-inputs.md", "",
           "| # | case | command | exit | message (stderr) |", "|---|---|---|---|---|"]
    for i, name in enumerate((n for n, c in CASES.items() if not c[3]), 1):
        rec = seen.get(name)
        msg = rec["message"].replace("|", "\\|") if rec else "(not collected)"
        cmd = CASES[name][0]
        out.append(f"| {i} | `{name}` | `sslzoo {cmd}` | {rec['rc'] if rec else ''} | {msg} |")
    out += ["", "Checked in-process (the encoder's forward pre-hook, `zoo.hub.InputCheck`, raises "
            "`zoo.hub.InputError`):",
            "", "| case | message |", "|---|---|",
            "| `encoder_wrong_channels` | `tiny takes 1-channel images, got 3 channels (shape (2, 3, 12, 12)); "
            "model.preprocess converts grayscale / RGB / RGBA images` |",
            "| `encoder_unbatched_image` | `tiny takes a batch of images [B, 1, H, W], got a tensor of shape "
            "(1, 12, 12); add a batch dimension with x[None]` |",
            "| `encoder_image_too_small` | `tiny: 8x8 images are too small; the encoder downsamples 16x, so it "
            "needs more than 8 pixels per side; model.preprocess resizes to 12x12` |",
            ]
    gaps = [f"- `{n}`: {c[3]}" for n, c in CASES.items() if c[3]]
    if gaps:
        out += ["", "Known gaps (strict `xfail` cases: they start failing once fixed, then drop the marker):", "",
                *gaps]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(_write_doc(sys.argv[1]))
