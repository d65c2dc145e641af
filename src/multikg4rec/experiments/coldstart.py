"""The cold-start tables (``reproduce coldstart``): every model under the cold-item protocol, new items ranked
alone (cold) and among the warm ones (hybrid), with paired tests and a figure.

The runs are ordinary runs with ``split: cold_item`` (``jobs.coldstart_jobs``); their ``metrics.json`` holds
``test`` (cold) and ``test_hybrid``, their ``per_user_test.npz`` / ``per_user_test_hybrid.npz`` the per-user
values the paired tests read. docs/coldstart.md says what the protocol is.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .jobs import Job
from .reports import bar_plot
from .stats import paired_test

COLUMNS = (("recall@20", "Recall@20"), ("ndcg@20", "NDCG@20"))
TARGET = "multikg4rec"


def _cell(vals: np.ndarray) -> str:
    return f"{vals.mean():.4f} ± {vals.std(ddof=1):.4f}" if len(vals) > 1 else f"{vals.mean():.4f}"


def summarize_coldstart(rows: list[dict], out_dir: Path, command: str | None = None,
                        planned: list[Job] | None = None) -> str:
    """``coldstart.md``: per dataset, the cold and the hybrid table (mean ± std over seeds, seconds per epoch,
    peak RSS), Multi-KG4Rec against the best other row on cold NDCG@20 (paired Wilcoxon over (seed, user)),
    and ``coldstart_<dataset>.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    planned = planned or []
    lines = ["# Cold-start: new items", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command or 'multikg4rec reproduce coldstart'}` "
             f"from {len(rows)} finished runs (`runs.csv`). Protocol `split: cold_item` (docs/coldstart.md): 10% of the "
             f"items are new at validation, another 10% at test, with no interaction in train. **Cold**: the "
             f"cold-test items alone are ranked; **hybrid**: warm + cold-test items. K = 20, the epoch chosen on "
             f"cold-valid NDCG@20; mean ± std over seeds.", ""]
    for d in sorted({r["job"].dataset for r in rows} | {j.dataset for j in planned}):
        drows = [r for r in rows if r["job"].dataset == d]
        n_plan: dict[str, int] = {}
        for j in planned:
            if j.dataset == d:
                n_plan[j.label] = n_plan.get(j.label, 0) + 1
        labels = list(dict.fromkeys(list(n_plan) + [r["job"].label for r in drows]))
        by = {lab: [r for r in drows if r["job"].label == lab] for lab in labels}
        lines += [f"## {d}", "", "| model | seeds | cold Recall@20 | cold NDCG@20 | hybrid Recall@20 | hybrid NDCG@20 "
                  "| s/epoch | epochs | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
        means = {}
        for lab in labels:
            rs = by[lab]
            seeds = f"{len(rs)} of {n_plan[lab]}" if len(rs) < n_plan.get(lab, 0) else f"{len(rs)}"
            if not rs:
                lines.append(f"| {lab} | {seeds} | not run yet | | | | | | |")
                continue
            cold = {k: np.array([r["metrics"]["test"][k] for r in rs]) for k, _ in COLUMNS}
            hyb = {k: np.array([r["metrics"].get("test_hybrid", {}).get(k, np.nan) for r in rs]) for k, _ in COLUMNS}
            means[lab] = (cold["ndcg@20"].mean(), rs)
            spe = np.mean([r["metrics"].get("seconds_per_epoch") or 0 for r in rs])
            ep = np.mean([r["metrics"]["epochs_run"] for r in rs])
            rss = np.max([r["metrics"].get("peak_rss_mb") or 0 for r in rs])
            lines.append(f"| {lab} | {seeds} | {_cell(cold['recall@20'])} | {_cell(cold['ndcg@20'])} | "
                         f"{_cell(hyb['recall@20'])} | {_cell(hyb['ndcg@20'])} | {spe:.1f} | {ep:.0f} | {rss:.0f} |")
        ours = [lab for lab in means if lab == TARGET]
        if ours and len(means) > 1:
            others = {k: v for k, v in means.items() if not k.startswith(TARGET)}
            if others:
                best = max(others, key=lambda k: others[k][0])
                t = paired_test(means[TARGET][1], others[best][1])
                if t:
                    rel = (means[TARGET][0] - others[best][0]) / others[best][0] * 100 if others[best][0] else float("nan")
                    lines += ["", f"Multi-KG4Rec vs {best} (the best other model on cold NDCG@20): {rel:+.1f}% "
                                  f"(mean {means[TARGET][0]:.4f} vs {others[best][0]:.4f}); paired Wilcoxon on per-user "
                                  f"cold NDCG@20 over (seed, user) pairs: mean difference {t['mean_diff']:+.4f}, "
                                  f"n = {t['n_pairs']}, p = {t['p_value']:.3g}."]
        lines.append("")
        if means:
            _plot(means, by, d, out_dir / f"coldstart_{d}.png")
    text = "\n".join(lines) + "\n"
    (out_dir / "coldstart.md").write_text(text, encoding="utf-8")
    return text


def _plot(means: dict, by: dict, dataset: str, path: Path) -> None:
    labels = list(means)
    series = {}
    for key, name in (("test", "cold"), ("test_hybrid", "hybrid")):
        vals = [[r["metrics"].get(key, {}).get("ndcg@20", np.nan) for r in by[lab]] for lab in labels]
        series[f"{name} NDCG@20"] = ([np.mean(v) for v in vals], [np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals])
    bar_plot(labels, series, path, f"new items, {dataset}")
