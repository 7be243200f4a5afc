"""Model cards and the README's zoo table, generated from the registry (never hand-edited).

``sslzoo cards`` rewrites ``model_cards/NAME.md`` for every record and the README's generated tables
(between ``<!-- NAME:start -->`` / ``<!-- NAME:end -->`` markers: the zoo table from here, the method
table from the training layer); ``--check`` fails when a card or table on disk differs from what the
registry generates (the test suite runs the check).
The front matter follows the HF Hub model-card metadata (``library_name``, ``pipeline_tag``,
``license``, ``tags``, ``model-index``) so the same text serves as a mirror's README.md.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml
from tabulate import tabulate

from .base import SSLZooError, atomic_write_text
from .io import timm_config
from .registry import REGISTRY, ModelRecord

CARD_DIR = Path(__file__).resolve().parent.parent / "model_cards"
README = Path(__file__).resolve().parent.parent / "README.md"


def card_path(name: str) -> Path:
    return CARD_DIR / f"{name}.md"


# The Hub dataset id of each catalogue data set (``dataset.type`` in ``model-index``, the top-level ``datasets:``),
# with its display name. The one place that maps ssl-zoo's names to the Hub's.
HUB_DATASETS = {
    "fashion-mnist": ("zalando-datasets/fashion_mnist", "Fashion-MNIST"),
    "mnist": ("ylecun/mnist", "MNIST"),
    "cifar10": ("uoft-cs/cifar10", "CIFAR-10"),
    "cifar100": ("uoft-cs/cifar100", "CIFAR-100"),
    "stl10": ("tanganke/stl10", "STL-10"),
    "svhn": ("ufldl-stanford/svhn", "SVHN"),
    "tinyimagenet": ("zh-plus/tiny-imagenet", "Tiny ImageNet"),
    "imagenet": ("ILSVRC/imagenet-1k", "ImageNet-1k"),
}
# where numbers "measured here" come from (the same placeholder as the README's torch.hub.load("<org>/ssl-zoo"))
PROJECT_URL = "https://github.com/<org>/ssl-zoo"
_GITHUB_REPO = re.compile(r"\b([A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9][A-Za-z0-9._-]*)\b")


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def hub_dataset(name: str) -> tuple[str, str]:
    """``(Hub dataset id, display name)`` of a catalogue data set, or of free text that starts with one
    (``"ImageNet-1k train (...)"`` -> imagenet); an unknown name is an error naming the table to extend."""
    first = _squash(name.split(" ")[0])
    for key in sorted(HUB_DATASETS, key=len, reverse=True):
        if first.startswith(_squash(key)):
            return HUB_DATASETS[key]
    raise SSLZooError(f"no Hub dataset id for {name!r}; add it to zoo.cards.HUB_DATASETS")


def task_name(protocol: str) -> str:
    """The short task name of a protocol sentence: "linear probe", "few-shot linear probe", "kNN" or
    "fine-tuning"."""
    p = protocol.lower()
    if p.startswith(("finetune", "fine-tun")):
        return "fine-tuning"
    if p.startswith("few-shot"):
        return "few-shot linear probe"
    if p.startswith("knn"):
        return "kNN"
    if p.startswith(("linear", "logistic")):
        return "linear probe"
    raise SSLZooError(f"cannot name the task of the protocol {protocol!r}; extend zoo.cards.task_name")


def metric_name(protocol: str) -> str:
    """The short metric name: "top-1 accuracy" (or top-5), with the few-shot k or the kNN k / T."""
    top = "top-5" if protocol.rstrip().endswith("top-5") else "top-1"
    if (m := re.search(r"\bk=(\d+)", protocol)) and protocol.lower().startswith("few-shot"):
        return f"{top} accuracy, {m.group(1)}-shot"
    if (m := re.match(r"knn k=(\d+) T=([0-9.]+)", protocol, re.I)):
        return f"{top} accuracy, k={m.group(1)} T={m.group(2)}"
    return f"{top} accuracy"


def metric_source(source: str) -> dict:
    """``{"name", "url"}`` of a metric's source: an upstream claim links the GitHub repository it names
    (``owner/repo``), a number measured here links ssl-zoo."""
    if not source.startswith("upstream claim"):
        return {"name": source, "url": PROJECT_URL}
    m = _GITHUB_REPO.search(source.removeprefix("upstream claim").lstrip(": "))
    if not m:
        raise SSLZooError(f"the source {source!r} names no GitHub owner/repo; write it as 'upstream claim: OWNER/REPO ...'")
    return {"name": source, "url": f"https://github.com/{m.group(1)}"}


def model_index(r: ModelRecord) -> list[dict]:
    """The ``model-index`` of a record as huggingface_hub parses it (``repocard_data.model_index_to_eval_results``):
    one result per metric; task / metric names short, the protocol sentence in the metric's ``config``, the data
    set as its Hub id, the source with a URL."""
    results = []
    for m in r.metrics:
        ds_id, ds_name = hub_dataset(m.dataset)
        results.append({"task": {"type": "image-classification", "name": task_name(m.protocol)},
                        "dataset": {"name": ds_name, "type": ds_id, "split": m.split},
                        "metrics": [{"type": "accuracy", "value": round(m.value, 2), "name": metric_name(m.protocol),
                                     "config": m.protocol}],
                        "source": metric_source(m.source)})
    return [{"name": r.name, "results": results}] if results else []


def _front_matter(r: ModelRecord) -> str:
    meta = {"library_name": "ssl-zoo", "pipeline_tag": "image-feature-extraction", "license": r.license.lower(),
            "tags": ["self-supervised-learning", r.method, r.arch["arch"], *r.tags],
            "datasets": [hub_dataset(r.train_data)[0]]}
    if r.metrics:
        meta["model-index"] = model_index(r)
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, width=1000) + "---\n"


def _recipe_cell(r: ModelRecord) -> str:
    if not r.recipe:
        return "upstream"
    path = f"`training/recipes/{r.recipe}.yaml`"
    return f"{path} (ssl-zoo's reproduction; the weights are upstream's)" if r.weights.upstream_url else path


def _mirror_usage(arch: dict, preprocess: dict, feature_dim: int) -> list[str]:
    """How to load an HF mirror of the model (``sslzoo publish`` to ORG/NAME): ssl-zoo's one line, and timm's
    when ``config.json`` carries timm's keys (:func:`zoo.io.timm_config`)."""
    lines = ["From an HF Hub mirror (the repository `sslzoo publish` writes, ORG/NAME):", "", "```python",
             "from zoo.hub import from_pretrained", 'model = from_pretrained("ORG/NAME")  # revision="COMMIT" pins it']
    if timm_config(arch, preprocess, feature_dim) is not None:
        lines += ["import timm  # timm builds this architecture from config.json: the same features",
                  'model = timm.create_model("hf-hub:ORG/NAME", pretrained=True)  # headless (num_classes=0), '
                  f"[B, {feature_dim}]"]
    return lines + ["```", ""]


