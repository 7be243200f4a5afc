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


def check_case(name, tmp_path):
    """Run catalogue case ``name``: one error line matching its pattern, a non-zero exit, nothing
    half-written (run for every case by :func:`test_bad_input` at the end of this file)."""
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


# ----------------------------------------------------------------------------- issue 17a: runs and user files
# never destroyed, training that means nothing, every error one line. These cases start from files a user (or
# an earlier run) already has, outside tmp/out; after the refused command every one of them must be byte for
# byte what it was. Registered in CASES (the catalogue and docs/bad-inputs.md) and run by the test below.

CASES_17A = []
HELD_LOCKS = []


def case17a(pattern, cmd="eval"):
    def deco(fn):
        case(pattern, cmd)(fn)
        CASES_17A.append(fn.__name__)
        return fn
    return deco


def _fake_run(folder: Path, cfg: dict | None = None) -> Path:
    """A run folder as `sslzoo train` leaves it (a checkpoint holding its recipe), plus a user's file."""
    from training.config import load_recipe

    folder.mkdir(parents=True)
    cfg = cfg or load_recipe("simclr_fashion_mnist_cpu", ["model.width=4"])
    torch.save({"config": cfg, "step": 3}, folder / "checkpoint.pt")
    (folder / "config.yaml").write_text("name: my-run\n")
    (folder / "log.csv").write_text("step,epoch,loss\n1,0,3.9\n")
    (folder / "export").mkdir()
    (folder / "export" / "model.safetensors").write_bytes(b"weights of a finished run")
    (folder / "notes.md").write_text("hand-written notes")
    return folder


def _train_into(tmp, folder, *sets, recipe="simclr_fashion_mnist_cpu", data=None):
    args = _train(tmp, *sets, recipe=recipe, data=data)
    args[args.index("--out") + 1] = str(folder)
    return args


@case17a(r"--out .*run already holds a run \(checkpoint\.pt, config\.yaml, log\.csv, export\); continue it with "
         r"--resume, replace it with --overwrite, or choose another --out", cmd="train")
def train_into_existing_run_without_resume(tmp):
    return _train_into(tmp, _fake_run(tmp / "run"), "optim.batch_size=8")


@case17a(r"--resume: the run in .*run was started with recipe 'simclr_resnet18w16_fashion_mnist' \(method simclr\), "
         r"not recipe 'dcl_resnet18w16_fashion_mnist' \(method dcl\); they differ in .*resume with the run's own "
         r"recipe", cmd="train")
def train_resume_with_another_recipe(tmp):
    from training.config import load_recipe

    data = npz(tmp / "good.npz", **good_arrays())
    cfg = load_recipe("simclr_fashion_mnist_cpu", [f"data.dataset={data}", "model.width=4", "optim.batch_size=8"])
    run = _fake_run(tmp / "run", cfg)
    return _train_into(tmp, run, "optim.batch_size=8", recipe="dcl_fashion_mnist_cpu", data=data) + ["--resume"]


@case17a(r"--resume continues the run in --out and --overwrite replaces it; give one of them", cmd="train")
def train_resume_and_overwrite(tmp):
    return _train_into(tmp, _fake_run(tmp / "run"), "optim.batch_size=8") + ["--resume", "--overwrite"]


@case17a(r"--out .*afile is a file; give a folder", cmd="train")
def train_out_is_a_file(tmp):
    (tmp / "afile").write_bytes(b"not a run folder")
    return _train_into(tmp, tmp / "afile", "optim.batch_size=8")


@case17a(r"--out .*run is in use by another training process \(pid \d+ on .*train\.lock\); wait for it to end",
         cmd="train")
def train_into_a_locked_run_folder(tmp):
    from training.runfolder import RunLock

    HELD_LOCKS.append(RunLock(tmp / "run").acquire())  # another process training there (released by the test)
    return _train_into(tmp, tmp / "run", "optim.batch_size=8") + ["--resume"]


@case17a(r"train\.max_steps=-5 trains nothing; it must be >= 1 \(null: no step limit\)", cmd="train")
def train_negative_max_steps(tmp):
    return _train(tmp, "optim.batch_size=8", "train.max_steps=-5")


@case17a(r"optim\.epochs=0 trains nothing; it must be >= 1", cmd="train")
def train_zero_epochs(tmp):
    return _train(tmp, "optim.batch_size=8", "optim.epochs=0")


