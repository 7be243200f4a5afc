"""The SimCLR training step: today's eager bf16 step vs the reused heap (``train.reuse_freed_memory``) and
the compiled step (``train.compile=inductor``), side by side.

Model and step as ``benchmarks/train_speed.py``'s bare step: ResNet-18 with the CIFAR stem (3x3 conv,
no max-pool) at ``--widths``, projection 512 -> 128, NT-Xent (temperature 0.2), SGD (lr 0.3, momentum
0.9, wd 5e-4), batch 512 of 32 px views made once by the recipe's augmentation (``ViewAugment``) from
random smooth uint8 images, ``channels_last``, bf16 autocast. Every variant starts from the same
initial weights; the compiled ones go through :class:`training.compiled.CompiledForward`, the
trainer's own path. Variants: eager bf16 (today's step: glibc's default allocator), eager bf16 with the
reused heap (:func:`training.heap.reuse_freed_memory`, the recipes' default now), inductor, inductor
with the reused heap.

Per width:

* steady state: ``--repeats`` rounds; in each, every variant runs in a fresh Python process of its own
  (the allocator setting is process-wide, and a fresh process keeps one variant's heap out of another's
  timing): two untimed steps (compilation included), then ``--steps`` timed steps. Images/s per round,
  the ratio to the eager step of the same round, the median ratio, per timed step the page faults,
  system and user CPU seconds, and the worker's peak RSS (the reused heap keeps freed blocks: its peak is
  the live peak plus what the heap could not reuse);
* compile time: each variant's first and second step in round 0 (with a warm inductor cache, the first
  compiled step loads the kernels instead of compiling them);
* op shares (``--profile``): one eager step under ``torch.profiler``: the share of self CPU time in
  convolutions and matmuls (forward and backward), the work compilation cannot change, and the bound
  ``1 / share`` on any speed-up that leaves those kernels as they are; with the step's FLOPs and the
  bf16 matmul peak (``benchmarks/hardware_peak.py``), the fraction of peak the convolutions reach.

``--extras`` adds eager variants: fp32, bf16 without channels_last, bf16 with
``torch.backends.mkldnn`` off, bf16 with fused SGD.

``--curve-steps N`` (default 200): loss curves of N steps of eager bf16, eager bf16 with the reused heap
(its own process), compiled bf16 and eager fp32 (the fp32 curve measures what bf16 rounding alone does),
same initial weights, the same batches (each batch augmented once and fed to every model), at
``--curve-width`` / ``--curve-batch``; the max |difference| of each curve from eager bf16 (the reused
heap's: whether it is bit-identical), and a PNG of the curves.

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
from training.heap import reuse_freed_memory
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
                 fused_sgd=False, heap=False):
        if heap:  # process-wide: only ever in a worker process of its own (see run_worker)
            assert reuse_freed_memory(), "train.reuse_freed_memory needs glibc"
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


TODAY = "eager bf16 (today)"
HEAP = "eager bf16 + reused heap (train.reuse_freed_memory)"
VARIANTS = {TODAY: {},
            HEAP: {"heap": True},
            "inductor bf16 (train.compile=inductor)": {"compile_mode": "inductor"},
            "inductor bf16 + reused heap": {"compile_mode": "inductor", "heap": True}}
EXTRAS = {"eager fp32": {"bf16": False},
          "eager bf16, no channels_last": {"channels_last": False},
          "eager bf16, mkldnn off": {"mkldnn": False},
          "eager bf16, fused SGD": {"fused_sgd": True}}


def variant_names(extras):
    return list(VARIANTS) + (list(EXTRAS) if extras else [])


def make_variant(name, width) -> Variant:
    """The variant called ``name`` (a key of :data:`VARIANTS` or :data:`EXTRAS`), fresh initial weights."""
    return Variant(name, width, **{**VARIANTS, **EXTRAS}[name])


def run_worker(args) -> int:
    """``--worker NAME``: one variant in this (fresh) process: two untimed steps (compilation included), then
    ``--steps`` timed ones; one JSON line with the timings, CPU times and page faults per timed step."""
    import json
    import resource

    torch.manual_seed(0)
    x_u8 = make_images(args.n)
    batches = [make_views(x_u8, args.batch, seed) for seed in range(2)]
    v = make_variant(args.worker, args.worker_width)
    out = {}
    for i, key in enumerate(("first_step_s", "second_step_s")):
        t0 = time.perf_counter()
        v.step(*batches[i])
        out[key] = time.perf_counter() - t0
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(args.steps):
        v.step(*batches[i % 2])
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    out.update(images_per_s=args.steps * args.batch / wall, compiled=v.fwd.active,
               user_s_per_step=(r1.ru_utime - r0.ru_utime) / args.steps,
               system_s_per_step=(r1.ru_stime - r0.ru_stime) / args.steps,
               page_faults_per_step=(r1.ru_minflt - r0.ru_minflt) / args.steps,
               peak_rss_mib=r1.ru_maxrss / 1024)  # Linux: KiB; the whole process (images, model, steps)
    if args.curve_steps:
        out["losses"] = curve_losses(args.worker, args, x_u8)
    print(json.dumps(out), flush=True)
    return 0


def in_worker(name, width, args, steps=None, curve_steps=0) -> dict:
    """Run ``name`` at ``width`` in a fresh Python process (:func:`run_worker`) and return its JSON line: the
    allocator setting is process-wide, and a fresh process per round keeps one variant's heap out of
    another's timing."""
    import json
    import subprocess

    cmd = [sys.executable, __file__, "--worker", name, "--worker-width", str(width), "--batch", str(args.batch),
           "--steps", str(args.steps if steps is None else steps), "--n", str(args.n),
           "--curve-steps", str(curve_steps), "--curve-batch", str(args.curve_batch)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"failed": tail[:300]}
    return json.loads(r.stdout.strip().splitlines()[-1])


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


