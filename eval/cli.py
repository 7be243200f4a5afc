"""``sslzoo eval`` and ``sslzoo leaderboard`` (also ``python -m eval``)."""
from __future__ import annotations

import sys

from zoo.base import UsageError, check_out_path, parse_int_list

from .protocols import PROTOCOLS

DEFAULT_MODEL = "simclr_resnet18w16_d1024_fashion_mnist"
DEFAULT_DATASET = "fashion-mnist"


def add_parsers(sub) -> None:
    p = sub.add_parser("eval", help="linear / few-shot / kNN probes on frozen features; prints the table")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registry name, zoo folder, or timm:NAME[.TAG], hf-hub:ORG/NAME, hf:ORG/NAME, "
                        f"torchvision:NAME[.WEIGHTS] (default {DEFAULT_MODEL})")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="load the model's weights from this local file (safetensors or a torch state dict)")
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help="catalogue name, folder:PATH or npz:PATH (default fashion-mnist)")
    trained = "".join(f" and {name} (trains the encoder: slow)" for name in PROTOCOLS)
    p.add_argument("--probes", default="linear,fewshot,knn",
                   help=f"any of linear, fewshot, knn (frozen features){trained}")
    p.add_argument("--shots", default="1,5,10,20,50,100", help="few-shot k per class")
    p.add_argument("--seeds", default="0,1,2", help="few-shot" + "".join(f" (and {n})" for n in PROTOCOLS) + " seeds")
    for protocol in PROTOCOLS.values():
        protocol.add_arguments(p)
    p.add_argument("--baselines", default="pixels,random-init",
                   help="extra rows: pixels, random-init (same architecture untrained); 'none' for none")
    p.add_argument("--root", default=None, help="dataset folder (default $SSLZOO_DATA/<name>)")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the features and every probe result (ignore both caches)")
    p.add_argument("--force", action="store_true",
                   help="recompute probe results even when the results store has them (features stay cached)")
    p.add_argument("--out", default=None, help="also write the table to OUT (.md, .csv or .json: that file only; "
                                                "no such suffix: OUT.md, OUT.csv and OUT.json)")
    p.add_argument("--overwrite", action="store_true", help="replace --out files that exist (refused otherwise)")
    p.add_argument("--format", choices=("md", "csv", "json"), default="md",
                   help="md: one row per model, one column per protocol; csv/json: every field")
    p.add_argument("--feature-store", action="store_true",
                   help="features on disk ($SSLZOO_HOME/featstores), linear and kNN probes read them in chunks "
                        "(always on under torchrun, where every rank extracts a shard)")
    p.add_argument("--store-dtype", choices=("fp32", "fp16"), default="fp32", help="feature store precision")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader processes decoding file-backed data (folder:, imagenet, pack:); default "
                        "min(4, CPUs), 0: in this process; the features do not depend on it")
    p.set_defaults(func=run_eval)
    p = sub.add_parser("leaderboard", help="all stored results: one row per model x dataset x protocol")
    p.add_argument("--format", choices=("md", "csv", "json", "html"), default="md",
                   help="html: one self-contained page DIR/index.html (sortable, filterable, few-shot figure); "
                        "needs --out DIR")
    p.add_argument("--out", default=None, help="also write the table to OUT (.md, .csv or .json); "
                                               "with --format html the folder of the page")
    p.add_argument("--overwrite", action="store_true", help="replace an --out / --plot file that exists (refused otherwise)")
    p.add_argument("--plot", default=None, metavar="PATH.png",
                   help="write few-shot curves (accuracy vs labelled images per class, one line per model)")
    p.set_defaults(func=run_leaderboard)
    p = sub.add_parser("embed", help="features of a folder of images (or a data set split) to .npy / .safetensors "
                                     "+ an index of file names; streaming, resumable")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name or zoo folder (default {DEFAULT_MODEL})")
    p.add_argument("--data", required=True,
                   help="a folder of images (read recursively, no classes needed) or a data set spec: catalogue "
                        "name, folder:PATH, npz:PATH (with --split)")
    p.add_argument("--split", default="train", help="the split of a data set spec (default train)")
    p.add_argument("--out", required=True, help="FILE.npy or FILE.safetensors; FILE.<suffix>.index.json names the rows")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out that holds other features")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--root", default=None, help="dataset folder of a catalogue name (default $SSLZOO_DATA/<name>)")
    p.add_argument("--download", action="store_true", help="download a catalogue data set if missing")
    p.set_defaults(func=run_embed)
    p = sub.add_parser("pack", help="a file-backed data set -> a few large shards of the original encoded bytes + "
                                    "an index (read back as pack:OUT); atomic")
    p.add_argument("src", metavar="SRC", help="folder:PATH, imagenet, tinyimagenet or pack:PATH")
    p.add_argument("out", metavar="OUT", help="the pack folder to write")
    p.add_argument("--split", action="append", default=None,
                   help="a split to pack (repeatable; default all: train + test/val)")
    p.add_argument("--shard-size", default="1GB", help="bytes per shard file, e.g. 1GB, 512MB, 2GiB (default 1GB)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave undecodable files (empty, truncated, corrupt, not an image) out, with a count; "
                        "default: refuse, naming them")
    p.add_argument("--workers", type=int, default=None, help="decode-check processes (default min(4, CPUs); 0: none)")
    p.add_argument("--root", default=None, help="dataset folder of a catalogue name (default $SSLZOO_DATA/<name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pack at OUT")
    p.set_defaults(func=run_pack)