@case17a(r"optim\.batch_size=1 is too small for simclr: a contrastive loss needs negatives: with 1 image per batch "
         r"it is 0 and trains nothing; use >= 2", cmd="train")
def train_simclr_batch_of_one(tmp):
    return _train(tmp, "optim.batch_size=1")


@case17a(r"optim\.batch_size=1 is too small for barlow: the cross-correlation is normalised over the batch",
         cmd="train")
def train_barlow_batch_of_one(tmp):
    return _train(tmp, "optim.batch_size=1", "method.name=barlow")


@case17a(r"override 'optim\.lr=' has no value; write optim\.lr=VALUE", cmd="train")
def train_override_with_empty_value(tmp):
    return _train(tmp, "optim.lr=")


@case17a(r"r\.yaml, line 5: key 'lr' is given twice \(first on line 3\); keep one", cmd="train")
def train_recipe_with_duplicate_key(tmp):
    (tmp / "r.yaml").write_text("base: simclr_fashion_mnist_cpu\noptim:\n  lr: 0.1\n  epochs: 2\n  lr: 0.5\n")
    return _train(tmp, recipe=str(tmp / "r.yaml"))


@case17a(r"r\.yaml, line 4, column 1: not valid YAML \(expected ',' or '\]', but got '<stream end>'; while parsing a "
         r"flow sequence at line 3, column 7\); fix the recipe", cmd="train")
def train_recipe_yaml_syntax_error(tmp):
    (tmp / "r.yaml").write_text("base: simclr_fashion_mnist_cpu\noptim:\n  lr: [0.1\n")
    return _train(tmp, recipe=str(tmp / "r.yaml"))


@case17a(r"--device cuda: no CUDA GPU is available on this machine .*; use --device cpu", cmd="train")
def train_on_cuda_without_gpu(tmp):
    return _train(tmp, "optim.batch_size=8") + ["--device", "cuda"]


@case17a(r"--device 'gpu0' is not a device; use cpu or cuda", cmd="train")
def train_on_a_device_that_is_not_one(tmp):
    return _train(tmp, "optim.batch_size=8") + ["--device", "gpu0"]


@case17a(r"(Operation not permitted|Read-only file system|Permission denied): /sys/sslzoo-17a-run.*; (choose a folder "
         r"you can write to|the file system is read-only)", cmd="train")
def train_out_not_writable(tmp):
    return _train_into(tmp, Path("/sys/sslzoo-17a-run"), "optim.batch_size=8")


@case17a(r"--out .*conv already holds model\.safetensors, config\.json; pass --overwrite to replace them \(other "
         r"files there are kept\)", cmd="convert")
def convert_into_a_folder_with_converted_files(tmp):
    model_folder(tmp / "conv")
    (tmp / "conv" / "notes.md").write_text("mine")
    return ["tiny", "--format", "solo-learn", "--checkpoint", str(tmp / "any.ckpt"), "--out", str(tmp / "conv")]


@case17a(r"--out .*afile is a file; give a folder", cmd="convert")
def convert_out_is_a_file(tmp):
    (tmp / "afile").write_bytes(b"mine")
    return ["tiny", "--format", "solo-learn", "--checkpoint", str(tmp / "any.ckpt"), "--out", str(tmp / "afile")]


@case17a(r"--out .*report\.csv: .*report\.csv already exists; pass --overwrite to replace it")
def eval_out_exists(tmp):
    (tmp / "reports").mkdir()
    (tmp / "reports" / "report.csv").write_text("a report I wrote\n")
    (tmp / "reports" / "report.md").write_text("# my notes\n")
    args = _eval(tmp)
    args[args.index("--out") + 1] = str(tmp / "reports" / "report.csv")
    return args


@case17a(r"--out .*table: .*table\.md already exists; pass --overwrite", cmd="finetune")
def finetune_out_exists(tmp):
    (tmp / "reports").mkdir()
    (tmp / "reports" / "table.md").write_text("# mine\n")
    return ["--model", str(model_folder(tmp / "model")), "--dataset", npz(tmp / "good.npz", **good_arrays()),
            "--out", str(tmp / "reports" / "table")]


@case17a(r"--out .*lb\.md: .*lb\.md already exists; pass --overwrite", cmd="leaderboard")
def leaderboard_out_exists(tmp):
    (tmp / "reports").mkdir()
    (tmp / "reports" / "lb.md").write_text("# mine\n")
    return ["--out", str(tmp / "reports" / "lb.md")]


