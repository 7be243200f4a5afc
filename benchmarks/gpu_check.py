"""The GPU check (issue 18): one command for anyone with a CUDA GPU, a few minutes on one GPU.

    python benchmarks/gpu_check.py            # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --dry      # the whole script on the CPU with tiny sizes (the tests run this)

What it does, in order:

1. prints torch, CUDA, cuDNN and the GPU's name;
2. runs the CUDA tests: ``pytest -q -rs -k cuda tests`` (every test whose name says cuda; on a machine
   without a GPU they skip), and records their summary line (``--dry``: over tests/test_layers.py, a
   second's worth, so the dry run exercises the step without re-entering the test suite);
3. writes a generated ImageNet-layout tree of JPEGs of about ImageNet's size (``--images`` files with
   sides drawn in ``--sizes``, quality 90; once, into ``$SSLZOO_HOME/cache/bench-jpeg/``), then trains
   ``--steps`` steps of each case through the trainer (:class:`training.trainer.Trainer`) from the
   file-backed source (``data.source=files``, ``data.workers=--workers``) with bf16 autocast:

   * ``simclr``: the ImageNet DISSL recipe's data, model and augmentation (ResNet-50, 2 x 224 crops,
     colour distortion strength 1, blur p 0.5) with SimCLR's loss (T 0.2, 2048-2048-128 head);
   * ``dissl_m6``: ``dissl_resnet50_d8192_e100_m6`` as it is (2 x 160 + 4 x 96, 8192-d);
   * the same with ``train.compile=true`` when the trainer has that key (``--compile auto``).

   The data are repeated (``data.repeat``) so that the timed steps lie inside one epoch: no epoch-end
   checkpoint or kNN monitor falls inside the measurement.

For each case it prints images/s (samples per second; each sample is 2 or 6 crops), the fraction
of the step time spent waiting for data, and the peak GPU memory (``torch.cuda.max_memory_allocated``).
Timing: the model's documented step hooks are wrapped (``on_step_start`` is called before a step's
batch is moved to the device and augmented, ``on_train_step`` after its optimiser step); the end hook
synchronises the GPU, so a step's interval is its real duration, and the gap between one step's end
and the next step's start is the time the loop waited for its next batch from the DataLoader (plus
logging, which is a few lines of CSV). The first ``--warmup`` steps (worker start-up, cuDNN
autotuning, compilation) are not timed.

Everything printed is also written to ``benchmarks/results/gpu_check-<date>.json`` (``--dry``:
``gpu_check-dry-<date>.json`` unless ``--out`` says otherwise).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import RESULTS, ROOT, machine_info, print_machine, write_json  # noqa: E402
from benchmarks.jpeg_cache import cached_jpeg_tree  # noqa: E402

SIMCLR_SETS = ["method.name=simclr", "method.temperature=0.2", "method.proj_hidden_dim=2048", "method.proj_dim=128",
               "name=simclr_resnet50_gpu_check"]
CASES = {"simclr": ("dissl_resnet50_dNone_e100_m2", SIMCLR_SETS),
         "dissl_m6": ("dissl_resnet50_d8192_e100_m6", [])}
# --dry: a seconds-long CPU run of the same cases (tiny network, 64-px crops, fp32 since torch's CPU bf16
# convolution weight gradient is not finite on the 1x1 maps small crops reach in a ResNet-50)
DRY_SETS = ["model.width=8", "model.expand_mid=16", "method.proj_hidden_dim=32", "augment.blur_kernel=5",
            "augment.small_size=32", "train.bf16=false"]
DRY_CASE = {"simclr": ["method.proj_dim=16"],
            "dissl_m6": ["model.expand_dim=256", "method.n_clusters=64", "method.bottleneck_dim=16"]}


def versions() -> dict:
    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "gpu_count": torch.cuda.device_count() if cuda else 0,
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1) if cuda else None}


def run_cuda_tests(target: str) -> dict:
    """``pytest -k cuda TARGET``: the tests whose name says cuda (they skip without a GPU). Exit status 5
    (no test selected) is not a failure."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda", *target.split()]
    print("$ " + " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = [ln for ln in (r.stdout + r.stderr).strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else ""
    print("\n".join(lines[-15:]), flush=True)
    return {"command": " ".join(cmd[2:]), "returncode": r.returncode, "summary": summary,
            "seconds": round(time.perf_counter() - t0, 1)}


class StepClock:
    """Wraps a model's step hooks to time each step and the wait between steps (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, warmup: int):
        self.device, self.warmup = device, warmup
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.first_start = getattr(model, "on_step_start", None)
        self.first_end = getattr(model, "on_train_step", None)
        model.on_step_start = self.on_step_start
        model.on_train_step = self.on_train_step

    def on_step_start(self, step, total, steps_per_epoch):
        self.starts.append(time.perf_counter())
        if self.first_start is not None:
            self.first_start(step, total, steps_per_epoch)

    def on_train_step(self, step, total):
        if self.first_end is not None:
            self.first_end(step, total)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.ends.append(time.perf_counter())

    def summary(self, batch: int) -> dict:
        """Over the steps after the warm-up: the interval from the end of step k-1 to the end of step k
        is step k's time; the part from the end of step k-1 to the start of step k is the wait for data."""
        w = self.warmup
        ends, starts = self.ends, self.starts
        timed = range(max(w, 1), len(ends))
        if not timed:
            return {"timed_steps": 0}
        total = sum(ends[k] - ends[k - 1] for k in timed)
        wait = sum(starts[k] - ends[k - 1] for k in timed)
        return {"timed_steps": len(timed), "images_per_s": round(len(timed) * batch / total, 1),
                "step_ms": round(1000 * total / len(timed), 1), "data_wait_fraction": round(wait / total, 4)}


def run_case(name: str, recipe: str, sets: list, tree: Path, out: Path, args, device: torch.device) -> dict:
    from training.config import load_recipe
    from training.trainer import Trainer

    sets = list(sets) + [f"data.root={tree}", "data.dataset=imagenet", "data.split=train", "data.source=files",
                         f"data.workers={args.workers}", f"data.repeat={args.repeat}",
                         f"optim.batch_size={args.batch}", f"train.max_steps={args.steps}",
                         "train.monitor_every_epochs=0", "train.tensorboard=false", "train.log_every=10",
                         "train.checkpoint_minutes=1000"]
    if args.dry:
        sets += DRY_SETS + DRY_CASE[name.split("+")[0]] + [f"augment.size={args.crop}"]
    cfg = load_recipe(recipe, sets)
    print(f"\n== {name}: {recipe} + {' '.join(sets)}", flush=True)
    if device.type == "cuda":  # each case's own peak, the model's set-up included
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(cfg, out, device=str(device))
    clock = StepClock(trainer.model, trainer.device, args.warmup)
    t0 = time.perf_counter()
    trainer.fit()
    row = {"case": name, "recipe": recipe, "overrides": sets, "steps": trainer.step,
           "crops": f"{trainer.model.n_views}x{cfg['augment']['size']}"
                    + (f"+{trainer.n_small}x{cfg['augment']['small_size']}" if trainer.n_small else ""),
           "batch": args.batch, "wall_s": round(time.perf_counter() - t0, 1), **clock.summary(args.batch)}
    if trainer.device.type == "cuda":
        row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(trainer.device) / 2 ** 30, 2)
    print(f"{name}: {row.get('images_per_s')} images/s, step {row.get('step_ms')} ms, waiting for data "
          f"{100 * row.get('data_wait_fraction', float('nan')):.1f}% of the step time, peak GPU memory "
          f"{row.get('peak_gpu_memory_gib', '-')} GiB ({row['timed_steps']} timed steps)", flush=True)
    return row


