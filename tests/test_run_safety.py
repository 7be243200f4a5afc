"""Runs and user files are never destroyed; training that means nothing is refused; a non-finite gradient
stops the step that made it (issue 17, items 1 and 4). The command-line side (one line, exit code) is in
tests/test_bad_inputs.py; here the library behaviour, checked byte for byte."""
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import ConfigError, check_trainable, load_recipe, read_yaml
from training.methods.dissl import dissl_loss, marginal_entropy
from training.runfolder import LOCK_NAME, RunFolderError, RunLock
from training.trainer import Trainer, TrainingError


@pytest.fixture
def tiny_npz(make_tiny_npz):
    """32 images (8 per class): two steps of batch 16 per epoch, which the step/epoch messages below name."""
    return make_tiny_npz(8)


def _cfg(npz, *sets, recipe="simclr_fashion_mnist_cpu"):
    base = [f"data.dataset=npz:{npz}", "model.width=4", "model.in_chans=1", "augment.size=12", "optim.batch_size=16",
            "optim.epochs=1", "optim.warmup_epochs=0", "method.proj_hidden_dim=16", "method.proj_dim=8",
            "train.monitor_every_epochs=0", "train.log_every=1", "train.tensorboard=false", "train.threads=1"]
    return load_recipe(recipe, base + list(sets))


