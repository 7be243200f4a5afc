"""SAS vs class-balanced random subsets on Fashion-MNIST under a fixed CPU budget (issue 6).

For every seed: proxy embeddings (the zoo proxy, ``--n-augment`` augmentations), approximate latent
classes (``--partition``, default k-means with 10 clusters on proxy features, no labels), then for
every fraction a SAS subset per objective (``sas`` = upstream row-sum ranking, ``sas-paper`` = the
paper's greedy) and a random subset balanced over the same partition. Every subset trains SimCLR
(``simclr_fashion_mnist_cpu``) for exactly ``--budget-steps`` steps -- the same compute whatever the
subset size -- and is scored with the harness's linear probe and kNN (k=20, T=0.07) on frozen
features (Fashion-MNIST train -> test). The full data set is the 100% reference.

    python -m training.experiments.sas_fmnist --budget-steps 1500 --seeds 0 1 2 \
        --fractions 0.2 0.4 0.6 0.8 --out results/sas_fmnist

Resumable: rerun the same command. Outputs in OUT: results.json (every cell), sas_fmnist.md / .csv
(mean ± std over seeds), sas_fmnist.png, subsets/ (the index files), runs/ (training runs).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from zoo.cli import show_library_logs

from . import _common as C

METHODS = {"sas": "upstream", "sas-paper": "paper", "random": None}
PAPER = ("paper (CIFAR100 / STL10 / TinyImageNet, own protocol): 20% of CIFAR100 and 40% of STL10/TinyImageNet "
         "can be dropped without loss; SAS beats random subsets by > 3% (> 2% on CIFAR10)")


def _subset(args, seed, method, fraction, emb, partition, n, out: Path) -> Path:
    from training.datacentric import sas
    from training.datacentric.subsets import random_subset_indices, write_subset_files

    path = out / "subsets" / f"{method}_f{fraction:g}_s{seed}"
    if (path.with_suffix(".pkl")).is_file():
        return path.with_suffix(".pkl")
    if method == "random":
        idx = random_subset_indices(n, fraction, partition, seed)
    else:
        idx = sas.sas_subset(emb, partition, fraction, objective=METHODS[method])
    meta = {"dataset": "fashion-mnist", "split": "train", "dataset_size": n, "fraction": fraction, "seed": seed,
            "method": method, "partition": args.partition, "proxy": args.proxy, "n_augment": args.n_augment}
    return write_subset_files(path, idx, meta)[0]


def _seed_inputs(args, seed, images, labels, proxy, work: Path):
    """Proxy embeddings and partition of one seed, cached in OUT/work."""
    from training.datacentric import sas

    f = work / f"seed{seed}.pt"
    if f.is_file():
        d = torch.load(f, weights_only=True)
        return sas.ProxyEmbeddings(d["mean"], d["self_sim"], args.n_augment), {int(k): v.tolist() for k, v in
                                                                                d["partition"].items()}
    emb = sas.proxy_embeddings(proxy, images, n_augment=args.n_augment, seed=seed, batch_size=512, device="cpu")
    part = sas.sas_partition(args.partition, proxy=proxy, images=images, labels=labels, num_classes=10, seed=seed,
                             labeled_per_class=args.labeled_per_class)
    import io

    from zoo.io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"mean": emb.mean, "self_sim": emb.self_sim,
                "partition": {str(k): torch.as_tensor(v) for k, v in part.items()}}, buf)
    atomic_write_bytes(f, buf.getvalue())
    return emb, part


def summarise(res: C.Results, args, out: Path) -> str:
    rows, lines = [], []
    methods = [m for m in args.methods]
    head = "| method | " + " | ".join(f"{int(100 * f)}% linear | {int(100 * f)}% kNN20" for f in args.fractions)
    lines += [head + " |", "|---|" + "---:|---:|" * len(args.fractions)]
    for m in methods:
        cells = []
        for f in args.fractions:
            recs = [res.cells[k] for k in (f"{m}|{f:g}|{s}" for s in args.seeds) if k in res.cells]
            lm, ls = C.mean_std([r["linear"] for r in recs])
            km, ks = C.mean_std([r["knn20"] for r in recs])
            cells += [C.fmt(lm, ls), C.fmt(km, ks)]
            rows.append({"method": m, "fraction": f, "n_seeds": len(recs), "linear_mean": lm, "linear_std": ls,
                         "knn20_mean": km, "knn20_std": ks})
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    full = [res.cells[k] for k in (f"full|1|{s}" for s in args.seeds) if k in res.cells]
    lm, ls = C.mean_std([r["linear"] for r in full])
    km, ks = C.mean_std([r["knn20"] for r in full])
    rows.append({"method": "full", "fraction": 1.0, "n_seeds": len(full), "linear_mean": lm, "linear_std": ls,
                 "knn20_mean": km, "knn20_std": ks})
    md = "\n".join([
        f"SimCLR ResNet-18 (width 16) on Fashion-MNIST subsets, {args.budget_steps} steps of batch {args.batch_size} "
        f"for every cell; test accuracy (%) mean ± std over seeds {', '.join(map(str, args.seeds))}; linear = "
        f"harness linear probe (L2 chosen on a split of train), kNN20 = cosine kNN k=20 T=0.07; partition: "
        f"{args.partition}; proxy: {args.proxy} ({args.n_augment} augmentations); random = balanced over the "
        f"same partition.", "", *lines, "",
        f"Full train set (100%): linear {C.fmt(lm, ls)}, kNN20 {C.fmt(km, ks)}.", "", f"Claim beside it: {PAPER}.", ""])
    C.write_outputs(out, "sas_fmnist", md, rows)
    _plot(rows, args, out)
    return md


def _plot(rows, args, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("linear", "knn20")):
        for m in args.methods:
            pts = [r for r in rows if r["method"] == m and not np.isnan(r[f"{metric}_mean"])]
            if pts:
                ax.errorbar([100 * r["fraction"] for r in pts], [r[f"{metric}_mean"] for r in pts],
                            yerr=[0 if np.isnan(r[f"{metric}_std"]) else r[f"{metric}_std"] for r in pts],
                            marker="o", capsize=3, label=m)
        full = [r for r in rows if r["method"] == "full" and not np.isnan(r[f"{metric}_mean"])]
        if full:
            ax.axhline(full[0][f"{metric}_mean"], color="gray", ls="--", label="100%")
        ax.set_xlabel("subset (% of train)")
        ax.set_ylabel(f"{metric} test accuracy (%)")
        ax.set_title(f"{metric}, {args.budget_steps} steps")
        ax.legend()
    C.save_plot(fig, out / "sas_fmnist.png")
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_args(p)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    p.add_argument("--methods", nargs="*", choices=list(METHODS), default=list(METHODS),
                   help="subset methods (none: only the 100%% reference cells)")
    p.add_argument("--partition", choices=["kmeans", "linear", "labels"], default="kmeans")
    p.add_argument("--labeled-per-class", type=int, default=10, help="partition linear: labels per class")
    p.add_argument("--proxy", default="simclr_resnet18w16_fashion_mnist")
    p.add_argument("--n-augment", type=int, default=4)
    p.add_argument("--no-full", action="store_true", help="skip the 100% reference runs")
    args = p.parse_args(argv)
    show_library_logs()

    from training.datacentric import sas

    out, res = C.open_results(args)
    probe_data = C.fashion_mnist_probe_data()
    train_split = probe_data[0]
    images, labels = sas.images_of(train_split), np.asarray(train_split.targets)
    proxy = sas.load_proxy(args.proxy)
    cells = [(m, f, s) for s in args.seeds for f in args.fractions for m in args.methods]
    if not args.no_full:
        cells += [("full", 1.0, s) for s in args.seeds]
    bar = tqdm(cells, desc="sas_fmnist cells", unit="cell", dynamic_ncols=True)
    for m, f, s in bar:
        key = f"{m}|{f:g}|{s}"
        bar.set_postfix_str(key)
        if res.done(key):
            continue
        over = C.budget_overrides(args.budget_steps, s, args.batch_size)
        if m != "full":
            emb, part = _seed_inputs(args, s, images, labels, proxy, out / "work")
            sub = _subset(args, s, m, f, emb, part, len(images), out)
            over.append(f"data.subset={sub}")
        rec = C.train_and_probe(out / "runs" / key.replace("|", "_"), over, probe_data, probe_train=args.probe_train)
        res.put(key, {"method": m, "fraction": f, "seed": s, **rec})
        tqdm.write(f"{key}: linear {rec['linear']:.2f} kNN20 {rec['knn20']:.2f} ({rec['train_s']:.0f}s train)")
    print(summarise(res, args, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