def has_compile_key() -> bool:
    from training.config import DEFAULTS

    return "compile" in DEFAULTS["train"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="CUDA tests, then SimCLR and DISSL m6 steps at 224 px from a JPEG tree")
    ap.add_argument("--dry", action="store_true", help="run everything on the CPU with tiny sizes (seconds)")
    ap.add_argument("--steps", type=int, default=None, help="steps per case (default 100; --dry 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 10; --dry 1)")
    ap.add_argument("--batch", type=int, default=None,
                    help="global batch (default 256; lower it if a small GPU runs out of memory; --dry 8)")
    ap.add_argument("--images", type=int, default=None, help="generated JPEGs (default 4096; --dry 32)")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers (default: CPU cores - 1, at most 16; --dry 1)")
    ap.add_argument("--cases", default="simclr,dissl_m6", help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                    help="also time with train.compile=true: auto = when the trainer has the key (not with --dry)")
    ap.add_argument("--no-tests", action="store_true", help="skip the pytest step")
    ap.add_argument("--tests", default=None,
                    help="what pytest -k cuda runs over (default tests; --dry: tests/test_layers.py, which imports no "
                         "torch, so the dry run's pytest step takes a second and never re-enters the test suite)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of this process (default: torch's; --dry 1, the CPUs may be shared)")
    ap.add_argument("--cache", default=None, help="folder of the generated tree (default $SSLZOO_HOME/cache/bench-jpeg)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_check-<date>.json)")
    args = ap.parse_args(argv)
    dry = args.dry
    args.steps = args.steps or (3 if dry else 100)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 10)
    args.batch = args.batch or (8 if dry else 256)
    args.images = args.images or (32 if dry else 4096)
    args.workers = args.workers if args.workers is not None else (1 if dry else max(1, min(16, (os.cpu_count() or 2) - 1)))
    args.crop = 64
    if args.threads or dry:
        torch.set_num_threads(args.threads or 1)
    # enough copies of the data that the timed steps lie inside the first epoch
    args.repeat = max(1, -(-(args.steps + 1) * args.batch // args.images))
    date = datetime.date.today().isoformat()
    out = Path(args.out) if args.out else RESULTS / f"gpu_check{'-dry' if dry else ''}-{date}.json"
    device = torch.device("cpu" if dry else "cuda")
    if not dry and not torch.cuda.is_available():
        print("no CUDA GPU is available here; run on a machine with one, or pass --dry for the CPU dry run",
              file=sys.stderr)
        return 2
    info = machine_info(**versions(), date=date, dry=dry)
    print_machine(info)
    tests = None if args.no_tests else run_cuda_tests(args.tests or ("tests/test_layers.py" if dry else "tests"))
    tree = cached_jpeg_tree("gpu-check-dry" if dry else "gpu-check", cache=args.cache,
                            classes=4 if dry else 16, per_class=args.images // (4 if dry else 16),
                            sizes=(40, 96) if dry else (375, 500), quality=90, layout="imagenet",
                            processes=1 if dry else 0, eval_per_class=1, seed=0)
    compile_too = args.compile == "on" or (args.compile == "auto" and not dry and has_compile_key())
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        for name in args.cases.split(","):
            if name not in CASES:
                ap.error(f"unknown case {name!r}; choose from {', '.join(CASES)}")
            recipe, sets = CASES[name]
            rows.append(run_case(name, recipe, sets, tree, Path(tmp) / name, args, device))
            if compile_too:
                rows.append(run_case(f"{name}+compile", recipe, sets + ["train.compile=true"], tree,
                                     Path(tmp) / f"{name}-compile", args, device))
    print("\n" + json.dumps({"tests": tests, "runs": rows}, indent=1), flush=True)
    write_json(out, info, args, [{"tests": tests}] + rows)
    failed = tests is not None and tests["returncode"] not in (0, 5)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
