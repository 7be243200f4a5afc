"""``sslzoo subset`` (SAS / random subsets -> index files) and ``sslzoo adainf`` (inflation data)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def add_subset_parser(sub) -> None:
    p = sub.add_parser("subset", help="select a data subset (SAS or random) and write its index file(s)",
                       description="Write PREFIX.pkl (plain list, the upstream SAS format) and PREFIX.json (indices + "
                                   "metadata); an --out ending in .pkl or .json writes that file only. Use it with "
                                   "`sslzoo train RECIPE --set data.subset=FILE`.")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset spec (catalogue name, folder:PATH, npz:PATH)")
    p.add_argument("--split", default="train")
    p.add_argument("--root", default=None)
    p.add_argument("--fraction", type=float, required=True, help="fraction kept, in (0, 1]")
    p.add_argument("--method", choices=["sas", "random"], default="sas")
    p.add_argument("--balance", choices=["none", "partition"], default="partition",
                   help="random: class-balanced over the partition (default) or plain random")
    p.add_argument("--partition", choices=["kmeans", "linear", "zeroshot", "labels"], default="kmeans",
                   help="approximate latent classes (default kmeans on proxy features)")
    p.add_argument("--num-classes", type=int, default=None, help="classes for kmeans/linear (default: the dataset's)")
    p.add_argument("--labeled-per-class", type=int, default=None, help="linear: labelled examples per class")
    p.add_argument("--labeled-total", type=int, default=None, help="linear: labelled examples drawn at random "
                                                                    "(default 500, as upstream)")
    p.add_argument("--class-names", default=None, help="zeroshot: comma-separated names (default: the dataset's)")
    p.add_argument("--clip-model", default=None, help="zeroshot: open_clip model name (default ViT-B-32)")
    p.add_argument("--clip-weights", default=None, help="zeroshot: local CLIP weights file")
    p.add_argument("--proxy", default="simclr_resnet18w16_fashion_mnist",
                   help="proxy encoder: zoo name or zoo folder (default %(default)s)")
    p.add_argument("--proxy-recipe", default=None, help="train a proxy with this recipe instead of --proxy")
    p.add_argument("--proxy-steps", type=int, default=2000)
    p.add_argument("--proxy-out", default=None, help="run folder of the proxy training (resumable)")
    p.add_argument("--objective", choices=["upstream", "paper"], default="upstream")
    p.add_argument("--n-augment", type=int, default=8, help="augmentations per example (0 = plain image, upstream)")
    p.add_argument("--threshold", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="PREFIX (writes PREFIX.pkl + PREFIX.json) or FILE.pkl / FILE.json")
    p.set_defaults(func=run_subset)


def _write(out: str, indices, meta) -> list:
    from .subsets import write_subset_file, write_subset_files

    p = Path(out)
    if p.suffix in (".pkl", ".json"):
        return [write_subset_file(p, indices, meta)]
    return list(write_subset_files(p, indices, meta))


def run_subset(args) -> int:
    from eval.datasets import load_split

    from . import sas
    from .subsets import SubsetError, check_fraction, class_budget, random_subset_indices

    check_fraction(args.fraction)
    split = load_split(args.dataset, args.split, root=args.root)
    n = len(split)
    labels = np.asarray(split.targets)
    num_classes = args.num_classes or len(split.classes)
    images = None
    proxy = None
    need_proxy = args.method == "sas" or (args.balance == "partition" and args.partition in ("kmeans", "linear"))
    if need_proxy:
        images = sas.images_of(split)
        if args.proxy_recipe:
            if not args.proxy_out:
                raise SubsetError("--proxy-recipe needs --proxy-out DIR (where the proxy run is kept)")
            proxy = sas.train_proxy(args.proxy_recipe, args.proxy_out, args.proxy_steps, device=args.device)
        else:
            proxy = sas.load_proxy(args.proxy)
    partition = None
    if args.method == "sas" or args.balance == "partition":
        if images is None and args.partition == "zeroshot":
            images = sas.images_of(split)
        names = args.class_names.split(",") if args.class_names else split.classes
        partition = sas.sas_partition(args.partition, proxy=proxy, images=images, labels=labels,
                                      num_classes=num_classes, seed=args.seed,
                                      labeled_per_class=args.labeled_per_class, labeled_total=args.labeled_total,
                                      class_names=names, clip_model=args.clip_model, clip_weights=args.clip_weights)
    meta = {"dataset": args.dataset, "split": args.split, "dataset_size": n, "fraction": args.fraction,
            "seed": args.seed}
    if args.method == "random":
        idx = random_subset_indices(n, args.fraction, partition if args.balance == "partition" else None, args.seed)
        meta.update(method="random-balanced" if args.balance == "partition" else "random",
                    partition=args.partition if args.balance == "partition" else None)
    else:
        emb = sas.proxy_embeddings(proxy, images, n_augment=args.n_augment, seed=args.seed, device=args.device)
        idx = sas.sas_subset(emb, partition, args.fraction, objective=args.objective, threshold=args.threshold)
        meta.update(method="sas", objective=args.objective, n_augment=args.n_augment, threshold=args.threshold,
                    partition=args.partition, proxy=args.proxy_recipe or args.proxy)
    if partition is not None:
        meta["class_sizes"] = {str(c): len(v) for c, v in partition.items()}
        meta["kept_per_class"] = {str(c): class_budget(len(v), args.fraction) for c, v in partition.items()}
    for p in _write(args.out, idx, meta):
        print(f"wrote {p} ({len(idx)} of {n} indices)")
    return 0


def add_adainf_parser(sub) -> None:
    p = sub.add_parser("adainf", help="AdaInf inflation data: folder -> npz (RGB), channel-order check, stand-ins")
    s = p.add_subparsers(dest="adainf_command", required=True)
    c = s.add_parser("convert", help="image folder -> npz (image uint8 [N,H,W,C] RGB, label -1)")
    c.add_argument("folder")
    c.add_argument("--out", required=True)
    c.add_argument("--mode", choices=["RGB", "L"], default="RGB")
    c.add_argument("--size", type=int, default=None, help="resize every image to SIZE x SIZE")
    c.add_argument("--check-against", default=None, metavar="DATASET",
                   help="compare channel statistics with this real dataset's train split")
    c.set_defaults(func=run_adainf_convert)
    k = s.add_parser("check", help="flag a BGR npz by comparing channel statistics with the real set")
    k.add_argument("npz")
    k.add_argument("--real", required=True, metavar="DATASET")
    k.add_argument("--root", default=None)
    k.set_defaults(func=run_adainf_check)
    g = s.add_parser("standin", help="write a stand-in 'generated' set made here (not a diffusion model's output)")
    g.add_argument("--dataset", default="fashion-mnist")
    g.add_argument("--root", default=None)
    g.add_argument("--kind", choices=["gmm", "mixup"], default="gmm")
    g.add_argument("--n", type=int, default=60000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    g.set_defaults(func=run_adainf_standin)


def _check(npz, real, root=None) -> dict:
    from eval.datasets import load_split

    from .adainf import channel_order_check, load_npz_images

    real_split = load_split(real, "train", root=root)
    ref = real_split.images if real_split.images is not None else np.stack(
        [real_split.get(i).permute(1, 2, 0).numpy() for i in range(min(5000, len(real_split)))])
    return channel_order_check(load_npz_images(npz), ref)


def _report(r: dict, npz) -> int:
    print(json.dumps(r))
    if r["verdict"] == "bgr":
        print(f"warning: {npz} looks BGR (channel statistics match the real set only with red and blue swapped); "
              f"re-convert it with `sslzoo adainf convert`, which decodes RGB")
        return 1
    return 0


def run_adainf_convert(args) -> int:
    from .adainf import folder_to_npz

    p = folder_to_npz(args.folder, args.out, mode=args.mode, size=args.size)
    print(f"wrote {p}")
    return _report(_check(p, args.check_against), p) if args.check_against else 0


def run_adainf_check(args) -> int:
    return _report(_check(args.npz, args.real, args.root), args.npz)


def run_adainf_standin(args) -> int:
    from eval.datasets import load_split

    from .adainf import STANDINS, write_inflation_npz

    real = load_split(args.dataset, "train", root=args.root).images
    imgs = STANDINS[args.kind](real, args.n, seed=args.seed)
    p = write_inflation_npz(args.out, imgs, generator=np.array(f"{args.kind} stand-in (not a diffusion model)"))
    print(f"wrote {p} ({len(imgs)} {args.kind} stand-in images, label -1)")
    return 0
