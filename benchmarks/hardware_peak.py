"""How close a ResNet-18 SimCLR step gets to this machine's matmul peak, measured side by side.

1. Matmul peak: the best FLOP/s of square ``n x n @ n x n`` products (fp32, and bf16 operands), over
   a few sizes, each timed ``--repeats`` times after a warm-up (a product is ``2 n^3`` FLOPs).
2. The model step: forward + backward + SGD of ResNet-18 (CIFAR stem: 3x3 conv, stride 1, no
   max-pool) + 512->128 projection at 32 px on two views of ``--batch`` images, ``channels_last``,
   in fp32 and in bf16 autocast. Its FLOPs are counted once by ``torch.utils.flop_counter`` (matmul
   and convolution FLOPs of forward and backward), so ``achieved = FLOPs / step time``.

Printed: the peaks, each step's achieved FLOP/s and the fraction of the peak of its precision.

    python benchmarks/hardware_peak.py                   # widths 16 and 64, batch 256
    python benchmarks/hardware_peak.py --widths 16 --batch 64 --steps 2   # smoke test
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, machine_info, print_machine, write_json
from training.methods.heads import ProjectionHead
from training.methods.simclr import nt_xent_loss
from zoo.backbones import build_resnet


def matmul_peak(dtype: torch.dtype, sizes=(1024, 2048, 4096), repeats: int = 5) -> dict:
    best = {"flops_per_s": 0.0}
    for n in sizes:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        torch.mm(a, b)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        rate = 2 * n ** 3 / min(times)
        if rate > best["flops_per_s"]:
            best = {"flops_per_s": rate, "n": n, "best_seconds": min(times)}
    return best


def make_step(width: int, batch: int, bf16: bool):
    torch.manual_seed(0)
    backbone = build_resnet("resnet18", stem="cifar", stem_padding=1, maxpool=False, width=width, in_chans=3)
    head = ProjectionHead(backbone.feature_dim, 512, 128)
    model = torch.nn.Sequential(backbone, head).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(2 * batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            z = model(x)
            loss = nt_xent_loss(z, 0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def count_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        step()
    return int(fc.get_total_flops())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", default="16,64")
    p.add_argument("--batch", type=int, default=256, help="images per step (two views each)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--repeats", type=int, default=5, help="timed products per matmul size")
    p.add_argument("--out", default=str(RESULTS / "hardware_peak.json"))
    args = p.parse_args(argv)
    info = machine_info()
    print_machine(info)
    rows = []
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[name] = matmul_peak(dtype, repeats=args.repeats)
        print(f"matmul peak {name}: {peaks[name]['flops_per_s'] / 1e9:8.1f} GFLOP/s (n={peaks[name]['n']})", flush=True)
        rows.append({"row": f"matmul peak {name}", **peaks[name]})
    for width in (int(w) for w in args.widths.split(",")):
        for prec in ("fp32", "bf16"):
            step = make_step(width, args.batch, prec == "bf16")
            flops = count_flops(step)
            step()
            step()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            dt = (time.perf_counter() - t0) / args.steps
            rate = flops / dt
            frac = rate / peaks[prec]["flops_per_s"]
            print(f"ResNet-18 w{width} {prec}: {flops / 1e9:7.1f} GFLOP/step, {dt:6.3f} s/step, "
                  f"{2 * args.batch / dt:7.0f} views/s, {rate / 1e9:7.1f} GFLOP/s = {frac:.2f} of the {prec} matmul peak",
                  flush=True)
            rows.append({"row": f"resnet18 w{width} {prec} step", "width": width, "precision": prec,
                         "batch": args.batch, "flops_per_step": flops, "seconds_per_step": dt,
                         "flops_per_s": rate, "fraction_of_peak": frac})
    write_json(args.out, info, args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
