"""The sparse-item table (``reproduce popularity``): Table 2's runs, test NDCG@20 and Recall@20 by the train
popularity of the relevant items (``evaluation.POPULARITY_BUCKETS``: 1-5, 6-20, 21-100, >100 interactions).

A run made since the breakdown exists carries it in ``metrics.json`` (``test_by_popularity``, computed at
the end of training from the run's full ranking). An archived run from before has no ranking to compute it
from, so the table re-trains it here (the same config: the same split and, on CPU, the same weights) and takes
the breakdown only when the re-run's test metrics equal the archived ones to every digit; the breakdown is
then added to the archived ``metrics.json`` and the re-run's ``topk.tsv`` beside it, so the numbers recompute
from the archive and the split (``tests/test_popularity.py``).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from ..evaluation import POPULARITY_BUCKETS, _bucket_name
from ..rundir import atomic_write_text, find_run, is_finished, read_json
from .archive import archived
from .jobs import Job

log = logging.getLogger(__name__)

KEY = "test_by_popularity"
BUCKETS = [_bucket_name(lo, hi) for lo, hi in POPULARITY_BUCKETS]


def missing(jobs: list[Job], common: dict, archive: Path) -> list[Job]:
    """The jobs whose finished run (archived, else local) has no breakdown yet: they are re-trained here."""
    out = []
    for job in jobs:
        cfg = job.config(common)
        kept = archived(cfg, archive)
        if kept is not None and KEY in read_json(kept / "metrics.json"):
            continue
        local = find_run(cfg)
        if kept is None or local is None or not is_finished(local) or KEY not in read_json(local / "metrics.json"):
            out.append(job)
    return out


def adopt(jobs: list[Job], common: dict, archive: Path) -> list[str]:
    """Add the breakdown of each re-trained run to its archived copy when the two runs agree on every test
    metric; warns of, and returns, a line per run that disagrees (its archived copy keeps no breakdown)."""
    problems = []
    for job in jobs:
        cfg = job.config(common)
        kept, local = archived(cfg, archive), find_run(cfg)
        if kept is None or local is None or not is_finished(local) or local.resolve() == kept.resolve():
            continue
        a, b = read_json(kept / "metrics.json"), read_json(local / "metrics.json")
        if KEY in a or KEY not in b:
            continue
        if a["test"] != b["test"]:
            k = next(k for k in a["test"] if a["test"][k] != b["test"].get(k))
            problems.append(f"{job.label} {job.dataset} seed {job.seed}: the re-run differs from the archived run "
                            f"({k}: {b['test'].get(k)} vs {a['test'][k]}); its breakdown is not used")
            log.warning(problems[-1])          # a property of this machine's re-runs, not of the archive
            continue
        if (local / "topk.tsv").is_file():
            shutil.copy2(local / "topk.tsv", kept / "topk.tsv")
        atomic_write_text(kept / "metrics.json", json.dumps({**a, KEY: b[KEY]}, indent=2) + "\n")
    return problems


def summarize_popularity(rows: list[dict], out_dir: Path, command: str | None = None) -> str:
    """``popularity.md``: per dataset, NDCG@20 and Recall@20 per popularity bucket (mean ± std over seeds),
    with each bucket's item and user counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in rows if KEY in r["metrics"]]
    lines = ["# Sparse items: Table 2's runs by item popularity", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             f"`{command or 'multikg4rec reproduce popularity'}` from {len(rows)} runs. Warm-start protocol "
             "(Table 2). For each bucket of train-interaction counts, a user's relevant items are its test items "
             "in that bucket, ranked in the user's full ranking over all items; mean over the users with at least "
             "one such item, then mean ± std over seeds. K = 20.", ""]
    for d in dict.fromkeys(r["job"].dataset for r in rows):
        drows = [r for r in rows if r["job"].dataset == d]
        labels = list(dict.fromkeys(r["job"].label for r in drows))
        first = drows[0]["metrics"][KEY]
        sizes = ", ".join(f"{b}: {first[b]['items']} items, {first[b]['users']} users" for b in BUCKETS if b in first)
        lines += [f"## {d}", "", f"Buckets ({sizes}).", ""]
        for metric, name in (("ndcg@20", "NDCG@20"), ("recall@20", "Recall@20")):
            lines += [f"| model | seeds | " + " | ".join(f"{name} {b}" for b in BUCKETS) + " |",
                      "|---|---|" + "---|" * len(BUCKETS)]
            best = {}
            for b in BUCKETS:
                means = {lab: np.mean([r["metrics"][KEY][b][metric] for r in drows if r["job"].label == lab
                                       and b in r["metrics"][KEY]] or [np.nan]) for lab in labels}
                best[b] = max(means, key=lambda k: -np.inf if np.isnan(means[k]) else means[k])
            for lab in labels:
                rs = [r for r in drows if r["job"].label == lab]
                cells = []
                for b in BUCKETS:
                    v = np.array([r["metrics"][KEY][b][metric] for r in rs if b in r["metrics"][KEY]])
                    c = "" if not len(v) else (f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v.mean():.4f}")
                    cells.append(f"**{c}**" if c and best[b] == lab and v.mean() > 0 else c)
                lines.append(f"| {lab} | {len(rs)} | " + " | ".join(cells) + " |")
            lines.append("")
    text = "\n".join(lines) + "\n"
    (out_dir / "popularity.md").write_text(text, encoding="utf-8")
    return text
