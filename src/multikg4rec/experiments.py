"""The paper's tables and figure as sweeps: ``multikg4rec reproduce table2|table3|table4|fig4``.

A sweep is a list of jobs (model, dataset, seed, config overrides). Each job is an
ordinary run (``training.run``) whose directory is determined by its config, so a
sweep is resumable for free: finished runs are read back, interrupted ones resume
from their checkpoint, and nothing finished is ever overwritten. Results go to
``results/<table>/``: ``runs.csv`` (one row per run), ``<table>.md`` (mean ± std
over seeds, the paper's numbers beside ours, relative gaps, a paired Wilcoxon test
of Multi-KG4Rec against the best baseline on per-user test NDCG@20) and PNG plots.
A table accumulates: a call for a subset (one dataset, one model, fewer seeds) keeps
the earlier rows of ``runs.csv`` it does not cover (``earlier_rows``).
"""
from __future__ import annotations

import csv
import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import config_hash, load_config
from .errors import Interrupted, RunBusy, UserError
from .fingerprint import file_digest

log = logging.getLogger(__name__)

METRICS = ("recall@20", "mrr@20", "ndcg@20")

# SPEC §8 and the paper's Tables 3-4 (K = 20). "ML" is MovieLens-1M in the paper.
PAPER = {
    "table2": {
        "ML": {"spectralcf": (0.2199, 0.3714, 0.2082), "convncf": (0.1815, 0.3405, 0.1794),
               "kgat": (0.2489, 0.3941, 0.2303), "kgcn": (0.2268, 0.3783, 0.2165),
               "cke": (0.2217, 0.3754, 0.2128), "mkgat": (0.2513, 0.3963, 0.2311),
               "multikg4rec": (0.2552, 0.4077, 0.2383)},
        "AB": {"spectralcf": (0.1327, 0.0541, 0.0602), "convncf": (0.0404, 0.0148, 0.0175),
               "kgat": (0.1431, 0.0553, 0.0702), "kgcn": (0.1418, 0.0528, 0.0677),
               "cke": (0.1324, 0.0491, 0.0612), "mkgat": (0.1477, 0.0560, 0.0707),
               "multikg4rec": (0.1498, 0.0572, 0.0727)},
    },
    "table3": {"ML": {"w/o t&v": (0.2489, 0.3941, 0.2303), "w/o v": (0.2518, 0.4014, 0.2327),
                      "w/o t": (0.2531, 0.4016, 0.2340), "Multi-KG4Rec": (0.2542, 0.4033, 0.2371)}},
    "table4": {"ML": {"w/o t&v": (0.2453, 0.3907, 0.2251), "t2v": (0.2437, 0.3917, 0.2244),
                      "v2t": (0.2444, 0.3944, 0.2227), "Multi-KG4Rec": (0.2552, 0.4077, 0.2383)},
               "AB": {"w/o t&v": (0.1473, 0.0566, 0.0716), "t2v": (0.1428, 0.0514, 0.0674),
                      "v2t": (0.1436, 0.0521, 0.0662), "Multi-KG4Rec": (0.1498, 0.0572, 0.0727)}},
}
PAPER_DATASET = {"ml-1m": "ML", "ml-100k": "ML", "amazon-book": "AB"}

TABLE2_MODELS = ["bprmf", "lightgcn", "spectralcf", "convncf", "cke", "kgcn", "kgat", "mkgat", "multikg4rec"]
KG_FREE = {"bprmf", "lightgcn", "spectralcf", "convncf"}
#: datasets whose data folder comes with a knowledge graph (table_jobs does not load them to check)
DATASETS_WITH_KG = {"ml-100k", "ml-1m", "lastfm-2k"}


#: settings the committed paper tables (and Fig. 4) were trained with where a model's default has changed
#: since: a table job starts from them, so ``reproduce`` keeps finding (and re-running the same way) the archived
#: runs; an option given on the command line still wins (``--kg_loss_triples kg`` runs the tables with the
#: current default). Multi-KG4Rec's ``kg_loss_triples`` became ``kg`` on 2026-12-03; every Table 2-4 and Fig. 4
#: run before trained TransR over the whole CKG (``ckg``).
TABLE_RECIPES: dict[str, dict] = {"multikg4rec": {"kg_loss_triples": "ckg"}}


