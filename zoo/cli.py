"""``sslzoo list`` and ``sslzoo info`` (also ``python -m zoo``)."""
from __future__ import annotations

import json
import sys

from .registry import REGISTRY, get_record


def add_parsers(sub) -> None:
    p = sub.add_parser("list", help="every zoo model, one row each")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=run_list)
    p = sub.add_parser("info", help="one model's record, card and where its weights resolve from")
    p.add_argument("name")
    p.set_defaults(func=run_info)
    p = sub.add_parser("cards", help="regenerate model_cards/ from the registry")
    p.add_argument("--check", action="store_true", help="exit 1 if a card is stale instead of writing")
    p.set_defaults(func=run_cards)


def run_cards(args) -> int:
    from .cards import write_cards

    stale = write_cards(check=args.check)
    if args.check and stale:
        print(f"stale model cards: {', '.join(stale)}; run `sslzoo cards`", file=sys.stderr)
        return 1
    print(f"{len(stale)} card(s) {'stale' if args.check else 'written'}")
    return 0


def weights_from(r) -> str:
    """Where ``pretrained=True`` looks first, and whether the file is pinned by sha256."""
    w = r.weights
    where = ["bundled" if w.bundled else None, f"hf:{w.hf_repo}" if w.hf_repo else None,
             f"upstream {w.upstream_format}" if w.upstream_url else None]
    return " > ".join(x for x in where if x) + ("" if w.verified else " (unverified)")


def run_list(args) -> int:
    rows = [{"name": r.name, "method": r.method, "arch": r.arch["arch"] + (f" w{r.arch['width']}" if r.arch.get(
        "width", 64) != 64 else ""), "dim": r.feature_dim, "data": r.train_data.split(" (")[0],
             "headline": r.headline().split(" (")[0], "weights": weights_from(r)}
            for r in sorted(REGISTRY.values(), key=lambda r: r.name)]
    if args.format == "json":
        print(json.dumps([r.to_dict() for r in sorted(REGISTRY.values(), key=lambda r: r.name)], indent=1))
    else:
        from tabulate import tabulate

        print(tabulate(rows, headers="keys", tablefmt="github"))
    return 0


def run_info(args) -> int:
    from .cards import card_path
    from .hub import BUNDLED_DIR

    r = get_record(args.name)
    print(json.dumps(r.to_dict(), indent=1))
    w = r.weights
    print("\nweights resolve from, in order:")
    if w.bundled:
        print(f"  1. bundled: {BUNDLED_DIR / w.bundled / 'model.safetensors'}")
    print(f"  2. HF Hub: {w.hf_repo}@{w.hf_revision}" if w.hf_repo else "  2. HF Hub: no mirror registered")
    print(f"  3. upstream: {w.upstream_url} ({w.upstream_format})" if w.upstream_url else "  3. upstream: none")
    print(f"  sha256 pinned: {w.sha256}" if w.verified else
          "  sha256 pinned: none (unverified: pretrained=True converts the upstream file and warns; pin it with "
          f"`sslzoo convert {r.name} --checkpoint URL --out DIR` + `sslzoo publish DIR --repo-id ORG/NAME`)")
    if w.upstream_note:
        print(f"  note: {w.upstream_note}")
    print(f"\nmodel card: {card_path(r.name)}")
    return 0


def main(argv=None) -> int:
    from training.cli import main as sslzoo_main  # the one dispatcher, for the same error handling

    return sslzoo_main(argv)


if __name__ == "__main__":
    sys.exit(main())