def bench_width(width, args, x_u8, rows):
    """Interleaved rounds; in each, every variant runs in a fresh process of its own (:func:`in_worker`)."""
    B = args.batch
    names = variant_names(args.extras)
    rates = {n: [] for n in names}
    runs = {n: [] for n in names}
    for r in range(args.repeats):
        for n in names:
            res = in_worker(n, width, args)
            if "failed" in res:
                print(f"w{width:<3} {n}: failed ({res['failed']})", flush=True)
                continue
            runs[n].append(res)
            rates[n].append(res["images_per_s"])
            if r == 0:
                print(f"w{width:<3} {n:<52} first step {res['first_step_s']:7.1f} s, second "
                      f"{res['second_step_s']:6.2f} s (compiled: {res['compiled']})", flush=True)
        base = rates[TODAY][-1] if len(rates[TODAY]) == r + 1 else None
        print(f"w{width:<3} round {r}: " + ", ".join(
            f"{n} {rates[n][-1]:.1f} img/s" + (f" ({rates[n][-1] / base:.2f}x)" if base else "")
            for n in names if len(rates[n]) == r + 1), flush=True)
    base = rates[TODAY]
    for n in names:
        if len(rates[n]) != len(base) or not base:
            rows.append({"width": width, "row": n, "failed": True, "runs": runs[n]})
            continue
        ratios = [a / b for a, b in zip(rates[n], base)]
        per = {k: statistics.median(x[k] for x in runs[n])
               for k in ("user_s_per_step", "system_s_per_step", "page_faults_per_step", "peak_rss_mib")}
        rows.append({"width": width, "row": n, "batch": B, "steps_per_round": args.steps,
                     "first_step_s": runs[n][0]["first_step_s"], "second_step_s": runs[n][0]["second_step_s"],
                     "compiled": runs[n][0]["compiled"], "images_per_s_rounds": rates[n],
                     "images_per_s_median": statistics.median(rates[n]), "ratio_to_eager_rounds": ratios,
                     "ratio_to_eager_median": statistics.median(ratios), **{k + "_median": v for k, v in per.items()}})
        print(f"w{width:<3} {n:<52} median {statistics.median(rates[n]):8.1f} img/s, ratio to eager "
              f"{statistics.median(ratios):.3f}x (rounds: {', '.join(f'{q:.2f}' for q in ratios)}); per step: "
              f"{per['page_faults_per_step']:.0f} page faults, {per['system_s_per_step']:.3f} s system, "
              f"{per['user_s_per_step']:.3f} s user; peak RSS {per['peak_rss_mib']:.0f} MiB", flush=True)
    if args.profile:
        profile_shares(width, make_views(x_u8, B, 0), rows, args.peak)


