"""End to end against a real HF-compatible hub on loopback: PyPI ``olah`` (offline mode, ``mirrors-path``)
serves a model repository that ``sslzoo publish --local-git`` wrote. The client runs in subprocesses, because
huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE at import.

1. server up: ``torch.hub.load(ROOT, NAME, source="local", pretrained=True)`` downloads model.safetensors at the
   pinned commit, checks its sha256 and gives the features of the published folder; a registry record that
   pins a commit whose file was altered is refused (sha256 mismatch), never loaded;
2. server stopped, HF_HUB_OFFLINE=1: the same load comes from the cache; a truncated cached file is refused.
"""
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from zoo.backbones import build_resnet
from zoo.io import save_folder, sha256_file
from zoo.publish import publish

if importlib.util.find_spec("olah") is None:
    pytest.skip("olah is not installed (pip install olah==0.5.4, or the `test` extra)", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
REPO = "sslzoo-test/tiny"
ARCH = {"arch": "resnet18", "stem": "cifar", "width": 4, "in_chans": 3}
PRE = {"resize": 16, "crop": 16, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "in_chans": 3}

# the client: registers records pinning the mirror (as zoo/upstream.py would after `sslzoo publish`), loads
# through torch.hub from this clone, prints what happened as JSON
CLIENT = r"""
import json, sys, warnings
import torch
sys.path.insert(0, {root!r})
from zoo.io import WeightsError
from zoo.preprocess import Preprocess
from zoo.registry import ModelRecord, WeightSource, register
pre = Preprocess.from_dict({pre!r})
for name, rev in {pins!r}:
    register(ModelRecord(name=name, arch={arch!r}, feature_dim=32, method="simclr", train_data="none",
                         preprocess=pre, weights=WeightSource(sha256={sha!r}, hf_repo={repo!r}, hf_revision=rev)))
x = torch.load({x!r})
out = {{}}
for name, _ in {pins!r}:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = torch.hub.load({root!r}, name, source="local", pretrained=True)
        with torch.no_grad():
            out[name] = {{"features": m(x).tolist(), "source": m.weights_source, "sha": m.weights_sha256}}
    except WeightsError as e:
        out[name] = {{"error": str(e)}}
    if {truncate!r} and "features" in out[name]:
        import pathlib
        blob = pathlib.Path(out[name]["source"].split(": ", 1)[1]).resolve()
        blob.write_bytes(blob.read_bytes()[:-100])
        try:
            torch.hub.load({root!r}, name, source="local", pretrained=True)
            out[name + "_truncated"] = {{"loaded": True}}
        except WeightsError as e:
            out[name + "_truncated"] = {{"error": str(e)}}
print("RESULT " + json.dumps(out))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git(repo, *args) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=repo, env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


class Olah:
    def __init__(self, tmp: Path, mirrors: Path):
        self.port = free_port()
        self.conf = tmp / "olah.toml"
        self.conf.write_text(f'[basic]\nhost = "127.0.0.1"\nport = {self.port}\nrepos-path = "{tmp / "olah-cache"}"\n'
                             f'mirrors-path = ["{mirrors}"]\n[accessibility]\noffline = true\n')
        self.logs = tmp / "olah-logs"
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        cli = Path(sys.executable).with_name("olah-cli")
        cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "olah.server"]
        self.proc = subprocess.Popen([*cmd, "-c", str(self.conf), "--log-path", str(self.logs)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.conf.parent)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"olah exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/models/{REPO}/revision/main", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("olah did not become ready in 60 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_client(tmp, endpoint, offline, pins, sha, truncate=False):
    env = dict(os.environ, HF_HOME=str(tmp / "hf-home"), HF_HUB_OFFLINE="1" if offline else "0",
               HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", SSLZOO_HOME=str(tmp / "sslzoo-home"))
    env.pop("HF_TOKEN", None)
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    code = CLIENT.format(root=str(ROOT), pre=PRE, pins=pins, arch=ARCH, sha=sha, repo=REPO, x=str(tmp / "x.pt"),
                         truncate=truncate)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                       check=False)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert r.returncode == 0 and line, r.stderr[-3000:]
    return json.loads(line.removeprefix("RESULT "))


def test_publish_serve_load_verify_offline(tmp_path):
    torch.manual_seed(0)
    net = build_resnet(**ARCH)
    folder = tmp_path / "tiny"
    save_folder(net.state_dict(), {"name": "tiny", "arch": ARCH, "feature_dim": 32, "preprocess": PRE}, folder)
    sha256 = sha256_file(folder / "model.safetensors")
    x = torch.randn(3, 3, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        want = net.eval()(x)

    mirrors = tmp_path / "mirrors"
    repo = mirrors / "models" / REPO
    good = publish(folder, REPO, local_git=repo)["hf_revision"]
    # a later commit whose weights were altered (one flipped byte), same file name
    data = bytearray((repo / "model.safetensors").read_bytes())
    data[-7] ^= 0x01
    (repo / "model.safetensors").write_bytes(bytes(data))
    git(repo, "commit", "-qam", "altered weights")
    bad = git(repo, "rev-parse", "HEAD")
    assert bad != good

    server = Olah(tmp_path, mirrors).start()
    try:
        res = run_client(tmp_path, server.url, False, [("loopback_tiny", good), ("loopback_tiny_altered", bad)],
                         sha256)
    finally:
        server.stop()
    ok = res["loopback_tiny"]
    assert "features" in ok, ok
    assert ok["source"].startswith("hf: ") and str(tmp_path / "hf-home") in ok["source"] and good in ok["source"]
    assert ok["sha"] == sha256
    assert (torch.tensor(ok["features"]) - want).abs().max() < 1e-5  # fp32; the client runs 1 thread
    err = res["loopback_tiny_altered"]["error"]
    assert "the registry pins" in err and "refusing it" in err

    # server stopped: the cache serves the pinned commit offline; a truncated cached file is refused
    res = run_client(tmp_path, server.url, True, [("loopback_tiny", good)], sha256, truncate=True)
    assert (torch.tensor(res["loopback_tiny"]["features"]) - want).abs().max() < 1e-5
    assert "the registry pins" in res["loopback_tiny_truncated"]["error"]