def run_eval(args) -> int:
    from .run import evaluate, parse_probes
    from .tables import make_table, render, render_summary, table_out_paths, write_table

    outs = table_out_paths(args.out, args.overwrite) if args.out else []
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be >= 0 (0: decode in this process), got {args.workers}")
    baselines = () if args.baselines in ("", "none") else tuple(b.strip() for b in args.baselines.split(","))
    probes = parse_probes(args.probes)
    frozen = [p for p in probes if p not in PROTOCOLS]
    trained = [PROTOCOLS[p] for p in probes if p in PROTOCOLS]
    seeds = parse_int_list(args.seeds, "--seeds")
    if args.weights and trained:
        raise UsageError(f"--weights applies to the frozen probes only, not to {', '.join(p.name for p in trained)}; "
                         f"run those with a zoo folder as --model")
    prepared = {protocol.name: protocol.prepare(args) for protocol in trained}  # bad input before any work
    info: dict = {}
    rows = []
    from . import distributed as D

    D.init_from_env()  # under torchrun: join the process group; rank 0 alone prints
    try:
        if frozen:
            rows += evaluate(args.model, args.dataset, probes=frozen, shots=parse_int_list(args.shots, "--shots"),
                             seeds=seeds, baselines=baselines, root=args.root, download=args.download,
                             precision=args.precision, batch_size=args.batch_size, cache=not args.no_cache,
                             force=args.force, info=info, feature_store=args.feature_store,
                             store_dtype=args.store_dtype, weights=args.weights, workers=args.workers)
        if not D.is_main():
            return 0
    finally:
        D.shutdown()
    for protocol in trained:
        protocol_info: dict = {}
        rows += protocol.evaluate(args.model, args.dataset, seeds=seeds, root=args.root, download=args.download,
                                  force=args.force or args.no_cache, info=protocol_info, **prepared[protocol.name])
        for k in ("reused", "computed"):
            info[k] = info.get(k, 0) + protocol_info[k]
    df = make_table(rows)
    for path in outs:
        write_table(df, path)
    print(render_summary(df) if args.format == "md" else render(df, args.format))
    if args.format == "md":
        if frozen:
            print("protocols: linear = logistic regression, L2 chosen on a 10% validation split of train, refit on "
                  "all train; knn = cosine, weights exp(s/T); few-shot = k per class, mean ± std over seeds; all on "
                  "test.")
        for protocol in trained:
            print(protocol.note)
        if info.get("reused"):
            print(f"{info['reused']} of {info['reused'] + info['computed']} results came from the results store "
                  f"(same model, weights, data, protocol, seed and code version); --force recomputes them.")
    return 0


