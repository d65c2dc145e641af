"""Running a sweep's jobs: one process, or ``--jobs N`` processes sharing the list through the
run-directory locks; a sweep in the background; its progress (``reproduce status``)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import rundir
from ..errors import Interrupted, RunBusy, UserError
from ..rundir import read_json
from .archive import finished_dir
from .jobs import Job

log = logging.getLogger(__name__)


def run_jobs(jobs: list[Job], common: dict, quiet_runs: bool = True, status_file: Path | None = None,
             archive: Path | None = None, worker: int | None = None) -> list[dict]:
    """Run every job not finished yet (in the run directories or the ``archive``), one after another;
    a failing job is logged and skipped. ``worker``: this is extra worker ``k`` of ``reproduce --jobs``
    (no progress bar of its own; its messages say which worker)."""
    from tqdm.auto import tqdm

    from .. import training                       # looked up per call: tests stand in for training.run
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
        """Train ``job`` (``training.run`` trains its prerequisites first) and keep its row; RunBusy
        propagates to the caller."""
        try:
            res = training.run(cfg, quiet=quiet_runs)
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
    bar = tqdm(jobs, desc="sweep", unit="run", dynamic_ncols=True, disable=True if worker is not None else None)
    for job in bar:
        cfg = job.config(common)
        rd = rundir.run_dir_for(cfg)
        done = finished_dir(cfg, archive)
        if done is not None:                              # finished here or archived from another machine: read
            rows.append({"job": job, "run_dir": done, "metrics": read_json(done / "metrics.json")})
            continue
        bar.set_postfix_str(f"{job.label} {job.dataset} seed {job.seed}")
        report([job.label, job.dataset, job.seed, str(rd)])
        try:
            if rundir.is_busy(rd):                        # cheap probe before loading the data
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
        rundir.wait_until_free(locked)            # blocks until the other process lets go of the run
        try:
            attempt(job, cfg)
        except RunBusy as e:                      # taken again in between by yet another process
            say(f"skipped {job.label} on {job.dataset} seed {job.seed}: {e}")
    report(finished=True)
    return rows

#: seconds between the start of ``reproduce --jobs`` workers (long enough for the previous one to load its
#: run's data and take the run's lock, so that two workers rarely load the same run)
WORKER_STAGGER_S = 5.0

def _sweep_worker(jobs: list[Job], common: dict, status_file: Path | None, archive: Path | None,
                  worker: int, ready, start) -> None:
    """Entry point of one extra worker process of ``reproduce --jobs N`` (started with ``spawn``): say when the
    imports are done (``ready``), wait for ``start``, then run the sweep's list like any other worker."""
    import signal
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill -> the run keeps its last epoch
    logging.basicConfig(level=logging.WARNING, format=f"warning [worker {worker}]: %(message)s")
    try:
        from .. import models, training  # noqa: F401  (torch and the models: the slow part of starting)
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

def launch_background(argv: list[str], out: Path) -> int:
    """Re-run this command detached from the terminal; its log goes to ``out/sweep.log``."""
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "sweep.log", "a")
    p = subprocess.Popen([sys.executable, "-m", "multikg4rec.cli", *argv], stdout=logf, stderr=subprocess.STDOUT,
                         start_new_session=True, env=os.environ.copy())
    (out / "sweep.pid").write_text(str(p.pid))
    print(f"started in the background (pid {p.pid}); log: {out / 'sweep.log'}; "
          f"progress: multikg4rec reproduce status --datasets {out.name}")
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

def log_entries(run_dir: Path) -> list[dict]:
    """The per-epoch entries of a run's log.jsonl; [] when it has none (yet) or cannot be read."""
    try:
        return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []

def _run_progress(run_dir: Path, since: float | None) -> str:
    """' (epoch E, best valid NDCG@20 X at epoch B, M min)' from a live run's log.jsonl; '' before its first epoch."""
    log = log_entries(run_dir)
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
