"""A synthetic power-law catalogue as a RecBole atomic dataset, for the growth curve (bench/bench_scaling.py).

Interactions: users and items drawn with Zipf-like weights (rank^-a; a = 0.9 for items, 0.6 for users), duplicate
pairs dropped, so item popularity and user activity are heavy-tailed like MovieLens and Amazon-Book. A KG: each
item has 1-8 triples to entities drawn with Zipf-like weights over 8 relations. Seeded; vectorised.

    python bench/synthetic_powerlaw.py --interactions 10000000 --out bench/out/data

writes ``bench/out/data/synthetic-10000000/synthetic-10000000.{inter,kg,link}`` (train with
``--data-dir bench/out/data``; Multi-KG4Rec needs ``--features random`` there: the catalogue has no content).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def zipf_choice(rng: np.random.Generator, n: int, size: int, a: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -a
    cdf = np.cumsum(w / w.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1)


def generate(n_inter: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n_users, n_items = max(n_inter // 20, 50), max(n_inter // 100, 50)
    pairs = np.zeros(0, dtype=np.int64)
    while len(pairs) < n_inter:                              # top up what the duplicates took
        need = int((n_inter - len(pairs)) * 1.3) + 1000
        new = zipf_choice(rng, n_users, need, 0.6) * n_items + zipf_choice(rng, n_items, need, 0.9)
        pairs = np.unique(np.concatenate([pairs, new]))
    pairs = rng.permutation(pairs)[:n_inter]
    inter = pd.DataFrame({"user_id:token": (pairs // n_items).astype(str), "item_id:token": (pairs % n_items).astype(str)})
    n_ent = max(n_items // 2, 10)
    per_item = rng.integers(1, 9, size=n_items)
    heads = np.repeat(np.arange(n_items), per_item)
    kg = pd.DataFrame({"head_id:token": np.char.add("e_item", heads.astype(str)),
                       "relation_id:token": np.char.add("r", rng.integers(0, 8, size=len(heads)).astype(str)),
                       "tail_id:token": np.char.add("e", zipf_choice(rng, n_ent, len(heads), 0.8).astype(str))})
    kg = kg.drop_duplicates()
    link = pd.DataFrame({"item_id:token": np.arange(n_items).astype(str),
                         "entity_id:token": np.char.add("e_item", np.arange(n_items).astype(str))})
    return inter, kg, link


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interactions", type=int, nargs="+", default=[10_000_000])
    ap.add_argument("--out", type=Path, default=Path("bench/out/data"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for n in args.interactions:
        name = f"synthetic-{n}"
        d = args.out / name
        if (d / f"{name}.inter").is_file():
            print(f"{d}: exists")
            continue
        d.mkdir(parents=True, exist_ok=True)
        inter, kg, link = generate(n, args.seed)
        for df, ext in ((kg, "kg"), (link, "link"), (inter, "inter")):   # .inter last: it marks the folder done
            df.to_csv(d / f"{name}.{ext}.tmp", sep="\t", index=False)
            (d / f"{name}.{ext}.tmp").rename(d / f"{name}.{ext}")
        print(f"{d}: {len(inter)} interactions, {inter.iloc[:, 0].nunique()} users, {inter.iloc[:, 1].nunique()} "
              f"items, {len(kg)} triples")


if __name__ == "__main__":
    main()
