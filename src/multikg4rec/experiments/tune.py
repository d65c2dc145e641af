"""``multikg4rec tune``: the paper's grid, chosen on valid NDCG@20 only."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import UserError
from .archive import collect
from .jobs import SPEC, Job
from .scheduler import run_jobs, run_jobs_parallel

#: the paper's search space (paper.yaml ``grid``)
GRID: dict[str, list] = SPEC["grid"]


def tune(model: str, dataset: str, budget: int, common: dict, out_root: Path = Path("results"),
         grid: dict | None = None, seed: int = 0, jobs_at_once: int = 1) -> dict:
    """Grid search over ``grid`` (default: the paper's), visiting at most ``budget`` points in a
    seeded random order; the choice is made on valid NDCG@20 only. Each point is an ordinary run,
    so the search resumes where it stopped and never retrains a finished point."""
    import itertools
    import yaml
    grid = grid or GRID
    keys = sorted(grid)
    points = list(itertools.product(*(grid[k] for k in keys)))
    order = np.random.default_rng(seed).permutation(len(points))[:budget]
    jobs = [Job(f"{model}[{i}]", model, dataset, seed, dict(zip(keys, points[i]))) for i in order]
    if jobs_at_once > 1:
        run_jobs_parallel(jobs, common, jobs_at_once)
    else:
        run_jobs(jobs, common)
    rows = collect(jobs, common)
    if not rows:
        raise UserError("no finished tuning runs")
    out = out_root / "tune"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{model}_{dataset}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*keys, "valid_ndcg@20", "test_ndcg@20", "best_epoch", "run_dir"])
        for r in rows:
            w.writerow([*(r["job"].overrides[k] for k in keys), r["metrics"]["valid"]["ndcg@20"],
                        r["metrics"]["test"]["ndcg@20"], r["metrics"]["best_epoch"], r["run_dir"]])
    best = max(rows, key=lambda r: r["metrics"]["valid"]["ndcg@20"])
    (out / f"{model}_{dataset}.best.yaml").write_text(yaml.safe_dump(
        {**best["job"].overrides, "_valid_ndcg@20": best["metrics"]["valid"]["ndcg@20"],
         "_points_tried": len(rows), "_grid_size": len(points)}))
    return best["job"].overrides
