"""The training loop shared by every method.

Data is held in memory as a uint8 tensor ``[N, C, H, W]`` and augmented as whole batches
(:mod:`training.augmentation`), so both cores stay on the network; or, for file-backed data sets too
large for that or of mixed image sizes (``data.source``), read from the files by DataLoader workers
that decode and crop each view (:mod:`training.filesource`), the rest of the augmentation batched here.
The step runs under bf16 autocast (CPU or CUDA) with fp32 losses, in ``channels_last``; ``train.compile``
runs its forward and backward through ``torch.compile`` (:mod:`training.compiled`: inductor on CUDA by
default, eager on a CPU, falling back to eager when compilation fails). Checkpoints are written atomically every few
minutes and at each epoch end with model, optimiser, step, and every RNG state, so ``--resume``
continues where the run stopped. Progress: tqdm; logs: ``log.csv`` (step, epoch, loss, lr,
images/s) and ``monitor.csv`` (online kNN accuracy on a split held out from *train*, never test).
At the end the backbone is exported as a zoo folder (``export/model.safetensors`` + ``config.json``).

Methods (:mod:`training.methods`) see a list of views: ``model.n_views`` large crops (the second
one with ``augment.view2`` overrides when set) then ``augment.small_crops`` small crops for
multi-crop methods. Optional hooks ``model.on_step_start(step, total, steps_per_epoch)`` and
``model.on_train_step(step, total)`` (after the optimiser step) drive schedules, EMA targets and
queues; their state is part of ``model.state_dict()`` and therefore of every checkpoint.
Optimisers (SGD, Adam, AdamW, LARS) and schedules live in :mod:`training.optim`; gradient clipping
by norm or value; TensorBoard scalars under ``OUT/tensorboard`` when ``tensorboard`` is installed.
"""
from __future__ import annotations

import csv
import io
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from eval import distributed as D
from eval.datasets import load_split
from zoo.backbones import build_resnet
from zoo.base import SSLZooError
from zoo.io import atomic_write_bytes, atomic_write_text, save_folder
from zoo.preprocess import resize_normalise

from .augmentation import ViewAugment
from .compiled import CompiledForward, resolve_compile_mode
from .config import ConfigError, check_trainable
from .datacentric.subsets import SubsetError, check_indices, read_subset_file
from .filesource import (CropDataset, FileBatches, ResizedImages, augment_cropped, choose_source, default_workers,
                         epoch_permutation, view_crops)
from .heap import reuse_freed_memory
from .distributed import broadcast_state_, convert_sync_batchnorm, wrap_ddp
from .methods import METHODS
from .optim import build_optimizer, cosine_value, lr_multiplier, warmup_cosine
from .runfolder import RunFolderError, RunLock, check_run_folder, check_same_recipe, remove_run_files

__all__ = ["Trainer", "TrainingError", "build_model", "build_optimizer", "build_view_augments", "warmup_cosine"]

# augment.* fields the trainer reads itself; every other field is a ViewAugment argument
_VIEW_KEYS = ("preset", "small_crops", "small_size", "small_scale", "view2")


logger = logging.getLogger(__name__)

class TrainingError(SSLZooError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); one line with the step and a hint."""


def build_model(cfg: dict) -> torch.nn.Module:
    m = dict(cfg["method"])
    name = m.pop("name")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    backbone = build_resnet(**cfg["model"])
    try:
        return METHODS[name](backbone, **m)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"method {name}: {e}") from None


def _view_augment(fields: dict, where: str) -> ViewAugment:
    try:
        return ViewAugment(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items()})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def build_view_augments(cfg: dict, n_views: int = 2, multicrop: bool = False) -> tuple[list, ViewAugment | None, int]:
    """``(large, small, n_small)``: one ViewAugment per large view (the second with
    ``augment.view2`` applied), the small-crop ViewAugment (or None) and how many small crops."""
    a = cfg["augment"]
    base = {k: v for k, v in a.items() if k not in _VIEW_KEYS}
    first = _view_augment(base, "augment")
    large = [first] * n_views
    if a["view2"] is not None:
        if not isinstance(a["view2"], dict):
            raise ConfigError(f"augment.view2 must be a mapping of augment fields, got {a['view2']!r}")
        bad = [k for k in a["view2"] if k not in base]
        if bad:
            raise ConfigError(f"unknown augment.view2 field {bad[0]!r}; valid: {', '.join(sorted(base))}")
        if n_views < 2:
            raise ConfigError("augment.view2 needs a method with 2 views")
        large = [first, _view_augment({**base, **a["view2"]}, "augment.view2")] + [first] * (n_views - 2)
    n_small = int(a["small_crops"] or 0)
    small = None
    if n_small < 0:
        raise ConfigError(f"augment.small_crops must be >= 0, got {n_small}")
    if n_small:
        if not multicrop:
            raise ConfigError(f"method {cfg['method']['name']} takes no small crops; set augment.small_crops=0 "
                              f"(multi-crop methods: dino, dissl)")
        if not a["small_size"]:
            raise ConfigError("augment.small_crops > 0 needs augment.small_size (e.g. 96)")
        small = _view_augment({**base, "size": a["small_size"], "scale": a["small_scale"]}, "augment (small crops)")
    return large, small, n_small


def _tensorboard_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: CSV logs are always written
        return None
    return SummaryWriter(str(path))


def _rng_state(gen: torch.Generator) -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached": float(cached)}  # plain types: loadable with weights_only
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate(), "aug": gen.get_state()}


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    s = state["numpy"]
    np.random.set_state((s["kind"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))
    random.setstate(state["python"])
    gen.set_state(state["aug"])


def _aug_seed(seed: int, rank: int) -> int:
    """The augmentation generator's seed of ``rank`` (rank 0: the single-process seed)."""
    return seed + 1 if rank == 0 else (seed + 1) * 1_000_003 + 7919 * rank


