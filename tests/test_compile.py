"""``train.compile``: validation, the clean fall-back to eager, checkpoint keys, compiled vs eager losses.

Trainer runs use the ``aot_eager`` backend (Dynamo + AOTAutograd, the tracing the trainer's compiled
path goes through, without C++ code generation: seconds, not minutes). Inductor itself is checked on
a tiny model only, and skipped where no C compiler is found.
"""
import logging
import shutil

import pytest
import torch

from training.compiled import COMPILE_MODES, CompiledForward, resolve_compile_mode
from training.config import ConfigError, load_recipe
from training.trainer import Trainer


def _cfg(npz, **extra):
    sets = [f"data.dataset=npz:{npz}", "model.width=4", "model.in_chans=1", "augment.size=12",
            "optim.batch_size=16", "optim.epochs=1", "optim.warmup_epochs=1", "method.proj_hidden_dim=16",
            "method.proj_dim=8", "train.monitor_every_epochs=0", "train.log_every=1", "train.tensorboard=false",
            "train.threads=1", "train.stop_at_step=2"] + [f"{k}={v}" for k, v in extra.items()]
    return load_recipe("simclr_fashion_mnist_cpu", sets)


def _losses(out):
    rows = (out / "log.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[2]) for r in rows]


# ----------------------------------------------------------------------------- config


def test_compile_key_default_and_choices(tiny_npz):
    assert load_recipe("simclr_fashion_mnist_cpu")["train"]["compile"] == "auto"
    for mode in COMPILE_MODES:
        assert _cfg(tiny_npz, **{"train.compile": mode})["train"]["compile"] == mode
    assert _cfg(tiny_npz, **{"train.compile": "null"})["train"]["compile"] is None
    assert resolve_compile_mode(None, "cpu") == "none"
    assert resolve_compile_mode("auto", "cpu") == "none"  # measured not to pay on a CPU (benchmarks/train_step.py)
    assert resolve_compile_mode("auto", "cuda") == "inductor"
    assert resolve_compile_mode("aot_eager", "cpu") == "aot_eager"


@pytest.mark.parametrize("value, match", [
    ("inducter", r"train\.compile must be one of auto, none, inductor, aot_eager, got 'inducter'; did you mean 'inductor'\?"),
    ("true", r"train\.compile must be one of auto, none, inductor, aot_eager, got True$"),
    ("3", r"train\.compile must be one of .*got 3$"),
])
def test_compile_key_rejects_other_values(tiny_npz, value, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tiny_npz, **{"train.compile": value})


# ----------------------------------------------------------------------------- trainer


def test_compiled_run_keeps_checkpoint_keys_and_losses(tiny_npz, tmp_path):
    eager = Trainer(_cfg(tiny_npz, **{"train.compile": "none"}), tmp_path / "eager", device="cpu")
    eager.fit()
    comp = Trainer(_cfg(tiny_npz, **{"train.compile": "aot_eager"}), tmp_path / "comp", device="cpu")
    assert comp.forward.active
    comp.fit()
    assert comp.forward.active and comp.step == eager.step == 2  # compiled all the way, no fall-back
    ck_e = torch.load(tmp_path / "eager" / "checkpoint.pt", weights_only=True)
    ck_c = torch.load(tmp_path / "comp" / "checkpoint.pt", weights_only=True)
    assert list(ck_c["model"]) == list(ck_e["model"])  # no _orig_mod. prefix
    assert not any("_orig_mod" in k for k in ck_c["model"])
    assert list(ck_c["optimizer"]["state"]) == list(ck_e["optimizer"]["state"])
    le, lc = _losses(tmp_path / "eager"), _losses(tmp_path / "comp")
    assert len(le) == len(lc) == 2
    assert lc == pytest.approx(le, abs=0.02)  # bf16 autocast in both; the traced graph may round differently
    # a compiled checkpoint resumes eagerly (and vice versa): same keys, strict loading
    resumed = Trainer(_cfg(tiny_npz, **{"train.compile": "none", "train.stop_at_step": 3}), tmp_path / "comp",
                      device="cpu")
    resumed.fit(resume=True)
    assert resumed.step == 3


def test_compiled_resume_is_bit_identical(tiny_npz, tmp_path):
    full = Trainer(_cfg(tiny_npz, **{"train.compile": "aot_eager", "train.stop_at_step": 4}), tmp_path / "a",
                   device="cpu")
    full.fit()
    Trainer(_cfg(tiny_npz, **{"train.compile": "aot_eager"}), tmp_path / "b", device="cpu").fit()
    resumed = Trainer(_cfg(tiny_npz, **{"train.compile": "aot_eager", "train.stop_at_step": 4}), tmp_path / "b",
                      device="cpu")
    resumed.fit(resume=True)
    assert resumed.step == full.step == 4
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k


def _one_line_warning(caplog):
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    msg = lines[0].getMessage()
    assert "\n" not in msg and "continuing with the eager step" in msg
    return msg


def test_torch_compile_raising_falls_back_to_eager(tiny_npz, tmp_path, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("no backend here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.INFO, logger="training"):
        t = Trainer(_cfg(tiny_npz, **{"train.compile": "inductor"}), tmp_path / "run", device="cpu")
        t.fit()
    assert "RuntimeError: no backend here)" in _one_line_warning(caplog)
    assert not t.forward.active and t.step == 2


def test_compile_error_at_first_step_falls_back_and_matches_eager(tiny_npz, tmp_path, monkeypatch, caplog):
    """A compiled module that fails in the first step's backward, after its forward ran (BatchNorm
    statistics updated, RNG drawn): the step is undone and redone eagerly, so the run equals an eager run."""
    eager = Trainer(_cfg(tiny_npz, **{"train.compile": "none"}), tmp_path / "eager", device="cpu")
    eager.fit()

    class FailsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("C++ compile error: cc1plus: fatal error")

    def fake_compile(module, **kw):
        def run(*a, **k):
            torch.rand(3)  # RNG drawn by the failed attempt: restored by the fall-back
            return FailsInBackward.apply(module(*a, **k))
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    with caplog.at_level(logging.INFO, logger="training"):
        t = Trainer(_cfg(tiny_npz, **{"train.compile": "inductor"}), tmp_path / "run", device="cpu")
        assert t.forward.active
        t.fit()
    assert "C++ compile error" in _one_line_warning(caplog)
    assert not t.forward.active and t.step == 2
    assert _losses(tmp_path / "run") == _losses(tmp_path / "eager")
    for (k, a), (_, b) in zip(eager.model.state_dict().items(), t.model.state_dict().items()):
        assert torch.equal(a, b), k


# ----------------------------------------------------------------------------- inductor on a tiny model


def test_inductor_tiny_model_matches_eager():
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("g++")):
        pytest.skip("no C/C++ compiler on PATH: inductor's CPU backend needs one (train.compile falls back to eager)")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    ref = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 1, 6, 6)
    y = torch.arange(8) % 3

    def losses(mode):
        net.load_state_dict(ref)
        fwd = CompiledForward(net, mode)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        out = []
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(fwd(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            out.append(loss.item())
        return out, fwd.active

    eager, _ = losses("none")
    compiled, active = losses("inductor")
    assert active, "inductor fell back to eager although a compiler is present"
    assert compiled == pytest.approx(eager, abs=0.02)
    assert list(net.state_dict()) == list(ref)