@dataclass
class Job:
    label: str
    model: str
    dataset: str
    seed: int
    overrides: dict = field(default_factory=dict)
    #: under ``common`` (the command line): a paper table's recipe (``TABLE_RECIPES``); ``overrides`` are above it
    defaults: dict = field(default_factory=dict)

    def config(self, common: dict) -> dict:
        return load_config(self.model, self.dataset, None,
                           {**self.defaults, **common, **self.overrides, "seed": self.seed})


def table_job(label: str, model: str, dataset: str, seed: int, overrides: dict | None = None) -> Job:
    """A job of a paper table (or Fig. 4): with the table's recipe for ``model`` (``TABLE_RECIPES``)."""
    return Job(label, model, dataset, seed, dict(overrides or {}), dict(TABLE_RECIPES.get(model, {})))


def _modalities(dataset: str, common: dict) -> list[str]:
    return list(load_config("multikg4rec", dataset, None, common)["modalities"])


def table_jobs(table: str, datasets: list[str], seeds: list[int], common: dict,
               models: list[str] | None = None) -> list[Job]:
    jobs = []
    for d in datasets:
        # a dataset without a KG (amazon-book here; a user's catalogue) runs only the collaborative models;
        # the datasets shipped with a KG are not loaded to ask
        kg = d in DATASETS_WITH_KG or _has_kg(d, common)
        if not kg and table in ("table3", "table4"):
            raise UserError(f"{table} compares Multi-KG4Rec variants, which need a knowledge graph; dataset {d!r} "
                            f"has none (put {d}.kg and {d}.link in its folder)")
        if not kg and table == "table2":
            log.warning("%s has no knowledge graph: table2 runs its collaborative models only (%s)", d,
                        ", ".join(m for m in models or TABLE2_MODELS if m in KG_FREE))
        for s in seeds:
            if table == "table2":
                for m in models or TABLE2_MODELS:
                    if kg or m in KG_FREE:
                        jobs.append(table_job(m, m, d, s))
            elif table == "table3":
                mods = _modalities(d, common)
                text = [m for m in mods if m == "text"]
                other = [m for m in mods if m != "text"]
                ab = "v" if other in ([], ["image"]) else "+".join(other)      # the paper's "v"; lastfm-2k: audio
                for label, ms in (("Multi-KG4Rec", mods), (f"w/o {ab}", text), ("w/o t", other), (f"w/o t&{ab}", [])):
                    jobs.append(table_job(label, "multikg4rec", d, s, {"modalities": ms}))
            elif table == "table4":
                for label, fusion in (("Multi-KG4Rec", "bi"), ("t2v", "t2v"), ("v2t", "v2t")):
                    jobs.append(table_job(label, "multikg4rec", d, s, {"fusion": fusion}))
                jobs.append(table_job("w/o t&v", "multikg4rec", d, s, {"modalities": []}))
            else:
                raise UserError(f"unknown table {table!r}; choose table2, table3, table4 or fig4")
    # identical configs (e.g. the full model in tables 3 and 4) share one run directory
    return jobs


def _has_kg(dataset: str, common: dict) -> bool:
    from .data import load_dataset
    cfg = load_config("bprmf", dataset, None, common)
    return load_dataset(dataset, cfg, data_dir=cfg.get("data_dir"), cache_dir=cfg.get("cache_dir")).has_kg


# --------------------------------------------------------------------------- running

#: the small files of a finished run that ``results/runs/`` keeps (a few KB each): enough for every table,
#: the paired tests and the learning curves (log.jsonl), so tables accumulate across machines without the
#: git-ignored ``runs/`` directory
ARCHIVE_FILES = ("metrics.json", "config.yaml", "per_user_test.npz", "log.jsonl")


def archived(archive: Path | None, run_dir: Path) -> Path | None:
    """The archive copy of ``run_dir`` (``<archive>/<dataset>/<model>/<name>``) if it holds a finished run."""
    if archive is None:
        return None
    d = Path(archive).joinpath(*Path(run_dir).parts[-3:])
    return d if (d / "metrics.json").is_file() else None


def finished_dir(run_dir: Path, archive: Path | None) -> Path | None:
    """Where a finished run's files are: its archive copy (the committed record, so a table rebuilt on a
    fresh checkout is the same table), else its run directory, else None. A run re-trained here under the
    same name (e.g. by the RecBole check) does not replace an archived result silently: ``collect`` warns."""
    return archived(archive, run_dir) or (run_dir if (Path(run_dir) / "metrics.json").is_file() else None)


