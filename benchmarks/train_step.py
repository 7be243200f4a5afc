"""The SimCLR training step, compiled (``train.compile=inductor``) vs today's eager bf16 step, side by side.

Model and step as ``benchmarks/train_speed.py``'s bare step: ResNet-18 with the CIFAR stem (3x3 conv,
no max-pool) at ``--widths``, projection 512 -> 128, NT-Xent (temperature 0.2), SGD (lr 0.3, momentum
0.9, wd 5e-4), batch 512 of 32 px views made once by the recipe's augmentation (``ViewAugment``) from
random smooth uint8 images, ``channels_last``, bf16 autocast. Every variant starts from the same
initial weights; the compiled one goes through :class:`training.compiled.CompiledForward`, the
trainer's own path.

Per width:

* compile time: the wall time of each variant's first step (compilation of forward and backward
  included) and of its second step;
* steady state: ``--repeats`` rounds, each timing ``--steps`` steps of every variant in turn
  (interleaved, so load from other jobs hits all variants alike); images/s per round, the ratio to
  the eager step of the same round, and the median ratio;
* op shares (``--profile``): one eager step under ``torch.profiler``: the share of self CPU time in
  convolutions and matmuls (forward and backward), the work compilation cannot change, and the bound
  ``1 / share`` on any speed-up that leaves those kernels as they are; with the step's FLOPs and the
  bf16 matmul peak (``benchmarks/hardware_peak.py``), the fraction of peak the convolutions reach.

``--extras`` adds eager variants: fp32, bf16 without channels_last, bf16 with
``torch.backends.mkldnn`` off, bf16 with fused SGD.

``--curve-steps N`` (default 200): loss curves of N steps of eager bf16, compiled bf16 and eager fp32
(the fp32 curve measures what bf16 rounding alone does), same initial weights, the same batches
(each batch augmented once and fed to every model), at ``--curve-width`` / ``--curve-batch``; the
max |difference| of each curve from eager bf16, and a PNG of the curves.

    python benchmarks/train_step.py                                  # final numbers
    python benchmarks/train_step.py --widths 16 --batch 64 --steps 2 --repeats 2 --curve-steps 5   # smoke
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, machine_info, print_machine, write_json
from benchmarks.hardware_peak import count_flops, matmul_peak
from benchmarks.train_speed import MEAN, RECIPE, STD, Net, make_images
from training.augmentation import ViewAugment
from training.compiled import CompiledForward
from training.methods.simclr import nt_xent_loss


class Step(torch.nn.Module):
    """Encoder + head + loss: the module the trainer compiles (a method's forward returns the loss)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = Net(width, maxpool=False)

    def forward(self, x0, x1):
        z0, z1 = self.net(x0, x1)
        return nt_xent_loss(torch.cat([z0, z1]), 0.2)


class Variant:
    def __init__(self, name, width, compile_mode="none", bf16=True, channels_last=True, mkldnn=True,
                 fused_sgd=False):
        torch.manual_seed(0)
        self.name, self.bf16, self.channels_last, self.mkldnn = name, bf16, channels_last, mkldnn
        self.model = Step(width)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        kw = {"fused": True} if fused_sgd else {}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.3, momentum=0.9, weight_decay=5e-4, **kw)
        self.fwd = CompiledForward(self.model, compile_mode)
        self.first_s = self.second_s = None
        self.losses: list[float] = []

    def step(self, x0, x1) -> float:
        if not self.channels_last:
            x0, x1 = x0.contiguous(), x1.contiguous()
        ctx = torch.backends.mkldnn.flags(enabled=False) if not self.mkldnn else contextlib.nullcontext()
        with ctx:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.fwd(x0, x1)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return float(loss)


def make_views(x_u8, batch, seed):
    aug = ViewAugment(**RECIPE, mean=MEAN, std=STD, version=2)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(x_u8), (batch,), generator=g)
    return tuple(aug(x_u8[idx], g).contiguous(memory_format=torch.channels_last) for _ in range(2))