def render_card(r: ModelRecord) -> str:
    arch = ", ".join(f"{k}={v}" for k, v in r.arch.items())
    lines = [_front_matter(r), f"# {r.name}", "", r.description or "", "",
             "<!-- generated from the registry (zoo/models.py, zoo/upstream.py) by `sslzoo cards`; do not edit by hand -->", "",
             "| field | value |", "|---|---|",
             f"| method | {r.method} |", f"| architecture | {arch} |", f"| feature dim | {r.feature_dim} |",
             f"| training data | {r.train_data} |",
             f"| recipe | {_recipe_cell(r)} |",
             f"| preprocessing | {r.preprocess.describe()} |", f"| license | {r.license} |"]
    if r.paper:
        lines.append(f"| paper | {r.paper} |")
    w = r.weights
    lines += [f"| weights sha256 | `{w.sha256}` |" if w.sha256 else
              "| weights sha256 | **unverified**: not pinned yet (the upstream file has not been converted and "
              "published by ssl-zoo); `pretrained=True` downloads and converts it and warns; pin it with "
              f"`sslzoo convert {r.name} --checkpoint URL --out DIR` + `sslzoo publish DIR --repo-id ORG/NAME` |"]
    if w.bundled:
        lines.append(f"| bundled weights | `zoo/bundled/{w.bundled}/model.safetensors` |")
    if w.hf_repo:
        lines.append(f"| HF Hub mirror | `{w.hf_repo}` @ `{w.hf_revision}` |")
    if w.upstream_url:
        lines.append(f"| upstream | {w.upstream_url} (format `{w.upstream_format}`) |")
        lines.append(f"| upstream file sha256 | `{w.upstream_sha256}` |" if w.upstream_sha256 else
                     "| upstream file sha256 | not pinned |")
    if w.upstream_note:
        lines.append(f"| note | {w.upstream_note} |")
    lines += ["", "## Usage", "", "```python", "import torch",
              f'model = torch.hub.load("<org>/ssl-zoo", "{r.name}")  # or torch.hub.load(".", ..., source="local")',
              ("features = model(model.preprocess(images))  # uint8 [B,C,H,W] or PIL -> "
               f"[B, {r.feature_dim}]"), "```", "", *_mirror_usage(r.arch, r.preprocess.to_dict(), r.feature_dim),
              "## Results", ""]
    if r.metrics:
        lines += ["| dataset | split | protocol | accuracy (%) | source |", "|---|---|---|---:|---|"]
        lines += [f"| {m.dataset} | {m.split} | {m.protocol} | {m.value:.2f} | {m.source} |" for m in r.metrics]
    else:
        lines.append("No result recorded yet.")
    if any(not m.is_claim for m in r.metrics) or not r.metrics:
        lines += ["", ("Protocols of the numbers measured here: linear = multinomial logistic regression on frozen "
                       "features, L2 chosen on a 10% validation split carved from train, refit on all train; knn = "
                       "cosine similarity, votes weighted by exp(s/T); few-shot = k labelled images per class, mean "
                       "± std over seeds. Never selected on test.")]
    if any(m.is_claim for m in r.metrics):
        lines += ["", ("Rows whose source says *upstream claim* are numbers the upstream authors report; ssl-zoo "
                       "has not reproduced them. Each row names the upstream protocol, which may select "
                       "hyper-parameters or checkpoints on the test set; compare them with ssl-zoo's protocols only "
                       "with that in mind.")]
    lines.append("")
    return "\n".join(lines)


