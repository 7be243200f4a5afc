"""train.reuse_freed_memory (training/heap.py): fewer page faults, the same arithmetic, applied by the trainer."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")

# Allocates and frees 64 MiB tensors step by step (above glibc's largest self-set mmap threshold, 32 MiB), then runs three
# SGD steps of a small bf16 conv net; prints the page faults of the allocation loop and the losses' bits.
SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    sys.path.insert(0, {root!r})
    applied = None
    if sys.argv[1] == "1":
        from training.heap import reuse_freed_memory
        applied = reuse_freed_memory()
        assert reuse_freed_memory() is applied  # idempotent
    torch.set_num_threads(1)
    x = torch.ones(16 << 20)
    for step in range(12):  # a "step": two fresh 64 MiB blocks, both freed at its end
        if step == 2:  # steady state: page faults of steps 2..11
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = x * 2
        b = a * 2
        del a, b
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(3):
        xb = torch.randn(256, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
        yb = torch.randint(0, 10, (256,), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(net(xb).float(), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item().hex())
    print(json.dumps({{"applied": applied, "faults": faults, "losses": losses,
                      "weights": float(sum(p.double().sum() for p in net.parameters())).hex()}}))
""").format(root=str(ROOT))


def _run(heap: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, "1" if heap else "0"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_reused_heap_same_bits_fewer_page_faults():
    off, on = _run(False), _run(True)
    assert on["applied"] is True
    # the same arithmetic: every loss and the final weights to the bit
    assert on["losses"] == off["losses"] and on["weights"] == off["weights"]
    # 20 fresh 64 MiB blocks: ~16k page faults each by default (4 KiB pages); after two steps the freed blocks
    # are reused
    assert off["faults"] > 250000, off
    assert on["faults"] < off["faults"] / 4, (on, off)


def test_trainer_applies_it_on_a_cpu_unless_switched_off(monkeypatch, tmp_path):
    from training import trainer as T
    from training.config import load_recipe

    calls = []
    monkeypatch.setattr(T, "reuse_freed_memory", lambda: calls.append(1) or True)
    T.Trainer(load_recipe("simclr_fashion_mnist_cpu", ["model.width=4"]), tmp_path / "a", device="cpu")
    assert calls == [1]
    T.Trainer(load_recipe("simclr_fashion_mnist_cpu", ["model.width=4", "train.reuse_freed_memory=false"]),
              tmp_path / "b", device="cpu")
    assert calls == [1]