@case17a(r"--plot .*curves\.png already exists; pass --overwrite", cmd="leaderboard")
def leaderboard_plot_exists(tmp):
    (tmp / "reports").mkdir()
    (tmp / "reports" / "curves.png").write_bytes(b"\x89PNG my figure")
    return ["--plot", str(tmp / "reports" / "curves.png")]


@pytest.mark.parametrize("name", CASES_17A)
def test_bad_input_keeps_every_file(name, tmp_path):
    """As test_bad_input, and every file that existed before the command is byte for byte unchanged."""
    if name == "train_on_cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if name == "train_out_not_writable" and os.access("/sys", os.W_OK) and not Path("/sys/class").is_dir():
        pytest.skip("no sysfs here")
    cmd, pattern, build, _ = CASES[name]
    (tmp_path / "out").mkdir()
    try:
        argv = build(tmp_path)
        before = {f: (tmp_path / f).read_bytes() for f in _files(tmp_path) if (tmp_path / f).is_file()}
        env = {"SSLZOO_HOME": str(tmp_path / "home"), "SSLZOO_DATA": str(tmp_path / "data")}
        r = runner().run(cmd, *argv, env=env)
        after = {f: (tmp_path / f).read_bytes() for f in _files(tmp_path) if (tmp_path / f).is_file()}
    finally:
        while HELD_LOCKS:
            HELD_LOCKS.pop().release()
    lines = error_lines(r.stderr)
    assert r.returncode != 0, f"exit 0 for {name}: {r.stdout[-500:]}"
    assert len(lines) == 1, f"{name}: stderr is not one line:\n{r.stderr[-3000:]}"
    assert re.search(pattern, lines[0]), f"{name}: {lines[0]!r} does not match {pattern!r}"
    assert lines[0].startswith(f"sslzoo {cmd}: error: ")
    assert os.listdir(tmp_path / "out") == [], f"{name} wrote {os.listdir(tmp_path / 'out')}"
    changed = [f for f in before if after.get(f) != before[f]]
    assert not changed, f"{name} changed or removed {changed}"
    new = set(after) - set(before)
    assert not [f for f in new if not f.startswith("home/")], f"{name} wrote {new}"
    if os.environ.get("SSLZOO_BAD_INPUTS_LOG"):
        with open(os.environ["SSLZOO_BAD_INPUTS_LOG"], "a") as f:
            f.write(json.dumps({"case": name, "command": cmd, "rc": r.returncode,
                                "message": lines[0].replace(str(tmp_path), "<tmp>")}) + "\n")
# ----------------------------------------------------------------------------- issue 17: input validation

CASES_17B = []


def model_folder_with_config(path, edit):
    """A zoo folder whose config.json has been changed by ``edit(cfg)`` (in place)."""
    folder = model_folder(path)
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def case17(pattern, cmd="eval"):
    def deco(fn):
        CASES_17B.append(fn.__name__)
        return case(pattern, cmd)(fn)
    return deco


@case17(r"config\.json: unknown arch key 'widht'; did you mean 'width'\?")
def config_unknown_arch_key(tmp):
    def edit(cfg):
        cfg["arch"]["widht"] = cfg["arch"].pop("width")
    return _eval(tmp, model=model_folder_with_config(tmp / "m", edit))


@case17(r"config\.json: arch width must be an integer in 1\.\.65536, got -4")
def config_negative_width(tmp):
    def edit(cfg):
        cfg["arch"]["width"] = -4
    return _eval(tmp, model=model_folder_with_config(tmp / "m", edit))


@case17(r"preprocess crop must be a positive integer, got 0")
def config_zero_crop(tmp):
    def edit(cfg):
        cfg["preprocess"]["crop"] = 0
    return _eval(tmp, model=model_folder_with_config(tmp / "m", edit))


@case17(r"holds integer tensors for float parameters \(conv1\.weight int64.*export the weights as floating point")
def weights_integer_dtype(tmp):
    sd = {k: (v.round().to(torch.int64) if v.is_floating_point() else v)
          for k, v in build_resnet(**ARCH).state_dict().items()}
    return _eval(tmp, model=model_folder(tmp / "m", state=sd))


