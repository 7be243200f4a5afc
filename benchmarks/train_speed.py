"""SimCLR training throughput, end to end, measured side by side in one run:

* ``ssl-zoo``: the data held in memory as a uint8 ``[N, 3, 32, 32]`` tensor, each batch augmented in
  the training process by two :class:`training.augmentation.ViewAugment` (the trainer's input path), then
  the step: ``channels_last``, bf16 autocast, ResNet-18 + projection head, ssl-zoo's NT-Xent, SGD;
* ``lightly``: the lightly library's standard pipeline (as in its ``examples/pytorch/simclr.py``):
  a dataset of PIL images (``Image.fromarray`` of the same uint8 array, as torchvision's CIFAR10),
  ``lightly.transforms.SimCLRTransform`` (set to the same recipe), a ``DataLoader`` with worker
  processes, ``lightly.loss.NTXentLoss``; same encoder, head, optimiser, autocast and memory format;
* ``bare step``: the same model step on two pre-made view tensors (no data loading, no
  augmentation) -- the ceiling for the other two.

Recipe (both pipelines): SimCLR CIFAR -- ``RandomResizedCrop(32, scale=(0.08, 1))``, flip 0.5,
``ColorJitter(0.4, 0.4, 0.4, 0.1)`` with p=0.8, grayscale 0.2, no blur, CIFAR mean/std; encoder
ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool) at ``--widths`` (16 and 64 by
default), projection 512 -> 128, temperature 0.2, SGD (lr 0.3, momentum 0.9, wd 5e-4), batch 512.
Images are random smooth images (content does not change the timings).

Printed per width: images/s of each row (an image = two views) over ``--steps`` timed steps after
``--warmup`` steps, and the ratios ssl-zoo / lightly and ssl-zoo / bare step.

    python benchmarks/train_speed.py                                          # final numbers
    python benchmarks/train_speed.py --n 1024 --batch 64 --steps 2 --warmup 1 --widths 16   # smoke test

Needs ``lightly`` (``pip install -e .[bench]``; lightly installs beside torch without changing it:
``pip install --no-deps lightly lightning-utilities``); without it the lightly row is skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, machine_info, print_machine, write_json
from training.augmentation import ViewAugment
from training.methods.heads import ProjectionHead
from training.methods.simclr import nt_xent_loss
from zoo.backbones import build_resnet

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
RECIPE = {"size": 32, "scale": (0.08, 1.0), "flip_p": 0.5, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
          "hue": 0.1, "jitter_p": 0.8, "grayscale_p": 0.2, "blur_p": 0.0}


class Net(torch.nn.Module):
    def __init__(self, width: int, maxpool: bool):
        super().__init__()
        self.backbone = build_resnet("resnet18", stem="cifar", stem_padding=1, maxpool=maxpool, width=width, in_chans=3)
        self.head = ProjectionHead(self.backbone.feature_dim, 512, 128)

    def forward(self, x0, x1):
        z = self.head(self.backbone(torch.cat([x0, x1])))
        return z.chunk(2)


def make_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(base, size=(32, 32), mode="bicubic", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


class PILDataset(torch.utils.data.Dataset):
    def __init__(self, images_hwc: np.ndarray, transform):
        self.images, self.transform = images_hwc, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), 0


def build(width, args, device):
    torch.manual_seed(0)
    net = Net(width, args.maxpool).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.3, momentum=0.9, weight_decay=5e-4)
    return net, opt


def step(net, opt, x0, x1, loss_fn, device):
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=True):
        z0, z1 = net(x0, x1)
        loss = loss_fn(z0, z1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_steps(batches, n_warmup, n_steps, run, device):
    """Run ``n_warmup`` then ``n_steps`` steps from the iterator ``batches``; wall seconds of the latter."""
    for _ in range(n_warmup):
        run(*next(batches))
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        run(*next(batches))
    sync(device)
    return time.perf_counter() - t0


def zoo_batches(x_u8, B, augs, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x_u8 = x_u8.to(device)
    n = x_u8.shape[0]
    while True:
        perm = torch.randperm(n, generator=g)
        for s in range(0, n - B + 1, B):
            xb = x_u8[perm[s:s + B].to(device)]
            yield tuple(a(xb, gen).contiguous(memory_format=torch.channels_last) for a in augs)


def lightly_batches(loader, device):
    while True:
        for (v0, v1), _ in loader:
            yield (v0.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last),
                   v1.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last))


def bench_width(width, args, device, x_u8, rows):
    B = args.batch
    res = {}

    def report(row, seconds, **extra):
        rate = args.steps * B / seconds
        res[row] = rate
        rows.append({"width": width, "row": row, "batch": B, "steps": args.steps, "seconds": seconds,
                     "images_per_s": rate, "device": device.type, **extra})
        print(f"w{width:<4} {row:<44} {rate:9.1f} img/s  ({seconds:.2f} s for {args.steps} steps)", flush=True)

    def zoo_loss(z0, z1):
        return nt_xent_loss(torch.cat([z0, z1]), 0.2)

    # bare step on pre-made views
    net, opt = build(width, args, device)
    aug = ViewAugment(**RECIPE, mean=MEAN, std=STD, version=args.version)
    v0, v1 = (aug(x_u8[:B].to(device), torch.Generator().manual_seed(i)).contiguous(memory_format=torch.channels_last)
              for i in range(2))

    def fixed():
        while True:
            yield v0, v1

    secs = timed_steps(fixed(), args.warmup, args.steps, lambda a, b: step(net, opt, a, b, zoo_loss, device), device)
    report("bare step (pre-made views)", secs)
    # ssl-zoo input path
    net, opt = build(width, args, device)
    augs = [ViewAugment(**RECIPE, mean=MEAN, std=STD, version=args.version) for _ in range(2)]
    secs = timed_steps(zoo_batches(x_u8, B, augs, device), args.warmup, args.steps,
                       lambda a, b: step(net, opt, a, b, zoo_loss, device), device)
    report(f"ssl-zoo (in-process engine v{args.version})", secs)
    # lightly
    try:
        from lightly.loss import NTXentLoss
        from lightly.transforms import SimCLRTransform
    except ImportError as e:
        print(f"w{width:<4} lightly not importable ({e}); row skipped", flush=True)
    else:
        net, opt = build(width, args, device)
        transform = SimCLRTransform(input_size=32, cj_prob=0.8, cj_strength=0.5, min_scale=0.08, random_gray_scale=0.2,
                                    gaussian_blur=0.0, hf_prob=0.5, normalize={"mean": list(MEAN), "std": list(STD)})
        ds = PILDataset(x_u8.permute(0, 2, 3, 1).contiguous().numpy(), transform)
        workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
        loader = torch.utils.data.DataLoader(ds, batch_size=B, shuffle=True, drop_last=True, num_workers=workers,
                                             persistent_workers=workers > 0, pin_memory=device.type == "cuda")
        lightly_loss = NTXentLoss(temperature=0.2)
        secs = timed_steps(lightly_batches(loader, device), args.warmup, args.steps,
                           lambda a, b: step(net, opt, a, b, lightly_loss, device), device)
        report(f"lightly (SimCLRTransform, DataLoader workers={workers})", secs, workers=workers)
        del loader
    zoo = res[f"ssl-zoo (in-process engine v{args.version})"]
    ratios = {"zoo_over_bare": zoo / res["bare step (pre-made views)"]}
    lk = [k for k in res if k.startswith("lightly")]
    if lk:
        ratios["zoo_over_lightly"] = zoo / res[lk[0]]
    rows.append({"width": width, "row": "ratios", **ratios})
    print(f"w{width:<4} ratios: " + ", ".join(f"{k}={v:.2f}x" for k, v in ratios.items()), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="16,64")
    p.add_argument("--n", type=int, default=20000, help="images in the in-memory dataset (default 20000)")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=20, help="timed steps per row (default 20)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="lightly DataLoader workers (default: CPU count)")
    p.add_argument("--version", type=int, default=2, help="ViewAugment engine version (default 2)")
    p.add_argument("--maxpool", action="store_true", help="keep the stem max-pool (default: CIFAR stem without)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(RESULTS / "train_speed.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    machine = machine_info()
    print_machine(machine)
    x_u8 = make_images(args.n)
    rows: list = []
    for w in [int(v) for v in args.widths.split(",") if v.strip()]:
        bench_width(w, args, device, x_u8, rows)
    write_json(args.out, machine, args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