def _differs(local: Path, kept: Path, kept_metrics: dict) -> str | None:
    """A one-line warning if ``local`` is a finished run other than its archive copy ``kept`` and the two
    disagree on test NDCG@20."""
    if local == kept or not (local / "metrics.json").is_file():
        return None
    a = json.loads((local / "metrics.json").read_text())["test"].get("ndcg@20")
    b = kept_metrics["test"].get("ndcg@20")
    if a == b:
        return None
    return (f"{local} was re-trained here (test NDCG@20 {a:.4f}) and differs from its archived copy {kept} "
            f"({b:.4f}); the tables use the archived copy. To use the new run instead, delete the archived copy "
            f"and run the command again with --summarize (it re-archives the run found here).")


def archive_runs(rows: list[dict], archive: Path) -> None:
    """Copy the small files of each finished run into the archive (never overwriting a finished copy), and
    point each row at its archive copy: ``runs.csv`` must name the committed record, not a run directory that
    only this machine has (a fresh checkout would drop such a row from the table)."""
    import shutil
    for r in rows:
        src = Path(r["run_dir"])
        dst = Path(archive).joinpath(*src.parts[-3:])
        if src != dst and not (dst / "metrics.json").is_file():
            dst.mkdir(parents=True, exist_ok=True)
            for name in ARCHIVE_FILES[::-1]:              # metrics.json last: it marks the copy complete
                if (src / name).is_file():
                    shutil.copy2(src / name, dst / name)
        r["run_dir"] = dst


def run_jobs(jobs: list[Job], common: dict, quiet_runs: bool = True, status_file: Path | None = None,
             archive: Path | None = None, worker: int | None = None) -> list[dict]:
    """Run every job not finished yet (in the run directories or the ``archive``), one after another;
    a failing job is logged and skipped. ``worker``: this is extra worker ``k`` of ``reproduce --jobs``
    (no progress bar of its own; its messages say which worker)."""
    from tqdm.auto import tqdm

    from .models import get_model_class
    from .training import default_run_dir, run
    rows = []
    say = tqdm.write if worker is None else (lambda msg: tqdm.write(f"[worker {worker}] {msg}"))

    skipped = []

    def report(running=None, finished: bool = False, **extra) -> None:
        # "done": the jobs behind us (finished and read, or skipped), not those another process or worker is
        # training; the pid lets `reproduce status` tell a live sweep, foreground or background, from a dead one
        if status_file:
            done = len(jobs) if finished else len(rows) + len(skipped)
            status_file.write_text(json.dumps({"running": running, "done": done, "total": len(jobs),
                                               **({"finished": True} if finished else {}),
                                               "pid": os.getpid(), "time": time.time(), **extra}))

    def attempt(job: Job, cfg: dict) -> None:
        """Train ``job`` (its prerequisites first) and keep its row; RunBusy propagates to the caller."""
        try:
            for pre in get_model_class(cfg["model"]).prerequisites(cfg):  # e.g. ConvNCF's BPR-MF initialisation
                say(f"{job.label} on {job.dataset} seed {job.seed} needs {pre['model']} first: training it")
                run(pre, quiet=quiet_runs)
            res = run(cfg, quiet=quiet_runs)
        except Interrupted as e:                  # Ctrl-C / kill: stop the sweep, not only this run
            report(interrupted=str(e))
            raise
        except RunBusy:
            raise
        except UserError as e:
            say(f"skipped {job.label} on {job.dataset} seed {job.seed}: {e}")
            skipped.append(job)
            return
        rows.append({"job": job, "run_dir": res.run_dir, "metrics": res.metrics})

    busy: list[tuple[Job, dict, Path]] = []
    bar = tqdm(jobs, desc="sweep", unit="run", dynamic_ncols=True, disable=worker is not None)
    for job in bar:
        cfg = job.config(common)
        rd = default_run_dir(cfg)
        done = finished_dir(rd, archive)
        if done is not None:                              # finished here or archived from another machine: read
            rows.append({"job": job, "run_dir": done, "metrics": json.loads((done / "metrics.json").read_text())})
            continue
        bar.set_postfix_str(f"{job.label} {job.dataset} seed {job.seed}")
        report([job.label, job.dataset, job.seed, str(rd)])
        try:
            if run_dir_busy(rd):                          # cheap probe before loading the data
                raise RunBusy(f"{rd} is in use by another running process", rd)
            attempt(job, cfg)
            if worker is not None and rows and rows[-1]["job"] is job:
                say(f"trained {job.label} on {job.dataset} seed {job.seed}: test NDCG@20 "
                    f"{rows[-1]['metrics']['test']['ndcg@20']:.4f}")
        except RunBusy as e:                      # another sweep or worker (table 3 beside table 4) is training it
            if worker is None:
                say(f"{job.label} on {job.dataset} seed {job.seed} is being trained by another process; "
                    "coming back to it at the end")
            busy.append((job, cfg, Path(e.run_dir or rd)))   # the locked dir: this run's or a prerequisite's
    for job, cfg, locked in busy:              # wait for the other process, then read (or resume) the run
        report([job.label, job.dataset, job.seed, str(locked)], waiting=True)
        with open(locked / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)      # blocks until the other process lets go of the run
            fcntl.flock(lock, fcntl.LOCK_UN)
        try:
            attempt(job, cfg)
        except RunBusy as e:                      # taken again in between by yet another process
            say(f"skipped {job.label} on {job.dataset} seed {job.seed}: {e}")
    report(finished=True)
    return rows


