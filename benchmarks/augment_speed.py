"""Augmentation throughput: the batched engine (``training/augmentation/``) vs torchvision v1 on PIL
images one at a time, on the same SimCLR recipe, measured side by side in one run.

Recipes (both sides get exactly these parameters):

* ``cifar32`` -- SimCLR on CIFAR (Chen et al. 2020, appendix B.9): ``RandomResizedCrop(32,
  scale=(0.08, 1))``, ``RandomHorizontalFlip()``, ``RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)],
  p=0.8)``, ``RandomGrayscale(0.2)``, ``ToTensor()``, ``Normalize``.
* ``stl96`` -- SimCLR's ImageNet recipe at STL10's 96 px: ``RandomResizedCrop(96, scale=(0.08, 1))``,
  flip, ``ColorJitter(0.8, 0.8, 0.8, 0.2)`` with p=0.8, ``RandomGrayscale(0.2)``,
  ``RandomApply([GaussianBlur(9, sigma=(0.1, 2))], p=0.5)`` (kernel = 10% of the side, odd),
  ``ToTensor()``, ``Normalize``.

Rows (images/s; the images are random smooth uint8 images of the dataset's size, held in memory as
a ``[N, H, W, 3]`` array like torchvision's CIFAR10 / STL10 datasets):

* ``torchvision PIL, 1 process``: ``Image.fromarray`` + the ``Compose`` per image (what a torchvision
  dataset's ``__getitem__`` does), then ``torch.stack`` into a batch -- one core;
* ``torchvision PIL, DataLoader(workers=N)``: the same dataset through a ``DataLoader`` with ``N`` =
  CPU count worker processes (the usual multi-core setup), after the first batch;
* ``engine vK, 1 thread``: ``ViewAugment(version=K)`` on uint8 ``[B, 3, H, W]`` batches,
  ``torch.set_num_threads(1)`` -- one core; for version 2 this is the fused C kernel
  (``training/augmentation/fastaug.py``) when it builds, and ``engine v2-eager`` is the same with ``fused=False``
  (the eager torch ops that run without a C compiler);
* ``engine vK, T threads``: the same with all of torch's threads (the trainer's setting);
* ``engine vK, cuda``: the same on the GPU, when there is one.

Printed ratios: engine 1 thread / torchvision 1 process (per core), engine all threads / DataLoader
(whole machine), engine on CUDA / DataLoader. Each rate is the best of ``--repeats`` timed passes
(wall clock), so short stalls from other jobs count less; the CPU seconds are recorded too.

    python benchmarks/augment_speed.py                          # final numbers (idle machine)
    python benchmarks/augment_speed.py --n 64 --repeats 1       # smoke test
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, Timer, machine_info, print_machine, write_json
from training.augmentation import fastaug
from training.augmentation import ViewAugment

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

RECIPES = {
    "cifar32": {"size": 32, "scale": (0.08, 1.0), "flip_p": 0.5, "brightness": 0.4, "contrast": 0.4,
                "saturation": 0.4, "hue": 0.1, "jitter_p": 0.8, "grayscale_p": 0.2, "blur_p": 0.0},
    "stl96": {"size": 96, "scale": (0.08, 1.0), "flip_p": 0.5, "brightness": 0.8, "contrast": 0.8,
              "saturation": 0.8, "hue": 0.2, "jitter_p": 0.8, "grayscale_p": 0.2, "blur_p": 0.5,
              "blur_kernel": 9, "blur_sigma": (0.1, 2.0)},
}


def torchvision_transform(r: dict):
    import torchvision.transforms as T

    ops = [T.RandomResizedCrop(r["size"], scale=r["scale"]), T.RandomHorizontalFlip(r["flip_p"]),
           T.RandomApply([T.ColorJitter(r["brightness"], r["contrast"], r["saturation"], r["hue"])], p=r["jitter_p"]),
           T.RandomGrayscale(r["grayscale_p"])]
    if r["blur_p"] > 0:
        ops.append(T.RandomApply([T.GaussianBlur(r["blur_kernel"], r["blur_sigma"])], p=r["blur_p"]))
    ops += [T.ToTensor(), T.Normalize(MEAN, STD)]
    return T.Compose(ops)


class PILDataset(torch.utils.data.Dataset):
    """uint8 ``[N, H, W, 3]`` array -> ``transform(Image.fromarray(img))``, as torchvision's CIFAR10."""

    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i]))


