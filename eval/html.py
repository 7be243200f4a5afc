"""The leaderboard as one self-contained static web page (``sslzoo leaderboard --format html --out DIR``).

``DIR/index.html`` needs no server and no network: the CSS, the script and the few-shot figure (a
base64 PNG from :func:`eval.plots.fewshot_png`) are inline. The table has one row per model x dataset
x protocol (the rows of :func:`eval.tables.render_leaderboard`): the accuracy measured here beside the
number the registry reports (an upstream claim or an earlier measurement) and the difference. Every
header sorts the table when clicked (again: the other way); select boxes filter by dataset, protocol
and method, a text box by model name. Hovering a header says what the column holds; hovering a
protocol or a number says the protocol behind it.

Every string from the results store (model names are user input) is HTML-escaped; the script only
reorders and hides the rows the page already holds, it never builds markup from data.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import pandas as pd

from zoo.base import UsageError, atomic_dir, atomic_write_text

from .stats import format_mean_std, is_missing

__all__ = ["COLUMNS", "protocol_sentence", "model_method", "render_html", "write_html"]

#: (key, header, hover text) of the table's columns, in order.
COLUMNS: tuple = (
    ("model", "model", "registry name, zoo folder name or baseline, as stored with the result"),
    ("method", "method", ("the training method from the zoo registry (baseline: pixels / random init; "
                          "unknown: a model outside the registry)")),
    ("dataset", "dataset", "the data set the probe was trained and tested on"),
    ("protocol", "protocol", "the evaluation protocol; hover a cell for its full description"),
    ("measured", "measured (%)", ("test accuracy measured here under the row's protocol (hover for it): "
                                  "mean ± sample std over the seeds; nothing is selected on the test split")),
    ("reported", "reported (%)", ("the number the zoo registry records for this model, data set and protocol: "
                                  "an upstream claim (the authors' protocol, hover for it) or an earlier "
                                  "measurement here")),
    ("delta", "Δ (points)", "measured minus reported, in percentage points"),
    ("seeds", "seeds", "the seeds averaged over ('-': a deterministic protocol)"),
    ("sha256", "weights", "the first 12 hex digits of the weights' sha256 (the full hash on hover)"),
    ("code", "code", "the ssl-zoo version + git commit that computed the result"),
)

_NUMERIC = {"measured", "reported", "delta"}


def protocol_sentence(protocol: str) -> str:
    """A protocol label as stored (``linear``, ``knn k=20 T=0.07``, ``few-shot k=5``, ...) -> the
    sentence that says what was done."""
    p = str(protocol)
    if p.startswith("linear"):
        return ("linear: frozen features, multinomial logistic regression, L2 chosen on a stratified 10% "
                "validation split of train, refit on all of train; test accuracy")
    if p.startswith("knn"):
        return f"{p}: frozen features, cosine similarity, votes weighted by exp(s/T); test accuracy"
    if p.startswith("few-shot"):
        return (f"{p}: k labelled train images per class drawn with each seed, logistic regression on frozen "
                f"features (L2 by cross-validation on the k-shot set); test accuracy, mean ± std over seeds")
    if p.startswith("finetune"):
        return (f"{p}: encoder + linear head trained end to end on that fraction of train labels; "
                f"learning rate and epoch chosen on a validation split of train; test accuracy")
    return p


def model_method(model: str) -> str:
    """The method of a stored model name: the registry's, ``baseline`` for pixels / random init,
    ``unknown`` otherwise."""
    from zoo.registry import REGISTRY

    rec = REGISTRY.get(model)
    if rec is not None:
        return rec.method
    if model == "pixels" or model.startswith("pixels (pooled") or "(random init" in model:
        return "baseline"
    return "unknown"


def _precision(params) -> str:
    try:
        return json.loads(params or "{}").get("precision", "fp32")
    except (TypeError, ValueError, AttributeError):
        return "fp32"


def _rows(df: pd.DataFrame) -> list[dict]:
    out = []
    for rec in df.to_dict(orient="records"):
        protocol = str(rec["protocol"])
        precision = _precision(rec.get("params"))
        if precision != "fp32":
            protocol += f" [{precision}]"
        mean, std = rec["accuracy_mean"], rec["accuracy_std"]
        rep = rec.get("reported")
        rep = None if is_missing(rep) else float(rep)
        delta = None if rep is None or is_missing(mean) else round(float(mean) - rep, 2) + 0.0  # no "-0.00"
        sha = "" if is_missing(rec.get("weights_sha256")) else str(rec["weights_sha256"])
        out.append({
            "model": str(rec["model"]), "method": model_method(str(rec["model"])), "dataset": str(rec["dataset"]),
            "protocol": protocol, "protocol_title": protocol_sentence(protocol),
            "measured": format_mean_std(mean, std), "measured_v": None if is_missing(mean) else float(mean),
            "reported": "" if rep is None else f"{rep:.2f}", "reported_v": rep,
            "reported_title": "" if rep is None else (f"{rec.get('reported_protocol') or ''} — "
                                                      f"{rec.get('reported_source') or ''}"),
            "delta": "" if delta is None else f"{delta:+.2f}", "delta_v": delta,
            "seeds": "" if is_missing(rec.get("seeds")) else str(rec["seeds"]),
            "sha256": sha[:12], "sha256_title": sha,
            "code": "" if is_missing(rec.get("code_version")) else str(rec["code_version"]),
        })
    return out


def _e(s) -> str:
    return html.escape("" if s is None else str(s), quote=True)


def _num(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


def _options(values) -> str:
    return "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in sorted(set(values), key=str.lower))


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1b1f24;background:#fff}
h1{font-size:22px;margin:0 0 4px}
p.note{color:#57606a;margin:4px 0 14px;max-width:70em}
.filters{display:flex;flex-wrap:wrap;gap:14px;align-items:center;margin:10px 0}
.filters label{font-weight:600}
select,input{font:inherit;padding:2px 4px}
table{border-collapse:collapse;margin-top:6px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;white-space:nowrap}
th{background:#f0f3f6;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#f8fafc}
td.pos{color:#1a7f37}td.neg{color:#cf222e}
#count{color:#57606a}
figure{margin:24px 0 0}
figure img{max-width:100%;border:1px solid #d0d7de}
"""