def collect(jobs: list[Job], common: dict, archive: Path | None = None) -> list[dict]:
    """Finished runs of the jobs (read from the archive, else from their run directories)."""
    from .training import default_run_dir
    rows = []
    for job in jobs:
        local = default_run_dir(job.config(common))
        rd = finished_dir(local, archive)
        if rd is not None:
            metrics = json.loads((rd / "metrics.json").read_text())
            if warning := _differs(Path(local), rd, metrics):
                log.warning(warning)
            rows.append({"job": job, "run_dir": rd, "metrics": metrics})
    return rows


def plan(jobs: list[Job], common: dict, archive: Path | None = None, n_workers: int = 1) -> str:
    """What a sweep still has to do, run by run: finished (here or archived), in progress (its last epoch) or
    to train, with the minutes each should take, estimated from the finished runs of the same kind (same
    model, label and dataset; their recorded ``train_seconds_total``), else from the finished runs of the
    same model and dataset under other labels (said so), else, for a part-done run, as an upper bound from
    its own log (``_own_pace``). With ``n_workers`` > 1 (``--jobs``) also the wall time: each worker takes the
    next run in the list when it is free (``run_jobs_parallel``). Trains nothing."""
    from .training import default_run_dir
    states, spent, pacers = [], {}, {}
    for job in jobs:
        rd = default_run_dir(job.config(common))
        done = finished_dir(rd, archive)
        key = (job.model, job.label, job.dataset)
        if done is not None:
            m = json.loads((done / "metrics.json").read_text())
            if m.get("train_seconds_total"):
                spent.setdefault(key, []).append((float(m["train_seconds_total"]), int(m["epochs_run"])))
            states.append((job, rd, "finished", None))
            continue
        epochs = len(_log_entries(rd))
        if epochs:
            pacers.setdefault(key, rd)                    # a part-done run paces the unstarted ones of its kind
        states.append((job, rd, f"in progress (epoch {epochs})" if epochs else "to train", epochs))
    lines, unknown, lefts = [], 0, []             # lefts: seconds still to train, per estimated run
    width = max((len(j.label) for j in jobs), default=0)
    seen = set()
    for job, rd, state, epochs in states:
        if rd in seen:                                    # tables 3 and 4 list the full model and w/o t&v twice
            continue
        seen.add(rd)
        eta = ""
        if epochs is not None:
            key = (job.model, job.label, job.dataset)
            pacer = rd if epochs else pacers.get(key)
            past = spent.get(key)
            other = not past                              # e.g. t2v: estimate from the model's other variants
            if other:
                past = [x for (m, _, d), runs in spent.items() if (m, d) == (job.model, job.dataset) for x in runs]
            if past:
                secs = float(np.median([s for s, _ in past]))
                left = secs * max(0.0, 1 - epochs / float(np.median([e for _, e in past])))
                lefts.append(left)
                eta = f"~{left / 60:.0f} min" + (" (from other variants of the model)" if other else "")
            elif pacer is not None and (own := _own_pace(pacer, job.config(common), epochs)) is not None:
                left, note = own       # the first ConvNCF run on ml-1m, part-way; seeds 1-2 at seed 0's pace
                if pacer != rd:
                    note = f"at the pace of {pacer.name}: " + note.replace("its own", "its")
                lefts.append(left)
                eta = f"<= ~{left / 60:.0f} min ({note})"
            else:
                unknown += 1
                eta = "(no estimate)"
        lines.append(f"  {job.label:<{width}}  {job.dataset:<9}  seed {job.seed}  {state}"
                     + (f"  {eta}" if eta else ""))
    n_done = len({rd for _, rd, state, _ in states if state == "finished"})
    head = f"{len(seen)} runs: {n_done} finished, {len(seen) - n_done} to do"
    if len(seen) - n_done > unknown:
        head += (f"; about {sum(lefts) / 3600:.1f} h of training at the speed the finished runs of the same kind "
                 "recorded, or else at a part-done run's own pace (one run per core)")
        if n_workers > 1:
            head += f"; with --jobs {n_workers}: about {_makespan(lefts, n_workers) / 3600:.1f} h of wall time"
    if unknown:
        head += f"; {unknown} run(s) with no finished run of their kind to estimate from"
    return "\n".join([head, *lines])


