"""Compiled execution of the training step (``train.compile``), with a clean fall-back to eager.

``train.compile`` takes one of :data:`COMPILE_MODES`:

* ``none``: the eager step (channels_last + bf16 autocast as set by ``train.channels_last`` /
  ``train.bf16``); the bundled Fashion-MNIST recipes are bit-identical in this path;
* ``inductor``: ``torch.compile`` (TorchInductor: C++/OpenMP kernels on a CPU, Triton on CUDA) of the
  method's forward + loss; AOTAutograd compiles the backward with it. The optimiser step stays eager;
* ``aot_eager``: the same tracing (Dynamo + AOTAutograd) without code generation: no compiler needed,
  no speed-up; for checking that a method traces, and for fast tests of this path;
* ``auto`` (the default): ``inductor`` on CUDA, ``none`` on a CPU, where it was measured not to pay
  (``benchmarks/train_step.py``: ResNet-18 bf16 steps are convolution-bound; see the README's Speed
  section).

The module is never replaced: :class:`CompiledForward` calls a compiled *view* of it, so
``model.state_dict()`` keeps its keys (no ``_orig_mod.`` prefix), and checkpoints, resume and export
are the same with compile on or off. Compilation happens at the first step; if it fails there (no C
compiler, an operator the compiler does not support, any compile error) the step's side effects on
the module's buffers and on the torch RNG are undone, one warning line says why, and the run
continues eagerly from that same step.
"""
from __future__ import annotations

import logging

import torch

from .config import COMPILE_MODES, check_compile_mode

__all__ = ["COMPILE_MODES", "CompiledForward", "check_compile_mode", "resolve_compile_mode"]

logger = logging.getLogger(__name__)


def resolve_compile_mode(value, device: torch.device | str) -> str:
    """The backend actually used: ``none``, ``inductor`` or ``aot_eager`` (``auto``: inductor on CUDA,
    none elsewhere)."""
    mode = check_compile_mode(value)
    if mode == "auto":
        return "inductor" if torch.device(device).type == "cuda" else "none"
    return mode


class CompiledForward:
    """Call ``module`` through ``torch.compile(module, backend=mode)``; eager when ``mode`` is
    ``none`` or compiling failed.

    The first compiled call is on trial: call :meth:`snapshot` before it and, when anything of that
    step raises (forward or the backward compiled at the first ``loss.backward()``), :meth:`fall_back`
    with the exception -- it restores the snapshot, logs one warning line and makes every later call
    eager. After :meth:`confirm` (the first step completed) errors are no longer caught."""

    def __init__(self, module: torch.nn.Module, mode: str = "none"):
        self.module = module
        self.mode = mode
        self.compiled = None
        self.on_trial = False
        if mode == "none":
            return
        try:
            self.compiled = torch.compile(module, backend=mode, dynamic=False)
            self.on_trial = True
        except Exception as e:  # noqa: BLE001 -- any failure to set up compilation: eager, said once
            self.fall_back(e, None)

    @property
    def active(self) -> bool:
        """Whether calls go through the compiled module."""
        return self.compiled is not None

    def __call__(self, *args, **kwargs):
        fn = self.compiled if self.compiled is not None else self.module
        return fn(*args, **kwargs)

    def snapshot(self) -> dict | None:
        """What the trial step may change besides the parameters' gradients: the module's buffers
        (BatchNorm statistics, queues, centres) and the torch RNG state. None when not on trial."""
        if not self.on_trial:
            return None
        return {"buffers": {k: b.detach().clone() for k, b in self.module.named_buffers()},
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def confirm(self) -> None:
        """The first compiled step completed: from now on errors propagate."""
        self.on_trial = False

    def fall_back(self, error: BaseException, snap: dict | None) -> None:
        """Restore ``snap`` (from :meth:`snapshot`), log one line, and go eager."""
        if snap is not None:
            with torch.no_grad():
                for k, b in self.module.named_buffers():
                    b.copy_(snap["buffers"][k])
            torch.set_rng_state(snap["rng"])
            if snap["cuda_rng"] is not None:
                torch.cuda.set_rng_state_all(snap["cuda_rng"])
        for p in self.module.parameters():
            p.grad = None
        self.compiled = None
        self.on_trial = False
        first = (str(error).strip().splitlines() or [""])[0][:200]
        logger.warning(f"train.compile={self.mode}: compiling the training step failed "
                       f"({type(error).__name__}: {first}); continuing with the eager step")