def variants_for(width, extras):
    out = [("eager bf16 (today)", {}), ("inductor bf16 (train.compile=inductor)", {"compile_mode": "inductor"})]
    if extras:
        out += [("eager fp32", {"bf16": False}),
                ("eager bf16, no channels_last", {"channels_last": False}),
                ("eager bf16, mkldnn off", {"mkldnn": False}),
                ("eager bf16, fused SGD", {"fused_sgd": True})]
    return [Variant(name, width, **kw) for name, kw in out]


def profile_shares(width, views, rows, peak_bf16):
    from torch.profiler import ProfilerActivity, profile

    v = Variant("eager bf16 (today)", width)
    v.step(*views)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        v.step(*views)
        wall = time.perf_counter() - t0
    total = conv = mm = 0.0
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        total += e.self_cpu_time_total
        k = e.key
        if "convolution" in k:
            conv += e.self_cpu_time_total
        elif k in ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul"):
            mm += e.self_cpu_time_total
    share = (conv + mm) / total
    flops = count_flops(lambda: v.step(*views))
    row = {"width": width, "row": "op shares (eager bf16 step, profiled)", "aten_self_s": total / 1e6,
           "conv_self_s": conv / 1e6, "matmul_self_s": mm / 1e6, "conv_matmul_share": share,
           "bound_if_rest_were_free": 1 / share, "flops_per_step": flops, "step_wall_s_profiled": wall,
           "conv_matmul_flops_per_s": flops / ((conv + mm) / 1e6),
           "conv_matmul_fraction_of_bf16_peak": flops / ((conv + mm) / 1e6) / peak_bf16}
    rows.append(row)
    print(f"w{width:<3} profile: conv {conv / 1e6:.2f} s + matmul {mm / 1e6:.2f} s of {total / 1e6:.2f} s aten self "
          f"time = {100 * share:.1f}% -> any change that leaves them as they are is <= {1 / share:.2f}x; they run at "
          f"{row['conv_matmul_flops_per_s'] / 1e9:.0f} GFLOP/s = {100 * row['conv_matmul_fraction_of_bf16_peak']:.0f}% "
          f"of the bf16 matmul peak", flush=True)


