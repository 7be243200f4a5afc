"""Crash-safe training: ``sslzoo train`` killed with SIGKILL at random steps and resumed with
``--resume`` each time ends with weights bit-identical to a run that was never interrupted.

The run checkpoints after every step (``train.checkpoint_minutes=0``), so a kill can land anywhere,
including in the middle of writing ``checkpoint.pt``; the atomic write (temporary file, fsync,
rename) must leave the previous checkpoint intact. The kill steps are drawn at random; the seed is
printed on failure and can be fixed with ``SSLZOO_CRASH_SEED``.
"""
import os
import random
import re
import signal
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sslzoo_runner import runner

N_IMAGES, SIZE, BATCH, EPOCHS = 256, 16, 32, 4
TOTAL = N_IMAGES // BATCH * EPOCHS  # 32 steps
N_KILLS = 3


@pytest.fixture
def tiny_npz(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), N_IMAGES // 4)
    images = rng.integers(0, 256, size=(N_IMAGES, SIZE, SIZE, 1), dtype=np.uint8)
    images[:, : SIZE // 2] //= (labels[:, None, None, None] + 1).astype(np.uint8)
    path = tmp_path / "tiny.npz"
    np.savez(path, train_image=images, train_label=labels, test_image=images[:32], test_label=labels[:32])
    return path


def _train_args(npz, out):
    sets = [f"data.dataset=npz:{npz}", "model.width=4", "model.in_chans=1", f"augment.size={SIZE}",
            "augment.mean=[0.5]", "augment.std=[0.5]", f"optim.batch_size={BATCH}", f"optim.epochs={EPOCHS}",
            "optim.warmup_epochs=1", "method.proj_hidden_dim=16", "method.proj_dim=8", "train.threads=1",
            "train.seed=3", "train.checkpoint_minutes=0", "train.log_every=1", "train.monitor_every_epochs=0",
            "export.preprocess.resize=16", "export.preprocess.crop=16"]
    args = ["train", "simclr_fashion_mnist_cpu", "--out", str(out), "--device", "cpu"]
    for s in sets:
        args += ["--set", s]
    return args


def _last_logged_step(log) -> int:
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        head = line.split(",", 1)[0]
        if head.isdigit() and line.count(",") >= 5:  # a complete row
            return int(head)
    return 0


def _checkpoint_step(path) -> int:
    if not path.is_file():
        return -1
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def test_sigkill_at_random_steps_then_resume_is_bit_identical(tiny_npz, tmp_path):
    run = runner()
    seed = int(os.environ.get("SSLZOO_CRASH_SEED") or random.SystemRandom().randrange(1 << 30))
    kills = sorted(random.Random(seed).sample(range(2, TOTAL - 3), N_KILLS))
    why = f"(kill steps {kills}, SSLZOO_CRASH_SEED={seed})"

    ref_out, out = tmp_path / "reference", tmp_path / "killed"
    ref = run.start(*_train_args(tiny_npz, ref_out))  # uninterrupted, alongside

    resumed_at = []
    for target in kills:
        p = run.start(*_train_args(tiny_npz, out), "--resume")
        deadline = time.monotonic() + 300
        while _last_logged_step(out / "log.csv") < target:
            rc = run.poll(p)
            assert rc is None, f"run ended (exit {rc}) before step {target} {why}: {p.err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no progress to step {target} {why}"
            time.sleep(0.002)
        run.kill(p, signal.SIGKILL)
        done = run.wait(p)
        assert done.returncode == -signal.SIGKILL, f"{done.returncode} {why}: {done.stderr[-2000:]}"
        assert not (out / "export").exists(), f"the run finished before the kill {why}"
        m = re.search(r"resumed from .* at step (\d+)", done.stdout)
        resumed_at.append(int(m.group(1)) if m else 0)
        # a checkpoint after every step: the one on disk is at most one step behind the log
        ck = _checkpoint_step(out / "checkpoint.pt")
        assert ck >= target - 1, f"checkpoint at step {ck}, log at {target} {why}"

    final = run.wait(run.start(*_train_args(tiny_npz, out), "--resume"))
    assert final.returncode == 0, f"{why}: {final.stderr[-3000:]}"
    m = re.search(r"resumed from .* at step (\d+)", final.stdout)
    assert m and int(m.group(1)) >= kills[-1] - 1, f"final run did not resume {why}: {final.stdout[-2000:]}"
    # every resume after the first kill started where the previous run was killed, not from scratch
    for prev, start in zip(kills, resumed_at[1:] + [int(m.group(1))]):
        assert start >= prev - 1, f"resumed at step {start} after a kill at step {prev} {why}"

    ref_done = run.wait(ref)
    assert ref_done.returncode == 0, ref_done.stderr[-3000:]

    a = load_file(str(ref_out / "export" / "model.safetensors"))
    b = load_file(str(out / "export" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"backbone tensor {k} differs {why}"
    ca = torch.load(ref_out / "checkpoint.pt", map_location="cpu", weights_only=True)
    cb = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ca["step"] == cb["step"] == TOTAL
    for k, v in ca["model"].items():  # projection head and BN statistics too
        assert torch.equal(v, cb["model"][k]), f"{k} differs {why}"
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for i in sa:  # momentum buffers
        for name, v in sa[i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[i][name])), f"optimizer state {i}.{name} {why}"
