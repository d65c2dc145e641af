"""A table as Markdown and PNG: mean ± std over seeds, the paper's numbers, gaps, paired tests."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .jobs import METRICS, PAPER, PAPER_DATASET, Job
from .stats import paired_test


def summarize(table: str, rows: list[dict], out_dir: Path, target: str = "multikg4rec",
              command: str | None = None, planned: list[Job] | None = None) -> str:
    """Markdown: mean ± std over seeds, paper numbers, relative gaps, significance; plus plots.
    ``planned``: the jobs the call asked for; a model with fewer finished seeds shows "k of n", one
    with none a "not run yet" row, so a table never hides what is missing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {table}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command or 'multikg4rec reproduce ' + table}` "
             f"from {len(rows)} finished runs (`runs.csv`). Test metrics at K = 20 of the epoch chosen on valid "
             f"NDCG@20; mean ± std over seeds (one value when one seed has finished). Paper = the paper's MovieLens (ML) or Amazon-Books (AB) column; "
             f"gap = (ours - paper) / paper. Our KGs and features differ from the paper's (docs/results.md).", ""]
    planned = planned or []
    datasets = sorted({r["job"].dataset for r in rows} | {j.dataset for j in planned})
    for d in datasets:
        drows = [r for r in rows if r["job"].dataset == d]
        n_plan: dict[str, int] = {}
        for j in planned:
            if j.dataset == d:
                n_plan[j.label] = n_plan.get(j.label, 0) + 1
        labels = list(dict.fromkeys(list(n_plan) + [r["job"].label for r in drows]))   # the table's job order
        paper = PAPER.get(table, {}).get(PAPER_DATASET.get(d, ""), {})
        lines += [f"## {d}", "", "| model | seeds | Recall@20 | MRR@20 | NDCG@20 | paper R / M / N | gap NDCG | s/epoch | epochs |",
                  "|---|---|---|---|---|---|---|---|---|"]
        means, pending = {}, []
        for lab in labels:
            rs = [r for r in drows if r["job"].label == lab]
            p = paper.get(lab)
            ptxt = " / ".join(f"{x:.4f}" for x in p) if p else "–"
            seeds = f"{len(rs)} of {n_plan[lab]}" if len(rs) < n_plan.get(lab, 0) else f"{len(rs)}"
            if len(rs) < n_plan.get(lab, 0):
                pending.append(f"{lab} ({seeds} seeds)")
            if not rs:
                lines.append(f"| {lab} | {seeds} | not run yet | | | {ptxt} | – | | |")
                continue
            vals = np.array([[r["metrics"]["test"][k] for k in METRICS] for r in rs])
            mu, sd = vals.mean(0), vals.std(0, ddof=1) if len(rs) > 1 else np.zeros(3)
            means[lab] = (mu, sd, rs)
            gap = f"{(mu[2] - p[2]) / p[2] * 100:+.1f}%" if p else "–"
            spe = np.mean([r["metrics"]["seconds_per_epoch"] or 0 for r in rs])
            ep = np.mean([r["metrics"]["epochs_run"] for r in rs])
            cell = (lambda m, s: f"{m:.4f} ± {s:.4f}") if len(rs) > 1 else (lambda m, s: f"{m:.4f}")
            lines.append(f"| {lab} | {seeds} | " + " | ".join(cell(m, s) for m, s in zip(mu, sd))
                         + f" | {ptxt} | {gap} | {spe:.1f} | {ep:.0f} |")
        ours_label = "multikg4rec" if table == "table2" else "Multi-KG4Rec"
        if ours_label in means and len(means) > 1:
            others = {k: v for k, v in means.items() if k != ours_label}
            n_ours = len(means[ours_label][2])
            # the best other model with as many seeds as ours, and the best of all when that one has fewer
            # (a mean over fewer seeds is not comparable; its test covers only the seeds both have)
            full = {k: v for k, v in others.items() if len(v[2]) >= n_ours}
            picks = [(max(full, key=lambda k: full[k][0][2]), "best other by mean NDCG@20")] if full else []
            best_any = max(others, key=lambda k: others[k][0][2])
            if not picks or best_any != picks[0][0]:
                n_b = len(others[best_any][2])
                picks.append((best_any, "best other by mean NDCG@20" + (f", {n_b} of {n_ours} seeds" if n_b < n_ours
                                                                          else "")))
            for best, why in picks:
                t = paired_test(means[ours_label][2], others[best][2])
                if t:
                    lines += ["", f"Paired Wilcoxon signed-rank test, per-user test NDCG@20 over (seed, user) pairs: "
                                  f"{ours_label} vs {best} ({why}): mean difference "
                                  f"{t['mean_diff']:+.4f}, n = {t['n_pairs']}, p = {t['p_value']:.3g}."]
        if pending:
            lines += ["", "Not finished yet: " + ", ".join(pending) + ". The same `reproduce` command resumes them "
                      "(finished runs are skipped, interrupted ones continue from their last epoch)."]
        lines.append("")
        if means:
            _bar_plot(means, d, out_dir / f"{table}_{d}.png", f"{table} on {d}")
    text = "\n".join(lines) + "\n"
    (out_dir / f"{table}.md").write_text(text)
    return text

def _bar_plot(means: dict, dataset: str, path: Path, title: str) -> None:
    labels = list(means)
    bar_plot(labels, {metric: ([means[lab][0][k] for lab in labels], [means[lab][1][k] for lab in labels])
                      for k, metric in enumerate(METRICS)}, path, title)


def bar_plot(labels: list[str], series: dict[str, tuple[list, list]], path: Path, title: str) -> None:
    """Grouped bars: one group per label, one bar per series ``name -> (values, error bars)``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(labels)), 3.4))
    w = 0.8 / max(len(series), 1)
    for k, (name, (vals, errs)) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * w, vals, w, yerr=errs, capsize=2, label=name)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
