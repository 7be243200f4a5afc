"""The HTML leaderboard (eval/html.py, `sslzoo leaderboard --format html`): the page's content, its
escaping, the atomic write, and the page itself in a real headless Chromium (tests/cdp.py): it loads
without console errors or network requests, a click on a header sorts the rows, the filters hide
rows, and a screenshot shows a drawn page."""
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from cdp import Browser, chromium_binary

from eval.store import Result, ResultStore, aggregate
from eval.tables import attach_reported, make_table
from training.cli import main

BUNDLED = "simclr_resnet18w16_fashion_mnist"
EVIL = '<img src=x onerror="alert(1)">&"\'</script>'


def _put(model, dataset, protocol, accs, probe="linear", params=None, sha="ab" * 32):
    return [Result(model=model, weights_sha256=sha, dataset=dataset, dataset_sha256="cd" * 32, probe=probe,
                   protocol=protocol, params=params or {}, seed=s, accuracy=a) for s, a in enumerate(accs)]


def fill_store():
    """A small store: a registry model with a reported number, two made-up models with few-shot curves on
    two data sets, a baseline, and a model whose name is an HTML injection attempt."""
    rs = _put(BUNDLED, "fashion-mnist", "linear", [88.0], params={"val_fraction": 0.1})
    rs += _put("pixels", "fashion-mnist", "linear", [84.7], sha="pixels")
    rs += _put(EVIL, "fashion-mnist", "knn k=20 T=0.07", [70.5], probe="knn", sha="ef" * 32)
    for model, base in (("alpha", 40.0), ("beta", 55.0)):
        for ds in ("cifar10", "fashion-mnist"):
            for k in (1, 5, 10):
                rs += _put(model, ds, f"few-shot k={k}", [base + k + s for s in range(3)], probe="fewshot",
                           params={"shots": k}, sha=("12" if model == "alpha" else "34") * 32)
    with ResultStore() as s:
        s.put(rs)
    return len(aggregate(rs))


def table():
    with ResultStore() as s:
        return make_table(attach_reported(aggregate(s.all())))


def test_page_is_self_contained_escaped_and_complete(tmp_path, capsys):
    n = fill_store()
    assert main(["leaderboard", "--format", "html", "--out", str(tmp_path / "site")]) == 0
    assert f"({n} rows, few-shot figure)" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "site")) == ["index.html"]
    page = (tmp_path / "site" / "index.html").read_text()
    assert "<title>ssl-zoo leaderboard</title>" in page and "<h1>ssl-zoo leaderboard</h1>" in page
    # self-contained: no external resource of any kind
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.IGNORECASE)
    assert "<link rel=\"stylesheet\"" not in page and "<script src" not in page
    assert page.count("<tr data-model") == n
    # the injected name only appears escaped, never as markup
    assert EVIL not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&quot;&#x27;&lt;/script&gt;" in page
    # measured vs reported side by side, with the registry's number and its protocol on hover
    row = next(r for r in page.split("<tr ")[1:] if f'data-model="{BUNDLED}"' in r)
    from zoo.registry import REGISTRY

    rep = next(m for m in REGISTRY[BUNDLED].metrics if m.dataset == "fashion-mnist" and m.protocol.startswith("linear"))
    assert ">88.00<" in row and f">{rep.value:.2f}<" in row and f">{88.0 - rep.value:+.2f}<" in row
    assert 'data-method="simclr"' in row and "validation split of train" in row  # the protocol on hover
    # every header says what its column holds; the few-shot figure is an inline PNG
    heads = re.findall(r"<th [^>]*title=\"([^\"]+)\"", page)
    assert len(heads) == 10 and all(len(h) > 20 for h in heads)
    assert page.count("data:image/png;base64,") == 1
    # filters offer exactly the values present
    sel = re.search(r'<select id="f-dataset">(.*?)</select>', page).group(1)
    assert re.findall(r'<option value="([^"]*)"', sel) == ["", "cifar10", "fashion-mnist"]
    sel = re.search(r'<select id="f-method">(.*?)</select>', page).group(1)
    assert re.findall(r'<option value="([^"]*)"', sel) == ["", "baseline", "simclr", "unknown"]


def test_rewrite_replaces_only_index_html(tmp_path, capsys):
    fill_store()
    site = tmp_path / "site"
    site.mkdir()
    (site / "keep.txt").write_text("mine")
    (site / "index.html").write_text("old")
    assert main(["leaderboard", "--format", "html", "--out", str(site)]) == 0
    assert (site / "keep.txt").read_text() == "mine" and (site / "index.html").read_text().startswith("<!DOCTYPE")
    assert sorted(os.listdir(site)) == ["index.html", "keep.txt"]  # no temporary file left
    assert sorted(os.listdir(tmp_path)) == ["site", "sslzoo_home"]


