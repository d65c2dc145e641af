"""``multikg4rec features build | info``: registered on the main CLI by :func:`add_features_parser`.

    from multikg4rec.features.cli import add_features_parser
    add_features_parser(subparsers)          # in cli.py; each leaf sets ``func(args) -> int``
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import UserError
from .encoders import ENCODERS, IMAGE_NORMS


def _kv(items: list[str] | None) -> dict[str, str]:
    out = {}
    for s in items or []:
        mod, sep, path = s.partition("=")
        if not sep or not mod or not path:
            raise UserError(f"--features {s!r}: expected MODALITY=FILE.npy, e.g. --features image=image_feat.npy")
        out[mod.strip().lower()] = path
    return out


def features_build_cmd(args: argparse.Namespace) -> int:
    from .store import build_features
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.encoder is None:                    # the encoder a training run on this dataset would use
        from ..config import load_config
        args.encoder = load_config("multikg4rec", args.dataset)["encoder"]
    opts = {"clip_path": args.clip_path, "device": args.device, "image_norm": args.image_norm,
            "normalize": not args.no_normalize}
    if args.encoder == "precomputed":
        opts = {"normalize": not args.no_normalize, "features": _kv(args.features), "kind": args.kind,
                "audio": args.audio, "text": args.text}
        if args.ids:
            opts["ids"] = ({"file": args.ids, "id_column": args.id_column, "row_column": args.row_column}
                           if args.id_column else args.ids)
    elif args.features or args.ids:
        raise UserError("--features/--ids go with --encoder precomputed")
    t0 = time.time()
    store = build_features(args.dataset, args.encoder, data_dir=args.data_dir, cache_dir=args.cache_dir,
                           batch_size=args.batch_size, descriptions=not args.no_descriptions,
                           progress=not args.no_progress, rebuild=args.rebuild, **opts)
    print(store.summary())
    print(f"  {time.time() - t0:.1f} s this run; cache: {store.path}")
    return 0


def features_info_cmd(args: argparse.Namespace) -> int:
    from .store import FeatureStore, list_stores
    paths = [Path(args.path)] if args.path else list_stores(args.cache_dir, args.dataset)
    if not paths:
        where = f" for {args.dataset}" if args.dataset else ""
        print(f"no feature stores{where} in the cache (build one with 'multikg4rec features build')")
        return 0
    for p in paths:
        store = FeatureStore.load(p)
        store.from_cache = False
        print(store.summary())
        if args.json:
            print(json.dumps(store.meta["encoder"], indent=1))
    return 0


def add_features_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``features build`` and ``features info`` on an argparse ``subparsers`` object."""
    p = subparsers.add_parser("features", help="encode entity text/images into the feature store",
                              description="Entity content -> per-(dataset, encoder) feature store (docs/model.md §2).")
    sub = p.add_subparsers(dest="features_command", metavar="{build,info}")
    sub.required = True

    b = sub.add_parser("build", help="build (or reuse) the features of a dataset",
                       description="Encode every entity's text and image (or read precomputed matrices) "
                                   "into the cache; a second run reuses it at once, an interrupted one resumes.")
    b.add_argument("--dataset", required=True, help="dataset folder name under --data-dir (ml-1m, ml-100k, ...)")
    b.add_argument("--encoder", default=None, choices=ENCODERS,
                   help="clip (paper; needs local CLIP weights), minilm+efficientnet (offline), precomputed; "
                        "default: the one training uses on this dataset (config key encoder)")
    b.add_argument("--data-dir", default=None, help="datasets root (default $MULTIKG4REC_DATA or ./data)")
    b.add_argument("--cache-dir", default=None, help="cache root (default $MULTIKG4REC_CACHE or ~/.cache/multikg4rec)")
    b.add_argument("--clip-path", default=None,
                   help="CLIP hub name or local folder (config.json, weights, tokenizer, preprocessor_config.json); "
                        "default $MULTIKG4REC_CLIP_PATH or openai/clip-vit-base-patch32")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    b.add_argument("--image-norm", default="tf-lite", choices=sorted(IMAGE_NORMS),
                   help="EfficientNet-Lite0 pixel normalisation (default tf-lite: the weights' own)")
    b.add_argument("--no-descriptions", action="store_true",
                   help="ml-1m: leave the LLM-written descriptions out of the item text")
    b.add_argument("--no-normalize", action="store_true", help="keep raw vectors (default: L2-normalise rows)")
    b.add_argument("--features", action="append", metavar="MODALITY=FILE.npy",
                   help="precomputed: a feature matrix per modality (repeat); row i = id on line i of --ids")
    b.add_argument("--ids", default=None, help="precomputed: id file (one id per line, .npy, or TSV/CSV with --id-column)")
    b.add_argument("--id-column", default=None, help="precomputed: id column of a TSV/CSV --ids file")
    b.add_argument("--row-column", default=None, help="precomputed: row-index column of the --ids file (else line order)")
    b.add_argument("--kind", default="item", choices=("item", "entity"), help="precomputed: ids are item or KG entity tokens")
    b.add_argument("--audio", default=None, help="precomputed preset: audio features (lastfm-2k: whisper | vggish)")
    b.add_argument("--text", default=None, help="precomputed preset: text features (lastfm-2k: minilm)")
    b.add_argument("--rebuild", action="store_true", help="ignore a cached store and build again")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=features_build_cmd)

    i = sub.add_parser("info", help="list the feature stores in the cache")
    i.add_argument("--dataset", default=None)
    i.add_argument("--cache-dir", default=None)
    i.add_argument("--path", default=None, help="one store folder")
    i.add_argument("--json", action="store_true", help="also print the encoder record (models, versions)")
    i.set_defaults(func=features_info_cmd)
    return p


def main(argv=None) -> int:
    """Stand-alone entry (``python -m multikg4rec.features.cli build ...``); ``multikg4rec features`` registers
    the same parser (:func:`add_features_parser`)."""
    import logging
    import sys
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="multikg4rec")
    sub = parser.add_subparsers(dest="command")
    add_features_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] != "features":
        argv = ["features", *argv]
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
