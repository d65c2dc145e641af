#!/usr/bin/env python
"""Does a RecBole run resumed from ``run_recbole.py --state-dir`` end where the uninterrupted run ends?

For each model: one uninterrupted run, then the same run stopped before epoch K (``--stop-before-epoch``,
the state saved as a kill leaves it) and started again with the same arguments; the two JSON results must
agree on every test and valid metric, the best epoch and the number of epochs. Runs on the split of one of
OUR run directories, in RecBole's venv (``bench/recbole/setup.sh``)::

    python bench/recbole/check_resume.py --run-dir runs/ml-100k/bprmf/seed0-2b2166b7 --models BPR LightGCN \\
        --epochs 6 --stop-before 4

Prints a markdown table (append it to a results file with ``--write``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RECBOLE_PY = ROOT / "bench" / ".venv-recbole" / "bin" / "python"


def run(args_list: list[str]) -> tuple[int, dict | None]:
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    p = subprocess.run([str(RECBOLE_PY), str(HERE / "run_recbole.py"), *args_list], stdout=subprocess.PIPE,
                       text=True, env=env, cwd=ROOT)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    return p.returncode, (json.loads(lines[-1]) if lines else None)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, help="one of OUR run directories (its split/ is used)")
    ap.add_argument("--models", nargs="+", default=["BPR", "LightGCN"])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--stop-before", type=int, default=4, help="1-based epoch the interrupted run stops before")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", default=None, help="append the table to this markdown file")
    args = ap.parse_args(argv)
    if not RECBOLE_PY.is_file():
        raise SystemExit(f"check_resume: {RECBOLE_PY} not found: run bash bench/recbole/setup.sh first")
    rows = []
    for model in args.models:
        out = Path(tempfile.mkdtemp(prefix="check-resume-"))
        common = ["--run-dir", args.run_dir, "--model", model, "--seed", str(args.seed), "--threads", "1",
                  "--epochs", str(args.epochs), "--set", "eval_step=1"]
        rc_a, a = run(common + ["--out", str(out / "a")])
        state = out / "state"
        rc_stop, _ = run(common + ["--out", str(out / "b"), "--state-dir", str(state),
                                   "--stop-before-epoch", str(args.stop_before)])
        saved = (state / "resume.pt").is_file()
        rc_b, b = run(common + ["--out", str(out / "b"), "--state-dir", str(state)])
        keys = [f"{part} {m}" for part in ("test", "valid") for m in ("recall@20", "mrr@20", "ndcg@20")]
        diff = max(abs(a[k.split()[0]][k.split()[1]] - b[k.split()[0]][k.split()[1]]) for k in keys) \
            if a and b else None
        ok = (rc_a == 0 and rc_stop == 3 and saved and rc_b == 0 and diff == 0.0
              and a["best_epoch"] == b["best_epoch"] and a["epochs_run"] == b["epochs_run"]
              and b.get("resumed_from_epoch") == args.stop_before - 1)
        rows.append(f"| {model} | {args.epochs} | {args.stop_before} | {a and a['test']['ndcg@20']} | "
                    f"{b and b['test']['ndcg@20']} | {diff} | {a and a['best_epoch']} / {b and b['best_epoch']} | "
                    f"{'yes' if ok else 'NO'} |")
        shutil.rmtree(out, ignore_errors=True)
        print(rows[-1], flush=True)
    table = "\n".join([
        f"`python bench/recbole/check_resume.py --run-dir {args.run_dir} --models {' '.join(args.models)} "
        f"--epochs {args.epochs} --stop-before {args.stop_before}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "", "| RecBole model | epochs | stopped before epoch | test NDCG@20 uninterrupted | resumed | max abs diff "
        "(test + valid metrics) | best epoch | identical |", "|---|---|---|---|---|---|---|---|", *rows, ""])
    print(table)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as f:
            f.write("\n" + table)
    if not all(r.endswith("| yes |") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