def save_checkpoint(path: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


class Trainer:
    def __init__(self, cfg: dict, out_dir: str | Path, device: str | None = None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.world, self.rank = D.world_size(), D.rank()
        if self.world > 1:  # under torchrun: this rank's GPU, when there are GPUs
            self.device = D.device_for_rank(str(self.device))
        t = cfg["train"]
        if t["reuse_freed_memory"] and self.device.type == "cpu":
            reuse_freed_memory()  # process-wide: steps reuse freed activations instead of faulting in fresh pages
        if t["threads"]:
            torch.set_num_threads(int(t["threads"]))
        torch.manual_seed(t["seed"])
        np.random.seed(t["seed"])
        random.seed(t["seed"])
        self.model = build_model(cfg).to(self.device)
        if t["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.world > 1 and t["sync_bn"]:
            self.model = convert_sync_batchnorm(self.model, self.device)
        self.opt = build_optimizer(cfg, self.model)
        # forward passes go through DDP under torchrun; hooks, state dicts and exports use the module
        self.ddp = wrap_ddp(self.model, self.device) if self.world > 1 else self.model
        # train.compile: the step's forward (and its backward) through torch.compile; self.model stays the
        # plain module, so checkpoints and exports keep their keys (training/compiled.py)
        self.compile_mode = resolve_compile_mode(t.get("compile", "auto"), self.device)
        self.forward = CompiledForward(self.ddp, self.compile_mode)
        if self.forward.active and self.rank == 0:
            logger.info(f"train.compile={t.get('compile', 'auto')}: the step is compiled with {self.compile_mode} "
                        f"at the first step (a minute or more on a CPU)")
        self.view_augs, self.small_aug, self.n_small = build_view_augments(
            cfg, self.model.n_views, getattr(self.model, "multicrop", False))
        self.aug = self.view_augs[0]
        self.gen = torch.Generator().manual_seed(_aug_seed(t["seed"], self.rank))
        self.step = 0
        self.steps_per_epoch = 1
        self.tb = None
        self.n_real = 0  # images of the real set (after data.subset), before data.repeat
        self.repeat = 1

    # ------------------------------------------------------------------ data
    def load_data(self):
        """The distinct training images ``x`` (uint8 ``[N, C, H, W]``) and labels ``y``: the real set
        (restricted to ``data.subset``), then the ``data.extra`` images. ``data.repeat`` copies of the
        real set are virtual: :meth:`epoch_size` counts them and :meth:`source_index` maps a position
        in the inflated epoch to its image. With ``data.source`` resolving to files
        (:func:`training.filesource.choose_source`), ``x`` is the :class:`~training.filesource.CropDataset`
        of :meth:`load_files` instead of a tensor."""
        d = self.cfg["data"]
        if d["source"] not in ("auto", "memory", "files"):
            raise ConfigError(f"data.source must be auto, memory or files, got {d['source']!r}")
        self.workers()  # a bad data.workers is refused whatever the source
        split = load_split(d["dataset"], d["split"], root=d["root"], download=d["download"])
        try:
            source, why = choose_source(split, d["source"], self.cfg["model"]["in_chans"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
        augs = self.view_augs + ([self.small_aug] if self.small_aug is not None else [])
        if source == "files" and d["source"] == "auto" and any(a.version != 2 for a in augs):
            source = "memory"  # the workers crop with version 2 semantics; a version 1 recipe stays in memory
            if self.rank == 0:
                logger.info(f"data source: memory ({why}, but augment.version=1 needs the in-memory path)")
        if source == "files":
            if self.rank == 0:
                logger.info(f"data source: files ({why}), {self.workers()} DataLoader worker(s)")
            return self.load_files(split)
        x, y = _split_tensor(split, d["dataset"]), torch.as_tensor(split.targets)
        if x.shape[1] != self.cfg["model"]["in_chans"]:
            raise ConfigError(f"{d['dataset']} has {x.shape[1]} channels but model.in_chans="
                              f"{self.cfg['model']['in_chans']}; set model.in_chans={x.shape[1]}")
        if d["subset"]:
            try:
                idx = check_indices(read_subset_file(d["subset"]).indices, len(x), f"data.subset {d['subset']}",
                                    f"{d['dataset']}/{d['split']}")
            except SubsetError as e:
                raise ConfigError(str(e)) from None
            x, y = x[idx], y[idx]
        rep = int(d["repeat"])
        if rep < 1:
            raise ConfigError(f"data.repeat must be >= 1, got {rep}")
        self.n_real, self.repeat = len(x), rep
        if d["extra"]:
            extra = load_split(d["extra"], "train", root=d["root"], download=d["download"])
            xe = _split_tensor(extra, d["extra"])
            if xe.shape[1:] != x.shape[1:]:
                raise ConfigError(f"data.extra {d['extra']} has images {tuple(xe.shape[1:])}, the data "
                                  f"{tuple(x.shape[1:])}; they must match")
            x, y = torch.cat([x, xe]), torch.cat([y, torch.as_tensor(extra.targets).to(y.dtype)])
        return x, y

    def workers(self) -> int:
        """``data.workers`` (null: :func:`training.filesource.default_workers`)."""
        w = self.cfg["data"]["workers"]
        if w is None:
            return default_workers()
        if not isinstance(w, int) or w < 0:
            raise ConfigError(f"data.workers must be a whole number >= 0 (0: decode in the training process) or null, "
                              f"got {w!r}")
        return w

    def load_files(self, split):
        """The file-backed source of ``split``: a :class:`training.filesource.CropDataset` whose sample
        ``i`` of an epoch is image ``rows[i]`` (``data.subset`` applied, ``data.repeat`` copies), and the
        labels of the distinct images (for the monitor)."""
        d = self.cfg["data"]
        augs = self.view_augs + ([self.small_aug] if self.small_aug is not None else [])
        if any(a.version != 2 for a in augs):
            raise ConfigError("data.source=files crops in DataLoader workers with torchvision's semantics; set "
                              "augment.version=2 (or data.source=memory for a data set that fits in memory)")
        if d["extra"]:
            raise ConfigError(f"data.extra {d['extra']} is appended in memory; use data.source=memory with it")
        real = np.arange(len(split), dtype=np.int64)
        if d["subset"]:
            try:
                real = np.asarray(check_indices(read_subset_file(d["subset"]).indices, len(split),
                                                f"data.subset {d['subset']}", f"{d['dataset']}/{d['split']}"),
                                  dtype=np.int64)
            except SubsetError as e:
                raise ConfigError(str(e)) from None
        rep = int(d["repeat"])
        if rep < 1:
            raise ConfigError(f"data.repeat must be >= 1, got {rep}")
        self.n_real, self.repeat = len(real), rep
        rows = np.tile(real, rep)  # the in-memory path's order of the repeated copies
        ds = CropDataset(split, view_crops(self.view_augs, self.small_aug, self.n_small), self.cfg["train"]["seed"],
                         rows=rows, channels=self.cfg["model"]["in_chans"])
        ds.real_rows = real
        return ds, torch.as_tensor(np.asarray(split.targets)[real])

    def epoch_size(self, x) -> int:
        """Images per epoch: ``repeat`` copies of the real set plus the extra images."""
        if isinstance(x, CropDataset):
            return len(x)
        return self.n_real * self.repeat + (len(x) - self.n_real)

    def source_index(self, pos: torch.Tensor) -> torch.Tensor:
        """Position in the inflated epoch -> row of ``x`` (the same order as materialised copies)."""
        if self.repeat == 1:
            return pos
        inflated = self.n_real * self.repeat
        return torch.where(pos < inflated, pos % self.n_real, pos - (inflated - self.n_real))

    # ------------------------------------------------------------------ monitor
    @torch.no_grad()
    def monitor(self, x, y) -> float:
        """kNN (k=20, T=0.07) accuracy: memory bank = ``monitor_size`` train images, queries = the
        last ``monitor_val_size`` train images (disjoint; each distinct image once, so a repeated real
        set cannot put a query's own copy in the bank). Test data is never touched."""
        from eval.probes import knn_probe

        t = self.cfg["train"]
        if isinstance(x, CropDataset):
            return self.monitor_files(x, y)
        labelled = torch.nonzero(y >= 0).flatten()  # unlabelled / generated images (label -1) never vote
        if len(labelled) < 2:
            return float("nan")
        nval = min(t["monitor_val_size"], len(labelled) // 5)
        nmem = min(t["monitor_size"], len(labelled) - nval)
        mem_idx = labelled[:nmem]
        val_idx = labelled[len(labelled) - nval:]
        feats = self.embed(x[torch.cat([mem_idx, val_idx])])
        r = knn_probe(feats[:nmem], y[mem_idx], feats[nmem:], y[val_idx], k=20, temperature=0.07)
        return r["accuracy"]

    @torch.no_grad()
    def monitor_files(self, ds: CropDataset, y) -> float:
        """:meth:`monitor` on the file-backed source: the same bank and queries (at most
        ``monitor_size + monitor_val_size`` images), each decoded at the crop size (shorter side resized,
        centre crop) by DataLoader workers and embedded batch by batch; the set is never decoded whole."""
        from eval.probes import knn_probe

        t = self.cfg["train"]
        labelled = torch.nonzero(y >= 0).flatten()
        if len(labelled) < 2:
            return float("nan")
        nval = min(t["monitor_val_size"], len(labelled) // 5)
        nmem = min(t["monitor_size"], len(labelled) - nval)
        pick = torch.cat([labelled[:nmem], labelled[len(labelled) - nval:]])
        rows = ds.real_rows[pick.numpy()]
        a = self.aug
        size = a.size if isinstance(a.size, int) else int(a.size[0])
        loader = torch.utils.data.DataLoader(ResizedImages(ds.split, rows, size, ds.channels), batch_size=256,
                                             num_workers=min(self.workers(), 4))
        feats, ok = [], []
        for xb, good in loader:
            feats.append(self.embed(xb))
            ok.append(good)
        feats, ok = torch.cat(feats), torch.cat(ok)
        yp = y[pick]
        mem, val = ok.clone(), ok.clone()
        mem[nmem:] = False
        val[:nmem] = False
        if not mem.any() or not val.any():
            return float("nan")
        return knn_probe(feats[mem], yp[mem], feats[val], yp[val], k=20, temperature=0.07)["accuracy"]

    @torch.no_grad()
    def embed(self, x, bs=1024):
        backbone = self._eval_backbone()
        was = backbone.training
        backbone.eval()
        a = self.aug
        out = []
        for i in range(0, len(x), bs):
            xb = resize_normalise(x[i:i + bs], a.size, a.mean, a.std)
            xb = xb.to(self.device, memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg["train"]["bf16"]):
                out.append(backbone(xb).float().cpu())
        backbone.train(was)
        return torch.cat(out)

    def _eval_backbone(self) -> torch.nn.Module:
        fn = getattr(self.model, "export_backbone", None)
        return fn() if fn is not None else self.model.backbone

    # ------------------------------------------------------------------ checkpoint
    def state(self, epoch: int, batch_in_epoch: int) -> dict:
        """The checkpoint payload. Under torchrun (collective: every rank calls it) rank 0's state plus
        ``world_size`` and every rank's augmentation generator (``aug_ranks``)."""
        payload = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "step": self.step,
                   "epoch": epoch, "batch_in_epoch": batch_in_epoch, "rng": _rng_state(self.gen), "config": self.cfg}
        if self.world > 1:
            states = [None] * self.world
            torch.distributed.all_gather_object(states, self.gen.get_state())
            payload.update(world_size=self.world, aug_ranks=states)
        return payload

    def _save(self, path: Path, epoch: int, batch: int) -> None:
        """Checkpoint; under torchrun every rank enters (frozen state re-broadcast, RNG gathered) and
        rank 0 writes."""
        if self.world > 1:
            broadcast_state_(self.model)
        payload = self.state(epoch, batch)
        if self.rank == 0:
            save_checkpoint(path, payload)

    def resume(self, path: Path) -> tuple[int, int]:
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- truncated / corrupt / not a checkpoint: one line naming the file
            msg = (str(e).strip().splitlines() or [""])[0][:200]
            raise TrainingError(f"cannot read checkpoint {path} ({type(e).__name__}: {msg}); delete it to start "
                                f"over, or restore a good copy") from None
        if isinstance(ck, dict) and isinstance(ck.get("config"), dict):
            check_same_recipe(ck["config"], self.cfg, self.out)  # the run's own recipe, or nothing is loaded
        try:
            self.model.load_state_dict(ck["model"], strict=True)
            self.opt.load_state_dict(ck["optimizer"])
            self.step = ck["step"]
            _set_rng_state(ck["rng"], self.gen)
            saved_world = int(ck.get("world_size", 1))
            if self.world > 1 or saved_world > 1:
                self._resume_aug_rng(ck, saved_world)
            return ck["epoch"], ck["batch_in_epoch"]
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            msg = (str(e).strip().splitlines() or [""])[0][:200]
            raise TrainingError(f"checkpoint {path} does not match this recipe's model or optimiser "
                                f"({type(e).__name__}: {msg}); resume with the recipe it was written with") from None

    def _resume_aug_rng(self, ck: dict, saved_world: int) -> None:
        """Each rank's augmentation generator: restored when the world size is the one that wrote the
        checkpoint, otherwise re-seeded from (seed, step, rank) -- a run resumed on another world size
        continues correctly but is not bit-identical to an uninterrupted one."""
        if saved_world == self.world:
            if self.world > 1:
                self.gen.set_state(ck["aug_ranks"][self.rank])
            return
        seed = int(self.cfg["train"]["seed"])
        self.gen.manual_seed(_aug_seed(seed, self.rank) * 65537 + self.step)
        if self.rank == 0:
            logger.info(f"checkpoint written by {saved_world} process(es), resumed on {self.world}: data order and "
                       f"step continue; augmentation streams re-seeded")

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False, overwrite: bool = False) -> Path:
        """Train to the end (or ``train.stop_at_step``) and export. Under torchrun every rank calls it:
        ``optim.batch_size`` is the global batch, each rank augments and encodes its slice of every
        global batch (the same permutation on every rank, seeded by seed and epoch: the
        ``DistributedSampler`` scheme), rank 0 alone writes logs, checkpoints and the export.

        The run folder (:mod:`training.runfolder`): a folder that already holds a run is refused unless
        ``resume`` (continue it, with its own recipe) or ``overwrite`` (replace it); the folder is locked
        while this process (rank 0 under torchrun) trains in it."""
        cfg, t, o = self.cfg, self.cfg["train"], self.cfg["optim"]
        # bad data, sizes, schedules and checkpoints fail before anything is written
        check_trainable(cfg)
        x, y = self.load_data()
        n = self.epoch_size(x)
        bs = o["batch_size"]
        if bs % self.world:
            raise ConfigError(f"optim.batch_size {bs} (the global batch) is not divisible by the {self.world} "
                              f"processes; use a multiple of {self.world}")
        steps_per_epoch = n // bs
        if steps_per_epoch == 0:
            raise ConfigError(f"batch_size {bs} is larger than the dataset ({n} images); lower optim.batch_size")
        if o["epochs"] is None:  # step budget: the same compute whatever the data (AdaInf's max_steps)
            if not t["max_steps"]:
                raise ConfigError("optim.epochs=null is a step budget and needs train.max_steps (e.g. 100000)")
            total = int(t["max_steps"])
            # warm-up in epochs of the real data, so inflating the data does not stretch it
            warmup = (max(1, self.n_real // bs) * o["warmup_epochs"] if o["warmup_steps"] is None
                      else int(o["warmup_steps"]))
        else:
            total = steps_per_epoch * o["epochs"]
            if t["max_steps"]:
                total = min(total, int(t["max_steps"]))
            warmup = steps_per_epoch * o["warmup_epochs"] if o["warmup_steps"] is None else int(o["warmup_steps"])
        lr_multiplier(o["schedule"], 0, total, warmup)
        self.steps_per_epoch = steps_per_epoch
        lock = self._claim_folder(resume, overwrite)
        try:
            self.run_lock = lock  # the file source's DataLoader workers close their inherited copy of its fd
            return self._fit(x, y, n, total, warmup, resume)
        finally:
            if lock is not None:
                lock.release()

    def _claim_folder(self, resume: bool, overwrite: bool) -> RunLock | None:
        """Rank 0 checks the run folder, locks it and (``overwrite``) removes the previous run's files;
        every rank learns the outcome, so all fail together. Returns rank 0's lock."""
        lock, error = None, None
        if self.rank == 0:
            try:
                check_run_folder(self.out, resume, overwrite)
                lock = RunLock(self.out).acquire()
                saved = self.out / "config.yaml"
                if resume and saved.is_file() and not (self.out / "checkpoint.pt").is_file():
                    # a run stopped before its first checkpoint (the checkpoint's own config is checked on resume)
                    check_same_recipe(yaml.safe_load(saved.read_text()) or {}, self.cfg, self.out)
                if overwrite:
                    remove_run_files(self.out)
            except BaseException as e:  # noqa: BLE001 -- re-raised below, after the other ranks are told
                error = e
                if lock is not None:
                    lock.release()
                    lock = None
        message = D.broadcast_object(None if error is None else str(error)) if self.world > 1 else None
        if error is not None:
            raise error
        if message is not None:
            raise RunFolderError(message)
        return lock

    def _fit(self, x, y, n, total, warmup, resume) -> Path:
        cfg, t, o = self.cfg, self.cfg["train"], self.cfg["optim"]
        main = self.rank == 0
        bs = o["batch_size"]
        local_bs = bs // self.world
        steps_per_epoch = self.steps_per_epoch
        ckpt = self.out / "checkpoint.pt"
        start_epoch, start_batch = 0, 0
        if resume and ckpt.is_file():
            start_epoch, start_batch = self.resume(ckpt)
            if main:
                logger.info(f"resumed from {ckpt} at step {self.step} (epoch {start_epoch}, batch {start_batch})")
        elif resume and main:
            logger.info(f"no checkpoint in {self.out}; starting from scratch")
        D.barrier()  # every rank has read the checkpoint before rank 0 may overwrite it
        log = logf = None
        mon_path = self.out / "monitor.csv"
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
            log_path = self.out / "log.csv"
            new_log = not log_path.exists() or not resume
            logf = open(log_path, "w" if new_log else "a", newline="")
            log = csv.writer(logf)
            if new_log:
                log.writerow(["step", "epoch", "loss", "lr", "images_per_s", "wall_s"])
            if not mon_path.exists() or not resume:
                atomic_write_text(mon_path, "epoch,step,knn20_heldout_train\n")
            self.tb = _tensorboard_writer(self.out / "tensorboard") if t["tensorboard"] else None
        last_ckpt = time.time()
        t0 = time.time()
        stop = min(total, int(t["stop_at_step"])) if t["stop_at_step"] else total
        pbar = tqdm(total=total, initial=self.step, desc=cfg["name"], unit="step", dynamic_ncols=True,
                    disable=not main)
        self.model.train()
        epoch, batch = start_epoch, start_batch
        lo = self.rank * local_bs  # this rank's slice of every global batch
        files = None
        if isinstance(x, CropDataset):  # this rank's crops, decoded by workers from (epoch, batch) on
            lock = getattr(self, "run_lock", None)
            files = iter(FileBatches(x, n, bs, t["seed"], steps_per_epoch, self.world, self.rank, self.workers(),
                                     (epoch, batch), pin_memory=self.device.type == "cuda",
                                     inherited_fds=[lock.fd] if lock is not None and lock.fd is not None else [],
                                     steps=stop - self.step))
        try:
            while self.step < stop:
                perm = epoch_permutation(n, t["seed"], epoch) if files is None else None
                while batch < steps_per_epoch and self.step < stop:
                    start = batch * bs + lo
                    late = self.world > 1 and time.time() - last_ckpt > 60 * t["checkpoint_minutes"]
                    if files is None:
                        data = x[self.source_index(perm[start:start + local_bs])]
                    else:
                        data = next(files)[0]
                    due = self._train_step(data, total, warmup, epoch, ckpt, log, logf, pbar, t0, late)
                    batch += 1
                    if self.world == 1:
                        due = time.time() - last_ckpt > 60 * t["checkpoint_minutes"]
                    if due:
                        self._save(ckpt, epoch, batch)
                        last_ckpt = time.time()
                if batch < steps_per_epoch:
                    break  # stopped mid-epoch (stop_at_step)
                epoch, batch = epoch + 1, 0
                self._save(ckpt, epoch, batch)
                last_ckpt = time.time()
                me = t["monitor_every_epochs"]
                if main and me and (epoch % me == 0 or self.step >= total):
                    acc = self.monitor(x, y)
                    with open(mon_path, "a") as f:
                        f.write(f"{epoch},{self.step},{acc:.4f}\n")
                    if self.tb is not None:
                        self.tb.add_scalar("monitor/knn20_heldout_train", acc, self.step)
                    logger.info(f"epoch {epoch}: kNN(k=20) on held-out train split {100 * acc:.2f}%")
        finally:
            if files is not None:
                files.close()  # the DataLoader's workers end here
            pbar.close()
            if logf is not None:
                logf.close()
            if self.tb is not None:
                self.tb.close()
        self._save(ckpt, epoch, batch)
        if self.step < total:
            if main:
                logger.info(f"stopped at step {self.step} of {total}; continue with --resume")
            return ckpt
        path = self.export() if main else self.out / "export" / "model.safetensors"
        D.barrier()  # the export exists for every rank once fit returns
        return path

    def views(self, xb: torch.Tensor) -> list[torch.Tensor]:
        """The large views (one per ``model.n_views``) then the small crops, augmented on the
        trainer's generator in that order."""
        views = [aug(xb, self.gen) for aug in self.view_augs]
        views += [self.small_aug(xb, self.gen) for _ in range(self.n_small)]
        return [v.to(memory_format=torch.channels_last) for v in views]

    def crop_views(self, crops: list) -> list[torch.Tensor]:
        """The views of the file-backed source: the workers' uint8 crops (large views, then small) through
        the rest of each view's augmentation, on the trainer's generator in the order of :meth:`views`."""
        augs = self.view_augs + [self.small_aug] * self.n_small
        return [augment_cropped(a, v, self.gen).to(memory_format=torch.channels_last) for a, v in zip(augs, crops)]

    def _train_step(self, xb, total, warmup, epoch, ckpt, log, logf, pbar, t0, due=False) -> bool:
        """One optimiser step on this rank's batch ``xb`` (uint8 images; or, from the file-backed source,
        the list of uint8 crops per view); returns whether to checkpoint after it (``due``: rank 0's clock
        decides for every rank under torchrun)."""
        o, t = self.cfg["optim"], self.cfg["train"]
        ts = time.time()
        lr = o["lr"] * lr_multiplier(o["schedule"], self.step, total, warmup, o["min_lr_ratio"])
        for g in self.opt.param_groups:
            g["lr"] = lr
        if o["weight_decay_end"] is not None:  # group 0 holds the decayed weights
            self.opt.param_groups[0]["weight_decay"] = cosine_value(self.step, total, o["weight_decay"],
                                                                    o["weight_decay_end"])
        start_hook = getattr(self.model, "on_step_start", None)
        if start_hook is not None:
            start_hook(self.step, total, self.steps_per_epoch)
        if isinstance(xb, list):
            views = self.crop_views([v.to(self.device, non_blocking=True) for v in xb])
            xb = xb[0]
        else:
            xb = xb.to(self.device)
            views = self.views(xb)
        snap = self.forward.snapshot()  # None unless this is the first compiled step
        try:
            loss, shown, bad, due = self._loss_and_backward(views, due)
        except Exception as e:  # noqa: BLE001 -- only a compiled first step is retried (eagerly); else re-raised
            if snap is None:
                raise
            self.forward.fall_back(e, snap)
            loss, shown, bad, due = self._loss_and_backward(views, due)
        if snap is not None:
            self.forward.confirm()
        if bad:
            raise TrainingError(f"loss is {shown.item()} at step {self.step} (epoch {epoch}); the last good checkpoint "
                                f"is kept in {ckpt}; lower optim.lr or raise method.temperature, then --resume")
        if hasattr(self.model, "loss_terms"):
            self.model.loss_terms = {}  # the graph's terms are only needed by a diagnosis, which recomputes them
        params = [(n, p) for n, p in self.model.named_parameters() if p.grad is not None]
        bad = _first_nonfinite([(n, p.grad) for n, p in params])
        if bad is not None:  # under torchrun the gradients are all-reduced: every rank stops here together
            raise TrainingError(f"non-finite gradient at step {self.step} (epoch {epoch}) while the loss is "
                                f"{shown.item():.4g}: {self._gradient_cause(views, params, bad)}; nothing was "
                                f"updated and the last good checkpoint is kept in {ckpt}; lower optim.lr or set "
                                f"optim.grad_clip_norm, then --resume")
        if o["grad_clip_value"] is not None:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), o["grad_clip_value"])
        if o["grad_clip_norm"] is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o["grad_clip_norm"])
        self.opt.step()
        bad = _first_nonfinite([(n, p.detach()) for n, p in params])
        if bad is not None:
            raise TrainingError(f"weight {bad} became non-finite in the optimiser step at step {self.step} (epoch "
                                f"{epoch}) although its gradient was finite; the last good checkpoint is kept in "
                                f"{ckpt}; lower optim.lr, then --resume")
        end_hook = getattr(self.model, "on_train_step", None)
        if end_hook is not None:
            end_hook(self.step, total)
        self.step += 1
        pbar.update(1)
        if log is not None and (self.step % t["log_every"] == 0 or self.step == total):
            n_img = len(xb) * self.world
            pbar.set_postfix(loss=f"{shown.item():.3f}", lr=f"{lr:.3g}", ep=epoch)
            log.writerow([self.step, epoch, f"{shown.item():.5f}", f"{lr:.6g}", f"{n_img / (time.time() - ts):.1f}",
                          f"{time.time() - t0:.1f}"])
            logf.flush()
            if self.tb is not None:
                self.tb.add_scalar("train/loss", shown.item(), self.step)
                self.tb.add_scalar("train/lr", lr, self.step)
                for k, v in getattr(self.model, "last_logs", {}).items():
                    self.tb.add_scalar(f"train/{k}", float(v), self.step)
        return due

    def _loss_and_backward(self, views, due):
        """Forward (compiled when ``train.compile`` says so) under autocast, then backward unless the
        loss is non-finite: ``(loss, shown, bad, due)``."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg["train"]["bf16"]):
            loss = (self.forward if self.forward.active else self.ddp)(views)  # eager: self.ddp as it is now
        if self.world > 1:
            # one small all-reduce before backward: the mean loss (logging), whether any rank's loss is
            # non-finite (all stop together, none left waiting in backward), rank 0's checkpoint clock
            flags = torch.stack([loss.detach().float(), (~torch.isfinite(loss.detach())).float(),
                                 torch.tensor(float(due and self.rank == 0), device=loss.device)])
            torch.distributed.all_reduce(flags)
            shown, bad, due = flags[0] / self.world, bool(flags[1] > 0), bool(flags[2] > 0)
        else:
            shown, bad = loss, not torch.isfinite(loss)
        if not bad:
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        return loss, shown, bad, due

    def _gradient_cause(self, views, params, first: str) -> str:
        """Which loss term gives a non-finite gradient: the step's forward is run again (single process)
        and each term the method exposes (``model.loss_terms``: weighted terms summing to the loss) is
        differentiated on its own. Only called when the step is abandoned anyway."""
        where = f"first in {first}"
        if self.world > 1:
            return where
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg["train"]["bf16"]):
            self.ddp(views)
        terms = getattr(self.model, "loss_terms", None) or {}
        if not terms:
            return f"{where} (method {self.cfg['method']['name']} exposes no separate loss terms)"
        tensors = [p for _, p in params]
        culprits = []
        for name, term in terms.items():
            if not term.requires_grad:
                continue
            grads = torch.autograd.grad(term, tensors, retain_graph=True, allow_unused=True)
            if _first_nonfinite([(n, g) for (n, _), g in zip(params, grads) if g is not None]) is not None:
                culprits.append(name)
        self.model.loss_terms = {}
        if not culprits:
            return f"{where} (no single loss term of {', '.join(terms)} is non-finite on its own)"
        return f"from loss term {', '.join(culprits)} ({where})"

    def export(self) -> Path:
        """Write the backbone as a zoo folder ``OUT/export`` (model.safetensors + config.json)."""
        cfg = self.cfg
        pre = dict(cfg["export"]["preprocess"])
        a = cfg["augment"]
        pre = {"resize": pre["resize"] or a["size"], "crop": pre["crop"] or a["size"],
               "mean": pre["mean"] or a["mean"], "std": pre["std"] or a["std"],
               "interpolation": pre["interpolation"], "in_chans": cfg["model"]["in_chans"]}
        backbone = self._eval_backbone()
        sd = {k: v for k, v in backbone.state_dict().items()}
        config = {"name": cfg["name"], "arch": cfg["model"], "feature_dim": backbone.feature_dim,
                  "preprocess": pre, "method": cfg["method"]["name"],
                  "training": {"recipe": cfg, "steps": self.step, "description": cfg["export"]["description"]}}
        return save_folder(sd, config, self.out / "export")


def _first_nonfinite(named: list) -> str | None:
    """The name of the first tensor of ``(name, tensor)`` pairs holding NaN or inf, else None (one sync).
    Each tensor's min and max (NaN propagates into both): one pass without a temporary, ~20x cheaper
    than ``isfinite(t).all()`` on a CPU."""
    named = [(n, t) for n, t in named if t.numel()]
    if not named:
        return None
    ok = torch.isfinite(torch.stack([torch.stack(torch.aminmax(t.detach())).float() for _, t in named])).all(1)
    if bool(ok.all()):
        return None
    return named[int((~ok).nonzero()[0, 0])][0]


def _split_tensor(split, spec: str) -> torch.Tensor:
    """All images of a split as uint8 ``[N, C, H, W]``; file-backed splits (tinyimagenet, folders)
    are decoded into memory, which needs one image size."""
    return split.images_tensor(desc=f"decoding {spec}", mismatch=lambda i, got, first: ConfigError(
        f"{spec}: image {i} is {got}, image 0 {first}; the in-memory trainer needs one image size (train "
        f"from the files with augment.version=2 and data.source=files, or resize the data set first)"))
