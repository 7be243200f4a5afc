"""The file-backed training source (training/filesource.py, issue 18) on JPEG trees written here.

* a batch is the same with 0 and 2 DataLoader workers, and a crop depends only on (seed, epoch,
  sample index, view);
* a large JPEG is decoded at reduced size (draft mode) when the crop allows it, and the crop cut from
  the reduced image matches the one cut from the full decode;
* the post-crop augmentation leaves a view unchanged when every op is off (the full-view box is an
  identity resample, fused kernel and eager ops);
* SIGKILL mid-epoch + ``--resume`` with 2 workers = the uninterrupted run, bit for bit;
* 2 gloo ranks read disjoint samples that together cover the epoch (each opens only its own files),
  and ``Trainer.fit`` trains from files on 2 ranks;
* CMYK / grayscale JPEGs, a PNG named .JPEG and a 16-bit PNG train like any image (16 bits scaled);
* unreadable files (truncated JPEG, zero bytes, text) are replaced by the next sample and logged with a
  count; a run of them is one line naming the first file;
* ``data.source: auto`` picks memory / files as documented.
"""
import io
import logging
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sslzoo_runner import runner

sys.path.insert(0, str(Path(__file__).resolve().parent))

import filesource_worker as FW

from eval.datasets import load_split
from training.augmentation import ViewAugment
from training.config import load_recipe
from training.filesource import (
    MAX_REPLACEMENTS,
    CropDataset,
    FileBatches,
    FileSourceError,
    ViewCrop,
    augment_cropped,
    choose_source,
    crop_box,
    decode_crops,
    epoch_permutation,
)
from training.trainer import Trainer

CROP = ViewCrop((24, 24), (0.2, 1.0), (0.75, 4 / 3))
SMALL = ViewCrop((12, 12), (0.05, 0.4), (0.75, 4 / 3), "bicubic")


