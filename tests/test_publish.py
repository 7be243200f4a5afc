"""`sslzoo publish`: the HF upload path (against a recording stub of HfApi, clearly not the Hub), the
local-git path (a real git repository), the card metadata, and refusals (tampered folder, bad repo id)."""
import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from zoo.backbones import build_resnet
from zoo.convert import folder_card
from zoo.io import save_folder
from zoo.publish import PublishError, read_front_matter, publish
from zoo.registry import REGISTRY

ARCH = {"arch": "resnet18", "stem": "cifar", "width": 4, "in_chans": 3}
PRE = {"resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "in_chans": 3}


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    save_folder(build_resnet(**ARCH).state_dict(), {"name": "tiny", "arch": ARCH, "feature_dim": 32,
                                                    "preprocess": PRE, "method": "simclr"}, tmp_path / "m")
    return tmp_path / "m"


class RecordingHfApiStub:
    """NOT the HF Hub: records the calls publish() makes and the files it hands to upload_folder."""

    def __init__(self, fail=None):
        self.calls, self.uploaded, self.fail = [], {}, fail

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        if self.fail:
            raise self.fail

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw["repo_id"], {k: v for k, v in kw.items() if k != "folder_path"}))
        self.uploaded = {p.name: p.read_bytes() for p in Path(kw["folder_path"]).iterdir()}
        return type("CommitInfo", (), {"oid": "c0ffee" * 6 + "beef"})()


def test_upload_path_calls_create_repo_and_upload_folder(folder, tmp_path):
    api = RecordingHfApiStub()
    pin = publish(folder, "sslzoo/tiny", api=api, revision_out=tmp_path / "pin.json")
    cfg = json.loads((folder / "config.json").read_text())
    assert pin == {"hf_repo": "sslzoo/tiny", "hf_revision": "c0ffee" * 6 + "beef", "hf_filename": "model.safetensors",
                   "sha256": cfg["sha256"]}
    assert json.loads((tmp_path / "pin.json").read_text()) == pin
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2]["exist_ok"] is True and api.calls[0][2]["repo_type"] == "model"
    assert api.calls[1][2]["repo_type"] == "model" and "tiny" in api.calls[1][2]["commit_message"]
    assert sorted(api.uploaded) == ["README.md", "config.json", "model.safetensors"]
    assert api.uploaded["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    meta = read_front_matter(api.uploaded["README.md"].decode())
    assert meta["library_name"] == "ssl-zoo" and meta["pipeline_tag"] == "image-feature-extraction"
    assert not (folder / "README.md").exists()  # the card is generated for the upload, the folder is untouched


def test_upload_failure_is_one_line(folder):
    with pytest.raises(PublishError, match=r"upload to sslzoo/tiny failed \(PermissionError: 401 no token\)$"):
        publish(folder, "sslzoo/tiny", api=RecordingHfApiStub(fail=PermissionError("401 no token\ndetails")))


def test_refuses_tampered_folder_and_bad_repo_id(folder):
    with pytest.raises(PublishError, match="ORG/NAME"):
        publish(folder, "no-slash", api=RecordingHfApiStub())
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    api = RecordingHfApiStub()
    with pytest.raises(PublishError, match="modified or truncated"):
        publish(folder, "sslzoo/tiny", api=api)
    assert api.calls == []


def _git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True).stdout


def test_local_git_repository(folder, tmp_path):
    repo = tmp_path / "mirrors" / "models" / "sslzoo" / "tiny"
    pin = publish(folder, "sslzoo/tiny", local_git=repo)
    sha = pin["hf_revision"]
    assert _git(repo, "rev-parse", "HEAD").decode().strip() == sha and len(sha) == 40
    assert _git(repo, "symbolic-ref", "--short", "HEAD").decode().strip() == "main"
    assert _git(repo, "show", f"{sha}:model.safetensors") == (folder / "model.safetensors").read_bytes()
    assert sorted(_git(repo, "ls-tree", "--name-only", sha).decode().split()) == [
        "README.md", "config.json", "model.safetensors"]
    # publishing the same folder again changes nothing; a new model is a new commit on main
    assert publish(folder, "sslzoo/tiny", local_git=repo)["hf_revision"] == sha
    torch.manual_seed(1)
    save_folder(build_resnet(**ARCH).state_dict(), {"name": "tiny", "arch": ARCH, "feature_dim": 32,
                                                    "preprocess": PRE}, folder)
    sha2 = publish(folder, "sslzoo/tiny", local_git=repo)["hf_revision"]
    assert sha2 != sha and _git(repo, "rev-parse", "HEAD~1").decode().strip() == sha


def test_registered_model_card_has_model_index():
    rec = REGISTRY["dcl_resnet50_stl10_tauplus0p1"]
    cfg = {"name": rec.name, "arch": dict(rec.arch), "feature_dim": 2048, "preprocess": rec.preprocess.to_dict(),
           "sha256": "ab" * 32, "source": {"format": "dcl-dataparallel", "checkpoint": "model_400.pth",
                                           "checkpoint_sha256": "cd" * 32}}
    text = folder_card(cfg)
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["pipeline_tag"] == "image-feature-extraction" and meta["library_name"] == "ssl-zoo"
    res = meta["model-index"][0]["results"][0]
    assert res["metrics"][0]["value"] == 84.26 and res["source"]["name"].startswith("upstream claim")
    assert "ab" * 32 in text and "cd" * 32 in text


def test_cli_publish_local_git(folder, tmp_path, capsys):
    from training.cli import main  # the `sslzoo` dispatcher, in process

    repo = tmp_path / "repo"
    assert main(["publish", str(folder), "--repo-id", "sslzoo/tiny", "--local-git", str(repo),
                 "--revision-out", str(tmp_path / "pin.json")]) == 0
    out = capsys.readouterr().out
    sha = _git(repo, "rev-parse", "HEAD").decode().strip()
    assert f"at commit {sha}" in out and f"hf_revision='{sha}'" in out
    assert json.loads((tmp_path / "pin.json").read_text())["hf_revision"] == sha
    assert main(["publish", str(tmp_path / "nope"), "--repo-id", "a/b", "--local-git", str(repo)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sslzoo publish: error:") and "not a zoo folder" in lines[0]
    assert _git(repo, "rev-parse", "HEAD").decode().strip() == sha  # nothing committed
