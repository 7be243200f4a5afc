"""Keep freed memory in the process heap on a CPU (``train.reuse_freed_memory``).

Why: glibc's ``malloc`` serves every request above its mmap threshold (at most 32 MiB when it adjusts it
itself) with a fresh ``mmap`` and gives it back with ``munmap`` when freed. A training step on a CPU
allocates and frees its activations and their gradients every step -- at ResNet-18 width 16, batch 512,
32 px, one activation is ``[1024, 16, 32, 32]`` bf16 = 32 MiB -- so every step the kernel maps fresh
pages, faults each of them in and zeroes it: measured 95,081 page faults and 0.26 s of system time per
width-16 step on two cores (1,386,018 and 3.55 s at width 64), and a ReLU on such a tensor took 15 ms
instead of 4 (``benchmarks/train_step.py``; the step is 1.40x / 1.42x with this setting). With the
threshold raised out of reach and the heap never trimmed, a freed block is reused by the next step's request
of the same size: no system call, no page fault. The arithmetic is the same (same kernels on the same values:
the losses are bit-identical, ``tests/test_heap.py``); the cost is memory: the heap keeps what it could not reuse (a higher peak RSS,
measured by ``benchmarks/train_step.py``), and the process keeps its peak heap instead of handing memory back
to the system, which a training process, whose steps all peak alike, does not miss.

The setting is process-wide and stays for the life of the process. Other C libraries (musl, macOS,
Windows) have no such knob: :func:`reuse_freed_memory` then does nothing and says so by returning False.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["reuse_freed_memory"]

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: The largest value an ``int`` parameter takes: thresholds no request reaches.
_NEVER = 2 ** 31 - 1


@functools.lru_cache(maxsize=1)
def reuse_freed_memory() -> bool:
    """Make glibc's ``malloc`` serve large blocks from the heap and keep freed memory for reuse (see the
    module docstring). True when the setting is in force in this process (glibc on Linux), False where the
    C library has no such setting. Idempotent; cannot be undone within the process."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not (hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version")):
        return False  # glibc only: musl's mallopt is a stub that does nothing
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # setting a threshold also stops glibc from adjusting the mmap threshold itself after frees
    return bool(mallopt(M_MMAP_THRESHOLD, _NEVER)) and bool(mallopt(M_TRIM_THRESHOLD, _NEVER))