_JS = """
(function(){
  var table=document.getElementById('leaderboard');
  var body=table.tBodies[0];
  var heads=table.tHead.rows[0].cells;
  function key(row,i){
    var c=row.cells[i];var v=c.getAttribute('data-v');
    if(v!==null){return v===''?null:parseFloat(v);}
    return c.textContent.toLowerCase();
  }
  function sortBy(i){
    var th=heads[i];
    var dir=th.getAttribute('aria-sort')==='ascending'?'descending':'ascending';
    for(var j=0;j<heads.length;j++){heads[j].removeAttribute('aria-sort');}
    th.setAttribute('aria-sort',dir);
    var sign=dir==='ascending'?1:-1;
    var rows=Array.prototype.slice.call(body.rows);
    rows.forEach(function(r,n){r._n=n;});
    rows.sort(function(a,b){
      var x=key(a,i),y=key(b,i);
      if(x===null&&y===null){return a._n-b._n;}
      if(x===null){return 1;}
      if(y===null){return -1;}
      if(x<y){return -sign;}
      if(x>y){return sign;}
      return a._n-b._n;
    });
    rows.forEach(function(r){body.appendChild(r);});
  }
  for(var i=0;i<heads.length;i++){
    (function(i){heads[i].addEventListener('click',function(){sortBy(i);});})(i);
  }
  var filters=['dataset','protocol','method'].map(function(k){return document.getElementById('f-'+k);});
  var text=document.getElementById('f-model');
  function apply(){
    var q=text.value.toLowerCase();var shown=0;
    Array.prototype.forEach.call(body.rows,function(r){
      var ok=r.getAttribute('data-model').toLowerCase().indexOf(q)>=0;
      filters.forEach(function(f){
        if(f.value!==''&&r.getAttribute('data-'+f.id.slice(2))!==f.value){ok=false;}
      });
      r.hidden=!ok;if(ok){shown++;}
    });
    document.getElementById('count').textContent=shown+' of '+body.rows.length+' rows';
  }
  filters.forEach(function(f){f.addEventListener('change',apply);});
  text.addEventListener('input',apply);
  apply();
})();
"""


