"""Fused C kernels for the CPU augmentation path, built at first use.

Eager torch runs each elementwise op as its own pass over the whole chunk of images; the colour jitter
alone is some 60 passes, and the bilinear ``grid_sample`` is not vectorised on this CPU. The C file
next to this module (``_fastaug.c``) does a whole view -- crop from uint8 + flip, colour jitter in
the image's own order, grayscale, blur, solarize, normalisation -- one image at a time, so all passes
over an image run in the core's cache, images spread over torch's thread count with OpenMP.

The library is compiled once per source / compiler / machine with the system C compiler
(``$CC``, else ``cc``; ``-O3 -march=native -fopenmp``) into ``$SSLZOO_HOME/fastaug/<hash>/`` (default
``~/.cache/sslzoo``), written to a temporary name and renamed, and loaded with ctypes. Nothing is
compiled at import time. When there is no compiler, the build fails, or ``SSLZOO_FASTAUG=0`` is
set, :func:`library` returns ``None`` (saying why once, a warning on the ``training`` logger) and ``ViewAugment`` keeps to the
eager torch path, which computes the same thing.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from zoo.base import atomic_path, home

SOURCE = Path(__file__).with_name("_fastaug.c")

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict = {}


def find_compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc) or shutil.which("gcc") or shutil.which("clang")


def _build_dir(src: bytes, cc: str) -> Path:

    key = hashlib.sha256(src + cc.encode() + platform.machine().encode() + platform.node().encode()).hexdigest()[:16]
    return home() / "fastaug" / key


def _build(cc: str, out: Path) -> None:
    """Compile ``_fastaug.c`` into ``out`` (temporary file + rename, so a killed build leaves nothing)."""
    with atomic_path(out, suffix=".so", mode=0o777) as tmp:
        base = [cc, "-O3", "-shared", "-fPIC", "-o", tmp, str(SOURCE), "-lm"]
        attempts = [base[:1] + ["-march=native", "-mprefer-vector-width=512", "-fopenmp"] + base[1:],
                    base[:1] + ["-march=native", "-fopenmp"] + base[1:], base[:1] + ["-fopenmp"] + base[1:], base]
        err = ""
        for cmd in attempts:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode == 0:
                return
            err = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
            err = err[0]
        raise RuntimeError(f"{cc} failed: {err}")


def library():
    """The loaded ctypes library, or ``None`` when the fused path is off or cannot be built."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib, why = None, None
        if os.environ.get("SSLZOO_FASTAUG", "1").strip().lower() in ("0", "false", "no", "off"):
            why = "SSLZOO_FASTAUG=0"
        else:
            cc = find_compiler()
            if cc is None:
                why = "no C compiler found (set CC)"
            else:
                try:
                    src = SOURCE.read_bytes()
                    path = _build_dir(src, cc) / "libsslzoo_fastaug.so"
                    if not path.exists():
                        _build(cc, path)
                    lib = ctypes.CDLL(str(path))
                    _declare(lib)
                except (OSError, RuntimeError) as e:
                    lib, why = None, f"build failed: {e}"
        if lib is None and why != "SSLZOO_FASTAUG=0":
            log.warning("sslzoo: fused CPU augmentation kernels unavailable (%s); using the eager torch path", why)
        _state["lib"] = lib
        return lib


def reset() -> None:
    """Forget the loaded library (tests switch ``SSLZOO_FASTAUG`` with this)."""
    with _lock:
        _state.clear()


def _declare(lib) -> None:
    p, i, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.sslzoo_view.argtypes = [p, i, i, i, i, p, p, p, i, i, p, p, i, p, p, p, i, p, i, p, f, p, p, i]
    lib.sslzoo_view.restype = None