def snapshot(root: Path) -> dict:
    """Every file under ``root``: relative path -> bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- run folders


def test_existing_run_is_refused_without_resume_or_overwrite(tiny_npz, tmp_path):
    out = tmp_path / "run"
    Trainer(_cfg(tiny_npz), out, device="cpu").fit()
    before = snapshot(out)
    assert "export/model.safetensors" in before and LOCK_NAME not in before  # the lock goes with the process
    with pytest.raises(RunFolderError, match=r"already holds a run \(checkpoint\.pt, config\.yaml, log\.csv, "
                                             r"monitor\.csv, export\); continue it with --resume, replace it with "
                                             r"--overwrite"):
        Trainer(_cfg(tiny_npz, "optim.lr=0.1"), out, device="cpu").fit()
    assert snapshot(out) == before  # byte for byte


def test_overwrite_replaces_the_run_and_keeps_other_files(tiny_npz, tmp_path):
    out = tmp_path / "run"
    Trainer(_cfg(tiny_npz, "train.stop_at_step=1"), out, device="cpu").fit()
    (out / "notes.md").write_text("my notes")
    (out / "tensorboard").mkdir()  # a run file of the old run: replaced
    (out / "tensorboard" / "old").write_text("x")
    with pytest.raises(RunFolderError, match=r"give one of them"):
        Trainer(_cfg(tiny_npz), out, device="cpu").fit(resume=True, overwrite=True)
    Trainer(_cfg(tiny_npz, "optim.lr=0.1"), out, device="cpu").fit(overwrite=True)
    assert (out / "notes.md").read_text() == "my notes"
    assert not (out / "tensorboard").exists()
    saved = load_recipe(str(out / "config.yaml"))
    assert saved["optim"]["lr"] == 0.1 and saved["train"]["stop_at_step"] is None
    assert (out / "export" / "model.safetensors").is_file()


def test_out_that_is_a_file_is_refused(tiny_npz, tmp_path):
    f = tmp_path / "afile"
    f.write_bytes(b"precious")
    with pytest.raises(RunFolderError, match=r"--out .*afile is a file; give a folder"):
        Trainer(_cfg(tiny_npz), f, device="cpu").fit()
    assert f.read_bytes() == b"precious"


def test_a_locked_run_folder_is_refused_and_a_stale_lock_taken_over(tiny_npz, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):  # another training process (flock is per open file: the same process conflicts too)
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid()
        with pytest.raises(RunFolderError, match=rf"is in use by another training process \(pid {os.getpid()} on "):
            Trainer(_cfg(tiny_npz), out, device="cpu").fit(resume=True)
        assert os.listdir(out) == [LOCK_NAME]  # nothing written by the refused run
    assert not (out / LOCK_NAME).exists()
    # a lock file left by a process that died (SIGKILL leaves the file; the kernel dropped its flock)
    (out / LOCK_NAME).write_text(json.dumps({"pid": 999999999, "host": "gone"}))
    Trainer(_cfg(tiny_npz), out, device="cpu").fit(resume=True)
    assert (out / "export" / "model.safetensors").is_file() and not (out / LOCK_NAME).exists()


def test_resume_with_another_recipe_is_refused_naming_both(tiny_npz, tmp_path):
    out = tmp_path / "run"
    Trainer(_cfg(tiny_npz, "train.stop_at_step=1"), out, device="cpu").fit()
    before = snapshot(out)
    with pytest.raises(RunFolderError, match=r"was started with recipe 'simclr_resnet18w16_fashion_mnist' \(method "
                                             r"simclr\), not recipe 'dcl_resnet18w16_fashion_mnist' \(method dcl\); they "
                                             r"differ in .*method\.name: run 'simclr' vs now 'dcl'"):
        Trainer(_cfg(tiny_npz, "train.stop_at_step=2", recipe="dcl_fashion_mnist_cpu"), out, device="cpu").fit(
            resume=True)
    assert snapshot(out) == before  # the run's config.yaml and checkpoint untouched
    with pytest.raises(RunFolderError, match=r"other settings of recipe .*optim\.lr: run 0\.6 vs now 0\.1"):
        Trainer(_cfg(tiny_npz, "optim.lr=0.1"), out, device="cpu").fit(resume=True)
    assert snapshot(out) == before
    # how it is stopped and logged may change on resume
    t = Trainer(_cfg(tiny_npz, "train.stop_at_step=2", "train.log_every=2"), out, device="cpu")
    t.fit(resume=True)
    assert t.step == 2


# ----------------------------------------------------------------------------- training that means nothing


@pytest.mark.parametrize("sets,pattern", [
    (["train.max_steps=-5"], r"train\.max_steps=-5 trains nothing; it must be >= 1"),
    (["train.max_steps=0"], r"train\.max_steps=0 trains nothing"),
    (["optim.epochs=0"], r"optim\.epochs=0 trains nothing; it must be >= 1 \(null: a step budget"),
    (["train.stop_at_step=0"], r"train\.stop_at_step=0 trains nothing"),
    (["optim.lr=0"], r"optim\.lr=0 trains nothing; it must be > 0"),
    (["optim.batch_size=1"], r"optim\.batch_size=1 is too small for simclr: a contrastive loss needs negatives"),
    (["optim.batch_size=1", "method.name=barlow"], r"too small for barlow: the cross-correlation is normalised"),
    (["optim.batch_size=1", "method.name=byol"], r"too small for byol: its BatchNorm layers"),
])
def test_training_that_means_nothing_is_refused_before_anything_is_written(tiny_npz, tmp_path, sets, pattern):
    cfg = _cfg(tiny_npz, *sets)
    with pytest.raises(ConfigError, match=pattern):
        check_trainable(cfg)
    with pytest.raises(ConfigError, match=pattern):
        Trainer(cfg, tmp_path / "run", device="cpu").fit()
    assert not (tmp_path / "run").exists()


def test_simclr_at_batch_1_really_is_zero():
    """The reason batch 1 is refused: NT-Xent with no negatives is exactly 0 whatever the weights."""
    from training.methods.simclr import nt_xent_loss

    z = torch.randn(2, 8, requires_grad=True)
    loss = nt_xent_loss(z)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(z.grad) == 0


# ----------------------------------------------------------------------------- recipes


def test_duplicate_yaml_keys_and_syntax_errors_name_file_and_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("method:\n  name: simclr\noptim:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=rf"{p}, line 6: key 'lr' is given twice \(first on line 4\); keep one"):
        read_yaml(p)
    p.write_text("optim: {lr: 0.1}\nmodel: {width: 4}\noptim: {epochs: 2}\n")
    with pytest.raises(ConfigError, match=r"line 3: key 'optim' is given twice \(first on line 1\)"):
        load_recipe(str(p))
    p.write_text("method:\n  name: simclr\noptim: [lr: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{p}, line 4, column 1: not valid YAML \(expected ',' or '\]', but got "
                                          r"'<stream end>'; while parsing a flow sequence at line 3, column 8\)"):
        load_recipe(str(p))
    p.write_text("method:\n  name: simclr\n   temperature: 0.2\n")
    with pytest.raises(ConfigError, match=rf"{p}, line 3, column \d+: not valid YAML"):
        load_recipe(str(p))
    p.write_text("a: 1\nb: {a: 1, b: 2}\n")  # the same key in two mappings is fine
    assert read_yaml(p) == {"a": 1, "b": {"a": 1, "b": 2}}


@pytest.mark.parametrize("item,pattern", [
    ("optim.lr=", r"override 'optim\.lr=' has no value; write optim\.lr=VALUE"),
    ("optim.lr=  ", r"has no value"),
    ("optim..lr=3", r"'optim\.\.lr' is not a section\.key name"),
])
def test_override_without_a_value_is_refused(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_recipe("simclr_fashion_mnist_cpu", [item])


# ----------------------------------------------------------------------------- non-finite gradients


def test_dissl_marginal_entropy_has_a_finite_gradient_when_a_cluster_underflows():
    logits = torch.tensor([[0.0, 0.0, -200.0], [1.0, 0.0, -300.0], [0.0, 2.0, -250.0]], requires_grad=True)
    p = torch.softmax(logits / 0.5, dim=-1)
    assert (p[:, 2] == 0).all()  # cluster 2's probability underflows to 0 across the batch
    h = marginal_entropy(p)
    pm = p.detach().mean(0)
    ref = -sum(float(v) * np.log(float(v)) for v in pm if v > 0)  # independent: 0 log 0 = 0
    assert h.item() == pytest.approx(ref, rel=1e-6)
    h.backward()
    assert torch.isfinite(logits.grad).all()
    # the upstream formula (torch.distributions.Categorical clamps before the log): same value and gradient
    lg = logits.detach().clone().requires_grad_(True)
    up = torch.distributions.Categorical(probs=torch.softmax(lg / 0.5, -1).mean(0)).entropy()
    up.backward()
    assert up.item() == pytest.approx(h.item(), rel=1e-6)
    assert torch.allclose(lg.grad, logits.grad, atol=1e-6)
    # and the whole DISSL loss: a finite gradient where xlogy's was not
    t = [(logits * 3).detach().requires_grad_(True), (logits * 2).detach().requires_grad_(True)]
    s = [torch.randn(3, 3, requires_grad=True) for _ in range(2)]
    dissl_loss(t, s).backward()
    assert all(torch.isfinite(x.grad).all() for x in t + s)
    xl = t[0].detach().clone().requires_grad_(True)
    pm = torch.softmax(xl / 0.5, -1).mean(0)
    (-torch.special.xlogy(pm, pm).sum()).backward()
    assert not torch.isfinite(xl.grad).all()  # the old formula: the NaN gradient the issue saw


def test_non_finite_gradient_stops_the_step_naming_term_and_step(tiny_npz, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(tiny_npz, "optim.epochs=2", "train.checkpoint_minutes=0")
    t = Trainer(cfg, out, device="cpu")
    model = t.model
    calls = {"n": 0}

    def forward(views):
        loss = model(views)
        calls["n"] += 1
        # finite in value (0 * sqrt(0) = 0) but a NaN gradient, from the third step on
        poison = 0 * torch.sqrt(0 * model.backbone.conv1.weight.sum()) if calls["n"] >= 3 else 0 * loss
        model.loss_terms = {"contrastive": loss, "poison": poison}
        return loss + poison

    t.ddp = forward
    with pytest.raises(TrainingError, match=r"non-finite gradient at step 2 \(epoch 1\) while the loss is [-\d.]+: "
                                            r"from loss term poison \(first in backbone\.conv1\.weight\); nothing "
                                            r"was updated and the last good checkpoint is kept in .*checkpoint\.pt"):
        t.fit()
    assert t.step == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the optimiser never saw the NaN
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (out / LOCK_NAME).exists()


def test_non_finite_weight_after_the_step_is_caught(tiny_npz, tmp_path):
    t = Trainer(_cfg(tiny_npz), tmp_path / "run", device="cpu")
    step = t.opt.step

    def bad_step(*a, **k):
        step(*a, **k)
        with torch.no_grad():
            t.model.backbone.conv1.weight.fill_(float("inf"))

    t.opt.step = bad_step
    with pytest.raises(TrainingError, match=r"weight backbone\.conv1\.weight became non-finite in the optimiser step at step 0"):
        t.fit()


# ----------------------------------------------------------------------------- the lock, directly


def test_lock_file_records_pid_and_is_removed(tmp_path):
    lock = RunLock(tmp_path / "r").acquire()
    try:
        assert json.loads((tmp_path / "r" / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(RunFolderError, match=r"in use by another training process"):
            RunLock(tmp_path / "r").acquire()
    finally:
        lock.release()
    assert not (tmp_path / "r").exists()  # the folder the lock created (nothing else was written) goes with it
    (tmp_path / "r").mkdir()
    RunLock(tmp_path / "r").acquire().release()  # free again; a folder that existed stays
    assert os.listdir(tmp_path / "r") == []


def test_os_error_message_names_file_and_hint():
    from zoo.cli import os_error_message

    e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/model.safetensors")
    assert os_error_message(e) == (f"{os.strerror(errno.ENOSPC)}: /x/model.safetensors; free some space or write "
                                   f"elsewhere (--out, $SSLZOO_HOME)")


# ----------------------------------------------------------------------------- two processes, one --out


def test_two_trainings_into_one_out_cannot_mix_files(tiny_npz, tmp_path):
    """A second `sslzoo train` into a folder another process is training in is refused (with or without
    --resume), and the first run ends with its own files only; then a SIGKILLed run's lock is taken over."""
    import signal
    import time

    from sslzoo_runner import runner

    out = tmp_path / "run"
    sets = [f"data.dataset=npz:{tiny_npz}", "model.width=4", "model.in_chans=1", "augment.size=12",
            "optim.batch_size=16", "optim.epochs=200", "optim.warmup_epochs=0", "method.proj_hidden_dim=16",
            "method.proj_dim=8", "train.monitor_every_epochs=0", "train.log_every=1", "train.tensorboard=false",
            "train.threads=1", "train.stop_at_step=60"]
    args = ["train", "simclr_fashion_mnist_cpu", "--out", str(out), "--device", "cpu"]
    for s in sets:
        args += ["--set", s]
    run = runner()
    first = run.start(*args)
    deadline = time.monotonic() + 300
    while not (out / "log.csv").is_file() or len((out / "log.csv").read_text().splitlines()) < 3:
        assert run.poll(first) is None, first.err.read_text()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    fresh = run.run(*args[:-2], "--set", "optim.lr=0.1")  # a different run, no --resume
    assert fresh.returncode == 2 and "already holds a run" in fresh.stderr, fresh.stderr
    second = run.run(*args, "--resume")
    assert second.returncode == 2, second.stderr
    assert f"is in use by another training process (pid {first.pid} on " in second.stderr, second.stderr
    run.kill(first, signal.SIGKILL)  # the lock file stays; the kernel released the flock
    run.wait(first)
    assert (out / LOCK_NAME).is_file()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid
    done = run.run(*args, "--resume", "--set", "train.stop_at_step=2")  # how it stops may change on resume
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (out / LOCK_NAME).exists()
    assert load_recipe(str(out / "config.yaml"))["optim"]["lr"] != 0.1  # only the first run's recipe