def render_html(df: pd.DataFrame, *, title: str = "ssl-zoo leaderboard", figure_png: bytes | None = None,
                note: str = "") -> str:
    """The page for a leaderboard table (rows of :func:`eval.tables.attach_reported` through
    :func:`eval.tables.make_table`); ``figure_png`` (PNG bytes) is inlined as the few-shot figure."""
    rows = _rows(df)
    head = "".join(f'<th scope="col" title="{_e(tip)}">{_e(label)}</th>' for _, label, tip in COLUMNS)
    body = []
    for r in rows:
        cells = []
        for key, _, _ in COLUMNS:
            attrs, cls = "", ""
            if key in _NUMERIC:
                attrs += f' data-v="{_num(r[key + "_v"])}"'
                cls = "num"
                if key == "delta" and r["delta_v"] is not None:
                    cls += " pos" if r["delta_v"] >= 0 else " neg"
            tip = {"protocol": r["protocol_title"], "measured": r["protocol_title"],
                   "reported": r["reported_title"], "sha256": r["sha256_title"]}.get(key, "")
            if tip:
                attrs += f' title="{_e(tip)}"'
            if cls:
                attrs += f' class="{cls}"'
            cells.append(f"<td{attrs}>{_e(r[key])}</td>")
        body.append(f'<tr data-model="{_e(r["model"])}" data-dataset="{_e(r["dataset"])}" '
                    f'data-protocol="{_e(r["protocol"])}" data-method="{_e(r["method"])}">{"".join(cells)}</tr>')
    filters = []
    for key in ("dataset", "protocol", "method"):
        filters.append(f'<label for="f-{key}">{key}</label><select id="f-{key}"><option value="">all</option>'
                       f'{_options(r[key] for r in rows)}</select>')
    filters.append('<label for="f-model">model</label><input id="f-model" type="search" placeholder="name contains">')
    figure = ""
    if figure_png:
        src = "data:image/png;base64," + base64.b64encode(figure_png).decode("ascii")
        figure = (f'<figure><img alt="few-shot curves: test accuracy against labelled images per class" '
                  f'src="{src}"><figcaption>Few-shot linear probe: mean ± std over seeds (shaded), one line per '
                  f'model.</figcaption></figure>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        f"<p class=\"note\">One row per model × data set × protocol. Click a header to sort, hover it for what the "
        f"column holds; hover a protocol or a number for the protocol behind it. {_e(note)}</p>"
        f"<div class=\"filters\">{''.join(filters)}<span id=\"count\"></span></div>"
        f"<table id=\"leaderboard\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"{figure}<script>{_JS}</script></body></html>\n")


def write_html(df: pd.DataFrame, out_dir, **kwargs) -> Path:
    """Write :func:`render_html` to ``out_dir/index.html`` atomically: a new folder appears whole
    (built beside it, then renamed), an existing folder gets its ``index.html`` replaced by rename and
    keeps everything else. Returns the page's path."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; the HTML leaderboard is a folder (DIR/index.html), "
                         f"give a folder path")
    page = render_html(df, **kwargs)
    if out_dir.is_dir():
        atomic_write_text(out_dir / "index.html", page)
    else:
        with atomic_dir(out_dir) as tmp:
            atomic_write_text(Path(tmp) / "index.html", page)
    return out_dir / "index.html"
