"""``reproduce --plan``: what a sweep still has to do, with the minutes each run should take."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..rundir import read_json, run_dir_for
from .archive import finished_dir
from .jobs import Job
from .scheduler import log_entries


def plan(jobs: list[Job], common: dict, archive: Path | None = None, n_workers: int = 1) -> str:
    """What a sweep still has to do, run by run: finished (here or archived), in progress (its last epoch) or
    to train, with the minutes each should take, estimated from the finished runs of the same kind (same
    model, label and dataset; their recorded ``train_seconds_total``), else from the finished runs of the
    same model and dataset under other labels (said so), else, for a part-done run, as an upper bound from
    its own log (``_own_pace``). With ``n_workers`` > 1 (``--jobs``) also the wall time: each worker takes the
    next run in the list when it is free (``run_jobs_parallel``). Trains nothing."""
    states, spent, pacers = [], {}, {}
    for job in jobs:
        cfg = job.config(common)
        rd = run_dir_for(cfg)
        done = finished_dir(cfg, archive)
        key = (job.model, job.label, job.dataset)
        if done is not None:
            m = read_json(done / "metrics.json")
            if m.get("train_seconds_total"):
                spent.setdefault(key, []).append((float(m["train_seconds_total"]), int(m["epochs_run"])))
            states.append((job, rd, "finished", None))
            continue
        epochs = len(log_entries(rd))
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
    log = [e for e in log_entries(run_dir) if e.get("train_seconds")]
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
