"""End to end against a real HF-compatible hub on loopback: PyPI ``olah`` (offline mode, ``mirrors-path``)
serves a model repository that ``sslzoo publish --local-git`` wrote. The client runs in subprocesses, because
huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE at import.

1. server up: ``torch.hub.load(ROOT, NAME, source="local", pretrained=True)`` downloads model.safetensors at the
   pinned commit, checks its sha256 and gives the features of the published folder; a registry record that
   pins a commit whose file was altered is refused (sha256 mismatch), never loaded;
2. server stopped, HF_HUB_OFFLINE=1: the same load comes from the cache; a truncated cached file is refused;
3. a DISSL-dNone-layout mirror (random weights in the upstream torch-hub layout, `sslzoo convert` + `sslzoo
   publish`) is read by the HF ecosystem: ``huggingface_hub.ModelCard.load`` and ``HfApi.model_info`` parse its
   card strictly, ``timm.create_model("hf-hub:ORG/NAME@SHA", pretrained=True)`` gives our features, and the
   server's request log shows that our loader downloaded ``config.json`` (a mirror's download counter counts it).
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
    def __init__(self, tmp: Path, mirrors: Path, repo: str = REPO):
        self.port, self.repo = free_port(), repo
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
                with urllib.request.urlopen(f"{self.url}/api/models/{self.repo}/revision/main", timeout=2) as r:
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
        # an architecture timm cannot build (CIFAR stem, width 4): one line with the HF conventions
        fp = run_code(FROM_PRETRAINED.format(root=str(ROOT), repo=REPO, rev=good, x=str(tmp_path / "x.pt")), tmp_path,
                      server.url, "hf-from-pretrained")
    finally:
        server.stop()
    ok = res["loopback_tiny"]
    assert "features" in ok, ok
    assert ok["source"].startswith("hf: ") and str(tmp_path / "hf-home") in ok["source"] and good in ok["source"]
    assert ok["sha"] == sha256
    assert (torch.tensor(ok["features"]) - want).abs().max() < 1e-5  # fp32; the client runs 1 thread
    assert (torch.tensor(fp["features"]) - want).abs().max() < 1e-5 and good in fp["source"]
    assert "architecture" not in json.loads((folder / "config.json").read_text())  # no timm keys for this layout
    err = res["loopback_tiny_altered"]["error"]
    assert "the registry pins" in err and "refusing it" in err

    # server stopped: the cache serves the pinned commit offline; a truncated cached file is refused
    res = run_client(tmp_path, server.url, True, [("loopback_tiny", good)], sha256, truncate=True)
    assert (torch.tensor(res["loopback_tiny"]["features"]) - want).abs().max() < 1e-5
    assert "the registry pins" in res["loopback_tiny_truncated"]["error"]


FROM_PRETRAINED = r"""
import json, sys
import torch
sys.path.insert(0, {root!r})
from zoo.hub import from_pretrained
m = from_pretrained({repo!r}, revision={rev!r})
with torch.no_grad():
    print("RESULT " + json.dumps({{"features": m(torch.load({x!r})).tolist(), "source": m.weights_source}}))
"""

DISSL = "dissl_resnet50_dNone_e100_m2"
REPO50 = "sslzoo-test/dissl_resnet50_dNone_e100_m2"

# our loader (a registry record pinning the mirror, as zoo/upstream.py would after `sslzoo publish`)
OUR_CLIENT = r"""
import json, sys, dataclasses, warnings
import torch
sys.path.insert(0, {root!r})
from zoo.registry import REGISTRY, WeightSource, register
from zoo.hub import create_model
register(dataclasses.replace(REGISTRY[{name!r}], name="loopback_dissl",
                             weights=WeightSource(sha256={sha!r}, hf_repo={repo!r}, hf_revision={rev!r})))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    m = create_model("loopback_dissl")
with torch.no_grad():
    print("RESULT " + json.dumps({{"features": m(torch.load({x!r})).tolist(), "source": m.weights_source}}))
"""

# the HF ecosystem, knowing nothing of ssl-zoo but the repo id
HF_CLIENT = r"""
import json, sys
import torch, timm
from huggingface_hub import HfApi, ModelCard
card = ModelCard.load({repo!r}, ignore_metadata_errors=False)
info = HfApi().model_info({repo!r}, revision={rev!r})
m = timm.create_model("hf-hub:{repo}@{rev}", pretrained=True).eval()
x = torch.load({x!r})
with torch.no_grad():
    feats, pooled = m(x), m.forward_head(m.forward_features(x), pre_logits=True)