def jpeg_tree(root: Path, classes=4, per_class=8, lo=40, hi=160, seed=0, splits=("train", "test")) -> Path:
    """``root/{train,test}/c<k>/<i>.JPEG``: smooth colour images of random sizes in [lo, hi)."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w, h = (int(v) for v in rng.integers(lo, hi, 2))
                yy, xx = np.mgrid[0:h, 0:w]
                base = rng.integers(0, 256, 3)
                img = (base + 60 * np.sin(xx[..., None] / (7 + c) + yy[..., None] / 11 + np.arange(3))) % 256
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return jpeg_tree(tmp_path_factory.mktemp("jpegs"))


def _batches(ds, workers, start=(0, 0), steps=6, batch=8):
    it = iter(FileBatches(ds, len(ds), batch, seed=3, steps_per_epoch=len(ds) // batch, workers=workers, start=start))
    out = [next(it) for _ in range(steps)]
    it.close()
    return out


def test_same_batches_with_0_and_2_workers_and_from_any_start(tree):
    ds = CropDataset(load_split(f"folder:{tree}", "train"), [CROP, CROP, SMALL], seed=3)
    a = _batches(ds, 0, steps=6)  # 32 images, batch 8: 4 steps per epoch, so this crosses into epoch 1
    b = _batches(ds, 2, steps=6)
    for (va, ia), (vb, ib) in zip(a, b):
        assert torch.equal(ia, ib)
        assert [v.shape for v in va] == [(8, 3, 24, 24), (8, 3, 24, 24), (8, 3, 12, 12)]
        assert all(v.dtype == torch.uint8 for v in va)
        assert all(torch.equal(x, y) for x, y in zip(va, vb))
    # the epoch order is the in-memory path's permutation, and a start mid-epoch continues it exactly
    assert torch.equal(torch.cat([i for _, i in a[:4]]), epoch_permutation(32, 3, 0))
    c = _batches(ds, 2, start=(0, 3), steps=3)
    for (vc, ic), (va, ia) in zip(c, a[3:]):
        assert torch.equal(ic, ia) and all(torch.equal(x, y) for x, y in zip(vc, va))


def test_crops_depend_only_on_seed_epoch_index_view(tree):
    split = load_split(f"folder:{tree}", "train")
    ds = CropDataset(split, [CROP, CROP], seed=7)
    fresh = CropDataset(split, [CROP, CROP], seed=7)
    keys = [(0, 5), (1, 5), (0, 6), (2, 0)]
    first = {k: ds[k][0] for k in keys}
    for k in reversed(keys):  # another object, another order of calls: the same crops
        assert all(torch.equal(x, y) for x, y in zip(fresh[k][0], first[k]))
    assert not torch.equal(first[(0, 5)][0], first[(0, 5)][1])  # views differ
    assert not torch.equal(first[(0, 5)][0], first[(1, 5)][0])  # epochs differ
    assert not torch.equal(ds[(0, 5)][0][0], CropDataset(split, [CROP, CROP], seed=8)[(0, 5)][0][0])  # seeds differ
    boxes = {crop_box(7, e, i, v, 300, 400, CROP) for e in range(3) for i in range(3) for v in range(2)}
    assert len(boxes) == 18 and crop_box(7, 1, 2, 1, 300, 400, CROP) == crop_box(7, 1, 2, 1, 300, 400, CROP)


@pytest.mark.parametrize("hw, scale, ratio", [((300, 400), (0.2, 1.0), (0.75, 4 / 3)),
                                               ((375, 500), (0.08, 1.0), (0.75, 4 / 3)),
                                               ((40, 400), (0.5, 1.0), (0.75, 4 / 3))])  # mostly the fallback
def test_crop_box_draws_the_rule_of_sample_crop_boxes(hw, scale, ratio):
    """The scalar per-view draw and the batched torch one are two codings of one rule: the same
    distribution of box height, width and position (means within a few standard errors)."""
    from training.augmentation import sample_crop_boxes

    (H, W), n = hw, 4000
    crop = ViewCrop((24, 24), scale, ratio)
    ours = np.array([crop_box(3, 0, i, 0, H, W, crop) for i in range(n)], dtype=np.float64)
    ref = np.stack([t.numpy() for t in sample_crop_boxes(n, H, W, scale, ratio, torch.Generator().manual_seed(0))], 1)
    for col in range(4):  # top, left, h, w
        a, b = ours[:, col], ref[:, col]
        se = np.sqrt(a.var() / n + b.var() / n) + 1e-9
        assert abs(a.mean() - b.mean()) < 5 * se, (col, a.mean(), b.mean())
    assert (ours[:, 0] + ours[:, 2] <= H).all() and (ours[:, 1] + ours[:, 3] <= W).all() and (ours >= 0).all()


def test_large_jpeg_is_decoded_at_reduced_size(tmp_path):
    h, w = 1500, 2000
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95)
    crop = ViewCrop((96, 96), (0.08, 1.0), (0.75, 4 / 3))
    box = (300, 500, 700, 900)  # 700 x 900 px: 1/4 keeps it >= 96 px (175 x 225), 1/8 does not (87 x 112)
    views, decoded = decode_crops(buf.getvalue(), [crop], lambda hh, ww: [box], 3)
    assert decoded == (500, 375), decoded  # decoded at 1/4, never at 2000 x 1500
    small_box = (300, 500, 120, 150)  # too small to reduce at all
    _, full = decode_crops(buf.getvalue(), [crop], lambda hh, ww: [small_box], 3)
    assert full == (w, h)
    # the crop from the reduced decode shows the same part of the image as PIL on the full decode
    ref = Image.fromarray(img).resize((96, 96), Image.BILINEAR, box=(500, 300, 1400, 1000))
    diff = np.abs(views[0].permute(1, 2, 0).numpy().astype(int) - np.asarray(ref).astype(int))
    assert diff.mean() < 3, diff.mean()
    png = io.BytesIO()
    Image.fromarray(img[:400, :500]).save(png, "PNG")  # no draft for PNG: full size, still correct
    _, dec = decode_crops(png.getvalue(), [crop], lambda hh, ww: [(0, 0, 400, 400)], 3)
    assert dec == (500, 400)


@pytest.mark.parametrize("fused", [True, False])
def test_post_crop_augmentation_keeps_the_view(fused):
    x = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8)
    off = ViewAugment(size=20, flip_p=0, jitter_p=0, grayscale_p=0, blur_p=0, mean=(0, 0, 0), std=(1, 1, 1),
                      version=2, interpolation="bicubic", fused=fused)
    assert (augment_cropped(off, x, torch.Generator().manual_seed(0)) - x.float() / 255).abs().max() < 1e-6
    flip = ViewAugment(size=20, flip_p=1, jitter_p=0, grayscale_p=0, blur_p=0, mean=(0, 0, 0), std=(1, 1, 1),
                       version=2, fused=fused)
    assert (augment_cropped(flip, x) - x.flip(-1).float() / 255).abs().max() < 1e-6
    with pytest.raises(ValueError, match="version=2"):
        augment_cropped(ViewAugment(size=20), x)


def _odd_images(d: Path) -> dict:
    """The odd files of the real ImageNet train set, plus a 16-bit PNG; returns their expected means."""
    d.mkdir(parents=True, exist_ok=True)
    rgb = np.full((80, 90, 3), (200, 100, 50), np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.JPEG", quality=95)
    Image.fromarray(np.full((70, 60), 90, np.uint8)).save(d / "gray.JPEG", quality=95)
    Image.fromarray(rgb).save(d / "png_named.JPEG", format="PNG")
    Image.fromarray(np.full((64, 64), 32768, np.uint16)).save(d / "deep.png")  # 16 bits: half scale, not clipped
    return {"cmyk.JPEG": (200, 100, 50), "gray.JPEG": (90, 90, 90), "png_named.JPEG": (200, 100, 50),
            "deep.png": (128, 128, 128)}


def _cfg(tree, *sets):
    return load_recipe("simclr_fashion_mnist_cpu", [
        f"data.dataset=folder:{tree}", "data.source=files", "model.width=4", "model.in_chans=3", "augment.size=16",
        "augment.version=2", "augment.mean=[0.5,0.5,0.5]", "augment.std=[0.5,0.5,0.5]", "optim.batch_size=8",
        "optim.epochs=1", "optim.warmup_epochs=0", "method.proj_hidden_dim=16", "method.proj_dim=8",
        "train.threads=1", "train.monitor_every_epochs=1", "train.monitor_size=16", "train.monitor_val_size=8",
        "train.tensorboard=false", "export.preprocess.resize=16", "export.preprocess.crop=16", *sets])


def test_cmyk_gray_png_named_jpeg_and_16_bit_images_train(tmp_path):
    tree = jpeg_tree(tmp_path / "t", classes=2, per_class=4)
    expect = _odd_images(tmp_path / "t" / "train" / "c0")
    split = load_split(f"folder:{tree}", "train")
    ds = CropDataset(split, [CROP], seed=0)
    for name, mean in expect.items():
        row = [Path(p).name for p in split.paths].index(name)
        views, _, bad = ds[(0, row)]
        assert not bad and views[0].shape == (3, 24, 24)
        got = views[0].float().mean((1, 2))
        assert torch.allclose(got, torch.tensor(mean, dtype=torch.float32), atol=3), (name, got)
    path = Trainer(_cfg(tree, "data.workers=0"), tmp_path / "run", device="cpu").fit()
    assert path.is_file()


def _corrupt(d: Path, good: Path) -> list:
    data = good.read_bytes()
    (d / "truncated.JPEG").write_bytes(data[: len(data) // 3])
    (d / "empty.JPEG").write_bytes(b"")
    (d / "notes.jpg").write_text("not an image\n")
    return ["truncated.JPEG", "empty.JPEG", "notes.jpg"]


def test_unreadable_images_are_replaced_and_counted(tmp_path, caplog):
    tree = jpeg_tree(tmp_path / "t", classes=2, per_class=6)
    bad = _corrupt(tree / "train" / "c1", tree / "train" / "c1" / "0.JPEG")
    split = load_split(f"folder:{tree}", "train")
    names = [Path(p).name for p in split.paths]
    ds = CropDataset(split, [CROP], seed=0)
    row = names.index("empty.JPEG")
    views, i, rows = ds[(0, row)]
    assert i == row and rows and all(names[r] in bad for r, _ in rows)
    nxt = (row + len(rows)) % len(ds)  # the replacement: the next readable sample, cut with the bad one's key
    assert torch.equal(views[0], ds.crops_of(0, row, nxt)[0][0])
    with caplog.at_level(logging.WARNING, logger="training.filesource"):
        Trainer(_cfg(tree, "data.workers=2"), tmp_path / "run", device="cpu").fit()
    msgs = [r.getMessage() for r in caplog.records if "unreadable image" in r.getMessage()]
    assert len(msgs) == 3 and all(any(b in m for b in bad) for m in msgs), msgs
    assert "3 unreadable image(s) so far" in msgs[-1]


def test_a_run_of_unreadable_images_is_one_line(tmp_path):
    d = tmp_path / "t" / "train" / "c0"
    d.mkdir(parents=True)
    for i in range(MAX_REPLACEMENTS + 2):
        (d / f"{i:02d}.JPEG").write_bytes(b"")
    (tmp_path / "t" / "test" / "c0").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "t" / "test" / "c0" / "a.png")
    split = load_split(f"folder:{tmp_path / 't'}", "train")
    ds = CropDataset(split, [CROP], seed=0)
    with pytest.raises(FileSourceError, match=r"16 images in a row are unreadable, the first .*\.JPEG") as e:
        next(iter(FileBatches(ds, len(ds), 4, 0, 1, workers=0)))
    assert "\n" not in str(e.value)


def test_auto_source(tmp_path):
    mixed = jpeg_tree(tmp_path / "mixed", classes=2, per_class=3)
    assert choose_source(load_split(f"folder:{mixed}", "train"))[0] == "files"
    same = jpeg_tree(tmp_path / "same", classes=2, per_class=3, lo=32, hi=33)
    s = load_split(f"folder:{same}", "train")
    assert choose_source(s)[0] == "memory"
    src, why = choose_source(s, limit=6 * 3 * 32 * 32 - 1)
    assert src == "files" and "GiB" in why
    assert choose_source(s, "files")[0] == "files" and choose_source(s, "memory")[0] == "memory"
    npz = tmp_path / "d.npz"
    np.savez(npz, train_image=np.zeros((4, 8, 8, 1), np.uint8), train_label=np.arange(4))
    assert choose_source(load_split(f"npz:{npz}", "train"))[0] == "memory"
    with pytest.raises(ValueError, match="held in memory; data.source=files needs a file-backed"):
        choose_source(load_split(f"npz:{npz}", "train"), "files")


def test_repeat_and_subset_and_multicrop_from_files(tmp_path):
    tree = jpeg_tree(tmp_path / "t", classes=2, per_class=4)
    (tmp_path / "sub.json").write_text("[0, 2, 4, 6, 1, 3, 5, 7]")
    cfg = load_recipe("dissl_fashion_mnist_cpu", [
        f"data.dataset=folder:{tree}", "data.source=files", "data.workers=0", "data.repeat=2",
        f"data.subset={tmp_path / 'sub.json'}", "model.width=4", "model.in_chans=3", "augment.size=16",
        "augment.version=2", "augment.mean=[0.5,0.5,0.5]", "augment.std=[0.5,0.5,0.5]", "augment.small_crops=2",
        "augment.small_size=12", "optim.batch_size=8", "optim.epochs=1", "method.n_clusters=32",
        "method.proj_hidden_dim=16", "method.bottleneck_dim=8", "train.threads=1", "train.monitor_every_epochs=0",
        "train.tensorboard=false"])
    t = Trainer(cfg, tmp_path / "run", device="cpu")
    ds, y = t.load_data()
    assert isinstance(ds, CropDataset) and len(ds) == 16 and len(y) == 8 and t.epoch_size(ds) == 16
    assert [c.size for c in ds.crops] == [(16, 16), (16, 16), (12, 12), (12, 12)]
    assert t.fit().is_file() and t.step == 2


# ----------------------------------------------------------------------------- crash + resume, with workers

N_KILL_STEPS = 8  # 32 images, batch 8: 4 steps per epoch, 2 epochs


def _train_args(tree, out):
    sets = [f"data.dataset=folder:{tree}", "data.source=files", "data.workers=2", "model.width=4", "model.in_chans=3",
            "augment.size=16", "augment.version=2", "augment.mean=[0.5,0.5,0.5]", "augment.std=[0.5,0.5,0.5]",
            "optim.batch_size=8", "optim.epochs=2", "optim.warmup_epochs=1", "method.proj_hidden_dim=16",
            "method.proj_dim=8", "train.threads=1", "train.seed=3", "train.checkpoint_minutes=0", "train.log_every=1",
            "train.monitor_every_epochs=0", "train.tensorboard=false", "export.preprocess.resize=16",
            "export.preprocess.crop=16"]
    args = ["train", "simclr_fashion_mnist_cpu", "--out", str(out), "--device", "cpu"]
    for s in sets:
        args += ["--set", s]
    return args


def _logged_step(log: Path) -> int:
    try:
        rows = [r for r in log.read_text().splitlines() if r[:1].isdigit() and r.count(",") >= 5]
    except FileNotFoundError:
        return 0
    return int(rows[-1].split(",")[0]) if rows else 0


def test_sigkill_mid_epoch_then_resume_with_workers_is_bit_identical(tmp_path):
    tree = jpeg_tree(tmp_path / "t", classes=4, per_class=8, lo=30, hi=90)
    run = runner()
    ref_out, out = tmp_path / "reference", tmp_path / "killed"
    ref = run.start(*_train_args(tree, ref_out))
    for target in (3,):  # mid-epoch 0; the resumed run crosses into epoch 1
        p = run.start(*_train_args(tree, out), "--resume")
        deadline = time.monotonic() + 300
        while _logged_step(out / "log.csv") < target:
            assert run.poll(p) is None, p.err.read_text()[-2000:]
            assert time.monotonic() < deadline, f"no progress to step {target}"
            time.sleep(0.002)
        run.kill(p, signal.SIGKILL)
        assert run.wait(p).returncode == -signal.SIGKILL
        assert not (out / "export").exists()
    final = run.wait(run.start(*_train_args(tree, out), "--resume"))
    assert final.returncode == 0, final.stderr[-3000:]
    m = re.search(r"resumed from .* at step (\d+) \(epoch (\d+), batch (\d+)\)", final.stdout)
    assert m and int(m.group(1)) >= 2 and m.group(2, 3) != ("0", "0"), final.stdout[-2000:]
    assert run.wait(ref).returncode == 0
    a = load_file(str(ref_out / "export" / "model.safetensors"))
    b = load_file(str(out / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(ref_out / "checkpoint.pt", map_location="cpu", weights_only=True)
    cb = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ca["step"] == cb["step"] == N_KILL_STEPS
    assert all(torch.equal(v, cb["model"][k]) for k, v in ca["model"].items())


# ----------------------------------------------------------------------------- DDP

WORLD = 2


def _run_ranks(fn, *args, timeout=240):
    from dist_worker import run_ranks

    run_ranks(fn, WORLD, *args, timeout=timeout, start_method="fork")


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_two_ranks_read_disjoint_samples_covering_the_epoch(tree, tmp_path):
    import dist_worker as W

    _run_ranks(FW.read_epoch, str(tree), str(tmp_path), 8, 1)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert r0.shape == r1.shape == (4, 4)
    perm = epoch_permutation(32, 5, 0).view(4, 8)
    assert torch.equal(torch.cat([r0, r1], 1), perm)  # each rank its slice of every global batch
    assert set(r0.flatten().tolist()).isdisjoint(r1.flatten().tolist())
    for r, got in ((0, r0), (1, r1)):  # the files each rank (its workers included) opened: its own only
        read = {int(v) for f in tmp_path.glob(f"rank{r}-pid*.txt") for v in f.read_text().split()}
        assert read == set(got.flatten().tolist())
    # the trainer on 2 ranks from files
    cfg = _cfg(tree, "data.workers=1", "train.monitor_every_epochs=0")
    _run_ranks(W.training, cfg, str(tmp_path / "run"))
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4 and ck["world_size"] == 2
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- unlabelled folders and packs (issue 18a)

def test_unlabelled_folder_trains_from_files(tmp_path):
    from eval.synthetic import write_jpeg_tree

    write_jpeg_tree(tmp_path / "photos", classes=2, per_class=8, sizes=(40, 120), layout="unlabelled")
    split = load_split(f"folder:{tmp_path / 'photos'}", "train")
    assert len(split) == 16 and (np.asarray(split.targets) == -1).all()
    t = Trainer(_cfg(tmp_path / "photos", "data.workers=0"), tmp_path / "run", device="cpu")
    assert t.fit().is_file() and t.step == 2
    # no labels: the monitor has nothing to vote with and says so (nan), it never decodes the whole set
    assert (tmp_path / "run" / "monitor.csv").read_text().splitlines()[1].endswith(",nan")


def test_pack_gives_the_crops_of_its_folder(tree, tmp_path):
    from eval.packed import write_pack

    write_pack(f"folder:{tree}", tmp_path / "pk", shard_size=20_000, workers=0)
    folder, pack = load_split(f"folder:{tree}", "train"), load_split(f"pack:{tmp_path / 'pk'}", "train")
    assert choose_source(pack)[0] == "files"
    a = _batches(CropDataset(folder, [CROP, SMALL], seed=3), 0, steps=4)
    b = _batches(CropDataset(pack, [CROP, SMALL], seed=3), 2, steps=4)
    for (va, ia), (vb, ib) in zip(a, b):
        assert torch.equal(ia, ib) and all(torch.equal(x, y) for x, y in zip(va, vb))


def test_a_run_saved_before_data_source_existed_still_resumes(tmp_path):
    from training.runfolder import RunFolderError, check_same_recipe

    cfg = load_recipe("simclr_fashion_mnist_cpu")
    old = {**cfg, "data": {k: v for k, v in cfg["data"].items() if k not in ("source", "workers")}}
    check_same_recipe(old, cfg, tmp_path)  # the keys it lacks had their defaults' meaning
    with pytest.raises(RunFolderError, match="data.source"):
        check_same_recipe(old, load_recipe("simclr_fashion_mnist_cpu", ["data.source=files"]), tmp_path)
    check_same_recipe(cfg, load_recipe("simclr_fashion_mnist_cpu", ["data.workers=3"]), tmp_path)  # may change