def _makespan(durations: list[float], n_workers: int) -> float:
    """When the last of ``durations`` ends if each of ``n_workers`` takes the next one in order once free."""
    import heapq
    free_at = [0.0] * n_workers
    for d in durations:
        heapq.heappush(free_at, heapq.heappop(free_at) + d)
    return max(free_at)


def _own_pace(run_dir: Path, cfg: dict, epochs: int) -> tuple[float, str] | None:
    """An upper bound on what a part-done run with no finished run of its kind still needs, from its own
    log: its mean epoch (training) times the epochs left to its cap (``epochs``; early stopping may end it
    sooner), plus its mean validation times the validations left and the test pass, once it has validated."""
    log = [e for e in _log_entries(run_dir) if e.get("train_seconds")]
    if not log:
        return None
    left_epochs = max(0, int(cfg["epochs"]) - epochs)
    left = left_epochs * float(np.mean([e["train_seconds"] for e in log]))
    evals = [e["eval_seconds"] for e in log if e.get("eval_seconds")]
    if evals:
        n_evals = sum(1 for e in range(epochs + 1, int(cfg["epochs"]) + 1)
                      if e % int(cfg["eval_every"]) == 0 or e == int(cfg["epochs"]))
        left += (n_evals + 1) * float(np.mean(evals))
        note = f"its own epochs and validations, {left_epochs} epoch{'' if left_epochs == 1 else 's'} left to its cap"
    else:
        note = f"its own epochs x {left_epochs} left to its cap; validations not timed yet, not included"
    return left, note


def write_csv(rows: list[dict], path: Path) -> None:
    cols = ["label", "model", "dataset", "seed", *METRICS, "valid_ndcg@20", "best_epoch", "epochs_run",
            "seconds_per_epoch", "train_seconds_total", "peak_rss_mb", "encoder", "commit", "config_hash", "run_dir"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")                # plain lines: shell tools see no trailing \r
        w.writerow(cols)
        for r in rows:
            m, j = r["metrics"], r["job"]
            w.writerow([j.label, j.model, j.dataset, j.seed, *[m["test"][k] for k in METRICS],
                        m["valid"]["ndcg@20"], m["best_epoch"], m["epochs_run"], m["seconds_per_epoch"],
                        m.get("train_seconds_total"), m["peak_rss_mb"], m.get("encoder"), m.get("commit"),
                        m.get("config_hash"), str(r["run_dir"])])


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
    from .data.dataset import DATA_KEYS
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

    import yaml

    def rows(dirs):
        out = []
        for d in map(Path, dirs):
            if not (d / "metrics.json").is_file() or not (d / "per_user_test.npz").is_file():
                raise UserError(f"{d} is not a finished run (no metrics.json / per_user_test.npz)")
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            out.append({"job": SimpleNamespace(seed=int(cfg["seed"])), "run_dir": d, "split": _split_identity(d, cfg),
                        "test": json.loads((d / "metrics.json").read_text())["test"][metric]})
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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(means)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(labels)), 3.4))
    w = 0.27
    for k, metric in enumerate(METRICS):
        ax.bar(x + (k - 1) * w, [means[l][0][k] for l in labels], w, yerr=[means[l][1][k] for l in labels],
               capsize=2, label=metric)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- Figure 4

