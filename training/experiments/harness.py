"""The one experiment harness of training/experiments/: resumable training runs under a fixed budget.

:func:`train_run` trains a recipe in its own folder, skips it when a previous invocation finished it,
resumes it from its checkpoint when one was interrupted (refusing a folder that holds a run of
another recipe or budget), records every segment's wall time and turns a trainer error (a NaN loss)
into a ``failed`` record instead of stopping the experiment. The method comparison
(:mod:`~training.experiments.compare`) and the data-centric experiments
(:mod:`~training.experiments.sas_fmnist`, :mod:`~training.experiments.adainf_fmnist`) train through it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import yaml

from zoo.io import atomic_write_text

from ..config import load_recipe
from ..trainer import Trainer, TrainingError

#: the record file a run folder gets (the comparison's name, kept so its run folders resume)
RECORD = "compare.json"
# what may differ between an interrupted run's recorded config and today's (it is how runs are stopped)
_VOLATILE = (("train", "stop_at_step"),)


def strip_volatile(cfg: dict) -> dict:
    cfg = json.loads(json.dumps(cfg))
    for sec, key in _VOLATILE:
        cfg.get(sec, {}).pop(key, None)
    return cfg


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def train_run(folder: Path, recipe: str, overrides: list, device: str | None, *, meta: dict | None = None,
              record: str = RECORD) -> dict:
    """Train ``recipe`` with ``overrides`` in ``folder`` (skip when done, resume when interrupted);
    returns its record (``folder/record``, JSON: ``meta``'s fields, ``recipe``, ``overrides``,
    ``status``, ``segments``, ``config``), whose ``status`` is ``done``, ``stopped`` (interrupted) or
    ``failed`` (the trainer's one-line error, e.g. a NaN loss, in ``error``; a later invocation tries
    again from the last checkpoint). A finished run's ``wall_s`` sums its segments' wall seconds."""
    cfg = load_recipe(recipe, overrides)
    folder = Path(folder)
    rec_path = folder / record
    rec = read_json(rec_path) or {}
    export = folder / "export" / "model.safetensors"
    if rec.get("status") == "done" and export.is_file():
        if strip_volatile(rec.get("config", {})) != strip_volatile(cfg):
            raise ValueError(f"{folder} holds a finished run with another recipe or budget; use another --out "
                             f"or delete that folder")
        return rec
    resume = (folder / "checkpoint.pt").is_file()
    if resume:
        try:
            old = yaml.safe_load((folder / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            old = None
        if old is None or strip_volatile(old) != strip_volatile(cfg):
            raise ValueError(f"{folder} holds an interrupted run with another recipe or budget; use another "
                             f"--out or delete that folder")
    start_step = 0
    if resume:
        try:  # where this segment starts: the checkpoint's step (a killed segment left no record)
            start_step = int(torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)["step"])
        except Exception:  # noqa: BLE001 -- Trainer.fit reports an unreadable checkpoint in one line
            start_step = -1
    trainer = Trainer(cfg, folder, device=device)
    segments = list(rec.get("segments", []))
    result = None
    start = time.perf_counter()
    error = None
    try:
        result = trainer.fit(resume=resume, overwrite=not resume)  # a folder without a checkpoint: start over
    except TrainingError as e:  # e.g. a NaN loss: recorded, reported under the table, the others go on
        error = str(e)
    finally:
        segments.append({"start_step": start_step, "end_step": trainer.step,
                         "wall_s": round(time.perf_counter() - start, 3), "resumed": resume})
        rec = {**(meta or {}), "recipe": recipe, "overrides": list(overrides), "status": "running",
               "segments": segments, "config": cfg}
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(rec_path, json.dumps(rec, indent=1))
    total = int(cfg["train"]["max_steps"])
    if error is not None:
        rec["status"] = "failed"
        rec["error"] = error
    elif result is None or result.name != "model.safetensors" or trainer.step < total:
        rec["status"] = "stopped"
    else:
        rec["status"] = "done"
        rec["wall_s"] = round(sum(s["wall_s"] for s in segments), 3)
        # a segment killed without a record (SIGKILL) leaves a gap: its time is unknown
        rec["wall_complete"] = segments[0]["start_step"] == 0 and all(
            0 <= b["start_step"] <= a["end_step"] for a, b in zip(segments, segments[1:]))
    atomic_write_text(rec_path, json.dumps(rec, indent=1))
    return rec
