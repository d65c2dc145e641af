"""``multikg4rec reproduce table2|table3|table4|fig4|coldstart|popularity``: a table as a resumable sweep.

Results go to ``<results>/<table>/``: ``runs.csv`` (one row per run), ``<table>.md`` and PNG
plots. A table accumulates: a call for a subset (one dataset, one model, fewer seeds) keeps
the earlier rows of ``runs.csv`` it does not cover (``archive.earlier_rows``).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .archive import archive_runs, collect, earlier_rows, write_csv
from .figure4 import figure4
from .coldstart import summarize_coldstart
from .jobs import _in_table_order, jobs_for
from .plan import plan
from .popularity import adopt, missing, summarize_popularity
from .reports import summarize
from .scheduler import run_jobs, run_jobs_parallel


def reproduce(table: str, datasets: list[str], seeds: int, common: dict, out_root: Path = Path("results"),
              models: list[str] | None = None, only_summarize: bool = False, command: str | None = None,
              only_plan: bool = False, jobs_at_once: int = 1, archive: Path | None = None) -> Path:
    """Run (or resume) every run ``table`` needs, then write ``<out_root>/<table>/``. ``archive``: where the
    finished runs' small files are kept and read back (default ``<out_root>/runs``)."""
    out = out_root / table
    out.mkdir(parents=True, exist_ok=True)
    seed_list = list(range(seeds))
    if table == "fig4":
        figure4(datasets, common, out, command=command)
        return out
    jobs = jobs_for(table, datasets, seed_list, common, models)
    archive = Path(archive) if archive is not None else out_root / "runs"
    if only_plan:
        print(plan(jobs, common, archive, jobs_at_once))
        return out
    if not only_summarize:
        for f in out.glob("status.w*.json"):      # workers of an earlier call
            f.unlink()
        # popularity: archived runs without the breakdown are re-trained here (never read from the archive)
        todo, where = (missing(jobs, common, archive), None) if table == "popularity" else (jobs, archive)
        if jobs_at_once > 1:
            run_jobs_parallel(todo, common, jobs_at_once, out / "status.json", where)
        else:
            run_jobs(todo, common, status_file=out / "status.json", archive=where)
    if table == "popularity":
        adopt(jobs, common, archive)
    rows = collect(jobs, common, archive)
    if not rows:
        raise UserError(f"no finished runs for {table} yet")
    archive_runs(rows, archive)
    kept, datasets = earlier_rows(out / "runs.csv", rows)
    rows = _in_table_order(table, kept + rows, datasets, common)
    write_csv(rows, out / "runs.csv")
    if table == "coldstart":
        print(summarize_coldstart(rows, out, command=command, planned=jobs))
    elif table == "popularity":
        print(summarize_popularity(rows, out, command=command))
    else:
        print(summarize(table, rows, out, command=command, planned=jobs))
    return out