def figure4(datasets: list[str], common: dict, out: Path, n_users: int = 8, seed: int = 0,
            command: str | None = None) -> None:
    """The case study: per-user modality attention of the seed-``seed`` Multi-KG4Rec run of each
    dataset (trained first if needed), for ``n_users`` users sampled with that seed. Writes
    ``fig4_<dataset>.csv`` (user x modality shares), a heatmap PNG, and each user's report."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .explain import explain, load_run
    for d in datasets:
        res = run_jobs([table_job("Multi-KG4Rec", "multikg4rec", d, seed)], common)
        if not res:
            continue
        model, ds, _ = load_run(res[0]["run_dir"])
        users = np.random.default_rng(seed).choice(np.unique(ds.train[:, 0]), size=min(n_users, ds.n_users),
                                                   replace=False)
        reports = [explain(model, ds, int(u), out=out / d) for u in sorted(users)]
        mods = reports[0]["tables"]
        kinds = [k for k in ("fusion", "propagation", "score", "modality") if k in reports[0]]
        with open(out / f"fig4_{d}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["user", *[f"{k}:{m}" for k in kinds for m in mods]])
            for r in reports:
                w.writerow([r["user_token"], *[r[k].get(m, 0.0) for k in kinds for m in mods]])
        panels = [k for k in ("fusion", "score", "modality") if k in reports[0]]
        titles = {"fusion": "Bi-Transformer attention", "score": "share of the score", "modality": "combined"}
        fig, axes = plt.subplots(1, len(panels), figsize=(1.5 + 2.2 * len(panels) * max(1, len(mods)) / 2,
                                                          1.2 + 0.4 * len(reports)), squeeze=False)
        for ax, kind in zip(axes[0], panels):
            mat = np.array([[r[kind].get(m, 0.0) for m in mods] for r in reports])
            im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=1, aspect="auto")
            ax.set_xticks(range(len(mods)), mods)
            first = ax is axes[0][0]
            ax.set_yticks(range(len(reports)), [f"u{r['user_token']}" for r in reports] if first else [])
            for i in range(mat.shape[0]):
                for j in range(mat.shape[1]):
                    ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
            ax.set_title(titles[kind], fontsize=9)
        fig.suptitle(f"per-user modality shares, {d} (Multi-KG4Rec, seed {seed})", fontsize=10)
        fig.colorbar(im, ax=list(axes[0]))
        fig.savefig(out / f"fig4_{d}.png", dpi=120)
        plt.close(fig)
        lines = [f"# Figure 4 (case study), {d}", "",
                 f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command or 'multikg4rec reproduce fig4'}` from "
                 f"{res[0]['run_dir']} ({len(reports)} users sampled with seed {seed}). Per user, over their top "
                 f"train items: the Bi-Transformer attention mass on each modality's keys (`fusion`), each "
                 f"modality's share of the user's scores (`score`) and their mean (`modality`); "
                 f"`multikg4rec explain` gives the per-item detail (`{d}/user*.json`).", "",
                 "| user | " + " | ".join(f"{k} {m}" for k in panels for m in mods) + " |",
                 "|---|" + "---|" * (len(panels) * len(mods))]
        lines += [f"| {r['user_token']} | " + " | ".join(f"{r[k].get(m, 0.0):.3f}" for k in panels for m in mods) + " |"
                  for r in reports]
        spread = {k: {m: (min(r[k][m] for r in reports), max(r[k][m] for r in reports)) for m in mods} for k in panels}
        lines += ["", "Range over these users: " + "; ".join(
            f"{k} {m} {lo:.3f}-{hi:.3f}" for k in panels for m, (lo, hi) in spread[k].items()) + ".", ""]
        (out / f"fig4_{d}.md").write_text("\n".join(lines))
        print(f"{d}: {len(reports)} users -> {out / f'fig4_{d}.png'}, {out / f'fig4_{d}.md'}")


# --------------------------------------------------------------------------- hyper-parameter search

#: SPEC §6: the paper's search space
GRID = {"batch_size": [512, 1024, 2048], "learning_rate": [0.05, 0.01, 0.005, 0.001],
        "reg_weight": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]}


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


# --------------------------------------------------------------------------- entry points

#: seconds between the start of ``reproduce --jobs`` workers (long enough for the previous one to load its
#: run's data and take the run's lock, so that two workers rarely load the same run)
WORKER_STAGGER_S = 5.0


def run_dir_busy(run_dir: Path) -> bool:
    """Whether another live process holds ``run_dir``'s lock (the one ``training.run`` takes). A probe only:
    ``training.run`` takes the lock for real and raises ``RunBusy`` if it lost a race."""
    lock_file = Path(run_dir) / ".lock"
    if not lock_file.is_file():
        return False
    with open(lock_file, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _sweep_worker(jobs: list[Job], common: dict, status_file: Path | None, archive: Path | None,
                  worker: int, ready, start) -> None:
    """Entry point of one extra worker process of ``reproduce --jobs N`` (started with ``spawn``): say when the
    imports are done (``ready``), wait for ``start``, then run the sweep's list like any other worker."""
    import signal
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill -> the run keeps its last epoch
    logging.basicConfig(level=logging.WARNING, format=f"warning [worker {worker}]: %(message)s")
    try:
        from . import models, training  # noqa: F401  (torch and the models: the slow part of starting)
        ready.set()
        start.wait()
        run_jobs(jobs, common, status_file=status_file, archive=archive, worker=worker)
    except (KeyboardInterrupt, Interrupted):
        sys.exit(130)