def test_html_needs_a_folder_and_results(tmp_path, capsys):
    assert main(["leaderboard", "--format", "html"]) == 2
    assert "--format html writes a folder" in capsys.readouterr().err
    assert main(["leaderboard", "--format", "html", "--out", str(tmp_path / "site")]) == 2
    assert "no results yet" in capsys.readouterr().err
    assert not (tmp_path / "site").exists()
    (tmp_path / "afile").write_text("x")
    fill_store()
    assert main(["leaderboard", "--format", "html", "--out", str(tmp_path / "afile")]) == 2
    assert "is a file; the HTML leaderboard is a folder" in capsys.readouterr().err


@pytest.mark.skipif(chromium_binary() is None, reason="no chromium binary on PATH (Debian: apt-get install chromium)")
def test_page_in_headless_chromium(tmp_path):
    from PIL import Image

    n = fill_store()
    from eval.html import write_html
    from eval.plots import fewshot_png

    df = table()
    page = write_html(df, tmp_path / "site", figure_png=fewshot_png(df))
    with Browser(width=1400, height=1000) as b:
        b.open(page.resolve().as_uri())
        assert b.eval("document.querySelectorAll('#leaderboard tbody tr').length") == n
        assert b.eval("document.getElementById('count').textContent") == f"{n} of {n} rows"
        col = "Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(r => r.cells[{i}].textContent)"
        before = b.eval(col.format(i=4))
        # a real mouse click on the 'measured (%)' header sorts ascending, a second one descending
        box = b.eval("(() => { const r = document.querySelectorAll('#leaderboard th')[4].getBoundingClientRect();"
                     " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        b.click(*box)
        asc = b.eval(col.format(i=4))
        values = [float(v.split(" ")[0]) for v in asc]
        assert values == sorted(values) and asc != before
        assert b.eval("document.querySelectorAll('#leaderboard th')[4].getAttribute('aria-sort')") == "ascending"
        b.click(*box)
        desc = [float(v.split(" ")[0]) for v in b.eval(col.format(i=4))]
        assert desc == sorted(values, reverse=True)
        # sorting by a text column (model) and by the numeric 'reported' column (empty cells last)
        b.eval("document.querySelectorAll('#leaderboard th')[0].click()")
        models = b.eval(col.format(i=0))
        assert models == sorted(models, key=str.lower) and EVIL in models  # the name shown as text
        # the filters: one data set, then one method; the text filter
        shown = "Array.from(document.querySelectorAll('#leaderboard tbody tr')).filter(r => !r.hidden)"
        b.eval("(() => { const s = document.getElementById('f-dataset'); s.value = 'cifar10';"
               " s.dispatchEvent(new Event('change')); })()")
        assert b.eval(f"{shown}.map(r => r.dataset.dataset)") == ["cifar10"] * 6
        b.eval("(() => { const s = document.getElementById('f-dataset'); s.value = '';"
               " s.dispatchEvent(new Event('change')); const m = document.getElementById('f-method');"
               " m.value = 'simclr'; m.dispatchEvent(new Event('change')); })()")
        assert b.eval(f"{shown}.map(r => r.dataset.model)") == [BUNDLED]
        b.eval("(() => { const m = document.getElementById('f-method'); m.value = '';"
               " m.dispatchEvent(new Event('change')); const t = document.getElementById('f-model');"
               " t.value = 'ALPHA'; t.dispatchEvent(new Event('input')); })()")
        assert b.eval(f"{shown}.length") == 6 and b.eval("document.getElementById('count').textContent") == \
            f"6 of {n} rows"
        assert b.eval("document.querySelector('figure img').naturalWidth") > 100  # the inline PNG decoded
        b.eval("window.scrollTo(0, 0)")
        png = b.screenshot()
        assert b.errors == [], b.errors
        assert b.requests == [], b.requests
    (tmp_path / "shot.png").write_bytes(png)
    if os.environ.get("SSLZOO_KEEP_SCREENSHOT"):
        Path(os.environ["SSLZOO_KEEP_SCREENSHOT"]).write_bytes(png)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert img.shape[:2] == (1000, 1400)
    gray = img.mean(axis=2)
    assert (gray < 128).mean() > 0.01  # text and lines are drawn: not a blank white page
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # many colours (anti-aliased text, the figure)