@case17(r"'test_label' has the uint8 'unlabelled' label 255; only train labels may be < 0")
def npz_uint8_255_test_label(tmp):
    a = good_arrays()
    a["test_label"] = np.array([0, 1, 2, 0, 1, 2, 0, 1, 255], np.uint8)
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case17(r"train class '2' has no test images; every train class needs test images")
def npz_train_class_missing_from_test(tmp):
    a = good_arrays()
    a["test_label"] = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0])
    return _eval(tmp, data=npz(tmp / "d.npz", **a))


@case17(r"--root .* applies to catalogue data sets; npz:PATH names its own files \(drop --root\)")
def root_with_an_npz_spec(tmp):
    (tmp / "r").mkdir()
    return _eval(tmp, None, None, "--root", str(tmp / "r"))


@case17(r"mnist train not found: put train-images-idx3-ubyte\.gz and train-labels-idx1-ubyte\.gz in .*/empty, or")
def root_without_the_data_does_not_fall_back(tmp):
    (tmp / "empty").mkdir()
    home = tmp / "data" / "mnist"  # a whole copy in the data home, which the old loader used instead
    home.mkdir(parents=True)
    for prefix, n in (("train", 24), ("t10k", 9)):
        arrays = ((f"{prefix}-images-idx3-ubyte", images(n, size=12)),
                  (f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 3).astype(np.uint8)))
        for stem, arr in arrays:
            head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            (home / stem).write_bytes(head + arr.tobytes())
    return _eval(tmp, None, "mnist", "--root", str(tmp / "empty"))


@case17(r"1\.tif: a mode-F \(32-bit float\) image has no fixed value range")
def folder_float_image(tmp):
    spec = image_folder(tmp / "ds")
    Image.fromarray(np.zeros((12, 12), np.float32)).save(tmp / "ds" / "test" / "a" / "1.tif")
    (tmp / "ds" / "test" / "a" / "1.png").unlink()
    return _eval(tmp, data=spec)




def test_explicit_inputs_honoured_or_refused(tmp_path, monkeypatch):
    """pretrained=False with weights= was random weights; SSLZOO_HOME="" wrote into the current folder."""
    from zoo.base import home
    from zoo.hub import create_model
    from zoo.io import WeightsError

    folder = model_folder(tmp_path / "m")
    with pytest.raises(WeightsError, match=r"pretrained=False builds random weights, but weights=.* was given"):
        create_model(folder, pretrained=False, weights=folder)
    with pytest.raises(WeightsError, match=r"pretrained=False builds random weights"):
        create_model(BUNDLED, pretrained=False, weights=folder)
    monkeypatch.setenv("SSLZOO_HOME", "")
    assert home() == Path.home() / ".cache" / "sslzoo"
# --- external encoders (timm: / hf-hub: / torchvision:, zoo/external.py): cases appended here, run by their own
# test below (test_bad_input's parameter list was fixed before these registered)

EXTERNAL_CASES = []


def external_case(pattern):
    def deco(fn):
        EXTERNAL_CASES.append(fn.__name__)
        return case(pattern)(fn)
    return deco


@external_case(r"unknown timm model 'resnet1'; did you mean resnet18")
def external_unknown_timm_model(tmp):
    return _eval(tmp, model="timm:resnet1")


@external_case(r"torchvision resnet18 has no weights 'IMAGENET'; did you mean IMAGENET1K_V1\?; its weights: "
               r"IMAGENET1K_V1, DEFAULT")
def external_unknown_torchvision_weights(tmp):
    return _eval(tmp, model="torchvision:resnet18.IMAGENET")


@external_case(r"hf-hub:ssl-zoo-tests/no-such-repo: cannot download its files \(HF_HUB_OFFLINE is set and they are "
               r"not in the local cache\); run once with network .* --weights FILE")
def external_offline_not_cached(tmp):
    return _eval(tmp, model="hf-hub:ssl-zoo-tests/no-such-repo")


@external_case(r"timm:resnet18 weights .*odd\.safetensors does not fit the architecture: missing: .*unexpected: "
               r"backbone\.conv1\.weight")
