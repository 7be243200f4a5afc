"""The training loop shared by every method.

Data is held in memory as a uint8 tensor ``[N, C, H, W]`` and augmented as whole batches
(:mod:`training.augment`), so both cores stay on the network. The step runs under bf16 autocast
(CPU or CUDA) with fp32 losses, in ``channels_last``. Checkpoints are written atomically every few
minutes and at each epoch end with model, optimiser, step, and every RNG state, so ``--resume``
continues where the run stopped. Progress: tqdm; logs: ``log.csv`` (step, epoch, loss, lr,
images/s) and ``monitor.csv`` (online kNN accuracy on a split held out from *train*, never test).
At the end the backbone is exported as a zoo folder (``export/model.safetensors`` + ``config.json``).
"""
from __future__ import annotations

import csv
import io
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from eval.datasets import load_split
from zoo.backbones import build_resnet
from zoo.io import atomic_write_bytes, atomic_write_text, save_folder

from .augment import ViewAugment
from .config import ConfigError
from .methods import METHODS


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); one line with the step and a hint."""


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup from ~0 to 1 over ``warmup`` steps, then cosine to
    ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def build_model(cfg: dict) -> torch.nn.Module:
    m = dict(cfg["method"])
    name = m.pop("name")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    backbone = build_resnet(**cfg["model"])
    return METHODS[name](backbone, **m)


def build_optimizer(cfg: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg["optim"]
    # no weight decay on BN parameters and biases (standard for SSL recipes)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if o["name"] == "sgd":
        return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"])
    if o["name"] == "adamw":
        return torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]))
    raise ConfigError(f"unknown optimizer {o['name']!r}; use sgd or adamw")


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


def save_checkpoint(path: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


class Trainer:
    def __init__(self, cfg: dict, out_dir: str | Path, device: str | None = None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        t = cfg["train"]
        if t["threads"]:
            torch.set_num_threads(int(t["threads"]))
        torch.manual_seed(t["seed"])
        np.random.seed(t["seed"])
        random.seed(t["seed"])
        self.model = build_model(cfg).to(self.device)
        if t["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = build_optimizer(cfg, self.model)
        self.aug = ViewAugment(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg["augment"].items()})
        self.gen = torch.Generator().manual_seed(t["seed"] + 1)
        self.step = 0

    # ------------------------------------------------------------------ data
    def _load_data(self):
        d = self.cfg["data"]
        split = load_split(d["dataset"], d["split"], root=d["root"], download=d["download"])
        x = split.as_tensor()
        if x.shape[1] != self.cfg["model"]["in_chans"]:
            raise ConfigError(f"{d['dataset']} has {x.shape[1]} channels but model.in_chans="
                              f"{self.cfg['model']['in_chans']}; set model.in_chans={x.shape[1]}")
        return x, torch.as_tensor(split.targets)

    # ------------------------------------------------------------------ monitor
    @torch.no_grad()
    def monitor(self, x, y) -> float:
        """kNN (k=20, T=0.07) accuracy: memory bank = ``monitor_size`` train images, queries = the
        last ``monitor_val_size`` train images (disjoint). Test data is never touched."""
        from eval.probes import knn_probe

        t = self.cfg["train"]
        nval = min(t["monitor_val_size"], len(x) // 5)
        nmem = min(t["monitor_size"], len(x) - nval)
        mem_idx = torch.arange(nmem)
        val_idx = torch.arange(len(x) - nval, len(x))
        feats = self.embed(x[torch.cat([mem_idx, val_idx])])
        r = knn_probe(feats[:nmem], y[mem_idx], feats[nmem:], y[val_idx], k=20, temperature=0.07)
        return r["accuracy"]

    @torch.no_grad()
    def embed(self, x, bs=1024):
        backbone = self.model.backbone
        was = backbone.training
        backbone.eval()
        a = self.aug
        mean = torch.tensor(a.mean).view(1, -1, 1, 1)
        std = torch.tensor(a.std).view(1, -1, 1, 1)
        out = []
        for i in range(0, len(x), bs):
            xb = x[i:i + bs].float() / 255
            if xb.shape[-1] != a.size:
                xb = torch.nn.functional.interpolate(xb, size=(a.size, a.size), mode="bilinear", antialias=True)
            xb = ((xb - mean) / std).to(self.device, memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg["train"]["bf16"]):
                out.append(backbone(xb).float().cpu())
        backbone.train(was)
        return torch.cat(out)

    # ------------------------------------------------------------------ checkpoint
    def state(self, epoch: int, batch_in_epoch: int) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "step": self.step,
                "epoch": epoch, "batch_in_epoch": batch_in_epoch, "rng": _rng_state(self.gen), "config": self.cfg}

    def resume(self, path: Path) -> tuple[int, int]:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(ck["model"], strict=True)
        self.opt.load_state_dict(ck["optimizer"])
        self.step = ck["step"]
        _set_rng_state(ck["rng"], self.gen)
        return ck["epoch"], ck["batch_in_epoch"]

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> Path:
        cfg, t, o = self.cfg, self.cfg["train"], self.cfg["optim"]
        x, y = self._load_data()  # bad data fails before anything is written
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        n = len(x)
        bs = o["batch_size"]
        steps_per_epoch = n // bs
        if steps_per_epoch == 0:
            raise ConfigError(f"batch_size {bs} is larger than the dataset ({n} images); lower optim.batch_size")
        total = steps_per_epoch * o["epochs"]
        if t["max_steps"]:
            total = min(total, int(t["max_steps"]))
        warmup = steps_per_epoch * o["warmup_epochs"]
        ckpt = self.out / "checkpoint.pt"
        start_epoch, start_batch = 0, 0
        if resume and ckpt.is_file():
            start_epoch, start_batch = self.resume(ckpt)
            tqdm.write(f"resumed from {ckpt} at step {self.step} (epoch {start_epoch}, batch {start_batch})")
        elif resume:
            tqdm.write(f"no checkpoint in {self.out}; starting from scratch")
        log_path = self.out / "log.csv"
        new_log = not log_path.exists() or not resume
        logf = open(log_path, "w" if new_log else "a", newline="")
        log = csv.writer(logf)
        if new_log:
            log.writerow(["step", "epoch", "loss", "lr", "images_per_s", "wall_s"])
        mon_path = self.out / "monitor.csv"
        if not mon_path.exists() or not resume:
            atomic_write_text(mon_path, "epoch,step,knn20_heldout_train\n")
        last_ckpt = time.time()
        t0 = time.time()
        stop = min(total, int(t["stop_at_step"])) if t["stop_at_step"] else total
        pbar = tqdm(total=total, initial=self.step, desc=cfg["name"], unit="step", dynamic_ncols=True)
        self.model.train()
        epoch, batch = start_epoch, start_batch
        try:
            while self.step < stop:
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(t["seed"] * 100003 + epoch))
                while batch < steps_per_epoch and self.step < stop:
                    self._train_step(x[perm[batch * bs:(batch + 1) * bs]], total, warmup, epoch, ckpt, log, logf,
                                     pbar, t0)
                    batch += 1
                    if time.time() - last_ckpt > 60 * t["checkpoint_minutes"]:
                        save_checkpoint(ckpt, self.state(epoch, batch))
                        last_ckpt = time.time()
                if batch < steps_per_epoch:
                    break  # stopped mid-epoch (stop_at_step)
                epoch, batch = epoch + 1, 0
                save_checkpoint(ckpt, self.state(epoch, batch))
                last_ckpt = time.time()
                me = t["monitor_every_epochs"]
                if me and (epoch % me == 0 or self.step >= total):
                    acc = self.monitor(x, y)
                    with open(mon_path, "a") as f:
                        f.write(f"{epoch},{self.step},{acc:.4f}\n")
                    tqdm.write(f"epoch {epoch}: kNN(k=20) on held-out train split {100 * acc:.2f}%")
        finally:
            pbar.close()
            logf.close()
        save_checkpoint(ckpt, self.state(epoch, batch))
        if self.step < total:
            tqdm.write(f"stopped at step {self.step} of {total}; continue with --resume")
            return ckpt
        return self.export()

    def _train_step(self, xb, total, warmup, epoch, ckpt, log, logf, pbar, t0) -> None:
        o, t = self.cfg["optim"], self.cfg["train"]
        ts = time.time()
        lr = o["lr"] * warmup_cosine(self.step, total, warmup, o["min_lr_ratio"])
        for g in self.opt.param_groups:
            g["lr"] = lr
        xb = xb.to(self.device)
        views = [self.aug(xb, self.gen).to(memory_format=torch.channels_last) for _ in range(self.model.n_views)]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=t["bf16"]):
            loss = self.model(views)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at step {self.step} (epoch {epoch}); the last good checkpoint "
                                f"is kept in {ckpt}; lower optim.lr or raise method.temperature, then --resume")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        pbar.update(1)
        if self.step % t["log_every"] == 0 or self.step == total:
            pbar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}", ep=epoch)
            log.writerow([self.step, epoch, f"{loss.item():.5f}", f"{lr:.6g}", f"{len(xb) / (time.time() - ts):.1f}",
                          f"{time.time() - t0:.1f}"])
            logf.flush()

    def export(self) -> Path:
        """Write the backbone as a zoo folder ``OUT/export`` (model.safetensors + config.json)."""
        cfg = self.cfg
        pre = dict(cfg["export"]["preprocess"])
        a = cfg["augment"]
        pre = {"resize": pre["resize"] or a["size"], "crop": pre["crop"] or a["size"],
               "mean": pre["mean"] or a["mean"], "std": pre["std"] or a["std"],
               "interpolation": pre["interpolation"], "in_chans": cfg["model"]["in_chans"]}
        backbone = self.model.backbone
        sd = {k: v for k, v in backbone.state_dict().items()}
        config = {"name": cfg["name"], "arch": cfg["model"], "feature_dim": backbone.feature_dim,
                  "preprocess": pre, "method": cfg["method"]["name"],
                  "training": {"recipe": cfg, "steps": self.step, "description": cfg["export"]["description"]}}
        return save_folder(sd, config, self.out / "export")