sys.path.insert(0, {root!r})
from zoo.hub import from_pretrained
with torch.no_grad():
    ours = from_pretrained("{repo}@{rev}")(x)
print("RESULT " + json.dumps({{
    "datasets": card.data.datasets, "n_results": len(card.data.eval_results or []),
    "task_names": sorted({{r.task_name for r in card.data.eval_results}}),
    "source_url": card.data.eval_results[0].source_url, "info_results": len(info.card_data.eval_results),
    "timm_cfg": {{k: m.pretrained_cfg.get(k) for k in ("input_size", "crop_pct", "mean", "std", "num_classes")}},
    "num_features": m.num_features, "features": feats.tolist(), "pooled": pooled.tolist(),
    "from_pretrained": ours.tolist()}}))
"""


def run_code(code, tmp, endpoint, hf_home):
    env = dict(os.environ, HF_HOME=str(tmp / hf_home), HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint,
               HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", SSLZOO_HOME=str(tmp / "sslzoo-home"))
    env.pop("HF_TOKEN", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, check=False)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert r.returncode == 0 and line, r.stderr[-3000:]
    return json.loads(line.removeprefix("RESULT "))


def resolve_requests(logs: Path, repo: str, rev: str, filename: str) -> int:
    """GET requests for one file at one commit in olah's access log."""
    text = "".join(p.read_text(errors="replace") for p in logs.rglob("*.log"))
    return text.count(f'"GET /{repo}/resolve/{rev}/{filename} HTTP')


@pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                    reason="timm is not installed (pip install timm, or the `test` extra)")
def test_dissl_mirror_is_read_by_timm_and_huggingface_hub(tmp_path):
    import torchvision

    from zoo.convert import convert
    from zoo.hub import create_model

    # the upstream dNone release layout: torchvision's resnet50 state dict without fc; random weights and BN statistics
    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    for mod in tv.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.1)
    torch.save({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}, tmp_path / "upstream.torch")
    folder = convert(DISSL, tmp_path / "upstream.torch", tmp_path / "mirror", quiet=True)
    cfg = json.loads((folder / "config.json").read_text())
    assert (cfg["architecture"], cfg["num_classes"], cfg["num_features"]) == ("resnet50", 0, 2048)
    x = torch.randn(2, 3, 64, 64)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        want = create_model(folder)(x)
        assert (want - torch.nn.Sequential(*list(tv.children())[:-1])(x).flatten(1)).abs().max() < 1e-4

    mirrors = tmp_path / "mirrors"
    pin = publish(folder, REPO50, local_git=mirrors / "models" / REPO50)
    rev = pin["hf_revision"]
    server = Olah(tmp_path, mirrors, repo=REPO50).start()
    try:
        assert resolve_requests(tmp_path / "olah-logs", REPO50, rev, "config.json") == 0
        ours = run_code(OUR_CLIENT.format(root=str(ROOT), name=DISSL, sha=pin["sha256"], repo=REPO50, rev=rev,
                                          x=str(tmp_path / "x.pt")), tmp_path, server.url, "hf-ours")
        # our loader's download of config.json is on the server's log (before anything else asked for it)
        assert resolve_requests(tmp_path / "olah-logs", REPO50, rev, "config.json") == 1
        assert resolve_requests(tmp_path / "olah-logs", REPO50, rev, "model.safetensors") == 1
        hf = run_code(HF_CLIENT.format(root=str(ROOT), repo=REPO50, rev=rev, x=str(tmp_path / "x.pt")), tmp_path,
                      server.url, "hf-ecosystem")
    finally:
        server.stop()
    assert ours["source"].startswith("hf: ") and rev in ours["source"]
    assert (torch.tensor(ours["features"]) - want).abs().max() < 1e-5

    # the card, strictly parsed by huggingface_hub (ModelCard.load and the ModelInfo of HfApi.model_info)
    assert hf["datasets"] == ["ILSVRC/imagenet-1k"] and hf["n_results"] == hf["info_results"] == 2
    assert hf["task_names"] == ["linear probe"]
    assert hf["source_url"] == "https://github.com/YannDubs/Invariant-Self-Supervised-Learning"
    # timm builds it from config.json and loads model.safetensors as is: the same features
    assert hf["timm_cfg"] == {"input_size": [3, 224, 224], "crop_pct": 0.875, "mean": [0.485, 0.456, 0.406],
                              "std": [0.229, 0.224, 0.225], "num_classes": 0} and hf["num_features"] == 2048
    ours_feats = torch.tensor(ours["features"])
    for key in ("features", "pooled", "from_pretrained"):
        assert (torch.tensor(hf[key]) - ours_feats).abs().max() <= 1e-6, key
