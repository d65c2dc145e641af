"""Accuracy at world size 2 against world size 1: test NDCG@20 of 2-rank runs (``multikg4rec train --nproc 2``,
Table 2's config for the model, seeds 0..S-1) beside the archived one-process Table 2 runs of the same config
(``results/runs``), with the one-process seed spread. Resumable: finished runs are found again.

    python bench/ddp_accuracy.py --datasets ml-100k --models kgat --seeds 2 [--lr-scale 2] --write bench/results/ddp_accuracy.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchlib import emit

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["ml-100k"])
    ap.add_argument("--models", nargs="+", default=["kgat", "multikg4rec"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--lr-scale", type=float, default=1.0,
                    help="world size 2 runs use the config's learning_rate times this (default 1: unchanged)")
    ap.add_argument("--ws1-now", action="store_true",
                    help="also train (or find) one-process runs of the same seeds at this code, beside the archive's")
    ap.add_argument("--output-dir", default="runs")
    ap.add_argument("--write")
    args = ap.parse_args()
    from multikg4rec.experiments.archive import archived
    from multikg4rec.experiments.jobs import table_job
    lines = [f"## Test NDCG@20 at world size 2 against world size 1 ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             "", f"`python bench/ddp_accuracy.py --datasets {' '.join(args.datasets)} --models {' '.join(args.models)} "
             f"--seeds {args.seeds} --lr-scale {args.lr_scale:g}{' --ws1-now' if args.ws1_now else ''}` on {platform.machine()}, {os.cpu_count()} cores. World size 1: the archived Table 2 "
             "runs (results/runs); world size 2: `multikg4rec train --nproc 2` with the same config (global batch "
             f"2 x batch_size, learning_rate x {args.lr_scale:g}, early stopping on valid).", "",
             "| dataset | model | world size 1 (archive): seeds, mean ± std (min-max) | world size 1 at this code: per seed "
             "| world size 2: per seed | ws2 mean | within archive's ws1 range | s/epoch ws1 -> ws2 |",
             "|---|---|---|---|---|---|---|---|"]
    for d in args.datasets:
        for m in args.models:
            one, one_spe = [], []
            for s in range(10):
                cfg = table_job(m, m, d, s).config({})
                if (kept := archived(cfg, REPO / "results" / "runs")) is not None:
                    mt = json.loads((kept / "metrics.json").read_text())
                    one.append(mt["test"]["ndcg@20"])
                    one_spe.append(mt["seconds_per_epoch"])
            cfg = table_job(m, m, d, 0).config({})

            def train(s: int, nproc: int, lr_scale: float) -> dict:
                recipe = dict(table_job(m, m, d, s).defaults)
                if lr_scale != 1.0:
                    recipe["learning_rate"] = float(cfg["learning_rate"]) * lr_scale
                extra = [x for k, v in recipe.items() for x in (f"--{k}", str(v))]
                launch = ["--nproc", str(nproc)] if nproc > 1 else ["--threads", "1"]   # ws1: the archive's threads
                cmd = [sys.executable, "-m", "multikg4rec", "train", "--model", m, "--dataset", d, "--seed", str(s),
                       *launch, "--output-dir", args.output_dir, "--quiet", *extra]
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                if p.returncode:
                    raise SystemExit(f"{' '.join(cmd)}:\n{p.stderr[-3000:]}")
                res = json.loads(p.stdout[p.stdout.index("{"):])
                mt = json.loads((Path(res["run_dir"]) / "metrics.json").read_text())
                print(d, m, s, f"world size {nproc}", mt["test"]["ndcg@20"], flush=True)
                return mt
            now = [train(s, 1, 1.0)["test"]["ndcg@20"] for s in range(args.seeds)] if args.ws1_now else []
            two, two_spe = [], []
            for s in range(args.seeds):
                mt = train(s, 2, args.lr_scale)
                two.append(mt["test"]["ndcg@20"])
                two_spe.append(mt["seconds_per_epoch"])
            o = np.array(one)
            inside = all(o.min() <= x <= o.max() for x in two) if len(o) else False
            lines.append(f"| {d} | {m} | {len(o)}: {o.mean():.4f} ± {o.std(ddof=1):.4f} ({o.min():.4f}-{o.max():.4f}) | "
                         f"{', '.join(f'{x:.4f}' for x in now) or '-'} | "
                         f"{', '.join(f'{x:.4f}' for x in two)} | {np.mean(two):.4f} | {'yes' if inside else 'no'} | "
                         f"{np.mean(one_spe):.1f} -> {np.mean(two_spe):.1f} |")
    emit("\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main()