def make_images(n: int, side: int, seed: int = 0) -> np.ndarray:
    """Random smooth RGB images (8x8 noise upsampled): content-independent timings, no download."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(base, size=(side, side), mode="bicubic", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def best_of(repeats: int, fn):
    """(best wall seconds, its CPU seconds) over ``repeats`` runs of ``fn``."""
    best = None
    for _ in range(repeats):
        with Timer() as t:
            fn()
        if best is None or t.wall < best[0]:
            best = (t.wall, t.cpu)
    return best


def bench_recipe(name: str, args, rows: list) -> None:
    r = RECIPES[name]
    side = r["size"]
    n = args.n
    images = make_images(n, side)
    ds = PILDataset(images, torchvision_transform(r))
    x_u8 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # [N, 3, H, W] uint8, as the trainer holds it
    B = args.batch

    def report(row_name, wall, cpu, n_img, **extra):
        rate = n_img / wall
        row = {"recipe": name, "side": side, "row": row_name, "images": n_img, "seconds": wall, "cpu_seconds": cpu,
               "images_per_s": rate, **extra}
        rows.append(row)
        print(f"{name:<8} {row_name:<40} {rate:10.0f} img/s   ({wall:.3f} s wall, {cpu:.3f} s cpu)", flush=True)
        return rate

    threads = torch.get_num_threads()
    # ---- torchvision, one process
    torch.set_num_threads(1)
    _ = [ds[i] for i in range(min(8, n))]  # warm-up
    wall, cpu = best_of(args.repeats, lambda: torch.stack([ds[i] for i in range(n)]))
    tv1 = report("torchvision PIL, 1 process", wall, cpu, n)
    # ---- engine, 1 thread and all threads
    eng = {}
    variants = []
    for version in args.versions:
        variants.append((version, True))
        if version == 2 and not args.no_eager:
            variants.append((version, False))
    for version, fused in variants:
        aug = ViewAugment(**r, mean=MEAN, std=STD, version=version, fused=fused)
        g = torch.Generator().manual_seed(0)
        kernel = version == 2 and fused and fastaug.library() is not None  # the C kernel really runs
        if version == 2 and not fused:
            version = "2-eager"

        def run(x=x_u8, aug=aug, g=g):
            for s in range(0, n, B):
                aug(x[s:s + B], g)

        for t in sorted({1, threads}):
            torch.set_num_threads(t)
            aug(x_u8[:B], g)  # warm-up
            wall, cpu = best_of(args.repeats, run)
            eng[(version, t)] = report(f"engine v{version}, {t} thread{'s' if t > 1 else ''}", wall, cpu, n,
                                       version=version, threads=t, batch=B, fused_kernel=kernel)
        if torch.cuda.is_available() and not args.no_cuda:
            xc = x_u8.cuda()
            aug(xc[:B], g)
            torch.cuda.synchronize()

            def run_cuda(xc=xc, aug=aug, g=g):
                for s in range(0, n, B):
                    aug(xc[s:s + B], g)
                torch.cuda.synchronize()

            wall, cpu = best_of(args.repeats, run_cuda)
            eng[(version, "cuda")] = report(f"engine v{version}, cuda", wall, cpu, n, version=version, device="cuda",
                                            batch=B)
    torch.set_num_threads(threads)
    # ---- torchvision through a DataLoader with one worker per core
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    tvn = None
    if workers > 0:
        loader = torch.utils.data.DataLoader(ds, batch_size=B, num_workers=workers, persistent_workers=True,
                                             shuffle=False, drop_last=False)
        next(iter(loader))  # start the workers

        def run_loader():
            for _ in loader:
                pass

        wall, cpu = best_of(args.repeats, run_loader)
        tvn = report(f"torchvision PIL, DataLoader(workers={workers})", wall, cpu, n, workers=workers)
        del loader
    # ---- ratios
    for version in [v if f else "2-eager" for v, f in variants]:
        ratios = {"per_core_engine_1thread_over_torchvision_1process": eng[(version, 1)] / tv1}
        if tvn:
            ratios[f"machine_engine_{threads}threads_over_dataloader_{workers}workers"] = eng[(version, threads)] / tvn
            if (version, "cuda") in eng:
                ratios[f"engine_cuda_over_dataloader_{workers}workers"] = eng[(version, "cuda")] / tvn
        rows.append({"recipe": name, "side": side, "row": f"ratios engine v{version}", **ratios})
        print(f"{name:<8} ratios engine v{version}: " + ", ".join(f"{k}={v:.2f}x" for k, v in ratios.items()), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default="cifar32,stl96")
    p.add_argument("--n", type=int, default=4096, help="images per timed pass (default 4096)")
    p.add_argument("--batch", type=int, default=512, help="engine / DataLoader batch size (default 512)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per row; the best is kept (default 3)")
    p.add_argument("--versions", default="2,1", help="engine versions to time (default 2,1)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPU count; 0 skips)")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--no-eager", action="store_true",
                   help="skip the v2 eager-torch rows (fused=False: what runs without a C compiler)")
    p.add_argument("--out", default=str(RESULTS / "augment_speed.json"))
    args = p.parse_args(argv)
    args.versions = [int(v) for v in str(args.versions).split(",") if v.strip()]
    machine = machine_info()
    print_machine(machine)
    rows: list = []
    for name in [s.strip() for s in args.recipes.split(",") if s.strip()]:
        bench_recipe(name, args, rows)
    write_json(args.out, machine, args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