def run_leaderboard(args) -> int:
    from .plots import fewshot_points, plot_fewshot
    from .store import ResultStore, aggregate
    from .tables import FORMATS, attach_reported, make_table, render, render_leaderboard, table_out_paths, write_table

    out = plot = None
    if args.format == "html":
        return run_leaderboard_html(args)
    if args.out:
        out = check_out_path(args.out)
        if out.suffix.lower() not in FORMATS:
            raise ValueError(f"--out {args.out}: cannot tell the table format; use a .md, .csv or .json suffix")
        table_out_paths(out, args.overwrite)
    if args.plot:
        plot = check_out_path(args.plot, "--plot")
        if plot.suffix.lower() != ".png":
            raise ValueError(f"--plot {args.plot}: the plot is a PNG image; give a path ending in .png")
        if plot.exists() and not args.overwrite:
            raise ValueError(f"--plot {args.plot} already exists; pass --overwrite to replace it, or choose another "
                             f"--plot")
    with ResultStore() as store:
        results = store.all()
    rows = attach_reported(aggregate(results))
    df = make_table(rows) if rows else None
    if plot is not None and (df is None or not fewshot_points(df)):
        raise ValueError("no few-shot results to plot; run `sslzoo eval --probes fewshot` first")
    if df is None:
        print("no results yet: run `sslzoo eval` first")
        return 0
    if plot is not None:
        plot_fewshot(df, plot)
    if out is not None:
        write_table(df, out)
    print(render_leaderboard(df) if args.format == "md" else render(df, args.format), end="")
    return 0


def run_embed(args) -> int:
    from .embed import embed, index_path

    r = embed(args.model, args.data, args.out, split=args.split, batch_size=args.batch_size,
              precision=args.precision, overwrite=args.overwrite, root=args.root, download=args.download)
    done = "already there" if r["computed"] == 0 else (
        f"resumed at row {r['resumed_from']}" if r["resumed_from"] else "computed")
    print(f"{args.out}: {r['rows']} x {r['dim']} float32 features ({done}); row names in {index_path(args.out)}")
    return 0


def run_pack(args) -> int:
    from .packed import parse_size, write_pack

    meta = write_pack(args.src, args.out, splits=args.split, root=args.root, shard_size=parse_size(args.shard_size),
                      skip_bad=args.skip_bad, overwrite=args.overwrite, workers=args.workers)
    for name, e in meta["splits"].items():
        left = f", {e['left_out']} undecodable file(s) left out" if e["left_out"] else ""
        print(f"{args.out}: {name}: {e['count']} images, {e['bytes'] / 1e6:.1f} MB in {len(e['shards'])} shard(s){left}")
    print(f"read it as --dataset pack:{args.out}")
    return 0


def run_leaderboard_html(args) -> int:
    """``sslzoo leaderboard --format html --out DIR``: the page, with the few-shot figure when there
    are few-shot results (``--plot`` also writes it as a PNG file)."""
    from pathlib import Path

    from zoo.base import UsageError

    from .html import write_html
    from .plots import fewshot_png, fewshot_points, plot_fewshot
    from .store import ResultStore, aggregate
    from .tables import attach_reported, make_table

    if not args.out:
        raise UsageError("--format html writes a folder with index.html; give it with --out DIR")
    folder = Path(args.out).expanduser()
    if folder.is_dir():
        check_out_path(folder / "index.html", "--out")  # writable, index.html not a folder
    elif folder.exists():
        raise UsageError(f"--out {args.out} is a file; the HTML leaderboard is a folder (DIR/index.html), "
                         f"give a folder path")
    else:
        check_out_path(folder, "--out")  # its parent exists and is writable
    plot = None
    if args.plot:
        plot = check_out_path(args.plot, "--plot")
        if plot.suffix.lower() != ".png":
            raise ValueError(f"--plot {args.plot}: the plot is a PNG image; give a path ending in .png")
    with ResultStore() as store:
        results = store.all()
    rows = attach_reported(aggregate(results))
    if not rows:
        raise UsageError("no results yet: run `sslzoo eval` first, then build the page")
    df = make_table(rows)
    has_fewshot = bool(fewshot_points(df))
    if plot is not None and not has_fewshot:
        raise ValueError("no few-shot results to plot; run `sslzoo eval --probes fewshot` first")
    page = write_html(df, folder, figure_png=fewshot_png(df) if has_fewshot else None)
    if plot is not None:
        plot_fewshot(df, plot)
    print(f"wrote {page} ({len(df)} rows{', few-shot figure' if has_fewshot else ''})")
    return 0


def main(argv=None) -> int:
    """``python -m eval``: the zoo's and eval's sub-commands (``sslzoo`` has every sub-command)."""
    from zoo.cli import add_parsers as add_zoo
    from zoo.cli import run_cli

    return run_cli([add_zoo, add_parsers], argv)


if __name__ == "__main__":
    sys.exit(main())
