"""``sslzoo publish DIR --repo-id ORG/NAME``: a zoo folder -> an HF model repository.

The repository holds ``model.safetensors``, ``config.json``, ``heads.safetensors`` (when the folder has one)
and ``README.md``: the model card with HF metadata (``library_name: ssl-zoo``,
``pipeline_tag: image-feature-extraction``, ``license``, ``tags`` and, for registered models, ``model-index``
with the reported results). The folder's own README.md is used when it carries that metadata; without one a
card is generated from ``config.json`` (and the registry record of the same name).

Two targets:

* the HF Hub (or any HF-compatible endpoint, ``HF_ENDPOINT``) with ``HfApi.create_repo`` + ``upload_folder``;
* ``--local-git PATH``: the same files committed to a local git repository on branch ``main`` (plain blobs, no
  LFS), e.g. ``<mirrors>/models/ORG/NAME`` for a mirror server such as olah.

Either way the commit sha to pin is printed, with the registry fields to paste (``hf_repo``, ``hf_revision``,
``sha256``); ``--revision-out FILE`` also writes them as JSON.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from .base import SSLZooError, atomic_write_bytes

from .convert import CARD_NAME, HEADS_NAME, folder_card
from .io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_write_text,
    read_config,
    sha256_file,
)

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REQUIRED_META = ("library_name", "pipeline_tag")


class PublishError(SSLZooError, ValueError):
    """A folder that cannot be published, or a failed upload / commit; one line."""


def read_front_matter(text: str) -> dict | None:
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---\n", 4)
    if end < 0:
        return None
    try:
        meta = yaml.safe_load(text[4:end])
    except yaml.YAMLError:
        return None
    return meta if isinstance(meta, dict) else None


def check_folder(folder: str | Path) -> dict:
    """Validate a zoo folder for publishing; returns its config. The weights must match the sha256 recorded
    in ``config.json`` (a modified or truncated file is never published)."""
    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise PublishError(f"{folder} is not a zoo folder: it needs {WEIGHTS_NAME} + {CONFIG_NAME} "
                           f"(write one with `sslzoo convert` or `sslzoo train`)")
    cfg = read_config(folder)
    for key in ("name", "arch", "feature_dim", "preprocess", "sha256"):
        if key not in cfg:
            raise PublishError(f"{folder}/{CONFIG_NAME} lacks {key!r}; re-create the folder with `sslzoo convert`")
    if sha256_file(folder / WEIGHTS_NAME) != cfg["sha256"]:
        raise PublishError(f"{folder}/{WEIGHTS_NAME} does not match the sha256 in {CONFIG_NAME}; the file was "
                           f"modified or truncated, refusing to publish it")
    heads = cfg.get("heads")
    if heads and (not (folder / HEADS_NAME).is_file() or sha256_file(folder / HEADS_NAME) != heads.get("sha256")):
        raise PublishError(f"{folder}/{HEADS_NAME} is missing or does not match the sha256 in {CONFIG_NAME}")
    return cfg


def stage(folder: str | Path, dest: str | Path) -> list[str]:
    """Copy the files of the repository into ``dest`` (README.md generated when missing); returns their names."""
    folder, dest = Path(folder), Path(dest)
    cfg = check_folder(folder)
    names = [WEIGHTS_NAME, CONFIG_NAME] + ([HEADS_NAME] if cfg.get("heads") else [])
    for n in names:
        shutil.copyfile(folder / n, dest / n)
    card = folder / CARD_NAME
    if card.is_file():
        text = card.read_text()
        meta = read_front_matter(text)
        missing = [k for k in REQUIRED_META if not meta or k not in meta]
        if missing:
            raise PublishError(f"{card} lacks HF metadata ({', '.join(missing)}); delete it and a card is generated")
    else:
        text = folder_card(cfg)
    (dest / CARD_NAME).write_text(text)
    return names + [CARD_NAME]


def _git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="ssl-zoo", GIT_AUTHOR_EMAIL="ssl-zoo@localhost",
               GIT_COMMITTER_NAME="ssl-zoo", GIT_COMMITTER_EMAIL="ssl-zoo@localhost", GIT_TERMINAL_PROMPT="0")
    try:
        r = subprocess.run(["git", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false", *args], cwd=repo,
                           env=env, capture_output=True, text=True, timeout=300, check=False)
    except FileNotFoundError:
        raise PublishError("git is not installed; --local-git needs it") from None
    if r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise PublishError(f"git {args[0]} in {repo} failed: {msg[-1] if msg else r.returncode}")
    return r.stdout.strip()


def publish_local_git(staging: Path, names: list[str], repo: str | Path, message: str) -> str:
    """Commit the staged files to ``repo`` (created when missing) on branch ``main``; returns the commit sha."""
    repo = Path(repo).expanduser()
    if repo.exists() and not (repo / ".git").exists() and any(repo.iterdir()):
        raise PublishError(f"{repo} exists and is not a git repository; choose an empty or new folder")
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        _git(repo, "init", "-q", "-b", "main")
    elif _git(repo, "symbolic-ref", "--short", "HEAD") != "main":
        raise PublishError(f"{repo} is not on branch main; check out main first")
    # files of an earlier publish that this folder no longer has (e.g. heads.safetensors)
    for stale in {WEIGHTS_NAME, CONFIG_NAME, HEADS_NAME, CARD_NAME} - set(names):
        if (repo / stale).exists():
            _git(repo, "rm", "-q", "--", stale)
    for n in names:
        atomic_write_bytes(repo / n, (staging / n).read_bytes())
    _git(repo, "add", "--", *names)
    if _git(repo, "status", "--porcelain"):
        _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


def publish_hf(staging: Path, repo_id: str, message: str, api=None, private: bool = False) -> str:
    """``create_repo`` + ``upload_folder`` through ``api`` (default ``huggingface_hub.HfApi()``); returns the
    commit sha."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(staging), repo_type="model",
                                 commit_message=message)
    except Exception as e:  # noqa: BLE001  (HTTP, auth, network errors of any client: one line)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PublishError(f"upload to {repo_id} failed ({type(e).__name__}: {first})") from None
    oid = getattr(info, "oid", None)
    if not oid:
        raise PublishError(f"upload to {repo_id} returned no commit id")
    return oid