def bench_width(width, args, x_u8, rows, peak_bf16):
    B = args.batch
    batches = [make_views(x_u8, B, seed) for seed in range(2)]
    vs = variants_for(width, args.extras)
    for v in vs:  # compile time: first and second step
        t0 = time.perf_counter()
        try:
            v.step(*batches[0])
        except Exception as e:  # noqa: BLE001 -- an extra variant that cannot run here: reported, skipped
            print(f"w{width:<3} {v.name}: failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})", flush=True)
            rows.append({"width": width, "row": v.name, "failed": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
            v.first_s = None
            continue
        v.first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        v.step(*batches[1])
        v.second_s = time.perf_counter() - t0
        print(f"w{width:<3} {v.name:<44} first step {v.first_s:7.1f} s, second {v.second_s:6.2f} s "
              f"(compiled: {v.fwd.active})", flush=True)
    vs = [v for v in vs if v.first_s is not None]
    rates = {v.name: [] for v in vs}
    for r in range(args.repeats):
        for v in vs:
            t0 = time.perf_counter()
            for i in range(args.steps):
                v.step(*batches[i % 2])
            rates[v.name].append(args.steps * B / (time.perf_counter() - t0))
        base = rates[vs[0].name][-1]
        print(f"w{width:<3} round {r}: " + ", ".join(f"{v.name} {rates[v.name][-1]:.1f} img/s "
                                                     f"({rates[v.name][-1] / base:.2f}x)" for v in vs), flush=True)
    base = rates[vs[0].name]
    for v in vs:
        ratios = [a / b for a, b in zip(rates[v.name], base)]
        rows.append({"width": width, "row": v.name, "batch": B, "steps_per_round": args.steps,
                     "first_step_s": v.first_s, "second_step_s": v.second_s, "compiled": v.fwd.active,
                     "images_per_s_rounds": rates[v.name], "images_per_s_median": statistics.median(rates[v.name]),
                     "ratio_to_eager_rounds": ratios, "ratio_to_eager_median": statistics.median(ratios)})
        print(f"w{width:<3} {v.name:<44} median {statistics.median(rates[v.name]):8.1f} img/s, "
              f"ratio to eager {statistics.median(ratios):.3f}x (rounds: {', '.join(f'{q:.2f}' for q in ratios)})",
              flush=True)
    if args.profile:
        profile_shares(width, batches[0], rows, peak_bf16)


def curves(args, x_u8, rows):
    vs = [Variant("eager bf16 (today)", args.curve_width),
          Variant("inductor bf16 (train.compile=inductor)", args.curve_width, compile_mode="inductor"),
          Variant("eager fp32", args.curve_width, bf16=False)]
    aug = ViewAugment(**RECIPE, mean=MEAN, std=STD, version=2)
    g = torch.Generator().manual_seed(1234)
    t0 = time.perf_counter()
    for i in range(args.curve_steps):
        idx = torch.randint(0, len(x_u8), (args.curve_batch,), generator=g)
        views = tuple(aug(x_u8[idx], g).contiguous(memory_format=torch.channels_last) for _ in range(2))
        for v in vs:
            v.losses.append(v.step(*views))
        if i % 20 == 0 or i == args.curve_steps - 1:
            print(f"curve step {i}: " + ", ".join(f"{v.name} {v.losses[-1]:.4f}" for v in vs)
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    ref = vs[0].losses
    out = {"row": "loss curves", "width": args.curve_width, "batch": args.curve_batch, "steps": args.curve_steps,
           "compiled": vs[1].fwd.active, "curves": {v.name: v.losses for v in vs}}
    for v in vs[1:]:
        d = [abs(a - b) for a, b in zip(v.losses, ref)]
        out[f"max_abs_diff[{v.name}]"] = max(d)
        out[f"mean_abs_diff[{v.name}]"] = sum(d) / len(d)
        print(f"curves: max |{v.name} - eager bf16| = {max(d):.4f} (mean {sum(d) / len(d):.4f})", flush=True)
    rows.append(out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for v, style in zip(vs, ("-", "--", ":")):
        ax.plot(range(1, len(v.losses) + 1), v.losses, style, label=v.name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("NT-Xent loss")
    ax.set_title(f"SimCLR ResNet-18 w{args.curve_width}, batch {args.curve_batch}: eager vs compiled")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="16,64")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round (default 3)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--extras", action="store_true", help="also time the other settings (see the docstring)")
    p.add_argument("--profile", action="store_true", help="op shares of the eager step (see the docstring)")
    p.add_argument("--curve-steps", type=int, default=200, help="loss-curve steps (0: no curves)")
    p.add_argument("--curve-width", type=int, default=16)
    p.add_argument("--curve-batch", type=int, default=128)
    p.add_argument("--n", type=int, default=20000, help="images the batches are drawn from")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, the recipes' setting)")
    p.add_argument("--png", default=str(RESULTS / "train_step_curves.png"))
    p.add_argument("--out", default=str(RESULTS / "train_step.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    print_machine(machine)
    x_u8 = make_images(args.n)
    rows: list = []
    peak = matmul_peak(torch.bfloat16, sizes=(2048,), repeats=3)["flops_per_s"] if args.profile else None
    if peak:
        rows.append({"row": "matmul peak bf16", "flops_per_s": peak})
        print(f"bf16 matmul peak {peak / 1e9:.0f} GFLOP/s", flush=True)
    for w in [int(v) for v in args.widths.split(",") if v.strip()]:
        bench_width(w, args, x_u8, rows, peak)
        write_json(args.out, machine, args, rows)  # after each part: a long run stopped later keeps what it measured
    if args.curve_steps:
        curves(args, x_u8, rows)
    write_json(args.out, machine, args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
