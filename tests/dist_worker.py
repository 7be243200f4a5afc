"""Worker side of tests/test_distributed.py: one rank of a gloo process group on loopback.

Kept in a plain module (not a test file) so ``torch.multiprocessing.spawn`` can import it in the
child processes."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

B = 8          # global batch of the equivalence cases
SIZE = 12      # large crops
SMALL = 10     # DISSL's small crops
CASES = ("simclr", "dcl", "cissl", "dissl")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(fn, world: int, *args, timeout: float = 240, start_method: str | None = None) -> None:
    """``fn(rank, world, port, *args)`` in ``world`` processes (fork on Linux: the children reuse the
    imports); fails the calling test after ``timeout`` seconds instead of hanging, killing the ranks."""
    import sys
    import time

    import pytest
    import torch.multiprocessing as mp

    method = start_method or ("fork" if sys.platform.startswith("linux") else "spawn")
    ctx = mp.start_processes(fn, args=(world, free_port()) + args, nprocs=world, join=False, start_method=method)
    deadline = time.time() + timeout
    while not ctx.join(timeout=2):
        if time.time() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{fn.__name__} on {world} ranks did not finish in {timeout} s")


def case_model_and_views(method: str):
    """A width-4 ResNet with the method's heads (seeded) and fixed views of a global batch ``B``."""
    from training.config import load_recipe
    from training.trainer import build_model

    sets = ["model.width=4", "model.in_chans=1", "method.proj_hidden_dim=16"]
    sets += {"simclr": ["method.proj_dim=8"], "dcl": ["method.proj_dim=8"], "cissl": ["method.proj_dim=8"],
             "dissl": ["method.n_clusters=32", "method.bottleneck_dim=8"]}[method]
    cfg = load_recipe(f"{method}_fashion_mnist_cpu", sets)
    torch.manual_seed(0)
    model = build_model(cfg).double()
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(B, 1, SIZE, SIZE, generator=g, dtype=torch.float64) for _ in range(2)]
    if method == "dissl":
        views += [torch.randn(B, 1, SMALL, SMALL, generator=g, dtype=torch.float64) for _ in range(2)]
    return model, views


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def equivalence(rank: int, world: int, port: int, out: str) -> None:
    """One step of every case with the global batch split over the ranks: rank 0 saves the global
    loss (mean of the ranks' losses) and the DDP-averaged gradients."""
    from training.distributed import all_reduce_mean, convert_sync_batchnorm, wrap_ddp

    _join(rank, world, port)
    try:
        for method in CASES:
            model, views = case_model_and_views(method)
            model = convert_sync_batchnorm(model, torch.device("cpu"))
            ddp = wrap_ddp(model, torch.device("cpu"))
            b = B // world
            loss = ddp([v[rank * b:(rank + 1) * b] for v in views])
            loss.backward()
            total = all_reduce_mean(loss.detach())
            if rank == 0:
                grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
                torch.save({"loss": total, "grads": grads}, Path(out) / f"{method}.pt")
    finally:
        dist.destroy_process_group()


def extraction(rank: int, world: int, port: int, out: str, npz: str) -> None:
    """Sharded feature extraction of ``npz``'s train split into one store."""
    from eval.datasets import load_split
    from eval.featstore import extract_to_store
    from zoo.backbones import build_resnet

    _join(rank, world, port)
    try:
        model = tiny_encoder(build_resnet)
        split = load_split(f"npz:{npz}", "train")
        extract_to_store(model, split, Path(out) / "store", batch_size=7, preprocess=tiny_preprocess,
                         meta={"note": "test"})
    finally:
        dist.destroy_process_group()


def _preprocess():
    from zoo.preprocess import Preprocess

    return Preprocess(resize=12, crop=12, mean=(0.5,), std=(0.5,), in_chans=1)


class _Lazy:  # the zoo's Preprocess, built on first use (keeps this module's import light)
    def __getattr__(self, name):
        return getattr(_preprocess(), name)

    def __call__(self, x):
        return _preprocess()(x)


tiny_preprocess = _Lazy()


def tiny_encoder(build_resnet):
    torch.manual_seed(0)
    return build_resnet(arch="resnet18", width=4, in_chans=1).eval()


def training(rank: int, world: int, port: int, cfg: dict, out: str, resume: bool = False) -> None:
    """``Trainer.fit`` on every rank (what ``torchrun ... sslzoo train`` runs)."""
    from training.trainer import Trainer

    _join(rank, world, port)
    try:
        t = Trainer(cfg, out, device="cpu")
        t.fit(resume=resume)
        frozen = [p for p in t.model.parameters() if not p.requires_grad]
        if frozen:  # EMA teachers: identical on every rank
            s = torch.stack([p.double().sum() for p in frozen])
            everyone = [torch.empty_like(s) for _ in range(world)]
            dist.all_gather(everyone, s)
            if rank == 0:
                torch.save(torch.stack(everyone), Path(out) / "teacher_sums.pt")
    finally:
        dist.destroy_process_group()


def tiny_npz(path: Path, n: int = 40, size: int = 12) -> Path:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), n // 4)
    images = rng.integers(0, 256, size=(n, size, size, 1), dtype=np.uint8)
    np.savez(path, train_image=images, train_label=labels, test_image=images[:8], test_label=labels[:8])
    return path
