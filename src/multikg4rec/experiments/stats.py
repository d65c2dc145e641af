"""Paired significance tests between runs: per-user test NDCG@20, pairs = (seed, user)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..fingerprint import file_digest
from ..rundir import read_config, read_json


def _per_user(run_dir: Path, key: str = "ndcg_at_20") -> tuple[np.ndarray, np.ndarray]:
    z = np.load(Path(run_dir) / "per_user_test.npz")
    return z["users"], z[key]

def paired_test(rows_a: list[dict], rows_b: list[dict]) -> dict | None:
    """Wilcoxon signed-rank test on per-user test NDCG@20, pairs = (seed, user) present in both."""
    from scipy.stats import wilcoxon
    a_by_seed = {r["job"].seed: r for r in rows_a}
    diffs = []
    for r in rows_b:
        if r["job"].seed not in a_by_seed:
            continue
        ua, va = _per_user(a_by_seed[r["job"].seed]["run_dir"])
        ub, vb = _per_user(r["run_dir"])
        common, ia, ib = np.intersect1d(ua, ub, return_indices=True)
        diffs.append(va[ia] - vb[ib])
    if not diffs:
        return None
    d = np.concatenate(diffs)
    if not np.any(d):
        return {"n_pairs": len(d), "mean_diff": 0.0, "p_value": 1.0}
    stat = wilcoxon(d)
    return {"n_pairs": int(len(d)), "mean_diff": float(d.mean()), "p_value": float(stat.pvalue)}

def _split_identity(run_dir: Path, cfg: dict) -> dict:
    """What decides a run's train/valid/test split: the dataset, the preprocessing keys that filter
    interactions and the split seed, and, where the run kept it, the digest of its written test split."""
    from ..data.dataset import DATA_KEYS
    ident = {"dataset": cfg.get("dataset")}
    ident |= {k: cfg.get(k) for k in DATA_KEYS if k != "kg_hops"}   # kg_hops prunes triples, not interactions
    ident["split_seed"] = cfg.get("split_seed") if cfg.get("split_seed") is not None else cfg.get("seed")
    test = Path(run_dir) / "split" / f"{cfg.get('dataset')}.test.inter"
    if test.is_file():
        ident["test split file"] = file_digest(test)
    return ident

def _split_differences(a: dict, b: dict) -> dict:
    """{key: (a's, b's)} where two split identities differ; the written split only where both runs kept it."""
    keys = set(a) | set(b)
    if not ("test split file" in a and "test split file" in b):
        keys.discard("test split file")
    return {k: (a.get(k), b.get(k)) for k in sorted(keys) if a.get(k) != b.get(k)}

def compare_runs(a_dirs: list[Path], b_dirs: list[Path], metric: str = "ndcg@20") -> dict:
    """Paired comparison of two sets of finished runs (e.g. a model and a baseline over seeds), matched by the
    seed in each run's ``config.yaml``: test ``metric`` of each run, and a Wilcoxon signed-rank test on per-user
    test NDCG@20 over the (seed, user) pairs present in both (``paired_test``)."""
    from types import SimpleNamespace

    def rows(dirs):
        out = []
        for d in map(Path, dirs):
            if not (d / "metrics.json").is_file() or not (d / "per_user_test.npz").is_file():
                raise UserError(f"{d} is not a finished run (no metrics.json / per_user_test.npz)")
            cfg = read_config(d, keys=("seed",))
            out.append({"job": SimpleNamespace(seed=int(cfg["seed"])), "run_dir": d, "split": _split_identity(d, cfg),
                        "test": read_json(d / "metrics.json")["test"][metric]})
        return out
    ra, rb = rows(a_dirs), rows(b_dirs)
    a_by_seed = {r["job"].seed: r for r in ra}
    for r in rb:                                  # a paired test pairs a user's test items with the SAME ones
        other = a_by_seed.get(r["job"].seed)
        if other is not None and (diff := _split_differences(other["split"], r["split"])):
            raise UserError(f"{other['run_dir']} and {r['run_dir']} are not on the same split ("
                            + ", ".join("the written test splits differ" if k == "test split file" else
                                        f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items())
                            + "): a paired test needs the same users' same test items")
    t = paired_test(ra, rb)
    if t is None:
        seeds = lambda rs: sorted(r["job"].seed for r in rs)  # noqa: E731
        raise UserError(f"no seed in common: A has seeds {seeds(ra)}, B has {seeds(rb)}")
    return {"metric": metric, "a": {str(r["run_dir"]): r["test"] for r in ra},
            "b": {str(r["run_dir"]): r["test"] for r in rb},
            "a_mean": float(np.mean([r["test"] for r in ra])), "b_mean": float(np.mean([r["test"] for r in rb])),
            "paired_ndcg@20_a_minus_b": t}