def jitter_codes(apply, order, factors, channels: int):
    """Per-sample op codes ``[B, 4]`` (int32; 0 brightness, 1 contrast, 2 saturation, 3 hue, -1 skip)
    and factors ``[B, 4]`` (float32) for the kernel, from ViewParams' jitter fields. An op that is off
    (``None`` factor), a sample that is not jittered, and saturation / hue on images that are not RGB
    become -1."""
    b, steps = order.shape
    ops = order.to(torch.int32)
    fac = torch.zeros(b, steps)
    for op, f in enumerate(factors):
        sel = order == op
        if f is None or (op >= 2 and channels != 3):
            ops = torch.where(sel, torch.tensor(-1, dtype=torch.int32), ops)
        else:
            fac = torch.where(sel, f.view(-1, 1).to(torch.float32), fac)
    ops = torch.where(apply.cpu().view(-1, 1), ops, torch.tensor(-1, dtype=torch.int32))
    return ops.contiguous(), fac.contiguous()


def can_crop(x: torch.Tensor, boxes, size, interpolation: str) -> bool:
    """Whether the kernel's crop applies: uint8 input, bilinear, every box enlarged along both axes."""
    oh, ow = size
    _, _, bh, bw = boxes
    return (x.dtype == torch.uint8 and interpolation == "bilinear"
            and bool((torch.as_tensor(bh) <= oh).all()) and bool((torch.as_tensor(bw) <= ow).all()))


def view(lib, out: torch.Tensor, x8, boxes, flip, ops, fac, gray, blur, kx, ky, solar, threshold: float,
         scale, bias) -> torch.Tensor:
    """One call for the whole batch. ``x8`` (uint8 ``[B, C, H, W]``) is cropped into ``out`` (float32
    ``[B, C, oh, ow]``), or ``x8=None`` when ``out`` already holds the cropped images in [0, 1]; then
    colour jitter (``ops`` / ``fac`` from :func:`jitter_codes`), grayscale, blur (``kx [B, kw]``,
    ``ky [B, kh]`` normalised kernels), solarize and ``x * scale + bias`` per channel, in place in
    ``out``. Flags ``gray``, ``blur``, ``solar``: ``[B]``."""
    b, c, oh, ow = out.shape
    assert out.dtype == torch.float32 and out.is_contiguous() and out.device.type == "cpu"
    i32 = (lambda t: t.to(torch.int32).contiguous())
    f32 = (lambda t: t.to(torch.float32).contiguous())
    ops, fac, kx, ky, scale, bias = i32(ops), f32(fac), f32(kx), f32(ky), f32(scale), f32(bias)
    gray, blur, solar = i32(gray), i32(blur), i32(solar)
    assert scale.numel() == c and bias.numel() == c and kx.shape[0] == b and ky.shape[0] == b
    if x8 is not None:
        assert x8.dtype == torch.uint8 and x8.is_contiguous() and tuple(x8.shape[:2]) == (b, c)
        bx = torch.stack([torch.as_tensor(t).to(torch.int32) for t in boxes], 1).contiguous()
        top, left, bh, bw = bx.unbind(1)
        if bool(((top < 0) | (left < 0) | (bh < 1) | (bw < 1) | (top + bh > x8.shape[2])
                 | (left + bw > x8.shape[3])).any()):  # the kernel reads inside the box without checks
            raise ValueError(f"crop boxes must lie inside the {x8.shape[2]}x{x8.shape[3]} images "
                             f"(top, left >= 0, top + h <= H, left + w <= W)")
        fl = i32(flip)
        src, H, W, pb, pf = x8.data_ptr(), x8.shape[2], x8.shape[3], bx.data_ptr(), fl.data_ptr()
    else:
        src, H, W, pb, pf = None, oh, ow, None, None
    lib.sslzoo_view(src, b, c, H, W, pb, pf, out.data_ptr(), oh, ow, ops.data_ptr(), fac.data_ptr(), ops.shape[1],
                    gray.data_ptr(), blur.data_ptr(), kx.data_ptr(), kx.shape[1], ky.data_ptr(), ky.shape[1],
                    solar.data_ptr(), float(threshold), scale.data_ptr(), bias.data_ptr(), torch.get_num_threads())
    return out
