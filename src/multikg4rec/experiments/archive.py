"""The run archive (``results/runs/``) and a table's record of its runs (``runs.csv``).

The archive keeps the small files of every finished run a committed table uses
(``ARCHIVE_FILES``), under ``<archive>/<dataset>/<model>/<run>/``, so tables rebuild on a
fresh checkout without the git-ignored ``runs/``. A job's run is found in it by its config
(``rundir.find_run``), never by its directory's name.
"""
from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

from ..rundir import find_run, is_finished, read_config, read_json
from .jobs import METRICS, Job, table_job

log = logging.getLogger(__name__)


#: the small files of a finished run that the archive keeps (a few KB each): enough for every table,
#: the paired tests and the learning curves (log.jsonl)
ARCHIVE_FILES = ("metrics.json", "config.yaml", "per_user_test.npz", "per_user_test_hybrid.npz", "log.jsonl")


def archived(cfg: dict, archive: Path | None) -> Path | None:
    """The finished run of ``cfg`` in the archive, found by its stored config; None without one."""
    if archive is None:
        return None
    d = find_run(cfg, archive)
    return d if d is not None and is_finished(d) else None


def finished_dir(cfg: dict, archive: Path | None) -> Path | None:
    """Where the finished run of ``cfg`` is: its archive copy (the committed record, so a table rebuilt on a
    fresh checkout is the same table), else its local run directory, else None. A run re-trained here (e.g. by
    the RecBole check) does not replace an archived result silently: ``collect`` warns."""
    if (d := archived(cfg, archive)) is not None:
        return d
    local = find_run(cfg)
    return local if local is not None and is_finished(local) else None


def _differs(local: Path | None, kept: Path, kept_metrics: dict) -> str | None:
    """A one-line warning if ``local`` is a finished run other than its archive copy ``kept`` and the two
    disagree on test NDCG@20."""
    if local is None or local == kept or not is_finished(local):
        return None
    a = read_json(local / "metrics.json")["test"].get("ndcg@20")
    b = kept_metrics["test"].get("ndcg@20")
    if a == b:
        return None
    return (f"{local} was re-trained here (test NDCG@20 {a:.4f}) and differs from its archived copy {kept} "
            f"({b:.4f}); the tables use the archived copy. To use the new run instead, delete the archived copy "
            f"and run the command again with --summarize (it re-archives the run found here).")


def archive_runs(rows: list[dict], archive: Path) -> None:
    """Copy the small files of each finished run into the archive (never overwriting a finished copy, never
    adding a second run of a config the archive already holds), and point each row at its archive copy:
    ``runs.csv`` must name the committed record, not a run directory that only this machine has."""
    for r in rows:
        src = Path(r["run_dir"])
        if src.resolve().is_relative_to(Path(archive).resolve()):
            continue
        kept = archived(read_config(src), archive)
        dst = kept or Path(archive).joinpath(*src.parts[-3:])
        if not is_finished(dst):
            dst.mkdir(parents=True, exist_ok=True)
            for name in ARCHIVE_FILES[::-1]:              # metrics.json last: it marks the copy complete
                if (src / name).is_file():
                    shutil.copy2(src / name, dst / name)
        r["run_dir"] = dst


def collect(jobs: list[Job], common: dict, archive: Path | None = None) -> list[dict]:
    """Finished runs of the jobs (read from the archive, else from their run directories)."""
    rows = []
    for job in jobs:
        cfg = job.config(common)
        rd = finished_dir(cfg, archive)
        if rd is not None:
            metrics = read_json(rd / "metrics.json")
            if warning := _differs(find_run(cfg), rd, metrics):
                log.warning(warning)
            rows.append({"job": job, "run_dir": rd, "metrics": metrics})
    return rows

def earlier_rows(csv_path: Path, rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Rows of the table's earlier ``runs.csv`` that this invocation did not cover (another dataset, seed or
    model), so that ``reproduce table2 --datasets ml-1m --models lightgcn`` adds to the table instead of replacing
    it with one model. A row whose run directory is gone is dropped, with a warning; delete ``runs.csv`` to start
    a table afresh. Also returns the datasets in the earlier file's order (the table keeps it)."""
    if not csv_path.is_file():
        return [], []
    have = {(r["job"].label, r["job"].dataset, r["job"].seed) for r in rows}
    kept, gone, datasets = [], [], []
    with open(csv_path, newline="") as f:
        for r in csv.DictReader(f):
            if r["dataset"] not in datasets:
                datasets.append(r["dataset"])
            key = (r["label"], r["dataset"], int(r["seed"]))
            if key in have:
                continue
            rd = Path(r["run_dir"])
            if not (rd / "metrics.json").is_file():
                gone.append(f"{r['label']}/{r['dataset']}/seed {r['seed']} ({rd})")
                continue
            kept.append({"job": table_job(r["label"], r["model"], r["dataset"], int(r["seed"])), "run_dir": rd,
                         "metrics": read_json(rd / "metrics.json")})
    if gone:
        log.warning("%s: dropped %d earlier row(s) whose run directory is missing: %s",
                    csv_path, len(gone), "; ".join(gone))
    return kept, datasets

def write_csv(rows: list[dict], path: Path) -> None:
    hybrid = any("test_hybrid" in r["metrics"] for r in rows)        # the cold-item protocol's second ranking
    cols = ["label", "model", "dataset", "seed", *METRICS, *([f"hybrid_{k}" for k in METRICS] if hybrid else []),
            "valid_ndcg@20", "best_epoch", "epochs_run",
            "seconds_per_epoch", "train_seconds_total", "peak_rss_mb", "encoder", "commit", "config_hash", "run_dir"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")                # plain lines: shell tools see no trailing \r
        w.writerow(cols)
        for r in rows:
            m, j = r["metrics"], r["job"]
            w.writerow([j.label, j.model, j.dataset, j.seed, *[m["test"][k] for k in METRICS],
                        *([m.get("test_hybrid", {}).get(k) for k in METRICS] if hybrid else []),
                        m["valid"]["ndcg@20"], m["best_epoch"], m["epochs_run"], m["seconds_per_epoch"],
                        m.get("train_seconds_total"), m["peak_rss_mb"], m.get("encoder"), m.get("commit"),
                        m.get("config_hash"), str(r["run_dir"])])
