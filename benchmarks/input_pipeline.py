"""Input pipeline throughput at ImageNet sizes (issue 18): the file-backed training source vs
torchvision's ImageFolder + per-image transforms, with the same number of DataLoader workers, on the
same generated JPEG files, side by side in one run.

The files: an ImageNet-layout tree of ``--images`` generated JPEGs (quality 90, width and height each
drawn in ``--sizes``, default 375-500 px: about ImageNet's 500 x 375 average), photo-like content
(:func:`eval.synthetic.write_jpeg_tree`), written once into ``$SSLZOO_HOME/cache/bench-jpeg/``.

Recipes (both sides get the same parameters; ImageNet normalisation):

* ``simclr``: SimCLR's two 224-px views -- ``RandomResizedCrop(224, scale=(0.08, 1))``, flip,
  ``RandomApply([ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8)``, ``RandomGrayscale(0.2)``,
  ``RandomApply([GaussianBlur(23, sigma=(0.1, 2))], p=0.5)``, ``ToTensor()``, ``Normalize``;
* ``m6``: DISSL's multi-crop -- 2 x 160 px (scale 0.14-1, blur kernel 17) + 4 x 96 px (scale
  0.05-0.14, blur kernel 9), the same colour distortion (``dissl_resnet50_d8192_e100_m6``).

Rows:

* ``files``: :class:`training.filesource.FileBatches` over a :class:`training.filesource.CropDataset`
  (``--workers`` DataLoader processes read the bytes, decode the JPEG once per sample at the largest
  DCT reduction every view allows, and cut each view's crop as uint8), then in the main process
  :func:`training.filesource.augment_cropped` (flip, jitter, grayscale, blur, normalise) on each view's
  batch with the recipe's ``ViewAugment(version=2)``: the fused C kernel, one thread.
* ``torchvision``: ``torchvision.datasets.ImageFolder`` (PIL decode, ``convert("RGB")``) with a
  transform returning every view (each the torchvision ``Compose`` above on the same decoded image),
  in a ``DataLoader`` with the same ``--workers``, shuffled, default collate.

Both end with float32 normalised views ``[B, 3, s, s]`` in the main process (the training step's
input). Each row times ``--batches`` batches after ``--warmup`` untimed ones (worker start-up), and
counts (a) wall seconds and (b) the CPU seconds of the main process and all its worker processes
(``utime + stime`` from ``/proc``), so ``images per CPU second`` = images per second per core, the
number the floor is about: it does not depend on other jobs taking cores from this one (the wall
rate does; both are recorded). Main processes run one torch thread.

``--profile`` also times (CPU milliseconds of this one-thread process) the steps of one sample, per image, on
``--profile-images`` files: read bytes, decode at full size, draw the crop boxes (and, for comparison,
the cost of drawing them with one generator per sample and one call per crop size), decode at the file
source's draft reduction, cut the crops (file source: decode + boxes + crops, and the crops alone
by difference), the batched post-crop ops (per image), and torchvision's decode and per-view
transforms.

    python benchmarks/input_pipeline.py                           # 3,000 files, 2 workers
    python benchmarks/input_pipeline.py --images 64 --batch 8 --batches 2 --warmup 1   # smoke test
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, machine_info, print_machine, write_json  # noqa: E402
from benchmarks.jpeg_cache import cached_jpeg_tree  # noqa: E402
from training.augmentation import ViewAugment  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
COLOUR = {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "jitter_p": 0.8, "grayscale_p": 0.2,
          "flip_p": 0.5, "blur_p": 0.5, "blur_sigma": (0.1, 2.0)}
# recipe -> [(views, size, scale, blur kernel), ...]
RECIPES = {"simclr": [(2, 224, (0.08, 1.0), 23)],
           "m6": [(2, 160, (0.14, 1.0), 17), (4, 96, (0.05, 0.14), 9)]}


def view_augments(recipe: str) -> list[ViewAugment]:
    """One ViewAugment per view, in the order the methods see them."""
    out = []
    for n, size, scale, kernel in RECIPES[recipe]:
        a = ViewAugment(size=size, scale=scale, blur_kernel=kernel, mean=MEAN, std=STD, version=2, **COLOUR)
        out += [a] * n
    return out


def torchvision_views(recipe: str):
    """A transform returning every view of one PIL image (torchvision v1 transforms, per image)."""
    import torchvision.transforms as T

    composes = []
    for n, size, scale, kernel in RECIPES[recipe]:
        c = COLOUR
        t = T.Compose([T.RandomResizedCrop(size, scale=scale), T.RandomHorizontalFlip(c["flip_p"]),
                       T.RandomApply([T.ColorJitter(c["brightness"], c["contrast"], c["saturation"], c["hue"])],
                                     p=c["jitter_p"]),
                       T.RandomGrayscale(c["grayscale_p"]),
                       T.RandomApply([T.GaussianBlur(kernel, c["blur_sigma"])], p=c["blur_p"]),
                       T.ToTensor(), T.Normalize(MEAN, STD)])
        composes += [t] * n
    return MultiView(composes)


class MultiView:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, img):
        return [t(img) for t in self.transforms]


# ----------------------------------------------------------------------------- CPU accounting

_TICK = os.sysconf("SC_CLK_TCK")


def _children() -> dict:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_cpu_seconds(pid: int | None = None) -> dict:
    """``{pid: utime + stime seconds}`` of ``pid`` (default this process) and its live descendants."""
    pid = pid or os.getpid()
    kids, out, todo = _children(), {}, [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, ValueError, IndexError):
            continue
    return out


def cpu_between(before: dict, after: dict) -> float:
    """CPU seconds spent between two snapshots by the processes alive at the second one."""
    return sum(v - before.get(p, 0.0) for p, v in after.items())


# ----------------------------------------------------------------------------- the two pipelines


def time_batches(batches, finish, n_batches: int, warmup: int, batch: int) -> dict:
    """Pull ``warmup`` untimed, then ``n_batches`` timed batches from the iterator ``batches``; ``finish``
    turns one into the float views the training step takes."""
    it = iter(batches)
    for _ in range(warmup):
        finish(next(it))
    c0, t0 = tree_cpu_seconds(), time.perf_counter()
    for _ in range(n_batches):
        views = finish(next(it))
    wall = time.perf_counter() - t0
    # /proc counts CPU time in clock ticks (10 ms): a run shorter than one tick (the smoke test on a fast,
    # free machine) would read 0 CPU seconds; count it as one tick, the resolution of the measurement
    cpu = max(cpu_between(c0, tree_cpu_seconds()), 1.0 / os.sysconf("SC_CLK_TCK"))
    close = getattr(it, "close", None)
    if close is not None:
        close()
    del it
    images = n_batches * batch
    return {"images": images, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "images_per_s": round(images / wall, 1), "images_per_cpu_s": round(images / cpu, 1),
            "views": [list(v.shape) for v in views]}


def run_files(tree: Path, recipe: str, args) -> dict:
    from eval.datasets import load_split
    from training.filesource import CropDataset, FileBatches, augment_cropped, view_crops

    split = load_split("imagenet", "train", root=str(tree))
    augs = view_augments(recipe)
    ds = CropDataset(split, view_crops(augs), seed=0)
    steps = len(ds) // args.batch
    src = FileBatches(ds, n=len(ds), batch_size=args.batch, seed=0, steps_per_epoch=steps, workers=args.workers)
    gen = torch.Generator().manual_seed(0)

    def finish(item):
        views, _ = item
        return [augment_cropped(a, v, gen) for a, v in zip(augs, views)]

    return time_batches(src, finish, args.batches, args.warmup, args.batch)


def run_torchvision(tree: Path, recipe: str, args) -> dict:
    import torchvision

    ds = torchvision.datasets.ImageFolder(str(tree / "train"), transform=torchvision_views(recipe))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         drop_last=True, generator=torch.Generator().manual_seed(0))

    def finish(item):
        views, _ = item
        return views

    return time_batches(loader, finish, args.batches, args.warmup, args.batch)


# ----------------------------------------------------------------------------- where the time goes


def profile(tree: Path, recipe: str, n: int) -> dict:
    """Per-image milliseconds of each step, in this process (see the module docstring)."""
    from PIL import Image

    from eval.datasets import load_split
    from training.augmentation import sample_crop_boxes
    from training.filesource import augment_cropped, crop_box, crop_seed, decode_crops, draft_scale, view_crops

    split = load_split("imagenet", "train", root=str(tree))
    augs = view_augments(recipe)
    crops = view_crops(augs)
    idx = np.linspace(0, len(split) - 1, num=min(n, len(split))).astype(int)
    data = [split.read_bytes(int(i)) for i in idx]
    ms = {}

    def clock(name, fn):  # CPU seconds of this process (one thread): other jobs on the machine do not count
        t0 = time.process_time()
        out = fn()
        ms[name] = round(1000 * (time.process_time() - t0) / len(idx), 3)
        return out

    clock("read_bytes", lambda: [split.read_bytes(int(i)) for i in idx])

    def full():
        for d in data:
            with Image.open(io.BytesIO(d)) as im:
                im.convert("RGB")
    clock("decode_full_size", full)
    scales, sizes = [], []
    for d in data:
        with Image.open(io.BytesIO(d)) as im:
            sizes.append(im.size)
    # the crop boxes alone: one training.filesource.crop_box call per view (a torch.Generator and
    # sample_crop_boxes per call), as CropDataset draws them
    boxes = clock("crop_boxes", lambda: [[crop_box(0, 0, int(idx[k]), v, h, w, c) for v, c in enumerate(crops)]
                                         for k, (w, h) in enumerate(sizes)])
    # the alternative: one generator per sample and one sample_crop_boxes call per crop size (what
    # drawing all of a sample's boxes at once would cost; other boxes, the same distribution)
    groups: dict = {}
    for v, c in enumerate(crops):
        groups.setdefault((c.scale, c.ratio), []).append(v)

    def grouped():
        for k, (w, h) in enumerate(sizes):
            g = torch.Generator().manual_seed(crop_seed(0, 0, int(idx[k]), 0))
            for (scale, ratio), vs in groups.items():
                sample_crop_boxes(len(vs), h, w, scale, ratio, g)
    clock("crop_boxes_one_call_per_crop_size", grouped)

    def boxes_of(k):
        return lambda h, w: [crop_box(0, 0, int(idx[k]), v, h, w, c) for v, c in enumerate(crops)]

    def drafted():
        for k, d in enumerate(data):
            with Image.open(io.BytesIO(d)) as im:
                w, h = im.size
                s = draft_scale(boxes[k], crops)
                scales.append(s)
                if s > 1:
                    im.draft(None, (w // s, h // s))
                im.load()
    clock("decode_at_draft_scale", drafted)
    cut = clock("decode_and_crop_file_source", lambda: [decode_crops(d, crops, boxes_of(k))[0]
                                                         for k, d in enumerate(data)])
    ms["crop_only_file_source"] = round(ms["decode_and_crop_file_source"] - ms["decode_at_draft_scale"]
                                        - ms["crop_boxes"], 3)
    ms["draft_scale_histogram"] = {str(s): scales.count(s) for s in sorted(set(scales))}
    views = [torch.stack([c[v] for c in cut]) for v in range(len(crops))]
    gen = torch.Generator().manual_seed(0)
    clock("post_crop_ops_batched_file_source", lambda: [augment_cropped(a, v, gen) for a, v in zip(augs, views)])
    ms["file_source_total"] = round(ms["read_bytes"] + ms["decode_and_crop_file_source"]
                                    + ms["post_crop_ops_batched_file_source"], 3)
    tv = torchvision_views(recipe)
    pil = clock("torchvision_decode", lambda: [Image.open(io.BytesIO(d)).convert("RGB") for d in data])
    clock("torchvision_views", lambda: [tv(im) for im in pil])
    ms["torchvision_total"] = round(ms["read_bytes"] + ms["torchvision_decode"] + ms["torchvision_views"], 3)
    return ms


def main(argv=None):
    ap = argparse.ArgumentParser(description="file-backed source vs torchvision ImageFolder, images per CPU second")
    ap.add_argument("--images", type=int, default=3000, help="generated JPEGs (default 3000)")
    ap.add_argument("--sizes", default="375,500", help="min,max of each side (default 375,500)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of both sides (default 2)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=12, help="timed batches per row (default 12)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating passes of each row; the best is kept")
    ap.add_argument("--recipes", default="simclr,m6")
    ap.add_argument("--profile", action="store_true", help="also time decode / crop / post-ops per image")
    ap.add_argument("--profile-images", type=int, default=64)
    ap.add_argument("--profile-only", action="store_true", help="only the profile, no timed rows")
    ap.add_argument("--cache", default=None, help="folder of the generated tree (default $SSLZOO_HOME/cache/bench-jpeg)")
    ap.add_argument("--out", default=str(RESULTS / "input_pipeline.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lo, hi = (int(v) for v in args.sizes.split(","))
    info = machine_info(main_process_threads=1)
    print_machine(info)
    tree = cached_jpeg_tree("imagenet-like", cache=args.cache, classes=10, per_class=args.images // 10,
                            sizes=(lo, hi), quality=90, layout="imagenet", eval_per_class=1, seed=0)
    rows = []
    for recipe in args.recipes.split(","):
        if args.profile_only:
            rows.append({"recipe": recipe, "profile_ms_per_image": profile(tree, recipe, args.profile_images)})
            print(f"{recipe} profile (ms per image): {rows[-1]['profile_ms_per_image']}", flush=True)
            continue
        best: dict = {}
        for rep in range(args.repeats):
            for side, fn in (("files", run_files), ("torchvision", run_torchvision)):
                r = fn(tree, recipe, args)
                print(f"{recipe:6s} {side:11s} pass {rep}: {r['images_per_cpu_s']:8.1f} images per CPU second, "
                      f"{r['images_per_s']:8.1f} images/s wall ({r['cpu_s']} CPU s, {r['wall_s']} wall s)", flush=True)
                if side not in best or r["images_per_cpu_s"] > best[side]["images_per_cpu_s"]:
                    best[side] = r
        row = {"recipe": recipe, "workers": args.workers, "batch": args.batch,
               "files": best["files"], "torchvision": best["torchvision"],
               "ratio_per_cpu_s": round(best["files"]["images_per_cpu_s"] / best["torchvision"]["images_per_cpu_s"], 2),
               "ratio_wall": round(best["files"]["images_per_s"] / best["torchvision"]["images_per_s"], 2)}
        if args.profile:
            row["profile_ms_per_image"] = profile(tree, recipe, args.profile_images)
            print(f"{recipe} profile (ms per image): {row['profile_ms_per_image']}", flush=True)
        rows.append(row)
        print(f"{recipe}: file source / torchvision = {row['ratio_per_cpu_s']}x per CPU second "
              f"({row['ratio_wall']}x wall) with {args.workers} workers each (floor 3x)", flush=True)
    write_json(args.out, info, args, rows)


if __name__ == "__main__":
    main()
