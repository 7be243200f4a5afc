"""Worker side of tests/test_filesource.py's DDP test: one gloo rank iterating the file-backed source.

Kept in a plain module (not a test file) so ``torch.multiprocessing`` can start it in child processes."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist


class LoggedSplit:
    """A file-backed split that appends every row it reads to ``log`` (one file per process: the
    DataLoader workers of a rank write their own files)."""

    def __init__(self, split, log_dir: str, tag: str):
        self.split, self.log_dir, self.tag = split, log_dir, tag

    def __len__(self):
        return len(self.split)

    def __getattr__(self, name):
        return getattr(self.split, name)

    def read_bytes(self, i: int) -> bytes:
        with open(Path(self.log_dir) / f"{self.tag}-pid{os.getpid()}.txt", "a") as f:
            f.write(f"{i}\n")
        return self.split.read_bytes(i)


def read_epoch(rank: int, world: int, port: int, tree: str, out: str, batch: int, workers: int) -> None:
    """Rank ``rank`` reads one epoch of ``tree``'s train split through :class:`training.filesource.FileBatches`
    and saves the sample indices it got; every file it opened is logged under ``out``."""
    from eval.datasets import load_split
    from training.filesource import CropDataset, FileBatches, ViewCrop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        split = LoggedSplit(load_split(f"folder:{tree}", "train"), out, f"rank{rank}")
        ds = CropDataset(split, [ViewCrop((16, 16), (0.2, 1.0), (0.75, 4 / 3))], seed=5)
        n = len(ds)
        steps = n // batch
        got = []
        it = iter(FileBatches(ds, n, batch, seed=5, steps_per_epoch=steps, world=world, rank=rank, workers=workers,
                              steps=steps))
        for _ in range(steps):
            views, idx = next(it)
            assert views[0].shape == (batch // world, 3, 16, 16)
            got.append(idx)
        it.close()
        torch.save(torch.stack(got), Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
