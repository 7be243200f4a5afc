"""torch.distributed plumbing shared by evaluation and training.

Nothing here starts processes: launch with ``torchrun`` (see ``docs/distributed.md``), which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env`
then joins the process group (NCCL on GPUs, gloo on CPUs). Without those variables, or with
``WORLD_SIZE=1``, every helper is a no-op and the code runs exactly as a single process.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["barrier", "broadcast_object", "device_for_rank", "init_from_env", "is_distributed", "is_main",
           "local_rank", "rank", "shutdown", "world_size"]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def init_from_env(device: str | None = None) -> bool:
    """Join the process group ``torchrun`` described in the environment; True when one was joined.

    The backend is NCCL when the processes use CUDA (``device`` is ``cuda``/``None`` and a GPU is
    visible; each process takes GPU ``LOCAL_RANK``), gloo otherwise. One clear error when the
    environment is incomplete."""
    ws = os.environ.get("WORLD_SIZE")
    if ws is None or int(ws) <= 1:
        return False
    if dist.is_initialized():
        return True
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={ws} but {', '.join(missing)} not set; launch with torchrun "
                         f"(see docs/distributed.md)")
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for_rank(device: str | None = None) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` under torchrun with GPUs, else ``device``/auto."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and is_distributed():
        dev = torch.device("cuda", local_rank())
    return dev