def curve_batches(args, x_u8):
    """The curve's batches: each augmented once (same generator), so every model sees the same images."""
    aug = ViewAugment(**RECIPE, mean=MEAN, std=STD, version=2)
    g = torch.Generator().manual_seed(1234)
    for _ in range(args.curve_steps):
        idx = torch.randint(0, len(x_u8), (args.curve_batch,), generator=g)
        yield tuple(aug(x_u8[idx], g).contiguous(memory_format=torch.channels_last) for _ in range(2))


def curve_losses(name, args, x_u8) -> list[float]:
    """The loss curve of a fresh variant ``name`` (same initial weights as every other)."""
    v = make_variant(name, args.curve_width)
    return [v.step(*views) for views in curve_batches(args, x_u8)]


def curves(args, x_u8, rows):
    here = [TODAY, "inductor bf16 (train.compile=inductor)", "eager fp32"]  # in this process, interleaved
    vs = [make_variant(n, args.curve_width) for n in here]
    t0 = time.perf_counter()
    for i, views in enumerate(curve_batches(args, x_u8)):
        for v in vs:
            v.losses.append(v.step(*views))
        if i % 20 == 0 or i == args.curve_steps - 1:
            print(f"curve step {i}: " + ", ".join(f"{v.name} {v.losses[-1]:.4f}" for v in vs)
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    losses = {v.name: v.losses for v in vs}
    # the reused heap in a process of its own (process-wide setting), same batches
    heap = in_worker(HEAP, args.curve_width, args, steps=1, curve_steps=args.curve_steps).get("losses")
    if heap:
        losses = {TODAY: losses[TODAY], HEAP: heap, **losses}
    ref = losses[TODAY]
    out = {"row": "loss curves", "width": args.curve_width, "batch": args.curve_batch, "steps": args.curve_steps,
           "compiled": vs[1].fwd.active, "curves": losses}
    for name, curve in losses.items():
        if name == TODAY:
            continue
        d = [abs(a - b) for a, b in zip(curve, ref)]
        out[f"max_abs_diff[{name}]"] = max(d)
        out[f"mean_abs_diff[{name}]"] = sum(d) / len(d)
        if name == HEAP:
            out[f"bit_identical[{name}]"] = curve == ref
        print(f"curves: max |{name} - eager bf16| = {max(d):.4f} (mean {sum(d) / len(d):.4f})", flush=True)
    rows.append(out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    # the reused heap is bit-identical to today's step: dotted over a wide line
    styles = {TODAY: ("-", 2.4), HEAP: ((0, (1, 2)), 1.2), "eager fp32": (":", 1.2)}
    for name, curve in losses.items():
        style, lw = styles.get(name, ("--", 1.2))
        ax.plot(range(1, len(curve) + 1), curve, linestyle=style, label=name, lw=lw)
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
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one variant (run_worker)
    p.add_argument("--worker-width", type=int, default=16, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        return run_worker(args)
    machine = machine_info()
    print_machine(machine)
    x_u8 = make_images(args.n)
    rows: list = []
    peak = matmul_peak(torch.bfloat16, sizes=(2048,), repeats=3)["flops_per_s"] if args.profile else None
    if peak:
        rows.append({"row": "matmul peak bf16", "flops_per_s": peak})
        print(f"bf16 matmul peak {peak / 1e9:.0f} GFLOP/s", flush=True)
    args.peak = peak
    for w in [int(v) for v in args.widths.split(",") if v.strip()]:
        bench_width(w, args, x_u8, rows)
        write_json(args.out, machine, args, rows)  # after each part: a long run stopped later keeps what it measured
    if args.curve_steps:
        curves(args, x_u8, rows)
    write_json(args.out, machine, args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
