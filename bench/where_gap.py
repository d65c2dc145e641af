"""Where two finished runs on the same split differ: test NDCG@20 by user activity, and how popular the items
each one recommends are. Reads only run-directory artefacts (``split/``, ``topk.tsv``, ``metrics.json``), in
original ids, so it works for any two models.

    python bench/where_gap.py runs/ml-1m/kgat/seed0-1d9fd1f4 runs/ml-1m/multikg4rec/seed0-63875389 \
        --write results/studies/diagnosis/where_gap.md

* per user: NDCG@20 recomputed from ``topk.tsv`` (binary relevance, IDCG from min(|test|, 20); checked against
  each run's ``metrics.json``), grouped by quartile of the user's number of train interactions;
* per run: mean popularity percentile of its top-20 items (an item's share of train interactions, ranked; 1.0 =
  the most popular item), the share of top-20 slots filled by the 10% most popular items, the number of distinct
  items in anybody's top-20 (coverage), and test hits split by whether the hit item is in that popular 10%.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from benchlib import emit

K = 20


def _inter(run: Path, part: str) -> pd.DataFrame:
    f = next((run / "split").glob(f"*.{part}.inter"))
    df = pd.read_csv(f, sep="\t", dtype=str)
    df.columns = ["user", "item"] + list(df.columns[2:])
    return df[["user", "item"]]


def _topk(run: Path) -> dict[str, list[str]]:
    out = {}
    for line in (run / "topk.tsv").read_text().splitlines():
        parts = line.split("\t")
        out[parts[0]] = parts[1:K + 1]
    return out


def per_user(run: Path, test: pd.DataFrame) -> pd.Series:
    top = _topk(run)
    rel = test.groupby("user")["item"].apply(set)
    disc = 1.0 / np.log2(np.arange(2, K + 2))
    vals = {}
    for u, items in rel.items():
        hits = np.array([i in items for i in top.get(u, [])] + [False] * (K - len(top.get(u, []))))
        vals[u] = float((hits * disc).sum() / disc[:min(len(items), K)].sum())
    return pd.Series(vals)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs=2, type=Path, help="two run directories trained on the same split")
    ap.add_argument("--write", type=Path, help="append the markdown section to this file")
    args = ap.parse_args(argv)
    a, b = args.runs
    train, test = _inter(a, "train"), _inter(a, "test")
    for part in ("train", "valid", "test"):
        if not _inter(a, part).equals(_inter(b, part)):
            raise SystemExit(f"error: {a} and {b} were not trained on the same split ({part} differs)")
    names = [f"{r.parent.name} ({r.name})" for r in (a, b)]
    nd = {}
    for name, run in zip(names, (a, b)):
        nd[name] = per_user(run, test)
        reported = json.loads((run / "metrics.json").read_text())["test"][f"ndcg@{K}"]
        if abs(nd[name].mean() - reported) > 1e-6:
            raise SystemExit(f"error: recomputed NDCG@{K} {nd[name].mean():.6f} != metrics.json {reported:.6f} ({run})")
    n_train = train.groupby("user").size()
    users = nd[names[0]].index
    q = pd.qcut(n_train.reindex(users), 4, labels=False, duplicates="drop")
    lines = [f"## {names[0]} vs {names[1]}", "",
             f"`python bench/where_gap.py {a} {b}`", "",
             f"Test NDCG@{K} by quartile of the user's train interactions ({len(users)} test users):", "",
             f"| train interactions | users | {names[0]} | {names[1]} | difference (2nd - 1st) |", "|---|---|---|---|---|"]
    for k in sorted(q.dropna().unique()):
        us = q.index[q == k]
        lo, hi = int(n_train[us].min()), int(n_train[us].max())
        x, y = nd[names[0]][us].mean(), nd[names[1]][us].mean()
        lines.append(f"| {lo}-{hi} | {len(us)} | {x:.4f} | {y:.4f} | {y - x:+.4f} |")
    x, y = nd[names[0]].mean(), nd[names[1]].mean()
    lines.append(f"| all | {len(users)} | {x:.4f} | {y:.4f} | {y - x:+.4f} |")
    pop = train.groupby("item").size()
    pct = pop.rank(pct=True)
    head = set(pop.sort_values(ascending=False).index[: max(1, int(round(0.1 * len(pop))))])
    rel = test.groupby("user")["item"].apply(set)
    lines += ["", f"Recommendations (top-{K} of every test user):", "",
              f"| run | mean popularity percentile | top-{K} slots from the 10% most popular items | "
              f"distinct items recommended (of {len(pop)} with train interactions) | test hits on popular 10% | "
              f"test hits on the other 90% |", "|---|---|---|---|---|---|"]
    for name, run in zip(names, (a, b)):
        top = _topk(run)
        recs = [i for u in users for i in top.get(u, [])]
        hits_head = sum(i in head for u in users for i in top.get(u, []) if i in rel[u])
        hits_tail = sum(i not in head for u in users for i in top.get(u, []) if i in rel[u])
        lines.append(f"| {name} | {pct.reindex(recs).fillna(0).mean():.3f} | "
                     f"{np.mean([i in head for i in recs]):.3f} | {len(set(recs))} | {hits_head} | {hits_tail} |")
    emit("\n" + "\n".join(lines), args.write)


if __name__ == "__main__":
    main()