def external_weights_file_does_not_fit(tmp):
    from safetensors.torch import save_file

    save_file({"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp / "odd.safetensors")
    return _eval(tmp, "timm:resnet18", None, "--weights", str(tmp / "odd.safetensors"))


@external_case(r"--weights applies to the frozen probes only, not to finetune; run those with a zoo folder as --model")
def weights_file_with_finetune(tmp):
    (tmp / "w.safetensors").write_bytes(b"never read")
    return _eval(tmp, "timm:resnet18", None, "--weights", str(tmp / "w.safetensors"), "--probes", "knn,finetune")


# ----------------------------------------------------------------------------- Flax / JAX checkpoints (issue 19)

# msgpack bytes of {"params": {...}, "batch_stats": nil}, what flax.serialization.to_bytes writes for a tree
_FLAX_EMPTY = b"\x82\xa6params\x80\xabbatch_stats\xc0"
_FLAX_LOGREG = b"\x82\xa6params\x81\xa7Dense_0\x80\xabbatch_stats\xc0"  # LogisticRegression_10.ckpt's modules


@case(r"SimCLR\.ckpt is a Flax/JAX msgpack checkpoint, not a PyTorch pickle; convert it with --format flax-msgpack",
      cmd="convert")
def convert_flax_msgpack_as_pytorch(tmp):
    (tmp / "SimCLR.ckpt").write_bytes(_FLAX_EMPTY)  # the JAX tutorial's file, converted as the PyTorch tutorial's
    return ["simclr_resnet18_stl10_uva_tutorial", "--checkpoint", str(tmp / "SimCLR.ckpt"),
            "--out", str(tmp / "out" / "zoo")]


@case(r"no flaxmodels-style ResNet \(Conv_0, BatchNorm_0, BasicBlock_0 \.\.\.\) under params \(top-level modules: "
      r"Dense_0\)", cmd="convert")
def convert_flax_without_resnet(tmp):
    (tmp / "LogisticRegression_10.ckpt").write_bytes(_FLAX_LOGREG)
    return ["logreg", "--format", "flax-msgpack", "--checkpoint", str(tmp / "LogisticRegression_10.ckpt"),
            "--out", str(tmp / "out" / "zoo")]




# ----------------------------------------------------------------------------- issue 18 (eval side): unlabelled
# folders, packs, decode workers.

CASES_18A = []


def case18a(pattern, cmd="eval"):
    def deco(fn):
        case(pattern, cmd)(fn)
        CASES_18A.append(fn.__name__)
        return fn
    return deco


def _jpeg_bytes(seed=0) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(images(1, size=24, c=3, seed=seed)[0]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@case18a(r"imgs/test/b/z\.jpg is not a readable image \(OSError: .*\); replace or remove it")
def image_folder_truncated_jpeg_in_a_worker(tmp):
    data = image_folder(tmp / "imgs")
    (tmp / "imgs" / "test" / "b" / "z.jpg").write_bytes(_jpeg_bytes()[:300])  # sorted last: decoded in a worker
    return _eval(tmp, None, data, "--workers", "2", "--batch-size", "2")


@case18a(r"image folder .*photos is unlabelled \(no train/ or test/ sub-folder\): it has one split, train, for "
         r"training and `sslzoo embed`; probes need labels")
def eval_unlabelled_folder(tmp):
    for i in range(3):
        (tmp / "photos" / "trip").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images(1, seed=i)[0]).save(tmp / "photos" / "trip" / f"{i}.png")
    return _eval(tmp, None, f"folder:{tmp / 'photos'}")


@case18a(r"--workers must be >= 0 \(0: decode in this process\), got -1")
def eval_negative_workers(tmp):
    return _eval(tmp, None, None, "--workers", "-1")


@case18a(r"2 file\(s\) of folder:.*imgs cannot be decoded: .*train/b/empty\.jpg: empty \(0 bytes\); .*notes\.jpg: "
         r"not a readable image .*; fix or remove them, or pass --skip-bad to leave them out of the pack", cmd="pack")
def pack_undecodable_files(tmp):
    image_folder(tmp / "imgs")
    (tmp / "imgs" / "train" / "b" / "empty.jpg").write_bytes(b"")
    (tmp / "imgs" / "test" / "a" / "notes.jpg").write_text("not an image\n")
    return [f"folder:{tmp / 'imgs'}", str(tmp / "out" / "pack"), "--workers", "0"]


@case18a(r"npz:.*d\.npz is held in memory \(decoded arrays, not image files\); `sslzoo pack` packs file-backed data "
         r"sets", cmd="pack")
def pack_in_memory_dataset(tmp):
    return [npz(tmp / "d.npz", **good_arrays()), str(tmp / "out" / "pack")]


@case18a(r"OUT .*mine exists and is not a pack \(no pack\.json\); --overwrite replaces packs only", cmd="pack")
def pack_overwrite_a_folder_that_is_not_a_pack(tmp):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "keep.txt").write_text("a user's file")
    return [image_folder(tmp / "imgs"), str(tmp / "mine"), "--overwrite"]


@case18a(r"--shard-size 'lots' is not a size; give bytes with a unit, e.g\. 1GB, 512MB or 2GiB", cmd="pack")
def pack_bad_shard_size(tmp):
    return [image_folder(tmp / "imgs"), str(tmp / "out" / "pack"), "--shard-size", "lots"]


@case18a(r".*nopack is not a pack \(no pack\.json\); write one with `sslzoo pack SRC OUT`")
def eval_pack_that_is_not_a_pack(tmp):
    (tmp / "nopack").mkdir()
    return _eval(tmp, None, f"pack:{tmp / 'nopack'}")


@case18a(r"pack .*pk: shard train-00000\.shard ends before image 5 \(.* bytes at offset .*\); the shard is "
         r"truncated, write the pack again with `sslzoo pack`")
def eval_pack_with_truncated_shard(tmp):
    from eval.packed import write_pack

    image_folder(tmp / "imgs")
    write_pack(f"folder:{tmp / 'imgs'}", tmp / "pk", workers=0)
    shard = tmp / "pk" / "train-00000.shard"
    shard.write_bytes(shard.read_bytes()[:-10])
    return _eval(tmp, None, f"pack:{tmp / 'pk'}")




# ----------------------------------------------------------------------------- the file-backed training source
# (issue 18)

def _jpeg_folder(tmp) -> str:
    root = tmp / "jpegs"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(images(1, size=20 + 4 * i, c=3, seed=i)[0]).save(root / split / c / f"{i}.JPEG")
    return f"folder:{root}"


@case(r"data\.source must be auto, memory or files, got 'disk'", cmd="train")
def train_data_source_unknown(tmp):
    return _train(tmp, "data.source=disk")


@case(r"data\.workers must be a whole number >= 0 \(0: decode in the training process\) or null, got -1", cmd="train")
def train_data_workers_negative(tmp):
    return _train(tmp, "data.workers=-1")


@case(r"good/train is held in memory; data\.source=files needs a file-backed data set", cmd="train")
def train_files_source_for_in_memory_data(tmp):
    return _train(tmp, "data.source=files")


@case(r"data\.source=files crops in DataLoader workers with torchvision's semantics; set augment\.version=2",
      cmd="train")
def train_files_source_with_augment_version_1(tmp):
    return _train(tmp, "data.source=files", "model.in_chans=3", data=_jpeg_folder(tmp))


# ----------------------------------------------------------------------------- train.compile (issue 20)

@case(r"train\.compile must be one of auto, none, inductor, aot_eager, got 'inducter'; did you mean 'inductor'\?$",
      cmd="train")
def train_compile_unknown_mode(tmp):
    return _train(tmp, "train.compile=inducter")


# ----------------------------------------------------------------------------- issue 20: `sslzoo convert --format`
# The convert parser is built without importing zoo.convert (and torch), so an unknown --format is refused by
# zoo.convert.convert itself -- one line naming the formats -- instead of by argparse's choices.

@case(r"unknown format 'caffe'; choose one of dissl-torchhub, .*flax-msgpack", cmd="convert")
def convert_unknown_format(tmp):
    (tmp / "a.ckpt").write_bytes(b"x")
    return ["newnet", "--format", "caffe", "--checkpoint", str(tmp / "a.ckpt"), "--out", str(tmp / "out" / "zoo")]


# ----------------------------------------------------------------------------- the runner of the whole catalogue
# Defined after the last @case so that its parametrisation sees every registered case (cases registered below a
# parametrised test are not collected by it). CASES_17A cases have their own runner (every file kept byte for
# byte: test_bad_input_keeps_every_file); the external-encoder cases need the timm extra.

@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=c[3])) if c[3] else n
                                  for n, c in CASES.items() if n not in CASES_17A])
def test_bad_input(name, tmp_path):
    if name in EXTERNAL_CASES:
        pytest.importorskip("timm", reason="timm is an optional extra (pip install ssl-zoo[timm]); CI installs it")
    check_case(name, tmp_path)