def render_config_card(cfg: dict) -> str:
    """A card for a zoo folder whose name is not in the registry, from its ``config.json``."""
    meta = {"library_name": "ssl-zoo", "pipeline_tag": "image-feature-extraction",
            "license": str(cfg.get("license") or "unknown").lower(),
            "tags": ["self-supervised-learning", *([cfg["method"]] if cfg.get("method") else []), cfg["arch"]["arch"]]}
    try:
        meta["datasets"] = [hub_dataset(cfg["train_data"])[0]] if cfg.get("train_data") else []
    except SSLZooError:  # training data with no Hub id: no datasets: entry
        meta["datasets"] = []
    if not meta["datasets"]:
        del meta["datasets"]
    pre = cfg["preprocess"]
    arch = ", ".join(f"{k}={v}" for k, v in cfg["arch"].items())
    lines = ["---\n" + yaml.safe_dump(meta, sort_keys=False, width=1000) + "---\n", f"# {cfg['name']}", "",
             cfg.get("description") or "", "", "| field | value |", "|---|---|",
             f"| method | {cfg.get('method') or 'unknown'} |", f"| architecture | {arch} |",
             f"| feature dim | {cfg['feature_dim']} |",
             (f"| preprocessing | resize {pre['resize']} -> center crop {pre['crop']}, mean {pre['mean']}, "
              f"std {pre['std']} |"), "", "## Usage", "", "```python", "from zoo.hub import create_model",
             "model = create_model(\"path/to/this/folder\")", "```", "",
             *_mirror_usage(cfg["arch"], pre, cfg["feature_dim"]), "## Results", "",
             "No result recorded in this folder.", ""]
    return "\n".join(lines)


def write_cards(check: bool = False) -> list[str]:
    """Write every card, or with ``check`` return the names whose card is missing or stale."""
    stale = []
    for name, r in sorted(REGISTRY.items()):
        text = render_card(r)
        p = card_path(name)
        if not p.is_file() or p.read_text() != text:
            stale.append(name)
            if not check:
                atomic_write_text(p, text)
    return stale


# ----------------------------------------------------------------------------- the zoo table


def zoo_rows() -> list[dict]:
    """One row per registry entry (the default model first, then registry order): what ``sslzoo list``
    prints and the README's zoo table shows."""
    records = sorted(REGISTRY.values(), key=lambda r: "default" not in r.tags)  # stable: registry order kept
    rows = []
    for r in records:
        a = r.arch
        arch = a["arch"] + (f" w{a['width']}" if a.get("width", 64) != 64 else "")
        if a.get("expand_dim"):
            arch += f" + expansion {a.get('expand_mid')}->{a['expand_dim']}"
        if a.get("in_chans", 3) != 3:
            arch += f", {a['in_chans']} channel{'s' if a['in_chans'] > 1 else ''}"
        if r.metrics:
            m = r.metrics[0]
            how = " [upstream claim]" if m.is_claim else f" ({m.protocol.split(' (')[0]}, measured here)"
            headline = f"{m.value:.1f}% {m.dataset} {m.split}{how}"
        else:
            headline = "no result recorded yet"
        rows.append({"name": r.name + (" (default)" if "default" in r.tags else ""), "method": r.method,
                     "arch": arch, "dim": r.feature_dim, "data": r.train_data.split(" (")[0], "headline": headline,
                     "weights": r.weights.describe()})
    return rows


def render_zoo_table() -> str:
    return tabulate(zoo_rows(), headers="keys", tablefmt="github", disable_numparse=True) + "\n"


# ----------------------------------------------------------------------------- generated README sections


def _section(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {re.escape(name)}:start[^>]*-->\n)(.*?)(<!-- {re.escape(name)}:end -->)", re.S)


def update_readme(sections: dict, check: bool = False, readme: Path = README) -> list[str]:
    """Replace each generated section ``{name: text}`` of the README between its markers, or with
    ``check`` return the names of the sections that are stale. A missing marker is an error."""
    text = readme.read_text(encoding="utf-8")
    new, stale = text, []
    for name, body in sections.items():
        pattern = _section(name)
        match = pattern.search(new)
        if match is None:
            raise SSLZooError(f"{readme} has no generated section {name!r}: add the lines "
                              f"'<!-- {name}:start -->' and '<!-- {name}:end -->' where it goes")
        if match.group(2) != body:
            stale.append(name)
            new = new[:match.start(2)] + body + new[match.end(2):]
    if stale and not check:
        atomic_write_text(readme, new)
    return stale