def run_jobs_parallel(jobs: list[Job], common: dict, n_workers: int, status_file: Path | None = None,
                      archive: Path | None = None) -> None:
    """``reproduce --jobs N``: N processes work through the same job list at once. They share it through the
    run-directory locks: a process skips a run another one is training and comes back to it at the end (to read
    its result, or to train it if that process died), so every run is trained once. This process is worker 0;
    workers 1..N-1 are spawned and write ``status.w<k>.json`` beside ``status_file``. Ctrl-C / kill stops them
    all, each keeping its run's last finished epoch."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")                 # not fork: torch's thread pools do not survive a fork
    procs, starts = [], []
    try:
        for k in range(1, n_workers):
            ready, start = ctx.Event(), ctx.Event()
            p = ctx.Process(target=_sweep_worker, name=f"sweep-worker-{k}",
                            args=(jobs, common, status_file and status_file.with_name(f"status.w{k}.json"),
                                  archive, k, ready, start))
            p.start()
            procs.append(p)
            starts.append(start)
            while not ready.wait(1.0) and p.is_alive():   # its imports done: the stagger is not eaten by them
                pass
        # this process takes the first run at once, worker k after k x WORKER_STAGGER_S (the next free one)
        for k, start in enumerate(starts):
            threading.Timer(WORKER_STAGGER_S * (k + 1), start.set).start()
        run_jobs(jobs, common, status_file=status_file, archive=archive)
    finally:
        stopping = sys.exc_info()[0] is not None
        for p in procs:
            if stopping:
                p.join(timeout=5)                 # Ctrl-C reached the workers too: they are stopping
                if p.is_alive():
                    p.terminate()                 # a kill of this process alone: pass it on (SIGTERM)
            p.join()
            if p.exitcode not in (0, 130, -15):
                log.warning(f"sweep worker {p.name} exited with code {p.exitcode}; its runs were taken over "
                            "or are left to the next call")


def reproduce(table: str, datasets: list[str], seeds: int, common: dict, out_root: Path = Path("results"),
              models: list[str] | None = None, only_summarize: bool = False, command: str | None = None,
              only_plan: bool = False, jobs_at_once: int = 1) -> Path:
    out = out_root / table
    out.mkdir(parents=True, exist_ok=True)
    seed_list = list(range(seeds))
    if table == "fig4":
        figure4(datasets, common, out, command=command)
        return out
    jobs = table_jobs(table, datasets, seed_list, common, models)
    archive = out_root / "runs"
    if only_plan:
        print(plan(jobs, common, archive, jobs_at_once))
        return out
    if not only_summarize:
        for f in out.glob("status.w*.json"):      # workers of an earlier call
            f.unlink()
        if jobs_at_once > 1:
            run_jobs_parallel(jobs, common, jobs_at_once, out / "status.json", archive)
        else:
            run_jobs(jobs, common, status_file=out / "status.json", archive=archive)
    rows = collect(jobs, common, archive)
    if not rows:
        raise UserError(f"no finished runs for {table} yet")
    archive_runs(rows, archive)
    kept, datasets = earlier_rows(out / "runs.csv", rows)
    rows = _in_table_order(table, kept + rows, datasets, common)
    write_csv(rows, out / "runs.csv")
    print(summarize(table, rows, out, command=command, planned=jobs))
    return out


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
                         "metrics": json.loads((rd / "metrics.json").read_text())})
    if gone:
        log.warning("%s: dropped %d earlier row(s) whose run directory is missing: %s",
                    csv_path, len(gone), "; ".join(gone))
    return kept, datasets


def _in_table_order(table: str, rows: list[dict], datasets: list[str], common: dict) -> list[dict]:
    """Rows sorted as the table lists its jobs (``datasets`` first, in that order, then any new ones; seed;
    model/variant); unknown labels last."""
    datasets = list(dict.fromkeys([*datasets, *(r["job"].dataset for r in rows)]))
    seeds = sorted({r["job"].seed for r in rows})
    order = {(j.label, j.dataset, j.seed): i for i, j in enumerate(table_jobs(table, datasets, seeds, common))}
    return sorted(rows, key=lambda r: order.get((r["job"].label, r["job"].dataset, r["job"].seed), len(order)))


def launch_background(argv: list[str], out: Path) -> int:
    """Re-run this command detached from the terminal; its log goes to ``out/sweep.log``."""
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "sweep.log", "a")
    p = subprocess.Popen([sys.executable, "-m", "multikg4rec.cli", *argv], stdout=logf, stderr=subprocess.STDOUT,
                         start_new_session=True, env=os.environ.copy())
    (out / "sweep.pid").write_text(str(p.pid))
    print(f"started in the background (pid {p.pid}); log: {out / 'sweep.log'}; "
          f"progress: multikg4rec reproduce status {out.name}")
    return 0


def status(table: str, out_root: Path = Path("results")) -> str:
    f = out_root / table / "status.json"
    if not f.is_file():
        return f"{table}: no sweep has run yet"
    s = json.loads(f.read_text())
    pids = [s.get("pid")]
    pid_f = out_root / table / "sweep.pid"
    if pid_f.is_file():
        pids.append(pid_f.read_text().strip())
    alive = any(_alive(pid) for pid in pids)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(s.get("time", 0)))
    if s.get("finished"):
        state = f"finished {when}"
    elif s.get("interrupted"):
        state = f"interrupted {when} ({s['interrupted']}); the same command resumes it"
    elif alive:
        state = "sweep process alive"
    else:
        state = f"sweep process gone since {when} (killed?); the same command resumes it"
    run = ""
    if alive:
        run = f"; {_running(s)}" if s.get("running") else ""
        for wf in sorted((out_root / table).glob("status.w*.json")):     # the other workers of `--jobs N`
            w = json.loads(wf.read_text())
            if not w.get("finished") and w.get("running") and _alive(w.get("pid")):
                run += f"; worker {wf.stem.split('.w')[-1]}: {_running(w)}"
    return f"{table}: {s['done']}/{s['total']} runs done{run}; {state}"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def _running(s: dict) -> str:
    """"running <model> on <dataset> seed <S> (epoch ...)" of a status file whose ``running`` is set."""
    verb = "waiting for another process to finish" if s.get("waiting") else "running"
    out = f"{verb} {s['running'][0]} on {s['running'][1]} seed {s['running'][2]}"
    if len(s["running"]) > 3:
        out += _run_progress(Path(s["running"][3]), s.get("time"))
    return out


def _log_entries(run_dir: Path) -> list[dict]:
    """The per-epoch entries of a run's log.jsonl; [] when it has none (yet) or cannot be read."""
    try:
        return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _run_progress(run_dir: Path, since: float | None) -> str:
    """' (epoch E, best valid NDCG@20 X at epoch B, M min)' from a live run's log.jsonl; '' before its first epoch."""
    log = _log_entries(run_dir)
    if not log:
        return ""
    scored = [e for e in log if "ndcg@20" in e.get("valid", {})]
    text = f"epoch {log[-1].get('epoch', len(log))}"
    if scored:
        best = max(scored, key=lambda e: e["valid"]["ndcg@20"])
        text += f", best valid NDCG@20 {best['valid']['ndcg@20']:.4f} at epoch {best.get('epoch')}"
    if since:
        text += f", {(time.time() - since) / 60:.0f} min"
    return f" ({text})"


__all__ = ["Job", "table_jobs", "plan", "run_jobs", "collect", "summarize", "reproduce", "paired_test", "config_hash"]
