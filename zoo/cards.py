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
from .registry import REGISTRY, ModelRecord

CARD_DIR = Path(__file__).resolve().parent.parent / "model_cards"
README = Path(__file__).resolve().parent.parent / "README.md"


def card_path(name: str) -> Path:
    return CARD_DIR / f"{name}.md"


def _front_matter(r: ModelRecord) -> str:
    results = [{"task": {"type": "image-classification", "name": m.protocol},
                "dataset": {"name": m.dataset, "type": m.dataset, "split": m.split},
                "metrics": [{"type": "accuracy", "value": round(m.value, 2), "name": f"{m.protocol} accuracy"}],
                "source": {"name": m.source}} for m in r.metrics]
    meta = {"library_name": "ssl-zoo", "pipeline_tag": "image-feature-extraction", "license": r.license.lower(),
            "tags": ["self-supervised-learning", r.method, r.arch["arch"], *r.tags]}
    if results:
        meta["model-index"] = [{"name": r.name, "results": results}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, width=1000) + "---\n"


def _recipe_cell(r: ModelRecord) -> str:
    if not r.recipe:
        return "upstream"
    path = f"`training/recipes/{r.recipe}.yaml`"
    return f"{path} (ssl-zoo's reproduction; the weights are upstream's)" if r.weights.upstream_url else path


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
               f"[B, {r.feature_dim}]"), "```", "", "## Results", ""]
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
    pre = cfg["preprocess"]
    arch = ", ".join(f"{k}={v}" for k, v in cfg["arch"].items())
    lines = ["---\n" + yaml.safe_dump(meta, sort_keys=False, width=1000) + "---\n", f"# {cfg['name']}", "",
             cfg.get("description") or "", "", "| field | value |", "|---|---|",
             f"| method | {cfg.get('method') or 'unknown'} |", f"| architecture | {arch} |",
             f"| feature dim | {cfg['feature_dim']} |",
             (f"| preprocessing | resize {pre['resize']} -> center crop {pre['crop']}, mean {pre['mean']}, "
              f"std {pre['std']} |"), "", "## Usage", "", "```python", "from zoo.hub import create_model",
             "model = create_model(\"path/to/this/folder\")", "```", "", "## Results", "",
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
