#!/usr/bin/env python
"""Our evaluator on RecBole's scores: do the two frameworks compute the same test metrics from the same
score matrix? Runs in OUR venv.

    bench/.venv-recbole/bin/python bench/recbole/run_recbole.py --run-dir RUN --model BPR --dump-scores S.npz
    .venv/bin/python bench/recbole/check_eval.py --run-dir RUN --scores S.npz \\
        --recbole-json bench/out/recbole/recbole_BPR_<D>_seed<S>.json

Reads ``RUN/split/D.{train,valid,test}.inter`` (original ids), aligns them to the score matrix's user and
item tokens, evaluates test (excluding train + valid items) with ``multikg4rec.evaluation.Evaluator`` and
prints ours next to RecBole's reported values (exit 1 if any differs by more than --tol).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from multikg4rec.evaluation import Evaluator


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--scores", required=True)
    ap.add_argument("--recbole-json", required=True)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args(argv)
    z = np.load(args.scores)
    scores, users, items = torch.from_numpy(z["scores"]), z["users"], z["items"]
    uix = {u: i for i, u in enumerate(users)}
    iix = {t: i for i, t in enumerate(items)}
    split = Path(args.run_dir) / "split"
    dataset = next(split.glob("*.train.inter")).name[: -len(".train.inter")]

    def csr(part):
        df = pd.read_csv(split / f"{dataset}.{part}.inter", sep="\t", dtype=str)
        r = df.iloc[:, 0].map(uix).to_numpy()
        c = df.iloc[:, 1].map(iix).to_numpy()
        return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(users), len(items)))

    ev = Evaluator(len(items), ks=(20,), metrics=("recall", "mrr", "ndcg"))
    res = ev.evaluate(lambda u: scores[u], csr("test"), [csr("train"), csr("valid")])
    rb = json.loads(Path(args.recbole_json).read_text())["test"]
    bad = 0
    print(f"{'metric':<10} {'ours on RecBole scores':>24} {'RecBole reported':>18} {'diff':>10}  ({res.n_users} users)")
    for k in ("recall@20", "mrr@20", "ndcg@20"):
        d = res.metrics[k] - rb[k]
        bad += abs(d) > args.tol
        print(f"{k:<10} {res.metrics[k]:>24.8f} {rb[k]:>18.8f} {d:>10.2e}")
    return int(bad > 0)


if __name__ == "__main__":
    sys.exit(main())
