"""``sslzoo eval`` and ``sslzoo leaderboard`` (also ``python -m eval``)."""
from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_MODEL = "simclr_resnet18w16_d1024_fashion_mnist"
DEFAULT_DATASET = "fashion-mnist"


def _int_list(s: str) -> tuple:
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {s!r}") from None


def add_parsers(sub) -> None:
    p = sub.add_parser("eval", help="linear / few-shot / kNN probes on frozen features; prints the table")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name or zoo folder (default {DEFAULT_MODEL})")
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help="catalogue name, folder:PATH or npz:PATH (default fashion-mnist)")
    p.add_argument("--probes", default="linear,fewshot,knn")
    p.add_argument("--shots", default="1,5,10,20,50,100", help="few-shot k per class")
    p.add_argument("--seeds", default="0,1,2", help="few-shot seeds")
    p.add_argument("--baselines", default="pixels,random-init",
                   help="extra rows: pixels, random-init (same architecture untrained); 'none' for none")
    p.add_argument("--root", default=None, help="dataset folder (default $SSLZOO_DATA/<name>)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--no-cache", action="store_true", help="recompute features")
    p.add_argument("--out", default=None, help="also write the table to OUT.md / OUT.csv / OUT.json")
    p.add_argument("--format", choices=("md", "csv", "json"), default="md",
                   help="md: one row per model, one column per protocol; csv/json: every field")
    p.set_defaults(func=run_eval)
    p = sub.add_parser("leaderboard", help="all stored results as one table")
    p.add_argument("--format", choices=("md", "csv", "json"), default="md")
    p.set_defaults(func=run_leaderboard)


def run_eval(args) -> int:
    from .run import evaluate, parse_probes
    from .tables import make_table, render, render_summary, write_table

    baselines = () if args.baselines in ("", "none") else tuple(b.strip() for b in args.baselines.split(","))
    rows = evaluate(args.model, args.dataset, probes=parse_probes(args.probes), shots=_int_list(args.shots),
                    seeds=_int_list(args.seeds), baselines=baselines, root=args.root, download=args.download,
                    precision=args.precision, batch_size=args.batch_size, cache=not args.no_cache)
    df = make_table(rows)
    print(render_summary(df) if args.format == "md" else render(df, args.format))
    print("\nprotocols: linear = logistic regression, L2 chosen on a 10% validation split of train, refit on all "
          "train; knn = cosine, weights exp(s/T); few-shot = k per class, mean ± std over seeds; all on test.")
    if args.out:
        for suffix in (".md", ".csv", ".json"):
            write_table(df, Path(args.out).with_suffix(suffix))
    return 0


def run_leaderboard(args) -> int:
    from .run import load_rows
    from .tables import make_table, render, render_summary

    rows = load_rows()
    if not rows:
        print("no results yet: run `sslzoo eval` first")
        return 0
    keep = {}
    for r in rows:  # the latest result per (model, weights, dataset, protocol)
        keep[(r["model"], r["weights_sha256"], r["dataset"], r["protocol"])] = r
    df = make_table(list(keep.values()))
    print(render_summary(df) if args.format == "md" else render(df, args.format))
    return 0


def main(argv=None) -> int:
    from training.cli import main as sslzoo_main

    return sslzoo_main(argv)


if __name__ == "__main__":
    sys.exit(main())