def publish(folder: str | Path, repo_id: str, *, local_git: str | Path | None = None, api=None,
            private: bool = False, message: str | None = None, revision_out: str | Path | None = None) -> dict:
    """Publish a zoo folder; returns the pin ``{"hf_repo", "hf_revision", "hf_filename", "sha256"}``."""
    if not REPO_ID.match(repo_id or ""):
        raise PublishError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    cfg = check_folder(folder)
    message = message or f"ssl-zoo: {cfg['name']} (model.safetensors sha256 {cfg['sha256'][:12]})"
    with tempfile.TemporaryDirectory(prefix="sslzoo-publish-") as tmp:
        staging = Path(tmp)
        names = stage(folder, staging)
        if local_git is not None:
            sha = publish_local_git(staging, names, local_git, message)
        else:
            sha = publish_hf(staging, repo_id, message, api=api, private=private)
    pin = {"hf_repo": repo_id, "hf_revision": sha, "hf_filename": WEIGHTS_NAME, "sha256": cfg["sha256"]}
    if revision_out:
        atomic_write_text(revision_out, json.dumps(pin, indent=2) + "\n")
    return pin


# the parser: zoo.cli.add_publish_parser


def run_publish(args) -> int:
    pin = publish(args.folder, args.repo_id, local_git=args.local_git, private=args.private, message=args.message,
                  revision_out=args.revision_out)
    where = f"local git {args.local_git}" if args.local_git else f"HF Hub {args.repo_id}"
    print(f"published {args.folder} to {where} at commit {pin['hf_revision']}")
    print("pin it in the registry record:")
    print(f"    WeightSource(hf_repo={pin['hf_repo']!r}, hf_revision={pin['hf_revision']!r}, "
          f"sha256={pin['sha256']!r}, ...)")
    return 0
